"""The one host loop: N >= 1 members (a single run is N = 1), every method, one contract.

Nothing here runs per step. Between chunks (`_fused.run_chunk`, vmapped over members or not)
the host reads back each member's losses and status, updates the progress bar, writes a
checkpoint, calls the callback with Python floats, and checks for Ctrl-C. Every way a run
can end is decided here, once, for all methods (DESIGN.md, "The outcome contract"):

- converged (`done`): `success=True`, the message names the stopping rule;
- budget used up: returns, never raises; `max_steps_reached` if the method has a stopping
  rule, else `success=True` with a message that says the budget ran out;
- non-finite loss, solver breakdown, runtime error inside the loss: the last good `theta`,
  raised as `sb.OptimizationError` under `throw=True`, per member in an ensemble;
- Ctrl-C: the partial result, `result=interrupted`;
- a callback that raises: the run up to the point it was given, always raised (whatever
  `throw=`) as `sb.OptimizationError` from the callback's error;
- a failing checkpoint write: a warning, the run goes on.
"""

import time
import warnings
from typing import cast

import jax
import jax.numpy as jnp
import numpy as np

from .._distributed import agree_callbacks, host, local, spans_processes
from .._progress import Progress
from .._result import (
    RESULTS,
    EnsembleSolution,
    OptimizationError,
    Solution,
    finish,
    raise_if_failed,
    result_at,
)
from .._sharding import member_layout, members_sharding
from . import _checkpoint
from ._conclude import Conclusion
from ._cpu_pool import warn_if_pool_starves
from ._failures import (
    MSG_CALLBACK,
    MSG_OUT_OF_MEMORY,
    RUNTIME_ERRORS,
    failure_detail,
    first_line,
    one_member_may_be_at_fault,
)
from ._fused import init_members, run_chunk, values_at
from ._interrupt import catch_sigint
from ._recover import Member, alone
from ._setup import Run
from ._stateful import keep_evaluated_state
from ._stepper import AbstractStepper


_MSG_CHECKPOINT_FAILED = """\
`{where}` could not write the checkpoint {path!r} ({err}). The run goes on and its result is
returned as usual, but no checkpoint is kept until a write succeeds.
Fix: free disk space or restore the directory, or pass another `checkpoint=` path."""

# The same words as the SciPy route's (`_scipy_steps.py`): one rule for every method.
class _Driver(Conclusion):
    def __init__(self, stepper: AbstractStepper, theta0, args: tuple, run: Run, batched: bool):
        self.stepper, self.args, self.run, self.batched = stepper, args, run, batched
        self.step_loss_is_value = stepper.step_loss_is_value
        self.layout = member_layout(theta0)
        self.members = [Member([]) for _ in range(theta0.shape[0] if batched else 1)]
        self.warned, self.active = False, (None, None)
        self.spans = spans_processes((theta0, args))  # callbacks agreed across processes
        self.raised: Exception | None = None  # the callback's error, raised by `drive`
        try:
            self.dynamic, self.static, self.good_theta, self.good_loss = init_members(
                stepper, args, theta0, self.layout
            )
        except RUNTIME_ERRORS as e:
            if not (batched and one_member_may_be_at_fault(e)):
                raise
            self._init_alone(theta0, e)
        self.stepper, self.dynamic, self.static = keep_evaluated_state(stepper, self.dynamic,
                                                                       self.static)  # fmt: skip
        self.stateful = self.stepper is not stepper
        # A member whose setup raised keeps the state it stands in with now: `theta0`'s.
        self.frozen = {i: self._row(i) for i, m in enumerate(self.members) if not m.running}
        self.sharding = members_sharding(theta0)
        self._split_members(self.sharding, theta0.shape[0])
        if _checkpoint.exists(run.checkpoint, run.where):
            self._resume()

    def _split_members(self, sharding, members: int) -> None:
        # Members split over a mesh axis: every per-member array of the state follows theta0,
        # so each device holds only its members' optimiser state (not what XLA picks at init).
        if sharding is None:
            return
        put = lambda x: jax.device_put(x, sharding) if x.ndim and x.shape[0] == members else x
        self.dynamic, self.good_theta, self.good_loss = jax.tree.map(
            put, (self.dynamic, self.good_theta, self.good_loss))

    # -- checkpoints ---------------------------------------------------------------------
    def _books(self) -> dict:
        ms = self.members
        results = [-1 if m.result is None else int(m.result._value) for m in ms]
        history = np.concatenate([np.asarray(m.history, np.float64) for m in ms])
        return dict(steps=[m.steps for m in ms], results=results, done=[m.done for m in ms],
                    by_callback=[m.by_callback for m in ms],
                    lengths=[len(m.history) for m in ms], history=history,
                    details=_checkpoint.encode_details([m.detail for m in ms]))  # fmt: skip

    def _resume(self) -> None:
        run = self.run
        self.dynamic, self.good_theta, self.good_loss, books = _checkpoint.resume(
            cast(str, run.checkpoint), run.fingerprint, run.resume == "force", self.dynamic,
            self.good_theta, self.good_loss, run.where,
        )  # fmt: skip
        ends = np.cumsum(books["lengths"])
        for i, m in enumerate(self.members):
            m.history = books["history"][ends[i] - books["lengths"][i] : ends[i]].tolist()
            m.steps, m.done = int(books["steps"][i]), bool(books["done"][i])
            m.by_callback = bool(books["by_callback"][i])
            r = int(books["results"][i])
            m.result = None if r < 0 else result_at(r)
            m.detail = books["details"][i]
        # A member failed by a raise was saved with its own state: it carries a running
        # member's again (`_recover_rows`), and keeps its own for what it reports.
        failed = [i for i, m in enumerate(self.members) if m.result is RESULTS.solver_failed]
        running = [i for i, m in enumerate(self.members) if m.running]
        self.frozen = {i: self._row(i) for i in failed}
        if self.batched and failed and running:
            self.dynamic = self._standing_in(running[0])

    def _save(self, evaluated: int) -> None:
        run = self.run
        if run.checkpoint is None:
            return
        finished = evaluated >= run.max_steps or not any(m.running for m in self.members)
        # `make_run` sets `checkpoint_every` whenever `checkpoint` is set.
        if evaluated % cast(int, run.checkpoint_every) and not finished:
            return
        try:
            _checkpoint.save(run.checkpoint, run.fingerprint, self._own_states(),
                             self.good_theta, self.good_loss, self._books())  # fmt: skip
        except OSError as e:
            if not self.warned:
                self.warned = True
                msg = _MSG_CHECKPOINT_FAILED.format(where=run.where, path=run.checkpoint, err=e)
                warnings.warn(msg, RuntimeWarning, stacklevel=5)

    def _callbacks(self) -> None:
        # Every process calls the callback (a stop must be the same everywhere); a theta
        # split over processes is handed over as a local copy. Each member's last point
        # whose loss is known, with the steps taken to reach it (`history[step] == loss`):
        # the point the chunk ended on has not been evaluated yet.
        losses, thetas = np.asarray(host(self.good_loss), np.float64), local(self.good_theta)
        raised = None
        for i, m in enumerate(self.members):
            if not m.running:
                continue
            step = len(m.history) - 1
            try:  # a return `bool` refuses (an array of several values): the callback failed
                stop = bool(self.run.callback(step, thetas[i], float(losses[i])))
            except Exception as e:  # not KeyboardInterrupt: that one is Ctrl-C (`drive`)
                raised = (i, step, e)
                break
            m.by_callback = m.by_callback or stop
        if self.spans:  # one answer on every process (`_distributed.agree_callbacks`)
            raised, stops = agree_callbacks(raised, [m.by_callback for m in self.members])
            for m, stop in zip(self.members, stops):
                m.by_callback = stop
        if raised is not None:
            self._callback_raised(*raised)

    def _callback_raised(self, i: int, step: int, e: Exception) -> None:
        """Member `i`'s callback raised `e` at `step`: it fails there, where the callback was
        given its point; every other member still running stops as by Ctrl-C."""
        self.raised = e
        member = f"member {i} " if self.batched else ""
        message = MSG_CALLBACK.format(kind=type(e).__name__, line=first_line(e),
                                      where=self.run.where, member=member, steps=step)  # fmt: skip
        for j, m in enumerate(self.members):
            if j == i:
                m.result, m.detail, m.message = RESULTS.solver_failed, message, message
            elif m.running:
                m.result, m.detail = RESULTS.interrupted, (
                    f"stopped after {m.steps} steps because the callback raised "
                    f"{type(e).__name__} for member {i}; `res.theta` is the point reached at "
                    "the last finished chunk")  # fmt: skip

    def _report(self, bar: Progress, evaluated: int) -> None:
        losses = np.asarray(host(self.good_loss), dtype=np.float64)
        finite = losses[np.isfinite(losses)]
        bar.update(evaluated, float(finite.min()) if finite.size else float("nan"))

    def _active(self):
        """Which members run, as a device array (made again only when it changes)."""
        running = tuple(m.running for m in self.members)
        if self.active[0] != running:
            self.active = (running, jnp.asarray(running))
        return self.active[1]

    def chunks(self, bar: Progress, interrupt) -> None:
        run = self.run
        while not interrupt:
            running = [m for m in self.members if m.running]
            if not running or running[0].steps >= run.max_steps:
                return
            n = min(run.chunk, run.max_steps - running[0].steps)
            active = self._active()
            keep = (self.stepper, self.args, self.static, self.good_theta, self.good_loss,
                    active, jnp.asarray(n), run.chunk, self.layout)  # fmt: skip
            try:
                self._absorb(run_chunk(keep, self.dynamic))
            except RUNTIME_ERRORS as e:
                if not one_member_may_be_at_fault(e):
                    raise
                self._recover(keep, e)
            # Members that ran this chunk took `n` steps unless they stopped in it: the run's
            # step count is the most any of them took, not the first member's.
            evaluated = max(m.steps for m in running)
            self._report(bar, evaluated)
            self._save(evaluated)
            if run.callback is not None:
                self._callbacks()

    def stop_all(self, result: RESULTS, detail: str = "") -> None:
        for m in self.members:
            if m.running:
                m.result, m.detail = result, detail


def drive(stepper: AbstractStepper, theta0, args: tuple, run: Run):
    """Run `stepper` from `theta0` (1-D: one run; 2-D: one member per row) under `run`."""
    batched = theta0.ndim == 2
    warn_if_pool_starves(stepper, theta0, args, run.where)
    spans = spans_processes((theta0, args))
    with Progress(run.max_steps, run.progress, run.where) as bar, \
            catch_sigint(spans) as interrupt:  # fmt: skip
        try:
            driver = _Driver(stepper, theta0, args, run, batched)
        except RUNTIME_ERRORS as e:  # methods whose state needs the loss (or memory) at theta0
            return deliver(_failed_at_start(stepper, args, theta0, run, e), batched, run)
        try:
            driver.chunks(bar, interrupt)
        except KeyboardInterrupt:
            driver.stop_all(RESULTS.interrupted)
        except RUNTIME_ERRORS as e:
            driver.stop_all(RESULTS.solver_failed, failure_detail(e))
        if interrupt:
            driver.stop_all(RESULTS.interrupted)
    if driver.raised is None:
        return deliver(driver.conclude(), batched, run, driver.sharding)
    out = deliver(driver.conclude(), batched, run, driver.sharding, throw=False)
    message = next(m.message for m in driver.members if m.message)
    raise OptimizationError(out, message) from driver.raised


def _failed_at_start(stepper: AbstractStepper, args: tuple, theta0, run: Run,
                     e: Exception) -> list[Solution]:  # fmt: skip
    """Every member as `solver_failed` at `theta0` with step 0: setting up the method's state
    evaluated the loss (or its gradient), which raised (`eqx.error_if`), or allocated more
    than memory holds. `loss` is the loss at `theta0` where it can be evaluated, as for a
    member of an ensemble whose setup raised alone (`Conclusion`); else NaN."""
    detail = failure_detail(e, MSG_OUT_OF_MEMORY)
    rows = local(theta0) if theta0.ndim == 2 else local(theta0)[None]
    losses = _losses_at_start(stepper, args, theta0)
    return [finish(theta=row, loss=loss, history=[loss], steps=0,
                   result=RESULTS.solver_failed, wall_time=time.perf_counter() - run.start,
                   method=run.method, where=run.where, detail=detail, throw=False)
            for row, loss in zip(rows, losses)]  # fmt: skip


def _losses_at_start(stepper: AbstractStepper, args: tuple, theta0) -> list[float]:
    """The loss at each row of `theta0` (NaN where evaluating it raises too)."""
    layout = member_layout(theta0)
    thetas = theta0 if theta0.ndim == 2 else theta0[None]
    out = alone(values_at, stepper, args, thetas, layout)
    if isinstance(out, Exception) and layout == "vmap":  # each alone: one may raise
        out = [alone(values_at, stepper, args, thetas[i : i + 1], None)
               for i in range(thetas.shape[0])]  # fmt: skip
        return [float("nan") if isinstance(o, Exception) else float(np.asarray(host(o))[0])
                for o in out]  # fmt: skip
    if isinstance(out, Exception):
        return [float("nan")] * thetas.shape[0]
    return np.asarray(host(out), dtype=np.float64).tolist()


def deliver(solutions: list[Solution], batched: bool, run: Run, sharding=None,
            throw: bool | None = None):  # fmt: skip
    """A `Solution` (1-D `theta0`) or an `EnsembleSolution` (its `theta` on `sharding`: the
    members' split over a mesh), raised under `throw` (default `run.throw`) when a run (or
    any member) failed."""
    out = EnsembleSolution(tuple(solutions), time.perf_counter() - run.start, sharding) \
        if batched else solutions[0]  # fmt: skip
    return raise_if_failed(out, run.throw if throw is None else throw)
