"""The PINN toolkit: collocation sets, residual assembly, error reports."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

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
    x = np.asarray(sb.collocation_points((0.0, 0.0), (2.0, 1.0), 10_000, where="boundary",
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


# ---------------------------------------------------------------- residual assembly

X_IN = sb.collocation_points((0.0, 0.0), (1.0, 1.0), 4, dtype=jnp.float64)  # 16 points
X_BC = sb.collocation_points((0.0, 0.0), (1.0, 1.0), 4, where="boundary", dtype=jnp.float64)


def _source(x):
    return jnp.sin(jnp.pi * x[0]) * x[1]


def _poisson(fm, weights=None):
    return sb.pinn(fm, {
        "pde": (lambda u, x: -u.laplacian(x) - _source(x), X_IN),
        "bc": (lambda u, x: u(x), X_BC),
    }, weights=weights)


@pytest.fixture(scope="module")
def mlp():
    return sb.FlatMLP((2, 8, 8, 1), key=jax.random.key(1), dtype=jnp.float64)


def test_residual_matches_nested_autodiff_reference(mlp):
    theta = mlp.theta0
    problem = _poisson(mlp, weights={"bc": 4.0})
    # Independent reference: trace of `jax.hessian` of the bare model.
    lap = jax.jit(jax.vmap(lambda x: jnp.trace(jax.hessian(lambda y: mlp(theta, y)[0])(x))))
    r_pde = -lap(X_IN) - jax.vmap(_source)(X_IN)
    r_bc = jax.vmap(lambda x: mlp(theta, x)[0])(X_BC)
    want = np.concatenate([r_pde / np.sqrt(len(X_IN)), r_bc * np.sqrt(4.0 / len(X_BC))])
    got = jax.jit(problem.residual)(theta)
    assert got.shape == (len(X_IN) + len(X_BC),) and got.dtype == jnp.float64
    assert np.allclose(got, want, rtol=1e-12, atol=1e-12)


def test_loss_is_half_the_squared_residual_and_splits_into_terms(mlp):
    problem = _poisson(mlp, weights={"pde": 2.0})
    theta = mlp.theta0
    r, loss, parts = jax.jit(lambda t: (problem.residual(t), problem.loss(t),
                                        problem.term_losses(t)))(theta)
    assert np.isclose(loss, 0.5 * np.sum(np.asarray(r) ** 2), rtol=1e-13)
    assert set(parts) == {"pde", "bc"}
    assert np.isclose(sum(parts.values()), loss, rtol=1e-13)
    plain = jax.jit(_poisson(mlp).term_losses)(theta)
    assert np.isclose(parts["pde"], 2.0 * plain["pde"], rtol=1e-13)


def test_both_forms_are_one_problem_gradient_is_jacobian_transpose_residual(mlp):
    problem = _poisson(mlp)
    theta = mlp.theta0
    jac = jax.jit(jax.jacfwd(problem.residual))(theta)
    grad = jax.jit(jax.grad(problem.loss))(theta)
    assert np.allclose(grad, jac.T @ problem.residual(theta), rtol=1e-10, atol=1e-12)


def test_field_derivatives_match_jax_on_a_closed_form_model():
    # u(x) = a * x0^2 * x1 + b: grad = (2 a x0 x1, a x0^2), Laplacian = 2 a x1.
    fm = lambda theta, x: jnp.atleast_1d(theta[0] * x[0] ** 2 * x[1] + theta[1])
    theta = jnp.array([3.0, 0.5])
    x = jnp.array([0.7, -1.3])
    value, grad, lap, hess = jax.jit(
        lambda theta, x: (lambda u: (u(x), u.grad(x), u.laplacian(x), u.hessian(x)))(
            sb.Field(fm, theta)
        )
    )(theta, x)
    assert np.allclose(value, [3.0 * 0.49 * -1.3 + 0.5])
    assert np.allclose(grad, [[2 * 3.0 * 0.7 * -1.3, 3.0 * 0.49]])
    assert np.allclose(lap, [2 * 3.0 * -1.3])
    assert np.allclose(hess, [[[2 * 3.0 * -1.3, 2 * 3.0 * 0.7], [2 * 3.0 * 0.7, 0.0]]])


def test_field_hessian_on_the_fast_path_matches_jax_hessian(mlp):
    x = jnp.array([0.3, 0.8])
    got = jax.jit(lambda theta, x: sb.Field(mlp, theta).hessian(x))(mlp.theta0, x)
    want = jax.jit(jax.hessian(lambda y: mlp(mlp.theta0, y)))(x)
    assert got.shape == (1, 2, 2)
    assert np.allclose(got, want, rtol=1e-12, atol=1e-12)
    second = jax.jit(lambda theta, x: sb.Field(mlp, theta).second_derivative(x, 1))(mlp.theta0, x)
    assert second.shape == (1,)
    assert np.allclose(second, want[:, 1, 1], rtol=1e-12, atol=1e-12)


def test_terms_with_data_per_point_and_sequence_form():
    fm = lambda theta, x: theta[0] * x
    x = jnp.linspace(0.0, 1.0, 5)[:, None]
    y = 2.0 * x[:, 0]
    problem = sb.pinn(fm, [(lambda u, x, y: u(x)[0] - y, (x, y))])
    assert np.allclose(problem.residual(jnp.array([2.0])), 0.0)
    assert np.allclose(problem.residual(jnp.array([3.0])), x[:, 0] / np.sqrt(5))
    assert set(problem.term_losses(jnp.array([3.0]))) == {"term0"}


def test_float32_network_gives_a_float32_residual():
    fm = sb.FlatMLP((2, 4, 1), key=jax.random.key(0), dtype=jnp.float32)
    x = X_IN.astype(jnp.float32)
    problem = sb.pinn(fm, {"pde": (lambda u, x: u.laplacian(x) - jnp.sum(x), x)})
    residual, loss = jax.jit(lambda t: (problem.residual(t), problem.loss(t)))(fm.theta0)
    assert residual.dtype == jnp.float32 and loss.dtype == jnp.float32


@pytest.mark.parametrize(
    "terms, weights, match",
    [
        ({}, None, "non-empty mapping"),
        ("pde", None, "non-empty mapping"),
        ({"pde": (lambda u, x: u(x),)}, None, "non-empty mapping"),
        ({"pde": (lambda u, x: u(x), jnp.ones(()))}, None, "leading\naxis"),
        ({"pde": (lambda u, x: u(x), (jnp.ones((3, 1)), jnp.ones(4)))}, None, "leading\naxis"),
        ({"pde": (lambda u, x: u(x), jnp.ones((0, 2)))}, None, "leading\naxis"),
        ({"pde": (lambda u, x: u(x), [[0.1], [0.2]])}, None, "is `jnp.asarray\\(points\\)`"),
        ({"pde": (lambda u, x: u(x), X_IN)}, {"bc": 1.0}, "names among \\['pde'\\]"),
        ({"pde": (lambda u, x: u(x), X_IN)}, {"pde": -1.0}, "non-negative"),
        ({"pde": (lambda u, x: u(x), X_IN)}, {"pde": float("inf")}, "finite, non-negative"),
        ({"pde": (lambda u, x: u(x), X_IN)}, {"pde": float("nan")}, "finite, non-negative"),
        ({"pde": (lambda u, x: u(x), X_IN)}, {"pde": "heavy"}, "finite, non-negative"),
    ],
)
def test_pinn_errors(terms, weights, match):
    fm = lambda theta, x: theta * x
    with pytest.raises(ValueError, match=match):
        sb.pinn(fm, terms, weights=weights)


# ---------------------------------------------------------------- error report


def test_error_report_against_a_function_and_an_array():
    fm = lambda theta, x: theta[0] * x  # output shape (1,) per point
    x = jnp.linspace(-1.0, 1.0, 11)[:, None]
    theta = jnp.array([1.1])
    want_rel = 0.1 / 1.1 * 1.1  # ||1.1 x - x|| / ||x|| = 0.1
    report = sb.error_report(fm, theta, x, lambda pts: pts[:, 0])
    assert np.isclose(report.rel_l2, want_rel, rtol=1e-13)
    assert np.isclose(report.max_abs, 0.1, rtol=1e-13)
    assert np.isclose(report.rms, 0.1 * np.sqrt(np.mean(np.asarray(x) ** 2)), rtol=1e-13)
    assert report.prediction.shape == report.reference.shape == (11, 1)
    same = sb.error_report(fm, theta, x, np.asarray(x[:, 0]))
    assert same.rel_l2 == report.rel_l2
    assert "relative L2 error 1.000e-01" in str(report) and "11 points" in str(report)


def test_error_report_rejects_a_reference_of_the_wrong_size():
    fm = lambda theta, x: theta[0] * x
    x = jnp.ones((4, 1))
    with pytest.raises(ValueError, match="prediction's shape\n\\(4, 1\\).*got shape \\(5,\\)"):
        sb.error_report(fm, jnp.array([1.0]), x, np.ones(5))


def test_error_report_refuses_a_transposed_reference_for_a_two_output_network():
    # (outputs, points) has the right number of values but the wrong meaning: no reshape.
    fm = lambda theta, x: theta * jnp.concatenate([x, 2 * x])  # 2 outputs per point
    x = jnp.linspace(0.0, 1.0, 5)[:, None]
    exact = np.asarray(jax.vmap(fm, in_axes=(None, 0))(jnp.ones(1), x))  # (5, 2)
    assert sb.error_report(fm, jnp.ones(1), x, exact).rel_l2 == 0.0
    with pytest.raises(ValueError, match="reference.T"):
        sb.error_report(fm, jnp.ones(1), x, exact.T)


def test_error_report_refuses_a_complex_reference_for_a_real_network():
    fm = lambda theta, x: theta[0] * x
    x = jnp.ones((4, 1))
    with pytest.raises(TypeError, match="imaginary part would be dropped"):
        sb.error_report(fm, jnp.array([1.0]), x, np.ones((4, 1)) * (1 + 1j))


@pytest.mark.parametrize("lower, upper", [((0.0, -np.inf), (1.0, 1.0)), (0.0, np.nan),
                                          ((0.0, 0.0), (1.0, np.inf))])
def test_collocation_points_refuse_non_finite_bounds(lower, upper):
    for sampling in ("grid", "random"):
        with pytest.raises(ValueError, match="expected finite `lower` and `upper`"):
            sb.collocation_points(lower, upper, 4, sampling=sampling, key=jax.random.key(0))


@pytest.mark.parametrize("lower, upper, n", [(1000.0, 1001.0, 20000), (1000.0, 1000.001, 100)])
def test_float32_grid_that_would_repeat_or_touch_the_boundary_is_refused(lower, upper, n):
    # Cast to float32, 20000 points on [1000, 1001] were 16383 distinct values; on
    # [1000, 1000.001] 8 of 100 landed on the boundary.
    exact = np.linspace(lower, upper, n + 2)[1:-1].astype(np.float32)
    assert len(np.unique(exact)) < n or exact.min() <= np.float32(lower)
    with pytest.raises(ValueError, match=r"(?s)float32 only resolves.*dtype=jnp.float64"):
        sb.collocation_points(lower, upper, n, dtype=jnp.float32)
    with pytest.raises(ValueError, match="fewer"):
        sb.collocation_points((0.0, lower), (1.0, upper), (4, n), where="boundary",
                              dtype=jnp.float32)  # fmt: skip
    x = np.asarray(sb.collocation_points(lower, upper, n, dtype=jnp.float64))[:, 0]
    assert len(np.unique(x)) == n and lower < x.min() and x.max() < upper


def test_float32_grid_within_resolution_is_strictly_inside_and_distinct():
    x = np.asarray(sb.collocation_points(1000.0, 1001.0, 1000, dtype=jnp.float32))[:, 0]
    assert x.dtype == np.float32 and len(np.unique(x)) == 1000
    assert np.float32(1000.0) < x.min() and x.max() < np.float32(1001.0)


@pytest.mark.parametrize("scale", [1e20, 1e-22, 1.0])
def test_error_report_norms_are_right_at_any_magnitude_in_float32(scale):
    # sqrt(sum(x**2)) in float32 overflows at 1e20 and underflows at 1e-22: both gave 0.0.
    fm = lambda theta, x: theta[0] * x[0]
    x = jnp.linspace(0.5, 1.0, 5, dtype=jnp.float32)[:, None]
    ref = np.asarray(x[:, 0]) * np.float32(scale)
    report = sb.error_report(fm, jnp.array([1.01 * scale], jnp.float32), x, ref)
    err = np.asarray(report.prediction, np.float64) - np.asarray(ref, np.float64)
    assert np.isclose(report.rel_l2, 1e-2, rtol=1e-5)
    assert np.isclose(report.rms, np.sqrt(np.mean(err**2)), rtol=1e-6)


def test_error_report_against_a_zero_reference():
    fm = lambda theta, x: theta[0] * x[0]
    x = jnp.ones((3, 1))
    assert sb.error_report(fm, jnp.array([0.0]), x, np.zeros(3)).rel_l2 == 0.0
    report = sb.error_report(fm, jnp.array([1e-3]), x, np.zeros(3))
    assert report.rel_l2 == np.inf and np.isclose(report.max_abs, 1e-3)


def test_second_derivative_of_a_scalar_input_network():
    fm = sb.FlatMLP(("scalar", 8, "scalar"), key=jax.random.key(0), dtype=jnp.float64)
    u, x = sb.Field(fm, fm.theta0), jnp.array(0.3)
    reference = jax.grad(jax.grad(lambda y: fm(fm.theta0, y)))(x)
    assert np.isclose(u.second_derivative(x, 0), reference, rtol=1e-12)
    assert np.isclose(u.second_derivative(x, -1), reference, rtol=1e-12)
    assert np.isclose(u.hessian(x), reference, rtol=1e-12)


def test_second_derivative_and_hessian_take_an_integer_point_as_laplacian_does(mlp):
    # `u.laplacian` and `u.grad` cast an integer `x` to the weights' dtype; `second_derivative`
    # raised from `jax.jvp` (float0 tangent) and `hessian` from `jax.jacfwd`.
    u, xi = sb.Field(mlp, mlp.theta0), jnp.array([1, 0])
    want = jax.hessian(lambda y: mlp(mlp.theta0, y))(xi.astype(jnp.float64))
    got = jax.jit(lambda x: (u.hessian(x), u.second_derivative(x, 1)))(xi)
    assert got[0].dtype == got[1].dtype == jnp.float64
    np.testing.assert_allclose(got[0], want, rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(got[1], want[:, 1, 1], rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("x, axis", [(jnp.array(0.3), 1), (jnp.ones(2), 2), (jnp.ones(2), (0, 1))])
def test_second_derivative_refuses_an_axis_outside_x(x, axis):
    # JAX would drop the out-of-range `.at[axis]` update: a zero direction, a silent 0.
    fm = lambda theta, x: jnp.sum(theta[0] * x**3)
    with pytest.raises(ValueError, match="pick one entry of `x`"):
        sb.Field(fm, jnp.ones(1)).second_derivative(x, axis)


@pytest.mark.parametrize("points", [jnp.ones((0, 1)), jnp.array(0.5)], ids=["empty", "0-d"])
def test_error_report_without_points_is_a_clear_error(points):
    # Was NumPy's "zero-size array to reduction operation maximum which has no identity".
    fm = lambda theta, x: theta[0] * x
    with pytest.raises(ValueError, match=r"expected `points` with a leading axis of at\s+least"):
        sb.error_report(fm, jnp.ones(1), points, np.ones((0, 1)))
