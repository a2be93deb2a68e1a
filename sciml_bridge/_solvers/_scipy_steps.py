"""How a SciPy run becomes a `Solution`: its iterates as steps and history, its end as `RESULTS`.

SciPy owns the loop (in Python), so here "nothing lost" means: every evaluation is checked, a
non-finite loss stops SciPy at once (`Abort`, raised from inside SciPy and caught by `call`),
and the last finite iterate (minimize) or the best finite point evaluated (least squares) is
returned.

SciPy's `x` is float64, `res.theta` is in `theta0`'s dtype: when that rounds (a float32,
float16 or bfloat16 `theta0` with x64 on; float16 or bfloat16 with x64 off), `res.loss` and
the last history entry are the loss at the rounded point, evaluated once more in `theta0`'s
dtype (`loss(res.theta)` as the user evaluates it), and so is every `(theta, loss)` pair a
callback gets; SciPy's own value there is for a point it never returns.

`res.steps` and `res.history` count SciPy's iterates (`Tracker`): `history[k]` is the loss at
the point reached after `k` iterations, one entry per iterate SciPy reports (`Tracker.see`),
and one more when SciPy's final `x` is not its last iterate (TNC and COBYLA stop inside an
iteration when the budget runs out). Which SciPy event is an iterate differs by method; the
backend (`_scipy_backend.py`) says which. How SciPy ended is read from its message (`outcome`).
"""

import dataclasses
import re
import time
import warnings
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import scipy.optimize

from .._distributed import agree_callbacks
from .._progress import Progress
from .._result import RESULTS, Solution, finish
from ._failures import MSG_CALLBACK, RUNTIME_ERRORS, failure_detail, first_line
from ._interrupt import Interrupt
from ._scipy_guards import INT32_MAX, loss_raised, scipy_numerics
from ._setup import Run


_MSG_SCIPY_OPTIONS = """\
`{where}` got options that SciPy's method {method!r} does not take ({err}).
Fix: remove them; `scipy.optimize.show_options("minimize", {method!r})` lists the valid ones."""


MSG_GRADIENT = (
    "the {what} is non-finite at a point where the {f} is finite (it is not differentiable "
    "there, e.g. `jnp.sqrt(t**2)` or `jnp.abs(t)` at 0). Fix: smooth it there "
    "(`jnp.sqrt(t**2 + 1e-12)`){alt}"
)

class Abort(Exception):
    """Stops SciPy from inside one of our functions, carrying the `RESULTS` member to return."""

    def __init__(self, kind, detail: str = ""):
        self.kind, self.detail = kind, detail


class CallbackRaised(Exception):
    """The user's callback raised: the run up to the point it was given, and its error."""

    def __init__(self, solution: Solution, cause: Exception):
        self.solution, self.cause = solution, cause

    def solution_as_raised(self, where: str, member: int | None) -> Solution:
        """The run, its message saying so (`member` in an ensemble, else None)."""
        e, at = self.cause, "" if member is None else f"member {member} "
        message = MSG_CALLBACK.format(kind=type(e).__name__, line=first_line(e), where=where,
                                       member=at, steps=self.solution.steps)  # fmt: skip
        return dataclasses.replace(self.solution, message=message)


class Tracker:
    """SciPy's iterates: history, progress, user callback, NaN guard and Ctrl-C.

    `running` turns True at SciPy's first call of one of our functions: an error SciPy raises
    after that is a failure inside the run (the run is kept), before it a bad call.
    `loss_at(x)` is the loss at `x` rounded to `dtype` (`theta0`'s), evaluated in `dtype`;
    None when SciPy's `x` reaches the loss unrounded. `raised` is the callback's error."""

    def __init__(self, theta0, run: Run, bar: Progress, interrupt: Interrupt, dtype,
                 loss_at: Callable[[np.ndarray], float] | None = None):  # fmt: skip
        self.theta, self.loss, self.history = theta0, float("nan"), []
        self.run, self.bar, self.interrupt = run, bar, interrupt
        self.dtype, self.loss_at = dtype, loss_at
        self.running, self.raised = False, None
        self.np_err: Any = np.geterr()  # the caller's, for the user's callback (`call`)
        self._rounded: tuple[bytes, float] = (b"", float("nan"))

    def start(self, loss0: float) -> None:
        if not np.isfinite(loss0):
            raise Abort(RESULTS.nonfinite)
        self.loss, self.history = float(loss0), [float(loss0)]
        if self.interrupt:
            raise Abort(RESULTS.interrupted)

    def user(self, x, loss: float) -> tuple[jax.Array, float]:
        """`(theta, loss)` as the user sees them: `x` in `theta0`'s dtype and the loss there."""
        x = np.asarray(x, dtype=np.float64)
        theta = jnp.asarray(x.astype(self.dtype))
        if self.loss_at is None or not np.isfinite(loss):
            return theta, float(loss)
        if self._rounded[0] != x.tobytes():
            try:
                self._rounded = (x.tobytes(), float(self.loss_at(x)))
            # It raised where SciPy's dtype did not (e.g. a `precision="strict"` float64
            # model): SciPy's value, rather than losing the run.
            except (*RUNTIME_ERRORS, ValueError, TypeError):
                self._rounded = (x.tobytes(), float(loss))
        return theta, self._rounded[1]

    def see(self, x, loss) -> None:
        """`x` is SciPy's next iterate and `loss` the loss there."""
        if self.interrupt:
            raise Abort(RESULTS.interrupted)
        if not np.isfinite(loss):
            raise Abort(RESULTS.nonfinite)
        self.theta, self.loss = np.array(x, dtype=np.float64), float(loss)
        cb = self.run.callback
        theta = None
        if cb is not None:  # the pair the callback gets, and so the history, as the user sees
            theta, self.loss = self.user(self.theta, self.loss)
        self.history.append(self.loss)
        self.bar.update(len(self.history) - 1, self.loss)
        if cb is None:
            return
        step, stop, raised = len(self.history) - 1, False, None
        try:
            with np.errstate(**self.np_err):
                # Read inside: a return `bool` refuses (an array of several values) is the
                # callback failing, not the run.
                stop = bool(cb(step, theta, self.loss))
        except Exception as e:  # not KeyboardInterrupt: that one is Ctrl-C (`call`)
            raised = (0, step, e)
        if self.interrupt.spans:  # one answer on every process, as the fused driver's
            raised, (stop,) = agree_callbacks(raised, [stop])
        if raised is not None:
            self.raised = raised[2]
            raise Abort(RESULTS.solver_failed) from raised[2]
        if stop:
            raise Abort(RESULTS.successful)

    def adopt(self, x, loss: float) -> None:
        """End at `(x, loss)`, a finite point SciPy evaluated but never reported as an iterate
        (an evaluation after it was non-finite): one more step, no callback."""
        self.theta, self.loss = np.array(x, dtype=np.float64), float(loss)
        self.history.append(self.loss)


# How SciPy ended, from its message: the status codes differ between methods and changed
# between SciPy versions (COBYLA's moved to PRIMA's in 1.16, L-BFGS-B's with its C port in
# 1.15), the messages did not. A budget run out (any budget: `maxiter`, TNC's `maxfun`,
# COBYLA's evaluations, `max_nfev`) returns; a failed line search ("precision loss" of
# CG/BFGS/Newton-CG, "ABNORMAL" of L-BFGS-B) or a trust-region model that predicts no
# improvement at the rounding floor (trust-krylov's "bad approximation") is the stall the
# native methods report; so is TNC's "Linear search failed" (its line search found no lower
# loss, as L-BFGS-B's "ABNORMAL": e.g. `jnp.abs` near its kink at a tiny `tol`).
_BUDGET = re.compile(r"max(imum|\.)? number of|maxfun|iteration limit|total no\. of", re.I)
_STALL = re.compile(r"precision loss|^abnormal|bad approximation|^linear search failed", re.I)


def outcome(result) -> RESULTS:
    message = str(result.get("message", ""))
    if result.success:
        return RESULTS.successful
    if _BUDGET.search(message):
        return RESULTS.max_steps_reached
    if _STALL.search(message):
        return RESULTS.stalled
    return RESULTS.solver_failed


def budget(method: str, max_steps: int, options: dict) -> dict:
    """SciPy's `options` with `max_steps` as the budget of `method` (lower-case name)."""
    # A step is an iterate: an iteration, but for COBYQA an evaluation (its callback's rate);
    # TNC's only budget is evaluations. Nelder-Mead's and trust-constr's iteration counts
    # start at 1 before any step (the initial simplex; trust-constr's report of `x0`):
    # scipy/optimize/_optimize.py (`iterations = 1`) and minimize_trustregion_constr.py.
    # Capped at the 32-bit budgets of SciPy's compiled methods (`_scipy_guards.py`).
    key = {"tnc": "maxfun", "cobyqa": "maxfev"}.get(method, "maxiter")
    extra = 1 if method in ("nelder-mead", "trust-constr") else 0
    return {key: min(max_steps + extra, INT32_MAX), **options}


def _interrupted(track: Tracker):
    track.interrupt.set = True  # one Ctrl-C stops every member, however it arrived
    return RESULTS.interrupted, ""


def call(thunk, run: Run, name: str, track: Tracker):
    """SciPy's outcome, or the `RESULTS` member (with detail) that stopped it: no private
    exception ever leaves this module."""
    try:
        with warnings.catch_warnings(), scipy_numerics() as track.np_err:
            # SciPy only warns about options a method does not use; we promise an error.
            warnings.filterwarnings("error", "Unknown solver options",
                                    scipy.optimize.OptimizeWarning)  # fmt: skip
            return thunk()
    except Abort as e:
        return e.kind, e.detail
    except KeyboardInterrupt:
        return _interrupted(track)
    except (*RUNTIME_ERRORS, ValueError) as e:  # numpy's `LinAlgError` too
        # Under plain `jax.jit` (our SciPy objective) an error inside the loss (an
        # `eqx.error_if`, a host callback that raised) arrives as XLA's callback error
        # wrapping its message, a `JaxRuntimeError` or a `ValueError`. Any other error SciPy
        # raises once it runs (e.g. "SVD did not converge") is a breakdown: keep the run.
        if "KeyboardInterrupt" in str(e):  # raised in a host callback, wrapped by XLA
            return _interrupted(track)
        if "EquinoxRuntimeError" in str(e):
            return RESULTS.solver_failed, first_line(e)
        raised = loss_raised(e)
        if raised is not None:
            return RESULTS.solver_failed, raised
        if isinstance(e, RUNTIME_ERRORS):
            return RESULTS.solver_failed, failure_detail(e)
        if not track.running:
            raise
        return RESULTS.solver_failed, f"SciPy raised {type(e).__name__}: {first_line(e)}"
    except scipy.optimize.OptimizeWarning as e:
        if "Unknown solver options" not in str(e):  # another warning, raised by `-W error`
            raise
        raise TypeError(_MSG_SCIPY_OPTIONS.format(where=run.where, method=name, err=e)) from e


def solution(result, track: Tracker, run: Run) -> Solution:
    """The `Solution` of one run from `call`'s answer and the iterates `track` saw; raises
    `CallbackRaised` when the callback raised."""
    stats, detail, text = {}, "", ""
    if isinstance(result, tuple):
        (kind, detail), x, loss = result, track.theta, track.loss
        if kind is RESULTS.successful:
            detail, text = "", "stopped by `callback` after {steps} steps"
    else:
        stats["scipy"] = result
        x, loss = result.x, float(result.fun) if np.ndim(result.fun) == 0 else result.cost
        kind = outcome(result)
        detail = "" if result.success else f"SciPy: {result.message}"
        # As every method's: the message names the stopping rule met (SciPy's words for it).
        if result.success:
            text = "converged after {steps} steps (SciPy: " + str(result.message).replace(
                "{", "{{").replace("}", "}}") + ")"  # braces in SciPy's words are text
        if not np.array_equal(x, track.theta):  # SciPy ended between iterates: one more step
            track.history.append(float(loss))
    if kind is RESULTS.nonfinite:
        detail = f"at SciPy iteration {len(track.history)}"
    if not track.history:
        track.history.append(float(loss))
    theta, track.history[-1] = track.user(x, loss)
    sol = finish(
        text=text.format(steps=len(track.history) - 1),
        theta=theta,
        loss=track.history[-1],
        history=track.history,
        steps=len(track.history) - 1,
        result=kind,
        wall_time=time.perf_counter() - run.start,
        method=run.method,
        where=run.where,
        detail=detail,
        throw=False,
        stats=stats,
    )
    if track.raised is not None:
        raise CallbackRaised(sol, track.raised)
    return sol
