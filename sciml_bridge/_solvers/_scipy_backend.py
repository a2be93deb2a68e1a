"""`"scipy:<Method>"`: `scipy.optimize.minimize` and `scipy.optimize.least_squares`.

Every SciPy route follows one float rule (`_scipy.py`): the residual or loss sees `theta` in
float64 (float32 with x64 off) whatever the dtype of `theta0`, and `res.theta` comes back in
`theta0`'s dtype. SciPy owns the loop (in Python), so here "nothing lost" means: every
evaluation is checked, a non-finite loss aborts SciPy at once, and the last finite iterate
(minimize) or the best finite point evaluated (least squares) is returned.

`res.steps` and `res.history` count SciPy's iterations: one entry per iteration callback, and
one more when SciPy's final `x` is not its last iterate (TNC and COBYLA stop inside an
iteration when the budget runs out). Two methods differ: COBYQA calls back once per function
evaluation (with its best point so far), so there a step is an evaluation and `max_steps`
caps evaluations (`maxfev`, as TNC's `maxfun`); MINPACK's `lm` takes no callback at all, and
its iterations are read from its Jacobian evaluations (`_Residual`).
How SciPy ended is read from its message (`_outcome`).
"""

import re
import time
import warnings
from collections.abc import Callable
from typing import Any, cast

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import scipy.optimize

from .._progress import Progress
from .._result import RESULTS, finish
from .._scipy import scipy_dtype, scipy_objective
from ._interrupt import catch_sigint
from ._own_jacobian import own_jacobian
from ._recover import RUNTIME_ERRORS
from ._run import deliver, failure_detail, first_line
from ._setup import Run


_MSG_SCIPY_OPTIONS = """\
`{where}` got options that SciPy's method {method!r} does not take ({err}).
Fix: remove them; `scipy.optimize.show_options("minimize", {method!r})` lists the valid ones."""


_GRADIENT = {"cg", "bfgs", "newton-cg", "l-bfgs-b", "tnc", "slsqp", "dogleg", "trust-ncg",
             "trust-krylov", "trust-exact", "trust-constr"}  # fmt: skip
_HESSP = {"newton-cg", "trust-ncg", "trust-krylov", "trust-constr"}
_HESS = {"dogleg", "trust-exact"}


class _Abort(Exception):
    def __init__(self, kind, detail: str = ""):
        self.kind, self.detail = kind, detail


class _Tracker:
    """Iterates seen by SciPy's callback: history, progress, user callback, NaN guard."""

    def __init__(self, theta0, run: Run, bar: Progress, interrupt):
        self.theta, self.loss, self.history = theta0, float("nan"), []
        self.run, self.bar, self.interrupt = run, bar, interrupt

    def start(self, loss0: float) -> None:
        if not np.isfinite(loss0):
            raise _Abort(RESULTS.nonfinite)
        self.loss, self.history = float(loss0), [float(loss0)]
        if self.interrupt:
            raise _Abort(RESULTS.interrupted)

    def see(self, x, loss):
        if self.interrupt:
            raise _Abort(RESULTS.interrupted)
        if not np.isfinite(loss):
            raise _Abort(RESULTS.nonfinite)
        self.theta, self.loss = np.array(x, dtype=np.float64), float(loss)
        self.history.append(self.loss)
        self.bar.update(len(self.history) - 1, self.loss)
        cb = self.run.callback
        if cb is not None and cb(len(self.history) - 1, jnp.asarray(self.theta), self.loss):
            raise _Abort(RESULTS.successful)

    def adopt(self, x, loss: float) -> None:
        """End at `(x, loss)`, a finite point SciPy evaluated but never reported as an iterate
        (its next evaluation was non-finite): one more step, no callback."""
        self.theta, self.loss = np.array(x, dtype=np.float64), float(loss)
        self.history.append(self.loss)


# How SciPy ended, from its message: the status codes differ between methods and changed
# between SciPy versions (COBYLA's moved to PRIMA's in 1.16, L-BFGS-B's with its C port in
# 1.15), the messages did not. A budget run out (any budget: `maxiter`, TNC's `maxfun`,
# COBYLA's evaluations, `max_nfev`) returns; a failed line search ("precision loss" of
# CG/BFGS/Newton-CG, "ABNORMAL" of L-BFGS-B) is the stall the native methods report.
_BUDGET = re.compile(r"max(imum|\.)? number of|maxfun|iteration limit|total no\. of", re.I)
_STALL = re.compile(r"precision loss|^abnormal", re.I)


def _outcome(outcome) -> RESULTS:
    message = str(outcome.get("message", ""))
    if outcome.success:
        return RESULTS.successful
    if _BUDGET.search(message):
        return RESULTS.max_steps_reached
    if _STALL.search(message):
        return RESULTS.stalled
    return RESULTS.solver_failed


def _options(method: str, max_steps: int, options: dict) -> dict:
    # A step is what SciPy calls back on: an iteration, but for COBYQA an evaluation.
    key = {"tnc": "maxfun", "cobyqa": "maxfev"}.get(method, "maxiter")
    return {key: max_steps, **options}


def _checked(fun):
    def wrapped(x, *a):
        out = fun(x, *a)
        value = out[0] if isinstance(out, tuple) else out
        if not np.all(np.isfinite(value)):
            raise _Abort(RESULTS.nonfinite)
        return out

    return wrapped


_MSG_CURVATURE = (
    "the {what} is non-finite at a point where the loss and its gradient are finite (the loss "
    "is not twice differentiable there, e.g. |t|^1.5 at 0). Fix: a method that needs only "
    'the gradient ("scipy:BFGS", "lbfgs", "ssbfgs")'
)


def _curvature(fn, what: str):
    """`fn` (SciPy's `hess`/`hessp`), stopping the run as a solver failure when it is not
    finite: SciPy's trust-region methods raised a bare `ValueError` on it, losing the run."""

    def checked(*a):
        out = fn(*a)
        if not np.all(np.isfinite(out)):
            raise _Abort(RESULTS.solver_failed, _MSG_CURVATURE.format(what=what))
        return out

    return checked


def scipy_minimize(loss, theta0, args, name, tol, options, run: Run, interrupt):
    method = name.lower()
    obj = scipy_objective(loss, *args)  # its float rule: float64 (float32 with x64 off)
    x0 = np.asarray(theta0, dtype=np.float64)
    kwargs: dict[str, Any] = dict(method=name, tol=tol,
                                  options=_options(method, run.max_steps, options))
    fun = obj.fun
    if method in _GRADIENT:
        fun, kwargs["jac"] = obj.fun_and_jac, True
    if method in _HESSP:
        kwargs["hessp"] = _curvature(obj.hessp, "Hessian-vector product")
    if method in _HESS:
        kwargs["hess"] = _curvature(obj.hess, "Hessian")
    with Progress(run.max_steps, run.progress, run.where) as bar:
        track = _Tracker(x0, run, bar, interrupt)

        def cb(intermediate_result):
            # TNC (and, before SciPy 1.15, COBYLA and SLSQP) pass the bare `x` instead.
            x = getattr(intermediate_result, "x", intermediate_result)
            # trust-constr's first call reports `x0`, before any iteration (it counts it in
            # `nit`: scipy/optimize/_trustregion_constr/minimize_trustregion_constr.py).
            if method != "trust-constr" or intermediate_result.nit > 1:
                track.see(x, obj.fun(x))

        def thunk():
            track.start(obj.fun(x0))
            return scipy.optimize.minimize(_checked(fun), x0, callback=cb, **kwargs)

        outcome = _call(thunk, run, name)
    return _scipy_finish(outcome, track, theta0, run)


def _call(thunk, run: Run, name: str):
    """SciPy's outcome, or the `RESULTS` member (with detail) that stopped it: no private
    exception ever leaves this module."""
    try:
        with warnings.catch_warnings():
            # SciPy only warns about options a method does not use; we promise an error.
            warnings.filterwarnings("error", "Unknown solver options",
                                    scipy.optimize.OptimizeWarning)  # fmt: skip
            return thunk()
    except _Abort as e:
        return e.kind, e.detail
    except KeyboardInterrupt:
        return RESULTS.interrupted, ""
    except RUNTIME_ERRORS as e:
        return RESULTS.solver_failed, failure_detail(e)
    except ValueError as e:
        # Under plain `jax.jit` (our SciPy objective) an `eqx.error_if` inside the loss
        # arrives as XLA's callback error wrapping Equinox's message.
        if "EquinoxRuntimeError" not in str(e):
            raise
        return RESULTS.solver_failed, first_line(e)
    except scipy.optimize.OptimizeWarning as e:
        raise TypeError(_MSG_SCIPY_OPTIONS.format(where=run.where, method=name, err=e)) from e


def _scipy_finish(outcome, track, theta0, run: Run):
    stats, detail = {}, ""
    if isinstance(outcome, tuple):
        (result, detail), x, loss = outcome, track.theta, track.loss
        detail = "stopped by `callback`" if result is RESULTS.successful else detail
    else:
        stats["scipy"] = outcome
        x, loss = outcome.x, float(outcome.fun) if np.ndim(outcome.fun) == 0 else outcome.cost
        result = _outcome(outcome)
        detail = "" if outcome.success else f"SciPy: {outcome.message}"
        if not np.array_equal(x, track.theta):  # SciPy ended between iterates: one more step
            track.history.append(float(loss))
    if result is RESULTS.nonfinite:
        detail = f"at SciPy iteration {len(track.history)}"
    if not track.history:
        track.history.append(float(loss))
    return finish(
        theta=jnp.asarray(np.asarray(x), dtype=theta0.dtype),
        loss=loss,
        history=track.history,
        steps=len(track.history) - 1,
        result=result,
        wall_time=time.perf_counter() - run.start,
        method=run.method,
        where=run.where,
        detail=detail,
        throw=False,
        stats=stats,
    )


class _Residual:
    """Jitted flattened residual and dense Jacobian, as float64 NumPy for SciPy.

    It keeps the lowest finite loss evaluated (`best`, returned when a later evaluation is
    non-finite) and the losses evaluated since the last Jacobian. MINPACK's `lm` calls back
    nothing, but it evaluates the Jacobian once per iteration, at the point that iteration
    starts from, which it has already evaluated: so `on_iterate(x, loss)` (set for `lm`) is
    called at every Jacobian but the first, which is at `x0`."""

    def __init__(self, fn, args, dtype, jac: str):
        dynamic, static = eqx.partition((fn, args), eqx.is_array)

        def r(x, dynamic):
            fn, args = eqx.combine(dynamic, static)
            return jnp.ravel(fn(x, *args))

        own = own_jacobian(fn)

        def own_j(x, dynamic):
            fn, args = eqx.combine(dynamic, static)
            return cast(Callable, own_jacobian(fn))(x, *args)[1]  # `fn`'s type has one

        self.dtype, self._dynamic = dtype, dynamic
        self._r = jax.jit(r)
        # The residual's own Jacobian when it has one (`_own_jacobian.py`: `sb.pinn`'s).
        self._j = jax.jit(own_j if own is not None else
                          jax.jacfwd(r) if jac == "fwd" else jax.jacrev(r))  # fmt: skip
        self.best: tuple[float, Any] = (float("inf"), None)
        self.on_iterate: Callable | None = None
        self._losses: dict[bytes, float] = {}
        self._jacobians = 0

    def residual(self, x) -> np.ndarray:
        out = np.asarray(self._r(jnp.asarray(x, dtype=self.dtype), self._dynamic), np.float64)
        if not np.all(np.isfinite(out)):
            raise _Abort(RESULTS.nonfinite)
        loss = 0.5 * float(out @ out)
        self._losses[np.asarray(x, np.float64).tobytes()] = loss
        if loss < self.best[0]:
            self.best = (loss, np.array(x, dtype=np.float64))
        return out

    def jacobian(self, x) -> np.ndarray:
        self._jacobians += 1
        if self.on_iterate is not None and self._jacobians > 1:
            key = np.asarray(x, np.float64).tobytes()
            if key not in self._losses:  # not seen in MINPACK; kept for safety
                self.residual(x)
            self.on_iterate(x, self._losses[key])
        self._losses.clear()
        out = self._j(jnp.asarray(x, dtype=self.dtype), self._dynamic)
        return np.asarray(out, dtype=np.float64)


def scipy_least_squares(residual, theta0, args, name, tol, jac, options, run: Run, interrupt):
    res = _Residual(residual, args, scipy_dtype(), jac)
    x0 = np.asarray(theta0, dtype=np.float64)
    tols = {} if tol is None else dict(xtol=tol, ftol=tol, gtol=tol)
    kwargs: dict[str, Any] = dict(method=name.lower(), jac=res.jacobian, max_nfev=run.max_steps,
                                  **tols)
    with Progress(run.max_steps, run.progress, run.where) as bar:
        track = _Tracker(x0, run, bar, interrupt)

        def cb(intermediate_result):
            track.see(intermediate_result.x, float(intermediate_result.cost))

        # SciPy's `lm` (MINPACK) takes no callback and warns if given one.
        if kwargs["method"] != "lm":
            kwargs["callback"] = cb
        else:
            res.on_iterate = track.see

        def thunk():
            r0 = res.residual(x0)
            track.start(0.5 * float(r0 @ r0))
            return scipy.optimize.least_squares(res.residual, x0, **kwargs, **options)

        outcome = _call(thunk, run, name)
        if isinstance(outcome, tuple) and outcome[0] is RESULTS.nonfinite \
                and res.best[0] < track.loss:  # fmt: skip
            track.adopt(res.best[1], res.best[0])
    return _scipy_finish(outcome, track, theta0, run)


def solve_scipy(solve_one, theta0, run: Run):
    """SciPy owns its loop: members one after another, one Ctrl-C stops them all."""
    batched = theta0.ndim == 2
    thetas = theta0 if batched else theta0[None]
    with catch_sigint() as interrupt:
        solutions = [solve_one(theta, run, interrupt) for theta in thetas]
    return deliver(solutions, batched, run)
