"""`sb.least_squares`: dense Gauss-Newton accuracy, Jacobian modes, the custom_vjp fallback."""

import diffrax
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import sciml_bridge as sb


_X = jnp.linspace(0.0, 1.0, 16)


def exp_fit(theta, x):
    return theta[0] * jnp.exp(theta[1] * x) - 2.0 * jnp.exp(-x)


def linear(theta, A, b):
    return A @ theta - b


@pytest.mark.parametrize("jac", ["auto", "fwd", "bwd"])
def test_gauss_newton_recovers_exact_parameters(jac):
    res = sb.least_squares(exp_fit, jnp.array([1.0, 0.0]), args=(_X,), jac=jac, progress=False)
    np.testing.assert_allclose(np.asarray(res.theta), [2.0, -1.0], rtol=1e-10)
    assert res.success and res.loss < 1e-20
    assert len(res.history) == res.steps + 1 and np.all(np.diff(res.history) <= 0)


def test_gauss_newton_matches_lstsq_on_linear_problem(getkey):
    A = jax.random.normal(getkey(), (30, 5))
    b = jax.random.normal(getkey(), (30,))
    res = sb.least_squares(linear, jnp.zeros(5), args=(A, b), progress=False)
    expected = np.linalg.lstsq(np.asarray(A), np.asarray(b), rcond=None)[0]
    np.testing.assert_allclose(np.asarray(res.theta), expected, rtol=1e-9, atol=1e-12)


def test_wide_problem_uses_reverse_mode_and_converges():
    # 8 parameters, 3 residuals: an over-parameterised fit where plain Gauss-Newton diverges
    # (PITFALLS.md); the damping keeps the normal equations solvable.
    A = jnp.arange(24.0).reshape(3, 8) / 10.0
    res = sb.least_squares(linear, jnp.zeros(8), args=(A, jnp.ones(3)), progress=False)
    assert res.success and res.loss < 1e-16


@jax.custom_vjp
def _square(x):
    return x**2


_square.defvjp(lambda x: (x**2, x), lambda x, g: (2 * x * g,))


def custom_vjp_residual(theta, x):
    return _square(theta[0]) * x + theta[1] - (4.0 * x + 1.0)


@pytest.mark.parametrize("method", ["lm", "gauss-newton", "scipy:trf"])
def test_auto_jac_falls_back_to_reverse_mode_through_custom_vjp(method):
    res = sb.least_squares(custom_vjp_residual, jnp.array([1.0, 0.0]), method, args=(_X,),
                           progress=False)  # fmt: skip
    assert res.success and res.loss < 1e-18
    np.testing.assert_allclose(abs(float(res.theta[0])), 2.0, rtol=1e-8)


def test_forced_forward_mode_through_custom_vjp_is_jax_error():
    with pytest.raises(TypeError, match="custom_vjp"):
        sb.least_squares(custom_vjp_residual, jnp.array([1.0, 0.0]), "lm", args=(_X,),
                         jac="fwd", progress=False)  # fmt: skip


@pytest.mark.slow
def test_lm_through_default_adjoint_diffrax_solve():
    # The neural-ODE use: a Diffrax solve with RecursiveCheckpointAdjoint inside the residual.
    ts = jnp.linspace(0.0, 1.0, 5)

    def solve(theta):
        term = diffrax.ODETerm(lambda t, y, k: -k * y)
        y0 = jnp.ones(1, dtype=theta.dtype)
        saveat = diffrax.SaveAt(ts=ts)
        sol = diffrax.diffeqsolve(term, diffrax.Euler(), 0.0, 1.0, 0.125, y0, args=theta[0],
                                  saveat=saveat, max_steps=8)  # fmt: skip
        return sol.ys[:, 0]

    data = solve(jnp.array([1.5, 0.0]))
    res = sb.least_squares(lambda th: solve(th) - data, jnp.array([1.0, 0.0]), "lm",
                           progress=False, max_steps=50)  # fmt: skip
    assert res.success
    np.testing.assert_allclose(float(res.theta[0]), 1.5, rtol=1e-8)


def test_scipy_least_squares_methods_agree():
    for method in ("scipy:trf", "scipy:lm", "scipy:dogbox"):
        res = sb.least_squares(exp_fit, jnp.array([1.0, 0.0]), method, args=(_X,), progress=False)
        np.testing.assert_allclose(np.asarray(res.theta), [2.0, -1.0], rtol=1e-7)
        assert "scipy" in res.stats


def test_bad_method_and_jac():
    with pytest.raises(ValueError, match="gauss-newton"):
        sb.least_squares(exp_fit, jnp.zeros(2), "nope", args=(_X,), progress=False)
    with pytest.raises(ValueError, match='"auto", "fwd" or "bwd"'):
        sb.least_squares(exp_fit, jnp.zeros(2), args=(_X,), jac="forward", progress=False)
