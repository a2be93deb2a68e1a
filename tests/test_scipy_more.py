"""SciPy routes: `res.loss` at the `res.theta` returned, one compile per residual, no complex
`x` dropped silently, and a callback that raises."""

import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import TraceCounter, assert_callback_error, raises_at, run_python

import sciml_bridge as sb
from sciml_bridge._solvers._methods import SCIPY_LEAST_SQUARES


def _ulps(reported: float, evaluated) -> None:
    """A loss the library evaluated, against the same loss compiled here: another program,
    so equal to a few units in the last place of its dtype, not bit for bit."""
    eps = float(jnp.finfo(jnp.asarray(evaluated).dtype).eps)
    assert reported == pytest.approx(float(evaluated), rel=4 * eps, abs=0.0)


# Not representable in float32 or bfloat16: SciPy's float64 minimum rounds away from it.
_TARGET = jnp.array([0.1, 1 / 3, 2 / 7], jnp.float64)


def _loss(theta):
    return jnp.sum((theta.astype(jnp.float64) - _TARGET) ** 2)


def _residual(theta):
    return theta.astype(jnp.float64) - _TARGET


def _rosen(theta):  # many steps for every method
    t = theta.astype(jnp.float64)
    return jnp.sum(100 * (t[1:] - t[:-1] ** 2) ** 2 + (1 - t[:-1]) ** 2)


def _rosen_residual(theta):
    t = theta.astype(jnp.float64)
    return jnp.concatenate([10 * (t[1:] - t[:-1] ** 2), 1 - t[:-1]])


def _calls():
    seen = []
    return seen, lambda step, theta, loss: seen.append((step, theta, loss)) and False


# --- 1. `res.loss` and the callback's loss are the loss at the theta returned ------------------


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16, jnp.float16])
@pytest.mark.parametrize("method", ["scipy:BFGS", "scipy:L-BFGS-B", "scipy:trust-ncg",
                                    "scipy:Nelder-Mead"])  # fmt: skip
def test_minimize_loss_is_the_loss_at_the_rounded_theta(method, dtype):
    # SciPy's float64 minimum reported 0.0 where `loss(res.theta)` was 2.6e-16 (float32).
    seen, callback = _calls()
    res = sb.minimize(_loss, jnp.zeros(3, dtype), method, max_steps=300, callback=callback,
                      throw=False, progress=False)  # fmt: skip
    assert res.theta.dtype == dtype and res.loss > 0.0
    assert res.loss == res.history[res.steps]
    _ulps(res.loss, jax.jit(_loss)(res.theta))
    assert res.history[-1] == res.loss and len(res.history) == res.steps + 1
    # Every pair the callback got is a point in `theta0`'s dtype and the loss there.
    assert [s for s, _, _ in seen] == list(range(1, len(seen) + 1))
    for step, theta, loss in seen:
        assert theta.dtype == dtype
        _ulps(loss, jax.jit(_loss)(theta))
        assert res.history[step] == loss


@pytest.mark.parametrize("method", SCIPY_LEAST_SQUARES)
@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_least_squares_loss_is_the_loss_at_the_rounded_theta(method, dtype):
    seen, callback = _calls()
    res = sb.least_squares(_residual, jnp.zeros(3, dtype), f"scipy:{method}", max_steps=50,
                           callback=callback, progress=False)  # fmt: skip
    half_ssq = jax.jit(lambda t: 0.5 * jnp.sum(_residual(t) ** 2))
    assert res.theta.dtype == dtype and res.loss > 0.0
    assert res.loss == res.history[-1]
    _ulps(res.loss, half_ssq(res.theta))
    for step, theta, loss in seen:
        assert theta.dtype == dtype and loss == res.history[step]
        _ulps(loss, half_ssq(theta))


def test_float64_theta0_is_not_evaluated_again():
    # Nothing rounds: the final loss is SciPy's own, and no float32 program is compiled.
    counter = TraceCounter(_loss)
    res = sb.minimize(counter, jnp.zeros(3), "scipy:BFGS", progress=False)
    assert res.loss == res.stats["scipy"].fun and counter.count == 1


def test_bfloat16_with_x64_off_reports_the_loss_at_its_theta():
    proc = run_python("""
        import jax, jax.numpy as jnp
        import sciml_bridge as sb
        assert not jax.config.read("jax_enable_x64")
        target = jnp.array([0.1, 1 / 3, 2 / 7], jnp.float32)
        loss = lambda t: jnp.sum((t.astype(jnp.float32) - target) ** 2)
        for method in ("scipy:BFGS", "scipy:L-BFGS-B"):
            res = sb.minimize(loss, jnp.zeros(3, jnp.bfloat16), method, progress=False)
            assert res.theta.dtype == jnp.bfloat16 and res.loss > 1e-7, res
            want = float(jax.jit(loss)(res.theta))  # another program: to a few ulps
            assert res.loss == res.history[-1] and abs(res.loss - want) <= 4 * 2**-23 * want
        print("ok")
    """, env={"JAX_ENABLE_X64": "0"})  # fmt: skip
    assert proc.returncode == 0 and "ok" in proc.stdout, proc.stderr[-3000:]


# --- 2. one compile per residual and shapes, for every call and every member ---------------


@pytest.mark.parametrize("method", SCIPY_LEAST_SQUARES)
def test_scipy_least_squares_compiles_once(method):
    # Each call built fresh `jax.jit` closures: the residual and its Jacobian were compiled
    # again on every call and for every ensemble member (12 compiles for 4 members with trf).
    x = jnp.linspace(0.0, 1.0, 16)

    def residual(theta, x, y):
        return theta[0] * jnp.exp(theta[1] * x) - y

    counter = TraceCounter(residual)
    kw = dict(args=(x, 2 * jnp.exp(-x)), max_steps=5, progress=False, throw=False)
    sb.least_squares(counter, jnp.array([1.0, 0.0]), f"scipy:{method}", **kw)
    traced = counter.count
    kw["args"] = (x + 0.1, 3 * jnp.exp(-x))  # new values, same shapes and dtypes
    sb.least_squares(counter, jnp.array([0.5, 0.1]), f"scipy:{method}", **kw)
    sb.least_squares(counter, jnp.array([[1.0, 0.0], [0.9, -0.5], [1.2, 0.3]]),
                     f"scipy:{method}", **kw)  # fmt: skip
    assert counter.count == traced


def test_float32_theta0_compiles_its_final_evaluation_once():
    counter = TraceCounter(_residual)
    sb.least_squares(counter, jnp.zeros(3, jnp.float32), "scipy:trf", progress=False)
    traced = counter.count
    sb.least_squares(counter, jnp.ones((2, 3), jnp.float32), "scipy:trf", progress=False)
    assert counter.count == traced


# --- 3. `sb.scipy_objective` refuses a complex `x` ---------------------------------------------


@pytest.mark.parametrize("call", ["fun_and_jac", "fun", "jac", "value", "hess"])
def test_scipy_objective_refuses_a_complex_x(call):
    # NumPy dropped the imaginary part: the loss of the real part came back, with only a
    # `ComplexWarning`.
    obj = sb.scipy_objective(lambda t: jnp.sum((t - 1.0) ** 2))
    z = np.array([1 + 1j, 2 + 0.5j])
    with pytest.raises(TypeError, match=rf"(?s)`sb.scipy_objective\(...\).{call}` expected a "
                                        r"real `x`.*complex128.*real view"):  # fmt: skip
        getattr(obj, call)(z)
    with pytest.raises(TypeError, match=r"expected a real `p`"):
        obj.hessp(np.ones(2), z)


@pytest.mark.parametrize("dtype", [jnp.complex128, jnp.complex64, jnp.int32])
def test_scipy_objective_refuses_a_dtype_that_is_not_real_floating(dtype):
    with pytest.raises(TypeError, match=r"(?s)expected `dtype` to be a real floating dtype.*"
                                        r"dtype=(complex|int).*dtype=None"):  # fmt: skip
        sb.scipy_objective(lambda z: jnp.sum(jnp.abs(z) ** 2), dtype=dtype)


# --- 4. a callback that raises --------------------------------------------------------------


_RUNS = [
    (sb.minimize, _rosen, "scipy:BFGS"),
    (sb.minimize, _rosen, "scipy:Nelder-Mead"),
    (sb.minimize, _rosen, "scipy:SLSQP"),
    (sb.minimize, _rosen, "scipy:trust-constr"),
    (sb.least_squares, _rosen_residual, "scipy:trf"),
    (sb.least_squares, _rosen_residual, "scipy:lm"),
]


@pytest.mark.parametrize(("throw", "dtype"), [(True, jnp.float64), (False, jnp.float32)])
@pytest.mark.parametrize(("verb", "fn", "method"), _RUNS)
def test_a_callback_that_raises_stops_the_run_and_keeps_it(verb, fn, method, throw, dtype):
    # The run was lost: the callback's error left SciPy (or, for a ValueError, became "SciPy
    # raised ValueError" under `throw=False`).
    seen, callback = raises_at(2)
    with pytest.raises(sb.OptimizationError) as info:
        verb(fn, jnp.array([-1.2, 1.0, -1.2], dtype), method, callback=callback, throw=throw,
             progress=False)  # fmt: skip
    res = assert_callback_error(info.value, seen, f"sb.{verb.__name__}", step=2)
    assert res.theta.dtype == seen[-1][1].dtype == dtype


def test_a_callback_that_raises_in_an_ensemble_stops_every_member():
    # As on the fused route: `err.result` holds every member, the one whose callback raised
    # failed where the callback was given its point, the others stopped as by Ctrl-C.
    seen, callback = raises_at(5, KeyError("member"))
    theta0 = jnp.array([[-1.2, 1.0, -1.2], [0.0, 1.0, -1.0], [2.0, 2.0, 2.0]], jnp.float32)
    with pytest.raises(sb.OptimizationError, match=r"^the callback raised KeyError: 'member'\. "
                                                   r"`sb.minimize` stopped member 1 at step 2,"
                       ) as info:  # fmt: skip
        sb.minimize(_rosen, theta0, "scipy:BFGS", max_steps=3, callback=callback, throw=False,
                    progress=False)  # fmt: skip
    err = info.value
    assert isinstance(err.__cause__, KeyError)
    res = err.result
    assert isinstance(res, sb.EnsembleSolution) and err.theta.shape == (3, 3)
    # Member 0 ran its 3 steps, member 1 reached its second: the callback's 5th call.
    assert [s for s, _, _ in seen] == [1, 2, 3, 1, 2] and res.steps.tolist() == [3, 2, 0]
    assert [m.result for m in res] == [sb.RESULTS.max_steps_reached, sb.RESULTS.solver_failed,
                                       sb.RESULTS.interrupted]  # fmt: skip
    assert res[1].message == str(err) and "not started" in res[2].message
    assert res[1].theta.dtype == jnp.float32 and np.array_equal(res[1].theta, seen[-1][1])
    assert res[1].loss == seen[-1][2]
    _ulps(res[1].loss, jax.jit(_rosen)(res[1].theta))
    assert np.array_equal(res[2].theta, theta0[2])
    _ulps(res[2].loss, _rosen(theta0[2]))


def test_keyboard_interrupt_in_the_callback_still_returns_the_partial_run():
    seen, callback = raises_at(2, KeyboardInterrupt())
    res = sb.minimize(_loss, jnp.array([1.0, 2.0, 3.0]), "scipy:BFGS", callback=callback,
                      throw=True, progress=False)  # fmt: skip
    assert res.result is sb.RESULTS.interrupted and res.steps == 2 and res.loss == seen[-1][2]


def test_a_loss_that_refuses_theta0s_dtype_keeps_scipys_value():
    # E.g. a float64 model under `precision="strict"` trained from a float32 `theta0`: the
    # loss only runs in SciPy's float64, so the final evaluation in float32 cannot replace
    # SciPy's value, and must not lose the run.
    def strict(theta):
        if theta.dtype != jnp.float64:
            raise TypeError("strict: float64 only")
        return _loss(theta)

    res = sb.minimize(strict, jnp.zeros(3, jnp.float32), "scipy:BFGS", progress=False)
    assert res.success and res.loss == res.stats["scipy"].fun == res.history[-1]


def test_trust_krylov_at_the_minimum_is_not_blamed_on_the_loss():
    # At the minimum (gradient ~0) trlib asks for the Hessian product with a NaN vector: that
    # was read as "the loss is not twice differentiable" and raised OptimizationError. It is
    # the method's breakdown: a stall at its last good point, returned (not raised). Some runs
    # end first with SciPy's "A bad approximation caused failure to predict improvement"
    # (also raised as a failure): the same stall.
    a, b = jnp.array([[3.0, 1.0], [1.0, 2.0]]), jnp.array([1.0, -1.0])
    loss = lambda t: 0.5 * t @ a @ t - b @ t + 0.1 * jnp.sum(t**4)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # trlib's own overflow at the minimum
        res = sb.minimize(loss, jnp.zeros(2), "scipy:trust-krylov", tol=1e-10, max_steps=30,
                          progress=False)  # fmt: skip
    assert res.result == sb.RESULTS.stalled and not res.success
    best = sb.minimize(loss, jnp.zeros(2), "scipy:trust-exact", tol=1e-12, progress=False)
    np.testing.assert_allclose(res.theta, best.theta, rtol=1e-7)
