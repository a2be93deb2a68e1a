"""SciPy routes: what SciPy's methods would change or lose on their own (`_scipy_guards.py`):
32-bit budgets, COBYLA's first simplex and radii, NumPy warnings inside SciPy, errors raised
inside the loss, and the float rule's dtype."""

import logging

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.optimize
from helpers import assert_ulp_close

import sciml_bridge as sb
from sciml_bridge._solvers._scipy_steps import outcome


def _quartic(theta):
    return jnp.sum((theta - 1.0) ** 2) + 0.1 * jnp.sum(theta**4)


@pytest.mark.parametrize("verb, method", [("minimize", "scipy:SLSQP"), ("minimize", "scipy:TNC"),
                                          ("least_squares", "scipy:lm")])  # fmt: skip
def test_a_budget_beyond_32_bits_runs_as_a_large_one(verb, method):
    # SLSQP wrapped 2**31 to a negative count: "Iteration limit reached" at `theta0`, 0 steps.
    # TNC and MINPACK raised a bare `OverflowError`.
    fn, call = (_quartic, sb.minimize) if verb == "minimize" else (lambda t: t - 1.0,
                                                                   sb.least_squares)  # fmt: skip
    big = call(fn, jnp.zeros(2), method, max_steps=2**31, progress=False)
    small = call(fn, jnp.zeros(2), method, max_steps=1000, progress=False)
    assert big.success and big.steps == small.steps > 0
    np.testing.assert_array_equal(big.theta, small.theta)


def test_cobyla_refuses_a_budget_below_its_first_simplex():
    # It warned "Invalid MAXFUN" and spent n + 2 = 4 evaluations for `max_steps=3`.
    with pytest.raises(ValueError, match=r"(?s)n \+ 2 = 4.*`max_steps=4` or more"):
        sb.minimize(_quartic, jnp.zeros(2), "scipy:COBYLA", max_steps=3, progress=False)
    res = sb.minimize(_quartic, jnp.zeros(2), "scipy:COBYLA", max_steps=4, progress=False,
                      throw=False)  # fmt: skip
    assert res.stats["scipy"].nfev == 4 and res.result is sb.RESULTS.max_steps_reached


@pytest.mark.parametrize("method, key", [("scipy:COBYLA", "rhobeg"),
                                         ("scipy:COBYQA", "initial_tr_radius")])  # fmt: skip
def test_a_final_radius_above_the_initial_one_is_our_error(method, key):
    # COBYLA replaced `tol=5` by 1e-6 after a warning; COBYQA raised a bare ValueError.
    with pytest.raises(ValueError, match=rf"(?s)tol=5.*{key}=1\.0"):
        sb.minimize(_quartic, jnp.zeros(2), method, tol=5.0, progress=False)
    res = sb.minimize(_quartic, jnp.zeros(2), method, tol=5.0, progress=False, **{key: 10.0})
    assert res.success


def test_numpy_warnings_inside_scipy_do_not_lose_the_run(monkeypatch):
    # trlib warned "overflow encountered in dot" at trust-krylov's rounding floor; under `-W
    # error` (as here) that warning escaped `sb.minimize` as an exception: the run was lost.
    # SciPy's own numerics warning, made to happen on every machine:
    minimize = scipy.optimize.minimize

    def overflowing(*args, **kwargs):
        np.float64(1e308) * np.float64(10.0)  # "overflow encountered in scalar multiply"
        return minimize(*args, **kwargs)

    monkeypatch.setattr(scipy.optimize, "minimize", overflowing)
    seen, outer = [], np.geterr()
    res = sb.minimize(lambda t: jnp.sum((t - 1.0) ** 2), jnp.zeros(3), "scipy:BFGS",
                      callback=lambda *a: seen.append(np.geterr()), progress=False)  # fmt: skip
    assert res.success and np.allclose(res.theta, 1.0)
    assert seen and all(s == outer for s in seen)  # the callback runs under the caller's


def test_an_error_if_inside_the_loss_is_not_logged_as_a_crash(caplog):
    # JAX logged "jax.pure_callback failed" with a traceback although the run returned.
    loss = lambda t: eqx.error_if(jnp.sum((t - 3.0) ** 2), t[0] > 1.0, "went too far")
    with caplog.at_level(logging.ERROR):
        res = sb.minimize(loss, jnp.zeros(2), "scipy:BFGS", throw=False, progress=False)
    assert res.result is sb.RESULTS.solver_failed and "went too far" in res.message
    assert not [r for r in caplog.records if "pure_callback" in r.getMessage()]


def _raises_past_half(theta):
    def host(x):
        if x[0] > 0.5:
            raise RuntimeError(f"boom at {x[0]}")
        return np.float64(0.0)

    out = jax.ShapeDtypeStruct((), jnp.float64)
    return jnp.sum((theta - 1.0) ** 2) + jax.pure_callback(host, out, theta)


def test_an_exception_raised_inside_the_loss_is_named_in_the_message():
    # The message read "SciPy raised ValueError: INTERNAL: CpuCallback error calling callback:
    # Traceback (most recent call last):", naming neither the loss nor its error.
    res = sb.minimize(_raises_past_half, jnp.zeros(2), "scipy:Nelder-Mead", throw=False,
                      progress=False)  # fmt: skip
    assert res.result is sb.RESULTS.solver_failed
    assert "the loss raised RuntimeError: boom at" in res.message
    assert res.theta[0] <= 0.5
    assert_ulp_close(res.loss, jax.jit(_raises_past_half)(res.theta))


def test_tncs_failed_line_search_is_a_stall():
    # TNC's "Linear search failed" (status 4, e.g. `jnp.abs` at its kink) was a solver failure,
    # raised under `throw=True`, where L-BFGS-B's "ABNORMAL" line search is a stall.
    tnc = scipy.optimize.OptimizeResult(success=False, status=4, message="Linear search failed")
    assert outcome(tnc) is sb.RESULTS.stalled


_X32 = jnp.linspace(-1.0, 1.0, 8, dtype=jnp.float32)


@pytest.mark.parametrize("verb, fn", [
    (sb.minimize, lambda t: jnp.mean((t[0] * _X32 + t[1] - _X32) ** 2)),
    (sb.least_squares, lambda t: t[0] * _X32 + t[1] - _X32),
])  # fmt: skip
def test_a_loss_that_runs_only_at_theta0s_dtype_says_why_theta_is_float64(verb, fn):
    # Strict promotion (as here): JAX's bare TypePromotionError, a `ValueError`, escaped.
    with pytest.raises(TypeError, match=r"(?s)in float64 on SciPy routes.*x\.astype\(theta\.dtype\)"
                       ) as info:  # fmt: skip
        verb(fn, jnp.zeros(2, jnp.float32), "scipy:trf" if verb is sb.least_squares
             else "scipy:BFGS", progress=False)  # fmt: skip
    assert type(info.value.__cause__).__name__ == "TypePromotionError"


def test_a_loss_jax_cannot_differentiate_is_not_blamed_on_the_dtype():
    # The float32 retry computes what the failed evaluation did (the gradient for BFGS).
    def loss(t):
        out = jax.ShapeDtypeStruct((), t.dtype)
        host = jax.pure_callback(lambda x: np.zeros((), x.dtype), out, t)
        return jnp.sum((t - 1.0) ** 2) + host

    # JAX's refusal in our words (`_run_gradient.py`), naming the methods that run it.
    with pytest.raises(TypeError, match="(?s)cannot differentiate.*scipy:Nelder-Mead") as info:
        sb.minimize(loss, jnp.zeros(2, jnp.float32), "scipy:BFGS", progress=False)
    assert "float32" not in str(info.value) and "float64" not in str(info.value)
    assert "Pure callbacks do not support JVP" in str(info.value.__cause__)


@pytest.mark.parametrize("verb, method", [("minimize", "scipy:L-BFGS-B"),
                                          ("minimize", "scipy:Nelder-Mead"),
                                          ("least_squares", "scipy:trf")])  # fmt: skip
def test_a_converged_message_names_the_rule_and_a_callback_stop_its_step(verb, method):
    # The message was "`sb.minimize`: converged": no stopping rule, unlike every other method.
    fn, call = (_quartic, sb.minimize) if verb == "minimize" else (lambda t: t - 1.0,
                                                                   sb.least_squares)  # fmt: skip
    res = call(fn, jnp.zeros(2), method, progress=False)
    assert res.success and f"converged after {res.steps} steps" in res.message
    assert f"(SciPy: {res.stats['scipy'].message})" in res.message
    res = call(fn, jnp.zeros(2), method, callback=lambda k, t, lo: k == 1, progress=False)
    assert res.success and res.steps == 1
    assert res.message.endswith("stopped by `callback` after 1 steps")
