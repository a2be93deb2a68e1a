"""`sb.scipy_objective`: float64 NumPy callables, one compiled function each, any SciPy method."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.optimize
from helpers import TraceCounter

import sciml_bridge as sb
from sciml_bridge._solvers._methods import SCIPY_LEAST_SQUARES, SCIPY_MINIMIZE


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
    assert obj.value(x) == f and obj.value(p) == pytest.approx(0.5 * p @ H @ p - g @ p)


def test_value_is_the_loss_alone():
    # No gradient is traced or computed: the loss is traced once, for the forward pass only.
    counter = TraceCounter(quad)
    obj = sb.scipy_objective(counter, _H, _G)
    assert obj.value(np.ones(3)) == pytest.approx(float(quad(jnp.ones(3), _H, _G)), rel=1e-15)
    assert obj.value(np.zeros(3)) == 0.0 and counter.count == 1


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
    # vector; x64 is on), integer inputs unchanged, and take the same iterates. `res.loss` is
    # then evaluated once more, at `res.theta`, in float32: the loss the user gets there.
    H32, g32, idx = _H.astype(jnp.float32), _G.astype(jnp.float32), jnp.arange(3)
    x0 = jnp.array([1.0, -1.0, 0.5], jnp.float32)
    seen = []
    res = sb.minimize(_recorded(seen), x0, "scipy:L-BFGS-B", args=(H32, g32, idx), tol=1e-12,
                      progress=False)  # fmt: skip
    assert seen[-1] == (np.dtype("float32"), idx.dtype)
    assert set(seen[:-1]) == {(np.dtype("float64"), idx.dtype)}
    want = float(jax.jit(_recorded([]))(res.theta, H32, g32, idx))  # another program
    assert res.loss == pytest.approx(want, rel=4 * 2**-23, abs=0.0)
    obj = sb.scipy_objective(_recorded(seen), H32, g32, idx)
    ref = scipy.optimize.minimize(obj.fun_and_jac, np.asarray(x0), jac=True, method="L-BFGS-B",
                                  tol=1e-12)  # fmt: skip
    assert res.theta.dtype == jnp.float32 and res.stats["scipy"].nit == ref.nit
    # Two compiled programs (ours wraps the loss): the same iterations up to rounding.
    expected = np.linalg.solve(np.asarray(_H), np.asarray(_G))
    np.testing.assert_allclose(res.stats["scipy"].x, ref.x, rtol=1e-7)
    np.testing.assert_allclose(ref.x, expected, rtol=1e-7)



def _rosen(t):
    return jnp.sum(100 * (t[1:] - t[:-1] ** 2) ** 2 + (1 - t[:-1]) ** 2)


_X0 = np.array([-1.2, 1.0, -1.2, 1.0])
_SECOND = {"Newton-CG": "hessp", "trust-ncg": "hessp", "trust-krylov": "hessp",
           "trust-constr": "hessp", "dogleg": "hess", "trust-exact": "hess"}  # fmt: skip
_FREE = {"Nelder-Mead", "Powell", "COBYLA", "COBYQA"}


def _direct_minimize(method, max_steps):
    """`scipy.optimize.minimize` itself, with SciPy's iterates recorded here: SciPy's outcome,
    the losses at its iterates and its step count by our rule (one per iterate, one more when
    its final `x` is not the last iterate). An iterate is what its callback reports, but for
    SLSQP, whose callback reports a trial point: there, a point where it evaluates the
    gradient. The budget is `max_steps` iterations; Nelder-Mead and trust-constr count one
    before any step (the initial simplex, the report of `x0`)."""
    obj = sb.scipy_objective(_rosen)
    seen = [_X0]

    def jac(x):  # SLSQP's iterates
        if method == "SLSQP" and not np.array_equal(x, seen[-1]):
            seen.append(np.array(x))
        return obj.jac(x)

    kw = {} if method in _FREE else {"jac": jac}
    if method in _SECOND:
        kw[_SECOND[method]] = getattr(obj, _SECOND[method])
    if method != "SLSQP":
        kw["callback"] = lambda xk, *_: seen.append(np.array(xk))
    extra = method in ("Nelder-Mead", "trust-constr")
    budget = {{"TNC": "maxfun", "COBYQA": "maxfev"}.get(method, "maxiter"): max_steps + extra}
    ref = scipy.optimize.minimize(obj.fun, _X0, method=method, tol=1e-12, options=budget, **kw)
    if method == "trust-constr":  # its first call reports `x0`, before any iteration
        del seen[1]
    if not np.array_equal(ref.x, seen[-1]):
        seen.append(ref.x)
    return ref, [obj.fun(x) for x in seen]


@pytest.mark.parametrize("method", SCIPY_MINIMIZE)
def test_every_scipy_method_budget_returns_with_honest_steps(method):
    # Budget used up returns (never raises, even with `throw=True`) whatever SciPy's budget is
    # (TNC's `maxfun`, COBYLA's evaluations), and `steps`/`history` count SciPy's iterations
    # (COBYQA's evaluations: it calls back once per evaluation).
    ref, losses = _direct_minimize(method, 6)  # COBYLA needs 6 evaluations to start (n + 2)
    res = sb.minimize(_rosen, jnp.asarray(_X0), f"scipy:{method}", tol=1e-12, max_steps=6,
                      progress=False)  # fmt: skip
    assert not ref.success and res.result is sb.RESULTS.max_steps_reached, res.message
    np.testing.assert_allclose(np.asarray(res.theta), ref.x, rtol=1e-10)
    assert len(res.history) == res.steps + 1 and res.history[-1] == res.loss
    np.testing.assert_allclose(res.history, losses, rtol=1e-10)
    # Every budget of iterations is spent in full (Nelder-Mead and trust-constr took 5 of 6);
    # TNC's and COBYLA's budgets are evaluations, so fewer steps.
    assert res.steps == 6 if method not in ("TNC", "COBYLA") else res.steps < 6


@pytest.mark.parametrize("max_steps", [1, 2, 20])
def test_slsqp_counts_accepted_iterates_not_trial_points(max_steps):
    # SLSQP calls back when its iteration counter moves: at the first trial point of the
    # line search. Recorded as iterates, those made `steps == max_steps + 1` and put trial
    # losses (1.6e2 against 2.0 here) into `history`. Unconstrained, SLSQP's merit function is
    # the loss, so the accepted iterates never go up.
    loss = lambda t: jnp.sum((t - 1.0) ** 4)
    seen = []
    callback = lambda step, theta, value: seen.append((step, float(loss(theta)), value))
    res = sb.minimize(loss, jnp.zeros(2), "scipy:SLSQP", max_steps=max_steps, tol=1e-14,
                      callback=callback, progress=False)  # fmt: skip
    assert res.steps == max_steps == res.stats["scipy"].nit
    assert len(res.history) == res.steps + 1 and res.history[-1] == res.loss
    assert np.all(np.diff(res.history) < 0)
    assert [s for s, _, _ in seen] == list(range(1, max_steps + 1))
    assert [v for _, v, _ in seen] == [v for _, _, v in seen] == list(res.history[1:])


@pytest.mark.parametrize("method", SCIPY_LEAST_SQUARES)
def test_scipy_least_squares_steps_count_iterations(method):
    # `lm` (MINPACK) calls back nothing: its iterations are its Jacobian evaluations.
    x = jnp.linspace(0, 1, 16)
    residual = lambda th: th[0] * jnp.exp(th[1] * x) - 2 * jnp.exp(-x)
    r, j = jax.jit(residual), jax.jit(jax.jacfwd(residual))
    seen = [np.array([1.0, 0.0])]
    kw = {} if method == "lm" else {"callback": lambda intermediate_result: seen.append(
        np.array(intermediate_result.x))}  # fmt: skip

    def jac(th):
        if method == "lm":
            seen.append(np.array(th))
        return np.asarray(j(th))

    ref = scipy.optimize.least_squares(lambda th: np.asarray(r(th)), seen[0], jac=jac,
                                       method=method, **kw)  # fmt: skip
    steps = len(seen) - (2 if method == "lm" else 1) + (not np.array_equal(ref.x, seen[-1]))
    res = sb.least_squares(residual, jnp.array([1.0, 0.0]), f"scipy:{method}", progress=False)
    assert res.success and res.steps == steps and len(res.history) == steps + 1
    assert res.steps == ref.njev or method != "lm"
    np.testing.assert_allclose(np.asarray(res.theta), ref.x, rtol=1e-10)
    assert res.history[-1] == res.loss == pytest.approx(ref.cost, rel=1e-12)


@pytest.mark.parametrize(("method", "loss"), [
    ("CG", lambda t: jnp.sum((t - 1.0) ** 2) + 1e3),  # at its rounding floor at once
    ("BFGS", lambda t: jnp.sum(jnp.abs(t - 1.0))),  # a kink: no line search succeeds
])  # fmt: skip
def test_scipy_precision_loss_is_a_stall_not_a_failure(method, loss):
    obj = sb.scipy_objective(loss)
    ref = scipy.optimize.minimize(obj.fun_and_jac, np.zeros(3), jac=True, method=method,
                                  tol=1e-14)  # fmt: skip
    assert ref.status == 2 and "precision loss" in ref.message
    res = sb.minimize(loss, jnp.zeros(3), f"scipy:{method}", tol=1e-14, progress=False)
    assert res.result is sb.RESULTS.stalled and not res.success and "stopped early" in res.message
    np.testing.assert_allclose(np.asarray(res.theta), ref.x, rtol=1e-12)
    assert res.loss == ref.fun


def test_scipy_lm_keeps_the_best_finite_point_evaluated():
    # NaN in a band the iterates cross: MINPACK's second evaluation is already finite and
    # better than `theta0`; its third is NaN. `lm` reports no iterates, yet nothing is lost.
    x = jnp.linspace(0, 1, 16)
    band = lambda th: (th[0] > 1.99) & (th[0] < 1.9995)
    residual = lambda th: jnp.where(band(th), jnp.nan, th[0] * jnp.exp(th[1] * x) - 2 * jnp.exp(-x))
    seen = []

    def fun(th):
        out = np.asarray(residual(jnp.asarray(th)))
        if not np.all(np.isfinite(out)):
            raise FloatingPointError
        seen.append((0.5 * float(out @ out), np.array(th)))
        return out

    with pytest.raises(FloatingPointError):
        scipy.optimize.least_squares(fun, np.array([1.0, 0.0]), method="lm",
                                     jac=lambda th: np.asarray(jax.jacfwd(residual)(th)))
    best_loss, best_x = min(seen, key=lambda s: s[0])
    res = sb.least_squares(residual, jnp.array([1.0, 0.0]), "scipy:lm", throw=False,
                           progress=False)  # fmt: skip
    assert res.result is sb.RESULTS.nonfinite and best_loss < seen[0][0]
    assert res.loss == pytest.approx(best_loss, rel=1e-12) and res.history[-1] == res.loss
    np.testing.assert_allclose(np.asarray(res.theta), best_x, rtol=1e-12)


@pytest.mark.parametrize("method", ["trust-ncg", "trust-exact"])
def test_a_non_finite_hessian_is_a_solver_failure_not_a_raw_error(method):
    # |t|^1.5 has a finite loss and gradient at 0 but an infinite second derivative: SciPy's
    # trust-ncg raised a bare ValueError ("array must not contain infs or NaNs") and the run
    # was lost, even under `throw=False`.
    loss = lambda t: jnp.sum(jnp.abs(t) ** 1.5) + jnp.sum((t - 0.3) ** 2)
    res = sb.minimize(loss, jnp.array([1.0, 0.0]), f"scipy:{method}", throw=False,
                      progress=False)  # fmt: skip
    assert res.result is sb.RESULTS.solver_failed and "Hessian" in res.message
    assert np.isfinite(res.loss) and res.loss == pytest.approx(float(loss(res.theta)))


@pytest.mark.parametrize("method", ["Nelder-Mead", "Powell", "COBYLA", "COBYQA"])
def test_derivative_free_methods_evaluate_the_loss_alone(method):
    # An external simulator JAX cannot differentiate (a `pure_callback` without a JVP rule):
    # derivative-free methods computed its gradient at every evaluation, and so raised "Pure
    # callbacks do not support JVP". Each SciPy evaluation is now at most one call of the loss
    # (a repeated point is cached), none for our bookkeeping (SciPy's callback carries the
    # loss at its iterate).
    calls = []

    def simulate(t):
        calls.append(None)
        return np.sum((np.asarray(t) - 1.0) ** 2)

    def loss(t):
        return jax.pure_callback(simulate, jax.ShapeDtypeStruct((), t.dtype), t)

    res = sb.minimize(loss, jnp.zeros(2), f"scipy:{method}", tol=1e-10, max_steps=400,
                      progress=False)  # fmt: skip
    assert res.success and res.loss < 1e-8, res.message
    assert len(calls) <= res.stats["scipy"].nfev
    np.testing.assert_allclose(np.asarray(res.theta), [1.0, 1.0], atol=1e-4)


def _kinked(t):
    # Finite everywhere, but JAX's derivative of sqrt(t**2) at t = 0 is NaN.
    return jnp.sum(jnp.sqrt(t**2)) + jnp.sum((t - 1.0) ** 2)


@pytest.mark.parametrize("method", ["trust-ncg", "L-BFGS-B", "SLSQP", "BFGS"])
def test_a_non_finite_gradient_is_a_solver_failure_that_keeps_the_run(method):
    # trust-ncg raised a bare ValueError (the run lost, even under `throw=False`); L-BFGS-B,
    # SLSQP and TNC reported a non-finite *loss*, which never happened; BFGS "NaN result".
    res = sb.minimize(_kinked, jnp.array([0.0, 2.0]), f"scipy:{method}", throw=False,
                      progress=False)  # fmt: skip
    assert res.result is sb.RESULTS.solver_failed and "gradient is non-finite" in res.message
    assert res.steps == 0 and res.loss == 4.0
    np.testing.assert_array_equal(np.asarray(res.theta), [0.0, 2.0])
    with pytest.raises(sb.OptimizationError, match="sqrt"):
        sb.minimize(_kinked, jnp.array([0.0, 2.0]), f"scipy:{method}", progress=False)


@pytest.mark.parametrize("method", SCIPY_LEAST_SQUARES)
def test_a_non_finite_jacobian_is_a_solver_failure_that_keeps_the_run(method):
    # trf raised a bare ValueError, dogbox numpy's LinAlgError (both losing the run), and
    # MINPACK's `lm` returned `theta0` as *converged* (its loss 3.0; the minimum is 0.5).
    residual = lambda t: jnp.concatenate([jnp.sqrt(t**2), t - 1.0])
    res = sb.least_squares(residual, jnp.array([0.0, 2.0]), f"scipy:{method}", throw=False,
                           progress=False)  # fmt: skip
    assert res.result is sb.RESULTS.solver_failed and "Jacobian is non-finite" in res.message
    assert res.loss == 3.0 and res.steps == 0


@jax.custom_jvp
def _gate(a):
    return a


@_gate.defjvp
def _gate_jvp(primals, tangents):
    # The identity, whose derivative is NaN past 1.5 (a broken custom rule).
    (a,), (da,) = primals, tangents
    return a, jnp.where(a > 1.5, jnp.nan, 1.0) * da


@pytest.mark.parametrize("method", SCIPY_LEAST_SQUARES)
def test_a_jacobian_failing_mid_run_keeps_the_point_scipy_accepted(method):
    # trf and dogbox evaluate the Jacobian at a point they accepted before calling back with
    # it: the run ends there, one step on from `theta0`, not back at `theta0`.
    x = jnp.linspace(0, 1, 16)
    residual = lambda th: _gate(th[0]) * jnp.exp(th[1] * x) - 2 * jnp.exp(-x)
    res = sb.least_squares(residual, jnp.array([1.0, 0.0]), f"scipy:{method}", throw=False,
                           progress=False)  # fmt: skip
    assert res.result is sb.RESULTS.solver_failed and "Jacobian" in res.message
    assert res.steps == 1 and res.theta[0] > 1.5 and res.history[-1] == res.loss < res.history[0]
    assert res.loss == pytest.approx(0.5 * float(jnp.sum(residual(res.theta) ** 2)), rel=1e-12)


def test_an_error_scipy_raises_mid_run_keeps_the_run(monkeypatch):
    # E.g. "SVD did not converge" (numpy's LinAlgError, a ValueError) from a huge Jacobian: a
    # breakdown inside the run, not a bad call. An error before SciPy evaluated anything is.
    def breaks(fun, x0, **kw):
        kw["callback"](scipy.optimize.OptimizeResult(x=x0 + 1.0, fun=fun(x0 + 1.0)))
        raise np.linalg.LinAlgError("SVD did not converge")

    monkeypatch.setattr(scipy.optimize, "minimize", breaks)
    loss = lambda t: jnp.sum(t**2)
    res = sb.minimize(loss, jnp.ones(2), "scipy:Powell", throw=False, progress=False)
    assert res.result is sb.RESULTS.solver_failed and "SVD did not converge" in res.message
    assert res.steps == 1 and res.loss == 8.0 and res.history.tolist() == [2.0, 8.0]
    with pytest.raises(ValueError, match="outside of provided bounds"):  # SciPy's, at once
        sb.least_squares(lambda t: t - 1.0, jnp.full(2, 2.0), "scipy:trf", bounds=(0.0, 1.0),
                         throw=False, progress=False)  # fmt: skip


@pytest.mark.parametrize(("key", "error", "match"), [
    ("bounds", NotImplementedError, r"(?s)runs unconstrained.*sb\.scipy_objective"),
    ("constraints", NotImplementedError, "runs unconstrained"),
    ("jac", TypeError, "sets itself"),
    ("x0", TypeError, "sets itself"),
])  # fmt: skip
def test_scipy_keywords_we_set_or_do_not_pass_say_so(key, error, match):
    # These reached SciPy as `options` and came back as "_minimize_lbfgsb() got multiple values
    # for argument 'bounds'".
    with pytest.raises(error, match=match):
        sb.minimize(lambda t: jnp.sum(t**2), jnp.ones(2), "scipy:L-BFGS-B", progress=False,
                    **{key: [(0.0, 1.0)] * 2})  # fmt: skip


def test_least_squares_tol_below_machine_epsilon_is_our_error():
    with pytest.raises(ValueError, match=r"`sb.least_squares` got tol=1e-20.*machine epsilon"):
        sb.least_squares(lambda t: t - 1.0, jnp.zeros(2), "scipy:trf", tol=1e-20,
                         progress=False)  # fmt: skip


def test_a_keyboard_interrupt_stops_every_scipy_member():
    # A KeyboardInterrupt that reaches the run (a second Ctrl-C, or one raised in a callback)
    # ended one member; the next ones ran to the end.
    def callback(step, theta, loss):
        raise KeyboardInterrupt

    res = sb.minimize(lambda t: jnp.sum((t - 1.0) ** 2), jnp.zeros((3, 2)), "scipy:BFGS",
                      callback=callback, throw=False, progress=False)  # fmt: skip
    assert all(m.result is sb.RESULTS.interrupted for m in res.members)
    assert res.steps.tolist() == [1, 0, 0]


def test_a_keyboard_interrupt_inside_the_loss_returns_the_last_iterate():
    # Raised in a host callback, XLA hands it on as a ValueError: the run was lost.
    calls = []

    def simulate(t):
        calls.append(None)
        if len(calls) == 30:
            raise KeyboardInterrupt
        return np.sum((np.asarray(t) - 1.0) ** 2)

    loss = lambda t: jax.pure_callback(simulate, jax.ShapeDtypeStruct((), t.dtype), t)
    res = sb.minimize(loss, jnp.zeros(2), "scipy:Nelder-Mead", throw=False, progress=False)
    assert res.result is sb.RESULTS.interrupted and 0 < res.steps < 30
    assert res.loss == float(np.sum((np.asarray(res.theta) - 1.0) ** 2)) < 2.0
