"""The PINN toolkit: collocation sets, residual assembly, error reports."""

import jax.numpy as jnp
import numpy as np
import pytest
from helpers import run_python

import sciml_bridge as sb


UNIT_SQUARE = ((0.0, 0.0), (1.0, 1.0))


# ---------------------------------------------------------------- collocation points


def test_interior_grid_is_strictly_inside_and_evenly_spaced():
    x = sb.collocation_points(*UNIT_SQUARE, (4, 3))
    assert x.shape == (12, 2) and x.dtype == jnp.float64
    assert np.allclose(np.unique(x[:, 0]), [0.2, 0.4, 0.6, 0.8])
    assert np.allclose(np.unique(x[:, 1]), [0.25, 0.5, 0.75])


def test_boundary_grid_has_each_point_once_and_matches_the_interior_spacing():
    x = np.asarray(sb.collocation_points(*UNIT_SQUARE, 6, where="boundary"))
    assert x.shape == (20, 2)  # 4 * (6 - 1): corners counted once
    assert len({tuple(p) for p in x}) == len(x)
    on_edge = (x == 0.0) | (x == 1.0)
    assert on_edge.any(axis=1).all()
    assert np.allclose(np.unique(x[:, 0]), np.linspace(0, 1, 6))


def test_one_dimensional_boundary_is_the_two_end_points():
    x = sb.collocation_points(-1.0, 1.0, 5, where="boundary")
    assert np.array_equal(np.asarray(x), [[-1.0], [1.0]])
    assert sb.collocation_points(-1.0, 1.0, 5).shape == (5, 1)


def test_boundary_grid_on_chosen_faces_only():
    faces = [(0, "lower"), (1, "lower"), (1, "upper")]  # (t, x): initial face and the walls
    x = np.asarray(sb.collocation_points((0.0, -1.0), (1.0, 1.0), 5, where="boundary",
                                         faces=faces))
    assert np.all((x[:, 0] == 0.0) | (np.abs(x[:, 1]) == 1.0))
    assert len(x) == 5 + 2 * 4


def test_random_interior_points_are_uniform_in_the_box(getkey):
    x = np.asarray(sb.collocation_points((0.0, -1.0), (1.0, 1.0), 20_000, sampling="random",
                                         key=getkey()))
    assert x.shape == (20_000, 2)
    assert x[:, 0].min() >= 0.0 and x[:, 0].max() <= 1.0
    assert x[:, 1].min() >= -1.0 and x[:, 1].max() <= 1.0
    assert np.allclose(x.mean(axis=0), [0.5, 0.0], atol=0.02)


def test_random_boundary_points_are_on_faces_in_proportion_to_area(getkey):
    # Box [0, 2] x [0, 1]: faces x=0 and x=2 have length 1, faces y=0 and y=1 have length 2.
    x = np.asarray(sb.collocation_points((0.0, 0.0), (2.0, 1.0), 30_000, where="boundary",
                                         sampling="random", key=getkey()))
    on_x_face = (x[:, 0] == 0.0) | (x[:, 0] == 2.0)
    on_y_face = (x[:, 1] == 0.0) | (x[:, 1] == 1.0)
    assert np.all(on_x_face | on_y_face)
    assert abs(on_x_face.mean() - 1 / 3) < 0.02


def test_random_points_respect_dtype_and_key(getkey):
    key = getkey()
    a = sb.collocation_points(0.0, 1.0, 10, sampling="random", key=key, dtype=jnp.float32)
    b = sb.collocation_points(0.0, 1.0, 10, sampling="random", key=key, dtype=jnp.float32)
    assert a.dtype == jnp.float32 and np.array_equal(a, b)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(lower=(0.0, 0.0), upper=(1.0,), n=4), "same length"),
        (dict(lower=1.0, upper=0.0, n=4), "lower\\[i\\] < upper\\[i\\]"),
        (dict(lower=0.0, upper=1.0, n=0), "positive int"),
        (dict(lower=(0.0, 0.0), upper=(1.0, 1.0), n=(3,)), "one positive int per axis"),
        (dict(lower=0.0, upper=1.0, n=4, where="inside"), "`where`"),
        (dict(lower=0.0, upper=1.0, n=4, sampling="sobol"), "`sampling`"),
        (dict(lower=0.0, upper=1.0, n=4, sampling="random"), "key=jax.random.key"),
        (dict(lower=0.0, upper=1.0, n=4, where="boundary", faces=[(1, "lower")]), "0 <= axis"),
    ],
)
def test_collocation_errors(kwargs, match):
    with pytest.raises(ValueError, match=match):
        sb.collocation_points(**kwargs)


def test_collocation_integer_dtype_is_a_type_error():
    with pytest.raises(TypeError, match="floating `dtype`"):
        sb.collocation_points(0.0, 1.0, 4, dtype=jnp.int32)


def test_collocation_refuses_float64_with_x64_off():
    out = run_python(
        """
        import jax.numpy as jnp, sciml_bridge as sb
        try:
            sb.collocation_points(0.0, 1.0, 4, dtype=jnp.float64)
        except TypeError as e:
            print("TypeError", "jax_enable_x64" in str(e))
        print(sb.collocation_points(0.0, 1.0, 4).dtype)
        """
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["TypeError", "True", "float32"]
