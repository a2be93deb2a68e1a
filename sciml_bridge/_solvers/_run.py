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
- a failing checkpoint write: a warning, the run goes on.
"""

import dataclasses
import re
import time
import warnings
from typing import cast

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.tree_util as jtu
import numpy as np

from .._distributed import host, local
from .._progress import Progress
from .._result import RESULTS, EnsembleSolution, Solution, finish, raise_if_failed, result_at
from .._sharding import member_layout, members_sharding
from . import _checkpoint
from ._cpu_pool import warn_if_pool_starves
from ._fused import final_members, init_members, model_states, run_chunk, values_at
from ._interrupt import catch_sigint
from ._recover import (
    RUNTIME_ERRORS,
    chunk_output,
    one_member_may_be_at_fault,
    run_until_raise,
)
from ._setup import Run
from ._stepper import AbstractStepper


_MSG_CHECKPOINT_FAILED = """\
`{where}` could not write the checkpoint {path!r} ({err}). The run goes on and its result is
returned as usual, but no checkpoint is kept until a write succeeds.
Fix: free disk space or restore the directory, or pass another `checkpoint=` path."""


@dataclasses.dataclass
class _Member:
    """What the host keeps per member between chunks."""

    history: list
    steps: int = 0
    result: RESULTS | None = None  # a failure reported by a chunk (or a runtime error)
    done: bool = False  # the method's stopping rule was met
    by_callback: bool = False
    detail: str = ""
    at_start: bool = False  # failed while its state was set up: no model state to report

    @property
    def running(self) -> bool:
        return self.result is None and not self.done and not self.by_callback


def first_line(e: Exception) -> str:
    """The failure's own message, without the tracebacks JAX and Equinox wrap around it."""
    text = str(e)
    found = re.search(r"EquinoxRuntimeError: (.+)", text)
    if found:
        return found.group(1).strip()[:300]
    lines = [line for line in text.splitlines() if line.strip() and "stack" not in line]
    return (lines[0] if lines else type(e).__name__)[:300]


class _Driver:
    def __init__(self, stepper: AbstractStepper, theta0, args: tuple, run: Run, batched: bool):
        self.stepper, self.args, self.run, self.batched = stepper, args, run, batched
        self.layout = member_layout(theta0)
        self.members = [_Member([]) for _ in range(theta0.shape[0] if batched else 1)]
        self.warned, self.active = False, (None, None)
        self.frozen: dict[int, object] = {}  # solver-state rows of members a raise stopped
        try:
            self.dynamic, self.static, self.good_theta, self.good_loss = init_members(
                stepper, args, theta0, self.layout
            )
        except RUNTIME_ERRORS as e:
            if not (batched and one_member_may_be_at_fault(e)):
                raise
            self._init_alone(theta0, e)
        self.sharding = members_sharding(theta0)
        self._split_members(self.sharding, theta0.shape[0])
        if _checkpoint.exists(run.checkpoint, run.where):
            self._resume()
        self.stateful = stepper.model_state(eqx.combine(self.dynamic, self.static)) is not None

    def _init_alone(self, theta0, e: Exception) -> None:
        """Set up each member alone after setting up all at once raised: a member whose own
        setup raises fails at `theta0`; the others start as usual. Raises `e` if all fail."""
        if self.layout != "vmap":  # a CPU mesh: a device that raised stopped them all
            raise e
        rows = [_alone(init_members, self.stepper, self.args, theta0[i], None)
                for i in range(theta0.shape[0])]  # fmt: skip
        healthy = next((r for r in rows if not isinstance(r, Exception)), None)
        if healthy is None:
            raise e
        for m, r in zip(self.members, rows):
            if isinstance(r, Exception):
                m.result, m.detail, m.at_start = RESULTS.solver_failed, failure_detail(r), True
        # A failed member's state is a stand-in (a healthy member's): it never runs again.
        dynamic = [healthy[0] if isinstance(r, Exception) else r[0] for r in rows]
        nan = healthy[3]
        self.dynamic = jax.tree.map(lambda *xs: jnp.concatenate(xs), *dynamic)
        self.static, self.good_theta = healthy[1], jnp.array(theta0)
        self.good_loss = jnp.concatenate([nan] * len(rows))

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
        for i in failed:
            self.frozen[i] = jax.tree.map(lambda x: x[i : i + 1], self.dynamic)  # noqa: B023
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

    def _rows(self, pick) -> object:
        """The solver states with member `i`'s row taken from `pick(i)` (a leading axis of 1),
        placed as the members are."""
        rows = [pick(i) for i in range(len(self.members))]
        out = jax.tree.map(lambda *xs: jnp.concatenate(xs), *rows)
        return out if self.sharding is None else jax.device_put(out, self.sharding)

    def _own_states(self):
        """The solver states with every failed member's own (not its stand-in's)."""
        if not self.frozen or not self.batched:
            return self.dynamic
        own = lambda i: self.frozen.get(i, jax.tree.map(lambda x: x[i : i + 1], self.dynamic))
        return self._rows(own)

    def _standing_in(self, healthy: int):
        """The solver states with every failed member's row replaced by member `healthy`'s."""
        row = lambda i: jax.tree.map(lambda x: x[i : i + 1], self.dynamic)
        return self._rows(lambda i: row(healthy) if i in self.frozen else row(i))

    # -- the loop --------------------------------------------------------------------------
    def _absorb(self, out) -> None:
        self.dynamic, (self.good_theta, self.good_loss, result, done, count, hist) = out
        result, done, count, hist = host((result, done, count, hist))
        for i, m in enumerate(self.members):
            if not m.running:
                continue
            losses = np.asarray(hist[i, : int(count[i])], dtype=np.float64)
            m.steps += int(count[i])
            if int(result[i]) != int(RESULTS.successful._value):
                m.result = result_at(int(result[i]))
                if losses.size and not np.isfinite(losses[-1]):
                    losses = losses[:-1]
            elif bool(done[i]):
                m.done = True
            m.history.extend(losses.tolist())

    def _callbacks(self) -> None:
        # Every process calls the callback (a stop must be the same everywhere); a theta
        # split over processes is handed over as a local copy. Each member's last point
        # whose loss is known, with the steps taken to reach it (`history[step] == loss`):
        # the point the chunk ended on has not been evaluated yet.
        losses, thetas = np.asarray(host(self.good_loss), np.float64), local(self.good_theta)
        for i, m in enumerate(self.members):
            step = len(m.history) - 1
            if m.running and self.run.callback(step, thetas[i], float(losses[i])):
                m.by_callback = True

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

    def _recover(self, keep: tuple, e: Exception) -> None:
        """A chunk raised (`e`): each running member runs it again alone, up to the step that
        raises (`run_until_raise`). Only the members that raise fail, each at its last point
        with a known loss, as a single run does; the others go on."""
        if not self.batched:
            (dynamic, theta, loss), end, error = run_until_raise(keep, self.dynamic, 0, e)
            self._absorb((dynamic, chunk_output(theta, loss, keep[7], [end])))
            return self._failed([0], [error], dynamic)
        if self.layout != "vmap":  # a CPU mesh: a device that raised stopped them all
            raise e
        return self._recover_rows(keep)

    def _recover_rows(self, keep: tuple) -> None:
        """`_recover` for vmapped members: a batched loop computes inactive members too (and
        would raise again on them), so each runs alone, as a single run does (not as a batch
        of one: a vmapped Optax line search evaluates trial points a single run never does),
        and a member that fails carries a healthy member's state from then on."""
        stepper, args, static, good_theta, good_loss, active, n, chunk, _ = keep
        rows, ends, errors = [], [], []
        for i, m in enumerate(self.members):
            row = lambda x: x[i : i + 1]  # noqa: B023 (used at once)
            out = (jax.tree.map(row, self.dynamic), row(good_theta), row(good_loss))
            end, error = ([], int(RESULTS.successful._value), False), None
            if m.running:
                alone = (stepper, args, static, out[1], out[2], row(active), n, chunk, None)
                out, end, error = run_until_raise(alone, out[0], 0)
            rows.append(out)
            ends.append(end)
            errors.append(error)
        failed = [i for i, error in enumerate(errors) if error is not None]
        concat = lambda rows: jax.tree.map(lambda *xs: jnp.concatenate(xs), *rows)
        states = concat([r[0] for r in rows])
        # A failed member never runs again, but a batched loop still computes its step from
        # where it is (and would raise again): it carries a member that ran instead, and so
        # does every member that failed before (its stand-in may be the state that raised).
        ok = [i for i, m in enumerate(self.members) if m.running and i not in failed]
        stand_in = lambda i: ok and (i in failed or i in self.frozen or self.members[i].at_start)
        carried = concat([rows[ok[0] if stand_in(i) else i][0] for i in range(len(rows))])
        out = (carried, chunk_output(concat([r[1] for r in rows]), concat([r[2] for r in rows]),
                                     chunk, ends))  # fmt: skip
        if self.sharding is not None:
            out = jax.tree.map(lambda x: jax.device_put(x, self.sharding), out)
        self._absorb(out)
        self._failed(failed, [errors[i] for i in failed], states)

    def _failed(self, which: list[int], errors: list, states) -> None:
        """Members `which` stopped by `errors`, their model states taken from `states` (the
        solver states where they stopped, a leading member axis) for a stateful loss."""
        for i, error in zip(which, errors):
            if error is None:
                continue
            self.members[i].result = RESULTS.solver_failed
            self.members[i].detail = failure_detail(error)
            self.frozen[i] = jax.tree.map(lambda x: x[i : i + 1], states)  # noqa: B023

    def stop_all(self, result: RESULTS, detail: str = "") -> None:
        for m in self.members:
            if m.running:
                m.result, m.detail = result, detail

    # -- the end -------------------------------------------------------------------------
    def conclude(self) -> list[Solution]:
        final, self.model = self._final()
        good = (local(self.good_theta), np.asarray(host(self.good_loss), dtype=np.float64))
        # The loss a step reports is `value` at its point, except on a minibatch (or with
        # the step's key): then `res.loss` of a member that keeps its last good point is the
        # loss on all the data there, evaluated here.
        fresh = [not m.history or not self.stepper.step_loss_is_value for m in self.members]
        if any(fresh):
            good = (good[0], self._values_at_good(good[1], fresh))
        return [self._one(i, m, good, final) for i, m in enumerate(self.members)]

    def _final(self):
        """`(theta, loss)` at every member's last point (`theta` stays put) and the model
        state there. Where evaluating the loss there raises (`eqx.error_if`), that member
        fails, keeping the last point whose loss is known, and `(None, model state)` for a
        single run (NaN in that member's place for an ensemble)."""
        at = lambda dynamic, layout: final_members(self.stepper, self.args, self.static,
                                                   dynamic, layout)  # fmt: skip
        try:
            theta, loss, model = at(self.dynamic, self.layout)
            return (local(theta), np.asarray(host(loss), dtype=np.float64)), model
        except RUNTIME_ERRORS as e:
            if self.layout != "vmap":  # one run, or a CPU mesh (a raise stopped every device)
                for m in self.members:
                    self._failed_by(m, e)
                model = model_states(self.stepper, self.static, self.dynamic)
                return None, model if self.batched else jtu.tree_map(lambda x: x[0], model)
        thetas, losses, models = [], [], []
        for i, m in enumerate(self.members):
            row = jax.tree.map(lambda x: x[i : i + 1], self.dynamic)  # noqa: B023
            out = _alone(at, row, None)
            if isinstance(out, Exception):
                self._failed_by(m, out)
                out = (self.good_theta[i : i + 1], jnp.full(1, jnp.nan),
                       model_states(self.stepper, self.static, row))  # fmt: skip
            else:  # a single run's kernel hands back `theta` and the state without the axis
                out = (out[0][None], out[1], jtu.tree_map(lambda x: x[None], out[2]))
            thetas.append(local(out[0]))
            losses.append(np.asarray(host(out[1]), dtype=np.float64))
            models.append(out[2])
        model = jax.tree.map(lambda *xs: jnp.concatenate(xs), *models)
        return (jnp.concatenate(thetas), np.concatenate(losses)), model

    @staticmethod
    def _failed_by(m: _Member, e: Exception) -> None:
        if m.result is None or m.result is RESULTS.interrupted:
            m.result, m.detail = RESULTS.solver_failed, failure_detail(e)

    def _values_at_good(self, losses, fresh: list[bool]):
        """The loss at each member's last good point where `fresh` (a member stopped before
        any step finished keeps `theta0`; `loss == loss(theta)`), unless evaluating it fails
        too."""
        try:
            start = np.asarray(host(values_at(self.stepper, self.args, self.good_theta,
                                              self.layout)), dtype=np.float64)  # fmt: skip
        except RUNTIME_ERRORS:
            if not self.batched:
                return losses
            if self.layout != "vmap":  # a CPU mesh: a device that raised stopped them all
                return losses
            start = [_alone(values_at, self.stepper, self.args, self.good_theta[i : i + 1],
                            None) for i in range(len(self.members))]  # fmt: skip
            start = [lo if isinstance(s, Exception) else float(np.asarray(host(s))[0])
                     for lo, s in zip(losses, start)]  # fmt: skip
        return np.array([s if f else lo for lo, s, f in zip(losses, start, fresh)])

    def _one(self, i: int, m: _Member, good, final) -> Solution:
        theta, loss, history = good[0], float(good[1][i]), list(m.history)
        result, text = self._ending(m)
        failed = m.result is not None and m.result is not RESULTS.interrupted
        if final is not None and not failed and np.isfinite(final[1][i]):
            theta, loss = final[0], float(final[1][i])
            history.append(loss)
        else:
            if final is not None and not failed:
                result, text = RESULTS.nonfinite, ""
            if history and not self.stepper.step_loss_is_value:
                history[-1] = loss  # the last good point's loss on all the data: `res.loss`
        if result is RESULTS.nonfinite and not text:
            text = self._nonfinite_text(len(history))
        run = self.run
        theta = theta[i] if theta.ndim == 2 else theta
        model = jtu.tree_map(lambda x: x[i], self.model) if self.batched else self.model
        if i in self.frozen and self.stateful:  # where it stopped, not its stand-in's
            kept = model_states(self.stepper, self.static, self.frozen[i])
            model = jtu.tree_map(lambda x: x[0], kept)
        model = None if m.at_start else model
        return finish(theta=theta, loss=loss, state=model,
                      history=history or [loss], steps=max(len(history) - 1, 0),
                      result=result, wall_time=time.perf_counter() - run.start,
                      method=run.method, where=run.where, text=text, throw=False)  # fmt: skip

    @staticmethod
    def _nonfinite_text(n_good: int) -> str:
        if n_good == 0:
            return "the loss is non-finite at `theta0` itself (step 0)"
        return (f"the loss became non-finite at step {n_good}; the returned `theta` is from "
                f"step {n_good - 1}, the last with a finite loss")  # fmt: skip

    def _ending(self, m: _Member) -> tuple[RESULTS, str]:
        if m.result is RESULTS.interrupted:
            return m.result, f"interrupted (Ctrl-C) after {m.steps} steps; `res.theta` is the " \
                             "point reached at the last finished chunk"
        if m.result is not None:
            return m.result, m.detail
        if m.by_callback:
            return RESULTS.successful, f"stopped by `callback` after {m.steps} steps"
        if m.done:
            return RESULTS.successful, f"converged after {m.steps} steps: " \
                                       f"{self.stepper.criterion()}"
        if self.stepper.has_stopping_rule():
            return RESULTS.max_steps_reached, ""
        return RESULTS.successful, (
            f"ran its full budget of `max_steps={self.run.max_steps}` steps. This method has no "
            "stopping rule here, so that is its normal end, not a convergence test (pass `tol=` "
            "to stop on the gradient norm)")


def drive(stepper: AbstractStepper, theta0, args: tuple, run: Run):
    """Run `stepper` from `theta0` (1-D: one run; 2-D: one member per row) under `run`."""
    batched = theta0.ndim == 2
    warn_if_pool_starves(stepper, theta0, args, run.where)
    with Progress(run.max_steps, run.progress, run.where) as bar, catch_sigint() as interrupt:
        try:
            driver = _Driver(stepper, theta0, args, run, batched)
        except RUNTIME_ERRORS as e:  # methods whose state needs the loss (or memory) at theta0
            return deliver(_failed_at_start(theta0, run, e), batched, run)
        try:
            driver.chunks(bar, interrupt)
        except KeyboardInterrupt:
            driver.stop_all(RESULTS.interrupted)
        except RUNTIME_ERRORS as e:
            driver.stop_all(RESULTS.solver_failed, failure_detail(e))
        if interrupt:
            driver.stop_all(RESULTS.interrupted)
    return deliver(driver.conclude(), batched, run, driver.sharding)


def _alone(kernel, *xs):
    """`kernel(*xs)`, or the runtime error it raised."""
    try:
        return kernel(*xs)
    except RUNTIME_ERRORS as e:
        return e


_MSG_OUT_OF_MEMORY = (
    "the method's state at `theta0` does not fit in memory. Dense methods keep an n x n matrix "
    '("ssbfgs"/"ssbroyden": the inverse Hessian, 8 n^2 bytes per member in float64). Fix: a '
    'limited-memory method ("lbfgs"), Gauss-Newton with `solver="cg"`, fewer members, or a '
    "smaller model"
)
_MSG_STEP_MEMORY = (
    "a step needs more memory than the device holds. Least-squares methods form the Jacobian "
    "of every residual (m x n, 8 m n bytes per member in float64), dense quasi-Newton methods "
    "an n x n matrix, and the natural-gradient line search its trial points (all at once on "
    'an accelerator). Fix: Gauss-Newton with `solver="cg"` (matrix-free), `line_search_batch=` '
    '(trial points a few at a time), a limited-memory method ("lbfgs"), fewer residual points '
    "or members, or a smaller model"
)


def failure_detail(e: Exception, fix: str = _MSG_STEP_MEMORY) -> str:
    """The failure's own line (`first_line`); when it is XLA's out-of-memory line, followed by
    what holds the memory and how to fit (`fix`)."""
    detail = first_line(e)
    if "RESOURCE_EXHAUSTED" not in detail:
        return detail
    return f"{detail.rstrip('.')}: {fix}"


def _failed_at_start(theta0, run: Run, e: Exception) -> list[Solution]:
    """Every member as `solver_failed` at `theta0` with step 0: setting up the method's state
    evaluated the loss, which raised (`eqx.error_if`), or allocated more than memory holds."""
    detail = failure_detail(e, _MSG_OUT_OF_MEMORY)
    rows = local(theta0) if theta0.ndim == 2 else local(theta0)[None]
    return [finish(theta=row, loss=float("nan"), history=[float("nan")], steps=0,
                   result=RESULTS.solver_failed, wall_time=time.perf_counter() - run.start,
                   method=run.method, where=run.where, detail=detail, throw=False)
            for row in rows]  # fmt: skip


def deliver(solutions: list[Solution], batched: bool, run: Run, sharding=None):
    """A `Solution` (1-D `theta0`) or an `EnsembleSolution` (its `theta` on `sharding`: the
    members' split over a mesh), raised under `throw=True` when a run (or any member) failed."""
    out = EnsembleSolution(tuple(solutions), time.perf_counter() - run.start, sharding) \
        if batched else solutions[0]  # fmt: skip
    return raise_if_failed(out, run.throw)
