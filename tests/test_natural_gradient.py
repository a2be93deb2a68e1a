"""The truncated Gauss-Newton / natural-gradient pieces against hand-written references."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import sciml_bridge as sb
from sciml_bridge._solvers._natural_gradient import (
    cgls_step,
    geodesic_corrections,
    grid_line_search,
    residual_and_jacobian,
    truncated_solver,
    truncated_step,
)


def _matrix_with_singular_values(m, n, sigmas, seed=0):
    rng = np.random.default_rng(seed)
    U, _ = np.linalg.qr(rng.normal(size=(m, m)))
    V, _ = np.linalg.qr(rng.normal(size=(n, n)))
    S = np.zeros((m, n))
    S[: len(sigmas), : len(sigmas)] = np.diag(sigmas)
    return U @ S @ V.T


def _reference_step(J, r, rcond):
    """Hand-written: SVD of J, drop singular values below rcond * sigma_max, d = -V S^+ U^T r."""
    U, s, Vt = np.linalg.svd(J, full_matrices=False)
    keep = s > rcond * s[0]
    return -(Vt[keep].T @ ((U[:, keep].T @ r) / s[keep]))


@pytest.mark.parametrize("shape", [(12, 5), (5, 12)])
@pytest.mark.parametrize("form", ["svd", "gramian", "kernel"])
def test_truncated_step_matches_svd_reference(shape, form):
    m, n = shape
    # Two singular values far below the cutoff 1e-4: kept, they would dominate the step.
    J = _matrix_with_singular_values(m, n, [3.0, 1.0, 0.5, 1e-7, 1e-9])
    r = np.random.default_rng(1).normal(size=m)
    d = truncated_step(jnp.asarray(J), jnp.asarray(r), 1e-4, form)
    expected = _reference_step(J, r, 1e-4)
    np.testing.assert_allclose(np.asarray(d), expected, rtol=1e-9, atol=1e-12)
    assert np.linalg.norm(expected) < 10  # the untruncated step would have norm ~1e7
    assert np.linalg.norm(np.linalg.pinv(J, rcond=1e-12) @ r) > 1e5


def test_cgls_matches_lstsq_on_a_full_rank_linear_residual():
    J = _matrix_with_singular_values(20, 6, [4.0, 3.0, 2.0, 1.5, 1.0, 0.5], seed=2)
    b = np.random.default_rng(3).normal(size=20)
    theta = jnp.asarray(np.random.default_rng(4).normal(size=6))
    f = lambda t: jnp.asarray(J) @ t - jnp.asarray(b)
    r, d, g = cgls_step(f, theta, 50, 1e-14)
    expected = np.linalg.lstsq(J, b, rcond=None)[0] - np.asarray(theta)
    np.testing.assert_allclose(np.asarray(d), expected, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(np.asarray(g), J.T @ np.asarray(r), rtol=1e-12)


def test_grid_line_search_matches_a_python_loop():
    value = jax.jit(lambda t: jnp.sum((t - 0.3) ** 2) + jnp.sum(t**4))
    theta, d = jnp.array([2.0, -1.0]), jnp.array([-100.0, 40.0])
    loss = value(theta)
    step, new_loss, decreased, alpha = grid_line_search(value, theta, d, loss, 30)
    trials = [(float(value(theta + 0.5**k * d)), 0.5**k) for k in range(31)]  # one by one
    best_loss, best_alpha = min(trials)
    assert float(alpha) == best_alpha
    np.testing.assert_allclose(float(new_loss), best_loss, rtol=1e-14)
    np.testing.assert_array_equal(np.asarray(step), best_alpha * np.asarray(d))
    assert bool(decreased) and best_alpha < 2**-5  # far below a unit step
    # Several candidate directions: the best over all of them and all step sizes.
    both = jnp.stack([d, jnp.array([-1.7, 1.0])])
    step, new_loss, _, _ = grid_line_search(value, theta, both, loss, 30)
    trials += [(float(value(theta + 0.5**k * both[1])), 0.5**k) for k in range(31)]
    np.testing.assert_allclose(float(new_loss), min(trials)[0], rtol=1e-14)
    # In batches through `jax.lax.map` (what CPU runs use): the same search.
    for batch in (1, 5):
        _, batched_loss, _, batched_alpha = grid_line_search(value, theta, both, loss, 30,
                                                             batch=batch)
        np.testing.assert_allclose(float(batched_loss), min(trials)[0], rtol=1e-14)
        assert float(batched_alpha) == min(trials)[1]
    # Nothing below the loss to beat: no decrease reported.
    _, _, decreased, _ = grid_line_search(value, theta, d, jnp.asarray(0.0), 30)
    assert not bool(decreased)


def test_geodesic_correction_and_curved_trial_steps_match_a_hand_written_reference():
    # r(t) = (t0 + t1^2 - 1, t1 - 0.5 t0^2, t0 t1): r''[v, v] = (2 v1^2, -v0^2, 2 v0 v1).
    f = lambda t: jnp.stack([t[0] + t[1] ** 2 - 1, t[1] - 0.5 * t[0] ** 2, t[0] * t[1]])
    value = lambda t: 0.5 * jnp.sum(f(t) ** 2)
    theta = np.array([0.4, -0.3])

    @jax.jit
    def run(theta):
        solve = truncated_solver(jax.jacfwd(f)(theta), (1e-3,), "svd")
        v = -solve(f(theta))
        a = geodesic_corrections(f, theta, v, solve)
        return v[0], a[0], grid_line_search(value, theta, v, value(theta), 10, a)

    v, a, (step, new_loss, _, alpha) = jax.tree.map(np.asarray, run(jnp.asarray(theta)))
    t0, t1 = theta
    J = np.array([[1, 2 * t1], [-t0, 1], [t1, t0]])
    rvv = np.array([2 * v[1] ** 2, -(v[0] ** 2), 2 * v[0] * v[1]])
    np.testing.assert_allclose(a, -np.linalg.pinv(J) @ rvv, rtol=1e-12)
    r_np = lambda t: np.array([t[0] + t[1] ** 2 - 1, t[1] - 0.5 * t[0] ** 2, t[0] * t[1]])
    trials = [0.5 * np.sum(r_np(theta + 0.5**k * v + 0.5 * 0.25**k * a) ** 2) for k in range(11)]
    k = int(np.argmin(trials))
    assert alpha == 0.5**k and k > 0  # the unit step is not the best here
    np.testing.assert_allclose(new_loss, trials[k], rtol=1e-13)
    np.testing.assert_allclose(step, 0.5**k * v + 0.5 * 0.25**k * a, rtol=1e-15)


@pytest.mark.parametrize("mode", ["fwd", "bwd"])
def test_residual_and_jacobian_agree_with_jacfwd(mode):
    f = lambda t: jnp.stack([jnp.sin(t[0]) * t[1], t[0] ** 2, jnp.exp(t[1] - t[2])])
    theta = jnp.array([0.3, -0.7, 0.2])
    r, J = jax.jit(lambda t: residual_and_jacobian(f, t, mode))(theta)
    np.testing.assert_allclose(np.asarray(r), np.asarray(f(theta)), rtol=1e-14)
    np.testing.assert_allclose(np.asarray(J), np.asarray(jax.jacfwd(f)(theta)), rtol=1e-14)


def _tiny_pinn():
    fm = sb.FlatMLP((1, 8, 1), key=jax.random.key(0), dtype=jnp.float64)
    x_in = jnp.linspace(0.05, 0.95, 12)[:, None]
    x_bc = jnp.array([[0.0], [1.0]])
    f = lambda x: jnp.pi**2 * jnp.sin(jnp.pi * x[0])
    problem = sb.pinn(fm, {"pde": (lambda u, x: -u.laplacian(x) - f(x), x_in),
                           "bc": (lambda u, x: u(x), x_bc)})
    return fm, problem


def test_pinn_residual_jacobian_per_point_equals_the_black_box_jacobian():
    fm, problem = _tiny_pinn()
    theta = fm.theta0
    r, J = jax.jit(problem.residual.residual_and_jacobian)(theta)
    r_ref, J_ref = jax.jit(lambda t: (problem.residual(t), jax.jacfwd(problem.residual)(t)))(theta)
    np.testing.assert_allclose(np.asarray(r), np.asarray(r_ref), rtol=1e-13, atol=1e-14)
    np.testing.assert_allclose(np.asarray(J), np.asarray(J_ref), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("solver", ["auto", "svd", "gramian", "kernel", "cg"])
def test_every_solver_form_gives_the_minimum_norm_solution_of_a_wide_linear_fit(solver):
    A = jnp.asarray(_matrix_with_singular_values(4, 9, [2.0, 1.0, 0.5, 0.25], seed=5))
    b = jnp.arange(1.0, 5.0)
    # One cutoff above the rounding floor of eigh (~n * eps relative on J^T J): the default's
    # second cutoff, 1e-8, sits below it, so the Gramian form may add rounding-noise directions
    # (which the line search only takes when they lower the loss) and lose the minimum norm.
    res = sb.least_squares(lambda t: A @ t - b, jnp.zeros(9), "natural-gradient",
                           solver=solver, rcond=1e-6, progress=False)
    np.testing.assert_allclose(np.asarray(res.theta), np.linalg.pinv(np.asarray(A)) @ b,
                               rtol=1e-9, atol=1e-12)
    assert res.success and res.loss < 1e-20


def test_natural_gradient_trains_a_small_pinn_far_below_adam_levels():
    fm, problem = _tiny_pinn()
    res = sb.least_squares(problem.residual, fm.theta0, "natural-gradient", max_steps=60,
                           tol=1e-14, progress=False, throw=False)
    x = jnp.linspace(0.0, 1.0, 101)[:, None]
    err = sb.error_report(fm, res.theta, x, lambda x: jnp.sin(jnp.pi * x[:, 0])).rel_l2
    assert err < 1e-5, err
    assert np.all(np.diff(res.history) <= 0)  # the line search only accepts decreases


def test_damping_and_unknown_options_are_refused_with_the_accepted_list():
    with pytest.raises(TypeError, match="(?s)`damping=`.*`rcond`, `solver`"):
        sb.least_squares(lambda t: t - 1.0, jnp.zeros(2), "gauss-newton", damping=1e-3,
                         progress=False)
    with pytest.raises(ValueError, match="solver"):
        sb.least_squares(lambda t: t - 1.0, jnp.zeros(2), "natural-gradient", solver="qr",
                         progress=False)


def _rank_two_fit():
    rng = np.random.default_rng(0)
    J = rng.standard_normal((6, 2)) @ rng.standard_normal((2, 4))  # rank 2, sigma_3 ~ 1e-16
    b = rng.standard_normal(6)
    return J, b, np.linalg.lstsq(J, b, rcond=None)[0]


def test_cgls_at_a_rank_deficient_solution_takes_no_step():
    # There `J^T r` is rounding noise: the relative rule asked for 10 more digits of it, and
    # CGLS walked along the noise-level singular directions (|d| 1e-2 after 50 iterations,
    # 1e12 within a run, accepted by the line search as a rounding-level "decrease").
    J, b, solution = _rank_two_fit()
    f = lambda t: jnp.asarray(J) @ t - jnp.asarray(b)
    _, d, _ = jax.jit(lambda t: cgls_step(f, t, 200, 1e-10, 1e-8))(jnp.asarray(solution))
    assert np.max(np.abs(np.asarray(d))) < 1e-14, d
    res = sb.least_squares(f, jnp.zeros(4), "gauss-newton", solver="cg", max_steps=5,
                           progress=False)  # fmt: skip
    np.testing.assert_allclose(np.asarray(res.theta), solution, rtol=1e-12, atol=1e-15)


def test_cgls_in_float32_stops_at_its_rounding_floor():
    # `cg_tol=1e-10` lies below float32's resolution: past convergence the recurrence
    # drifted to d ~ 1e18, and the run stalled at `theta0` without moving.
    def residual(t, x):
        x = x.astype(t.dtype)  # float64 data, float32 parameters
        return t[0] * jnp.exp(t[1] * x) - 2 * jnp.exp(-x)

    res = sb.least_squares(residual, jnp.array([1.0, 0.0], jnp.float32), "gauss-newton",
                           solver="cg", args=(jnp.linspace(0.0, 1.0, 16),), progress=False)
    assert res.success and res.theta.dtype == jnp.float32
    np.testing.assert_allclose(np.asarray(res.theta), [2.0, -1.0], rtol=1e-5)
