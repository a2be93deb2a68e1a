"""`"scipy:<Method>"`: `scipy.optimize.minimize` and `scipy.optimize.least_squares`.

Every SciPy route follows one float rule (`_scipy.py`): the residual or loss sees `theta` in
float64 (float32 with x64 off) whatever the dtype of `theta0`, and `res.theta` comes back in
`theta0`'s dtype, with `res.loss` the loss there. Steps, history, how a run ended, and a
callback that raises: `_scipy_steps.py`. What SciPy would change or lose on its own (32-bit
budgets, COBYLA's first simplex and radii, NumPy warnings inside SciPy, a loss that only runs
in `theta0`'s dtype): `_scipy_guards.py`. Both routes compile once per loss (or residual) and
argument shapes: every call and every ensemble member shares the compiled functions.

An iterate is what SciPy's callback reports, with three exceptions. COBYQA calls back once per
function evaluation (with its best point so far), so there a step is an evaluation and
`max_steps` caps evaluations (`maxfev`, as TNC's `maxfun`). SLSQP calls back at a trial point
(`_at_gradients`), so its iterates are read from its gradient evaluations; MINPACK's `lm`
takes no callback at all, and its iterations are read from its Jacobian evaluations
(`_scipy_residual.py`). Derivative-free methods get the loss alone (`ScipyObjective.value`): no
gradient is computed for them, so a loss JAX cannot differentiate runs too.
"""

import dataclasses
import time
from typing import Any, NoReturn

import numpy as np
import scipy.optimize

from .._distributed import spans_processes
from .._progress import Progress
from .._result import RESULTS, EnsembleSolution, OptimizationError
from .._scipy import ScipyObjective, scipy_dtype, scipy_objective
from ._interrupt import catch_sigint
from ._run import deliver
from ._scipy_guards import INT32_MAX, check_cobyla, first_value
from ._scipy_residual import ScipyResidual
from ._scipy_steps import MSG_GRADIENT, Abort, CallbackRaised, Tracker, budget, call, solution
from ._setup import Run


_MSG_UNCONSTRAINED = """\
`{where}` got `{key}=`, but method={method!r} runs unconstrained: `{where}` does not pass
`{key}` to `scipy.optimize.minimize`. Fix: call SciPy yourself with the same compiled loss,
`obj = sb.scipy_objective(loss, *args)` and `scipy.optimize.minimize(obj.fun_and_jac,
np.asarray(theta0), jac=True, method={name!r}, {key}=...)`."""

_MSG_OURS = """\
`{where}` got `{key}=`, which it sets itself for method={method!r} (the loss's own compiled
gradient and Hessian, `theta0`, the method): it is not one of SciPy's `options`.
Fix: remove it; `scipy.optimize.show_options("minimize", {name!r})` lists the options."""

_MSG_CURVATURE = (
    "the {what} is non-finite at a point where the loss and its gradient are finite (the loss "
    "is not twice differentiable there, e.g. |t|^1.5 at 0). Fix: a method that needs only "
    'the gradient ("scipy:BFGS", "lbfgs", "ssbfgs")'
)

_MSG_BROKE_DOWN = "the method asked for a {what} with a non-finite vector (it broke down)"

_MSG_TOL = """\
`{where}` got tol={tol!r}, below float64's machine epsilon ({eps:.3g}): SciPy's
`least_squares` uses it as `ftol`, `xtol` and `gtol` and cannot stop on tolerances that small.
Fix: `tol=1e-15` or larger (or `tol=None` for SciPy's defaults)."""


_GRADIENT = {"cg", "bfgs", "newton-cg", "l-bfgs-b", "tnc", "slsqp", "dogleg", "trust-ncg",
             "trust-krylov", "trust-exact", "trust-constr"}  # fmt: skip
_HESSP = {"newton-cg", "trust-ncg", "trust-krylov", "trust-constr"}
_HESS = {"dogleg", "trust-exact"}
# `scipy.optimize.minimize`'s own keywords: SciPy raises a bare "got multiple values" for them.
_UNCONSTRAINED = ("bounds", "constraints")
_OURS = ("fun", "x0", "args", "method", "jac", "hess", "hessp", "options")
_NO_GRADIENT_FIX = ', or a derivative-free method ("scipy:Nelder-Mead", "scipy:Powell")'


def _check_options(options: dict, run: Run, name: str) -> None:
    for key in options:
        fields = dict(where=run.where, key=key, method=run.method, name=name)
        if key in _UNCONSTRAINED:
            raise NotImplementedError(_MSG_UNCONSTRAINED.format(**fields))
        if key in _OURS:
            raise TypeError(_MSG_OURS.format(**fields))


def _checked(fun, track: Tracker, gradient: bool):
    """`fun` (`value` or `(value, gradient)`) as SciPy calls it: non-finite values stop it."""

    def wrapped(x, *a):
        track.running = True
        out = fun(x, *a)
        value, grad = out if gradient else (out, None)
        if not np.all(np.isfinite(value)):
            raise Abort(RESULTS.nonfinite)
        if grad is not None and not np.all(np.isfinite(grad)):
            detail = MSG_GRADIENT.format(what="gradient", f="loss", alt=_NO_GRADIENT_FIX)
            raise Abort(RESULTS.solver_failed, detail)
        return out

    return wrapped


def _curvature(fn, what: str):
    """`fn` (SciPy's `hess`/`hessp`), stopping the run as a solver failure when it is not
    finite: SciPy's trust-region methods raised a bare `ValueError` on it, losing the run.
    When SciPy itself passes a non-finite vector, the method has broken down, not the loss:
    trust-krylov's trlib, at a minimum whose gradient is ~0, asks for the product with a NaN
    vector; that run stops as a stall at its last good point."""

    def checked(*a):
        if not all(np.all(np.isfinite(x)) for x in a):
            raise Abort(RESULTS.stalled, _MSG_BROKE_DOWN.format(what=what))
        out = fn(*a)
        if not np.all(np.isfinite(out)):
            raise Abort(RESULTS.solver_failed, _MSG_CURVATURE.format(what=what))
        return out

    return checked


def _at_gradients(jac, value, track: Tracker):
    """SLSQP's `jac`, reporting its iterates. SLSQP calls back when its iteration counter
    moves, which happens at the first trial point of the iteration's line search (`x` and
    `fun` there are the trial's: scipy/optimize/_slsqp_py.py), so trial losses entered the
    history and a run could report `max_steps + 1` steps. It evaluates the gradient only at
    the point its line search accepted (and at `x0`): those points are its iterates."""

    def wrapped(x):
        if not np.array_equal(x, track.theta):
            track.see(x, value(x))
        return jac(x)

    return wrapped


def _minimize_kwargs(obj: ScipyObjective, method: str, track: Tracker):
    """`(fun, value, kwargs)`: what SciPy calls, the loss alone, and `jac`/`hess`/`hessp`."""
    kwargs: dict[str, Any] = {}
    if method not in _GRADIENT:
        return _checked(obj.value, track, gradient=False), obj.value, kwargs
    fun_and_jac = _checked(obj.fun_and_jac, track, gradient=True)
    fun, kwargs["jac"] = fun_and_jac, True
    if method == "slsqp":  # the same cached evaluation, split so that `jac` marks iterates
        fun = lambda x: fun_and_jac(x)[0]
        kwargs["jac"] = _at_gradients(lambda x: fun_and_jac(x)[1], obj.fun, track)
    if method in _HESSP:
        kwargs["hessp"] = _curvature(obj.hessp, "Hessian-vector product")
    if method in _HESS:
        kwargs["hess"] = _curvature(obj.hess, "Hessian")
    return fun, obj.fun, kwargs


def _callback(method: str, value, track: Tracker):
    def cb(intermediate_result):
        # TNC (and, before SciPy 1.15, COBYLA and SLSQP) pass the bare `x` instead.
        x = getattr(intermediate_result, "x", intermediate_result)
        # trust-constr's first call reports `x0`, before any iteration (it counts it in
        # `nit`: scipy/optimize/_trustregion_constr/minimize_trustregion_constr.py).
        if method == "trust-constr" and intermediate_result.nit <= 1:
            return
        # SciPy's own `fun` at `x` (the value our function returned) saves an evaluation.
        fun = getattr(intermediate_result, "fun", None)
        track.see(x, value(x) if fun is None else float(fun))

    return None if method == "slsqp" else cb


def scipy_minimize(loss, theta0, args, name, tol, options, run: Run, interrupt):
    method = name.lower()
    _check_options(options, run, name)
    obj = scipy_objective(loss, *args)  # its float rule: float64 (float32 with x64 off)
    # `res.loss` is the loss at `res.theta`, in `theta0`'s dtype, where that rounds SciPy's `x`.
    narrow = None if _unrounded(theta0) else ScipyObjective(loss, args, theta0.dtype)
    at = None if narrow is None else narrow.value
    # What the first evaluation computes (the gradient too, or not), in `theta0`'s dtype.
    again = None if narrow is None else narrow.fun if method in _GRADIENT else narrow.value
    x0 = np.asarray(theta0, dtype=np.float64)
    options = budget(method, run.max_steps, options)
    check_cobyla(method, name, x0.size, tol, options, run.where)
    with Progress(run.max_steps, run.progress, run.where) as bar:
        track = Tracker(x0, run, bar, interrupt, theta0.dtype, at)
        fun, value, kwargs = _minimize_kwargs(obj, method, track)

        def thunk():
            track.start(first_value(value, x0, again, "loss", obj.dtype, theta0.dtype,
                                    run.where))  # fmt: skip
            return scipy.optimize.minimize(fun, x0, method=name, tol=tol, options=options,
                                           callback=_callback(method, value, track),
                                           **kwargs)  # fmt: skip

        result = call(thunk, run, name, track)
    return solution(result, track, run)


def _unrounded(theta0) -> bool:
    """Whether SciPy's float64 `x` reaches the loss exactly as `theta0`'s dtype holds it."""
    return np.dtype(theta0.dtype) == np.dtype(scipy_dtype())


def _entered(fn, track: Tracker):
    def wrapped(x):
        track.running = True
        return fn(x)

    return wrapped


def scipy_least_squares(residual, theta0, args, name, tol, jac, options, run: Run, interrupt):
    if tol is not None and tol < np.finfo(np.float64).eps:
        raise ValueError(_MSG_TOL.format(where=run.where, tol=tol, eps=np.finfo(np.float64).eps))
    res = ScipyResidual(residual, args, scipy_dtype(), jac)
    x0 = np.asarray(theta0, dtype=np.float64)
    at = None if _unrounded(theta0) else lambda x: res.loss_at(x, theta0.dtype)
    tols = {} if tol is None else dict(xtol=tol, ftol=tol, gtol=tol)
    kwargs: dict[str, Any] = dict(method=name.lower(), jac=res.jacobian,
                                  max_nfev=min(run.max_steps, INT32_MAX), **tols)  # fmt: skip
    with Progress(run.max_steps, run.progress, run.where) as bar:
        track = Tracker(x0, run, bar, interrupt, theta0.dtype, at)

        def cb(intermediate_result):
            track.see(intermediate_result.x, float(intermediate_result.cost))

        # SciPy's `lm` (MINPACK) takes no callback and warns if given one.
        if kwargs["method"] != "lm":
            kwargs["callback"] = cb
        else:
            res.on_iterate = track.see

        def thunk():
            r0 = first_value(res.residual, x0, at, "residual", res.dtype, theta0.dtype,
                             run.where)  # fmt: skip
            track.start(0.5 * float(r0 @ r0))
            return scipy.optimize.least_squares(_entered(res.residual, track), x0, **kwargs,
                                                 **options)  # fmt: skip

        result = call(thunk, run, name, track)
        # A run stopped by a non-finite residual or Jacobian keeps its best finite point:
        # trf and dogbox evaluate the Jacobian at a point they accepted before calling back.
        # One stopped by its callback ends where the callback was given (`track.theta`).
        failed = (RESULTS.nonfinite, RESULTS.solver_failed)
        if isinstance(result, tuple) and any(result[0] is k for k in failed) \
                and track.raised is None and res.best[0] < track.loss \
                and not np.array_equal(res.best[1], track.theta):  # fmt: skip
            track.adopt(res.best[1], res.best[0])
    return solution(result, track, run)


def solve_scipy(solve_one, theta0, run: Run):
    """SciPy owns its loop: members one after another, one Ctrl-C stops them all. A callback
    that raises stops them all too (`_callback_raised`)."""
    batched = theta0.ndim == 2
    thetas = theta0 if batched else theta0[None]
    solutions, raised = [], None
    with catch_sigint(spans_processes(theta0)) as interrupt:
        for i, theta in enumerate(thetas):
            try:
                solutions.append(solve_one(theta, run, interrupt))
            except CallbackRaised as e:
                raised, interrupt.set = (i, e), True  # the next members stop at `theta0`
                solutions.append(e.solution)
    if raised is not None:
        _callback_raised(solutions, *raised, batched, run)
    return deliver(solutions, batched, run)


def _callback_raised(solutions, i: int, e: CallbackRaised, batched: bool, run: Run) -> NoReturn:
    """Member `i`'s callback raised: `sb.OptimizationError` whatever `throw=` says, `from`
    the callback's error, with the run up to the point the callback was given (every
    member's in an ensemble: the ones after `i` stopped at their `theta0`, as by Ctrl-C)."""
    solutions[i] = e.solution_as_raised(run.where, i if batched else None)
    why = f"the callback raised {type(e.cause).__name__} for member {i}"
    for j in range(i + 1, len(solutions)):
        detail = f"not started: {why}; `res.theta` is its `theta0`"
        message = f"`{run.where}` ({detail}): {RESULTS[RESULTS.interrupted]}"
        solutions[j] = dataclasses.replace(solutions[j], message=message)
    out = EnsembleSolution(tuple(solutions), time.perf_counter() - run.start) \
        if batched else solutions[0]  # fmt: skip
    raise OptimizationError(out, solutions[i].message) from e.cause
