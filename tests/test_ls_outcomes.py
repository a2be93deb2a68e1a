"""`sb.least_squares`'s outcome is one rule for every fused method: "lm"/"dogleg" (Optimistix)
say "converged" only where "gauss-newton"'s stopping rule holds (`_ls_stationary.py`)."""

import jax
import jax.numpy as jnp
import numpy as np
import optimistix as optx
import pytest

import sciml_bridge as sb


def _nan_beyond_one(theta):
    # The minimum (theta[0] = 3) lies in a region where the residual is NaN (theta[0] >= 1),
    # unless theta[1] > 0.5: a member started there converges, the other must stop at 1.
    inside = (theta[0] < 1.0) | (theta[1] > 0.5)
    return jnp.where(inside, theta[:1] - 3.0, jnp.nan)


@pytest.mark.parametrize("method", ["lm", "dogleg", "gauss-newton"])
def test_a_run_stopped_at_the_edge_of_a_nan_region_is_a_stall_not_convergence(method):
    # "lm"/"dogleg": the trust region shrank at the edge until Optimistix's Cauchy criterion
    # (small changes in `theta` and in the residual) said "converged", gradient 2 there.
    res = sb.least_squares(_nan_beyond_one, jnp.array([[0.0, 0.0], [0.0, 1.0]]), method,
                           progress=False, throw=False)  # fmt: skip
    assert list(res.success) == [False, True]
    assert res.result[0] is sb.RESULTS.stalled and res.result[1] is sb.RESULTS.successful
    np.testing.assert_allclose(np.asarray(res.theta)[:, 0], [1.0, 3.0], rtol=1e-6)


def test_a_zero_jacobian_is_a_stationary_point_for_dogleg_too():
    # "dogleg" reported its singular linear solve as `solver_failed` where "lm" and
    # "gauss-newton" converge: the gradient is 0.
    res = sb.least_squares(lambda t: 0.0 * t + jnp.array([1.0, 2.0]), jnp.array([0.5, -0.5]),
                           "dogleg", progress=False)  # fmt: skip
    assert res.success and res.result is sb.RESULTS.successful and res.loss == 2.5
    np.testing.assert_array_equal(np.asarray(res.theta), [0.5, -0.5])


@pytest.mark.parametrize("solver, error, match", [
    (None, TypeError, "`solver` to be a string"),
    ("Kernel", ValueError, 'Did you mean "kernel"'),
])  # fmt: skip
def test_a_wrong_solver_is_named_before_the_half_precision_refusal(solver, error, match):
    # It got the bfloat16 message ("LAPACK has no bfloat16 kernels ... or `solver="cg"`").
    with pytest.raises(error, match=match):
        sb.least_squares(lambda t: t - 1.0, jnp.zeros(2, jnp.bfloat16), solver=solver,
                         progress=False)  # fmt: skip


def test_dogleg_fits_a_rank_deficient_linear_residual():
    # lineax's default solve (QR) assumed a full-rank `J`: the Gauss-Newton point went to
    # |theta| ~ 4.6e15, where rounding in the residual passed for a decrease (`res.loss`
    # 4.26, below the least-squares minimum 4.88; the loss at `res.theta` was 5.63).
    rng = np.random.default_rng(1)
    A = rng.standard_normal((20, 3)) @ rng.standard_normal((3, 6))
    b = rng.standard_normal(20)
    best = 0.5 * np.sum((A @ np.linalg.lstsq(A, b, rcond=None)[0] - b) ** 2)
    res = sb.least_squares(lambda t: jnp.asarray(A) @ t - jnp.asarray(b),
                           jnp.asarray(rng.standard_normal(6)), "dogleg", progress=False)
    theta = np.asarray(res.theta)
    assert res.success and np.max(np.abs(theta)) < 1e3
    np.testing.assert_allclose([res.loss, 0.5 * np.sum((A @ theta - b) ** 2)], best, rtol=1e-12)


def test_scipy_lm_refuses_fewer_residuals_than_parameters_up_front():
    # SciPy raised it from inside the run, reported as a solver failure ("try another method").
    with pytest.raises(ValueError, match=r'(?s)method="scipy:lm" with 1 residual.*"scipy:trf"'):
        sb.least_squares(lambda t: jnp.sum(t, keepdims=True) - 1.0, jnp.zeros(2), "scipy:lm",
                         progress=False)  # fmt: skip


@pytest.mark.parametrize("method", ["lm", "dogleg"])
def test_lm_and_dogleg_train_a_bfloat16_theta_with_x64_off(method):
    # They raised lineax's "Vector and operator structures do not match" / a `cond` type
    # mismatch, where the refusal of "gauss-newton" in bfloat16 points to them.
    with jax.enable_x64(False):
        res = sb.least_squares(lambda t: t - jnp.array([2.0, -1.0], jnp.bfloat16),
                               jnp.zeros(2, jnp.bfloat16), method, progress=False)
    assert res.success and res.theta.dtype == jnp.bfloat16
    assert res.theta.tolist() == [2.0, -1.0]


def test_an_optimistix_minimiser_object_minimises_the_sum_of_squares():
    # As `optx.least_squares` takes one; it raised "Pred must be a scalar" from inside BFGS.
    res = sb.least_squares(lambda t: t - jnp.array([2.0, -1.0]), jnp.zeros(2),
                           optx.BFGS(rtol=1e-10, atol=1e-10), progress=False)  # fmt: skip
    assert res.success
    np.testing.assert_allclose(np.asarray(res.theta), [2.0, -1.0], rtol=1e-10)



@pytest.mark.parametrize("method", ["lm", "dogleg"])
def test_an_exact_float32_fit_is_convergence_not_a_stall(method):
    # The residual left is rounding noise (~eps |y|), whose gradient stays above a small
    # absolute `tol`: the Gauss-Newton rule alone said "stalled" at the exact parameters. A
    # Gauss-Newton step below sqrt(eps) |theta| (MINPACK's xtol) is convergence.
    x = jnp.linspace(0.0, 2.0, 50, dtype=jnp.float32)
    y = 3000.0 * jnp.exp(-1.3 * x) + 500.0
    residual = lambda t: t[0] * jnp.exp(-t[1] * x) + t[2] - y
    res = sb.least_squares(residual, jnp.array([1000.0, 1.0, 0.0], jnp.float32), method,
                           progress=False, throw=False)  # fmt: skip
    assert res.success, res.message
    np.testing.assert_allclose(np.asarray(res.theta), [3000.0, 1.3, 500.0], rtol=1e-5)
