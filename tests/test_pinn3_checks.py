"""Checks around PINN derivatives and reports: nested hard constraints, extra inputs where the
model takes none, and a reference that indexes out of bounds (JAX clamps without a word)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import sciml_bridge as sb


_RELU = sb.FlatMLP((2, 4, "scalar"), activation="relu", key=jax.random.key(0), dtype=jnp.float64)
_TANH = sb.FlatMLP((2, 4, "scalar"), key=jax.random.key(1), dtype=jnp.float64)
_X = jnp.array([0.3, -0.2])


def _box(x):
    return jnp.prod(1 - x**2)


def _bump(x):
    return 1 + x[0] * x[1]


def test_a_nested_hard_constraint_around_relu_is_refused():
    # `sb.laplacian` took the inner constraint as an opaque model: `jax.hessian` gave 0 for
    # relu'' and a Laplacian that left out the network's own term, without a word.
    u = sb.HardConstraint(sb.HardConstraint(_RELU, _box), _bump)
    theta = _RELU.theta0
    for second in (lambda: sb.laplacian(u)(theta, _X),
                   lambda: sb.laplacian(u, batched=True)(theta, _X[None]),
                   lambda: sb.Field(u, theta).hessian(_X)):
        with pytest.raises(ValueError, match="`relu` is not twice"):
            second()
    assert sb.grad_x(u)(_RELU.theta0, _X).shape == (2,)  # first derivatives are fine


def test_a_nested_hard_constraint_differentiates_through_the_inner_one():
    u = sb.HardConstraint(sb.HardConstraint(_TANH, _box), _bump)
    composed = lambda x: _bump(x) * _box(x) * _TANH(_TANH.theta0, x)
    lap = jnp.trace(jax.hessian(composed)(_X))
    np.testing.assert_allclose(sb.laplacian(u)(_TANH.theta0, _X), lap, rtol=1e-13)
    np.testing.assert_allclose(sb.grad_x(u)(_TANH.theta0, _X), jax.grad(composed)(_X),
                               rtol=1e-13)


@pytest.mark.parametrize("model", [_TANH, sb.HardConstraint(_TANH, _box)],
                         ids=["flat-mlp", "hard-constraint"])
@pytest.mark.parametrize("name", ["grad_x", "laplacian"])
def test_extra_inputs_to_a_two_input_model_are_our_error(model, name):
    # Python's "takes 2 positional arguments but 3 were given" named a lambda of ours.
    derivative = getattr(sb, name)(model)
    with pytest.raises(TypeError, match=rf"(?s)`sb.{name}\(fm\)\(theta, x\)` on an `sb\..*1 more"):
        derivative(_TANH.theta0, _X, 1.0)


def test_error_report_refuses_a_reference_that_indexes_out_of_bounds():
    # `x[:, 1]` of `(points, 1)` points read column 0 again (JAX clamps): an error of 0.
    fm = lambda theta, x: theta[0] * x[0]
    points = jnp.linspace(0.0, 1.0, 5)[:, None]
    for reference in (lambda x: x[:, 1], jax.jit(lambda x: x[jnp.arange(5) + 1, 0])):
        with pytest.raises(ValueError, match="indexed out of bounds: .*index [15] is out"):
            sb.error_report(fm, jnp.array([1.0]), points, reference)
    # In bounds, NumPy or a boolean mask (not traceable: called plainly, as before), and
    # precomputed values pass.
    for reference in (lambda x: x[:, 0], lambda x: np.array([float(v[0]) for v in x]),
                      lambda x: x[x[:, 0] > -1.0][:, 0], points[:, 0]):
        assert sb.error_report(fm, jnp.array([1.0]), points, reference).max_abs == 0.0


def test_faces_without_where_boundary_are_refused():
    # `faces=` with the default `where="interior"` gave interior points without a word, so a
    # boundary term built on them held inside the box.
    with pytest.raises(ValueError, match='`faces=.*` with `where="interior"`'):
        sb.collocation_points((0.0, 0.0), (1.0, 1.0), 3, faces=[(0, "lower")])


def test_random_points_take_one_key_and_name_a_batch_of_keys():
    keys = jax.random.split(jax.random.key(0), 2)
    with pytest.raises(ValueError, match=r"(?s)expected one PRNG key .* shape \(2,\)"):
        sb.collocation_points(0.0, 1.0, 3, sampling="random", key=keys)
    raw = jax.random.PRNGKey(0)  # a raw uint32 key is one key too
    assert sb.collocation_points(0.0, 1.0, 3, sampling="random", key=raw).shape == (3, 1)


def test_traced_bounds_are_named_as_traced_not_as_non_finite():
    # Inside jit the bounds were called "not finite" (np.isfinite of a tracer failed).
    make = jax.jit(lambda lo: sb.collocation_points(lo, jnp.array([1.0, 1.0]), 4))
    with pytest.raises(TypeError, match=r"expected concrete `lower` and `upper`.*traced"):
        make(jnp.array([0.0, 0.0]))
