"""`sb.scipy_objective`: float64 NumPy callables, one compiled function each, any SciPy method."""

import jax.numpy as jnp
import numpy as np
import pytest
import scipy.optimize
from helpers import TraceCounter

import sciml_bridge as sb


_H = jnp.array([[4.0, 1.0, 0.0], [1.0, 3.0, 0.5], [0.0, 0.5, 2.0]])
_G = jnp.array([1.0, -2.0, 0.5])


def quad(theta, H, g):
    return 0.5 * theta @ H @ theta - g @ theta


def test_values_match_closed_form():
    obj = sb.scipy_objective(quad, _H, _G)
    x = np.array([0.3, -0.2, 1.1])
    p = np.array([1.0, 2.0, -1.0])
    H, g = np.asarray(_H), np.asarray(_G)
    f, grad = obj.fun_and_jac(x)
    assert isinstance(f, float) and f == pytest.approx(0.5 * x @ H @ x - g @ x, rel=1e-14)
    assert grad.dtype == np.float64 and np.allclose(grad, H @ x - g, rtol=1e-14)
    assert np.allclose(obj.jac(x), grad) and obj.fun(x) == f
    assert obj.hessp(x, p).dtype == np.float64 and np.allclose(obj.hessp(x, p), H @ p)
    assert np.allclose(obj.hess(x), H)


def test_one_compiled_function_across_scipy_methods():
    counter = TraceCounter(quad)
    obj = sb.scipy_objective(counter, _H, _G)
    expected = np.linalg.solve(np.asarray(_H), np.asarray(_G))
    for method, extra in [("L-BFGS-B", {}), ("BFGS", {}), ("trust-ncg", {"hessp": obj.hessp})]:
        res = scipy.optimize.minimize(obj.fun_and_jac, np.zeros(3), jac=True, method=method,
                                      tol=1e-12, **extra)  # fmt: skip
        assert res.success and np.allclose(res.x, expected, rtol=1e-7, atol=1e-9)
    # One trace for `value_and_grad`, one for the Hessian-vector product; none per call.
    assert counter.count == 2


def test_jac_returns_a_copy():
    obj = sb.scipy_objective(quad, _H, _G)
    g = obj.jac(np.zeros(3))
    g[:] = 123.0
    assert not np.allclose(obj.jac(np.zeros(3)), 123.0)


def test_float32_dtype_casts_at_the_boundary():
    seen = []

    def loss(theta):
        seen.append(theta.dtype)
        return jnp.sum(theta**2)

    obj = sb.scipy_objective(loss, dtype=jnp.float32)
    f, g = obj.fun_and_jac(np.ones(2))
    assert seen == [jnp.float32] and g.dtype == np.float64 and f == 2.0


def test_minimize_trust_region_method_gets_hessp():
    loss = lambda th: quad(th, _H, _G)
    res = sb.minimize(loss, jnp.zeros(3), "scipy:trust-krylov", progress=False)
    expected = np.linalg.solve(np.asarray(_H), np.asarray(_G))
    np.testing.assert_allclose(np.asarray(res.theta), expected, rtol=1e-8)
    assert res.stats["scipy"].nhev > 0 and res.theta.dtype == jnp.float64


def test_derivative_free_method_gets_no_gradient():
    loss = lambda th: jnp.sum((th - 1.0) ** 2)
    res = sb.minimize(loss, jnp.zeros(2), "scipy:Nelder-Mead", tol=1e-10, progress=False)
    np.testing.assert_allclose(np.asarray(res.theta), [1.0, 1.0], rtol=1e-6)


def test_max_steps_reached_is_reported():
    loss = lambda th: jnp.sum(100 * (th[1:] - th[:-1] ** 2) ** 2 + (1 - th[:-1]) ** 2)
    res = sb.minimize(loss, jnp.array([-1.2, 1.0]), "scipy:BFGS", max_steps=3, throw=False,
                      progress=False)  # fmt: skip
    assert res.result is sb.RESULTS.max_steps_reached and not res.success
    # Running out of budget is an outcome, not a failure: it never raises.
    again = sb.minimize(loss, jnp.array([-1.2, 1.0]), "scipy:BFGS", max_steps=3, progress=False)
    assert "max_steps" in again.message and not again.success




def _recorded(seen):
    def loss(theta, H, g, idx):
        seen.append((theta.dtype, idx.dtype))
        return quad(theta[idx], H.astype(theta.dtype), g.astype(theta.dtype))

    return loss


def test_both_scipy_routes_follow_one_float_rule():
    # A float32 start and float32 data: both routes hand the loss float64 `theta` (SciPy's
    # vector; x64 is on), integer inputs unchanged, and take the same iterates.
    H32, g32, idx = _H.astype(jnp.float32), _G.astype(jnp.float32), jnp.arange(3)
    x0 = jnp.array([1.0, -1.0, 0.5], jnp.float32)
    seen = []
    res = sb.minimize(_recorded(seen), x0, "scipy:L-BFGS-B", args=(H32, g32, idx), tol=1e-12,
                      progress=False)  # fmt: skip
    obj = sb.scipy_objective(_recorded(seen), H32, g32, idx)
    ref = scipy.optimize.minimize(obj.fun_and_jac, np.asarray(x0), jac=True, method="L-BFGS-B",
                                  tol=1e-12)  # fmt: skip
    assert set(seen) == {(np.dtype("float64"), idx.dtype)}
    assert res.theta.dtype == jnp.float32 and res.stats["scipy"].nit == ref.nit
    # Two compiled programs (ours wraps the loss): the same iterations up to rounding.
    expected = np.linalg.solve(np.asarray(_H), np.asarray(_G))
    np.testing.assert_allclose(res.stats["scipy"].x, ref.x, rtol=1e-7)
    np.testing.assert_allclose(ref.x, expected, rtol=1e-7)

