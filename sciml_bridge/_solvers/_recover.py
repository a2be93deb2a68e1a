"""After a chunk raised: run it again up to the step that raises, one member at a time.

A runtime error inside the loss (`eqx.error_if`, a Diffrax solve under `throw=True`) aborts
the whole compiled chunk: up to `chunk_size` steps, and, in an ensemble, every member, since
`error_if` under `vmap` fires when any member trips it. The chunk's start state is kept (the
chunk donates nothing), so the driver runs the chunk again for one member at a time, here,
and finds the longest run of steps that does not raise by halving: from the last state known
to run, try half of the steps left; keep them if they run, else halve again. That costs at
most about twice the chunk's steps, in `log2(chunk)` dispatches of the same compiled program
(the number of steps is traced). The member then ends as a non-finite loss ends it: at its
last point with a known loss, its steps and loss curve up to there.

`Members` is the driver's per-member side (`_run._Driver` builds on it): its books, and how a
member that raised, here or while its state was set up, is kept apart from the others.
"""

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from .._distributed import host
from .._result import RESULTS, result_at
from ._failures import RUNTIME_ERRORS, failure_detail
from ._fused import init_members, run_chunk
from ._on_mesh import rerun_alone
from ._setup import Run
from ._stepper import AbstractStepper


def alone(kernel, *xs):
    """`kernel(*xs)`, or the runtime error it raised."""
    try:
        return kernel(*xs)
    except RUNTIME_ERRORS as e:
        return e


def run_until_raise(keep: tuple, dynamic, member: int, error: Exception | None = None):
    """`run_chunk(keep, dynamic)` for the one active `member` of `keep`, or, if it raises
    (`error`: it is known to), its longest run of steps that does not. Returns the solver
    state, last good `theta` and loss of every member after it, that member's losses, end
    code and `done`, and the error (`None` when its whole chunk ran, or it stopped by itself
    first). Call it only on a layout where inactive members are not computed (one run, a row,
    or members mapped one after another)."""
    stepper, args, static, good_theta, good_loss, active, n, chunk, layout = keep

    def probe(steps, dynamic, good_theta, good_loss):
        keep = (stepper, args, static, good_theta, good_loss, active, jnp.asarray(steps),
                chunk, layout)  # fmt: skip
        return run_chunk(keep, dynamic)

    lo, hi, losses = 0, int(n), []  # `lo` steps run, `hi` raise
    if error is not None:
        hi = int(n)
    result, done = int(RESULTS.successful._value), False
    while hi - lo > (1 if error is not None else 0):
        steps = hi - lo if error is None else (hi - lo) // 2
        try:
            new, (theta, loss, res, stop, count, hist) = probe(steps, dynamic, good_theta,
                                                               good_loss)  # fmt: skip
        except RUNTIME_ERRORS as e:
            hi, error = lo + steps, e
            continue
        taken = int(np.asarray(count)[member])
        losses.extend(np.asarray(hist, dtype=np.float64)[member, :taken].tolist())
        dynamic, good_theta, good_loss, lo = new, theta, loss, lo + taken
        result, done = int(np.asarray(res)[member]), bool(np.asarray(stop)[member])
        if result != int(RESULTS.successful._value) or done or error is None:
            error = None  # it stopped by itself before the step that raises, or never raised
            break
    return (dynamic, good_theta, good_loss), (losses, result, done), error


def chunk_output(good_theta, good_loss, chunk: int, ends: list[tuple]):
    """What `run_chunk` returns beside the state, from each member's `(losses, result, done)`
    (`run_until_raise`), as the kernel's dtypes have it."""
    hist = np.full((len(ends), chunk), np.nan, dtype=np.dtype(good_loss.dtype))
    for row, (losses, _, _) in zip(hist, ends):
        row[: len(losses)] = losses
    code = jnp.asarray(RESULTS.successful._value).dtype
    return (good_theta, good_loss, jnp.asarray([r for _, r, _ in ends], code),
            jnp.asarray([d for _, _, d in ends], bool),
            jnp.asarray([len(lo) for lo, _, _ in ends], jnp.asarray(0).dtype),
            jnp.asarray(hist))  # fmt: skip


def _concat(rows):
    return jax.tree.map(lambda *xs: jnp.concatenate(xs), *rows)


@dataclasses.dataclass
class Member:
    """What the host keeps per member between chunks."""

    history: list
    steps: int = 0
    result: RESULTS | None = None  # a failure reported by a chunk (or a runtime error)
    done: bool = False  # the method's stopping rule was met
    by_callback: bool = False
    detail: str = ""
    message: str = ""  # the whole message, when it is not phrased from `result` (a callback's)

    @property
    def running(self) -> bool:
        return self.result is None and not self.done and not self.by_callback


class Members:
    """The driver's members: their books, and their solver states kept apart after a raise.

    A batched loop still computes a member that stopped (and would raise again on it), so a
    member a raise stopped (`frozen`: its own solver-state row, kept for what it reports)
    carries a running member's state from then on, its stand-in."""

    stepper: AbstractStepper
    args: tuple
    run: Run
    batched: bool
    layout: Any
    sharding: Any
    members: list[Member]
    frozen: dict[int, Any]  # solver-state rows of members a raise stopped
    dynamic: Any
    static: Any
    good_theta: Any
    good_loss: Any

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

    def _row(self, i: int, states=None):
        """Member `i`'s row of `states` (default: the solver states), a leading axis of 1."""
        states = self.dynamic if states is None else states
        return jax.tree.map(lambda x: x[i : i + 1], states)

    def _init_alone(self, theta0, e: Exception) -> None:
        """Set up each member alone after setting up all at once raised: a member whose own
        setup raises fails at `theta0`; the others start as usual. Raises `e` if all fail."""
        if not rerun_alone(self.layout):
            raise e
        rows = [alone(init_members, self.stepper, self.args, theta0[i], None)
                for i in range(theta0.shape[0])]  # fmt: skip
        healthy = next((r for r in rows if not isinstance(r, Exception)), None)
        if healthy is None:
            raise e
        for m, r in zip(self.members, rows):
            if isinstance(r, Exception):
                m.result, m.detail = RESULTS.solver_failed, failure_detail(r)
        # A failed member's state is a stand-in (a healthy member's): it never runs again.
        dynamic = [healthy[0] if isinstance(r, Exception) else r[0] for r in rows]
        self.dynamic = _concat(dynamic)
        self.static, self.good_theta = healthy[1], jnp.array(theta0)
        self.good_loss = jnp.concatenate([healthy[3]] * len(rows))

    def _rows(self, pick) -> object:
        """The solver states with member `i`'s row taken from `pick(i)` (a leading axis of 1),
        placed as the members are."""
        out = _concat([pick(i) for i in range(len(self.members))])
        return out if self.sharding is None else jax.device_put(out, self.sharding)

    def _own_states(self):
        """The solver states with every failed member's own (not its stand-in's)."""
        if not self.frozen or not self.batched:
            return self.dynamic
        return self._rows(lambda i: self.frozen.get(i, self._row(i)))

    def _standing_in(self, healthy: int):
        """The solver states with every failed member's row replaced by member `healthy`'s."""
        return self._rows(lambda i: self._row(healthy) if i in self.frozen else self._row(i))

    def _recover(self, keep: tuple, e: Exception) -> None:
        """A chunk raised (`e`): each running member runs it again alone, up to the step that
        raises (`run_until_raise`). Only the members that raise fail, each at its last point
        with a known loss, as a single run does; the others go on."""
        if not self.batched:
            (dynamic, theta, loss), end, error = run_until_raise(keep, self.dynamic, 0, e)
            self._absorb((dynamic, chunk_output(theta, loss, keep[7], [end])))
            return self._failed([0], [error], dynamic)
        if not rerun_alone(self.layout):
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
            out = (self._row(i), row(good_theta), row(good_loss))
            end, error = ([], int(RESULTS.successful._value), False), None
            if m.running:
                own = (stepper, args, static, out[1], out[2], row(active), n, chunk, None)
                out, end, error = run_until_raise(own, out[0], 0)
            rows.append(out)
            ends.append(end)
            errors.append(error)
        failed = [i for i, error in enumerate(errors) if error is not None]
        states = _concat([r[0] for r in rows])
        # A failed member never runs again, but a batched loop still computes its step from
        # where it is (and would raise again): it carries a member that ran instead, and so
        # does every member that failed before (its stand-in may be the state that raised).
        ok = [i for i, m in enumerate(self.members) if m.running and i not in failed]
        stand_in = lambda i: ok and (i in failed or i in self.frozen)
        carried = _concat([rows[ok[0] if stand_in(i) else i][0] for i in range(len(rows))])
        out = (carried, chunk_output(_concat([r[1] for r in rows]),
                                     _concat([r[2] for r in rows]), chunk, ends))  # fmt: skip
        if self.sharding is not None:
            out = jax.tree.map(lambda x: jax.device_put(x, self.sharding), out)
        self._absorb(out)
        self._failed(failed, [errors[i] for i in failed], states)

    def _failed(self, which: list[int], errors: list, states) -> None:
        """Members `which` stopped by `errors`, their own solver states taken from `states`
        (where they stopped, a leading member axis): what a stateful member reports."""
        for i, error in zip(which, errors):
            if error is None:
                continue
            self.members[i].result = RESULTS.solver_failed
            self.members[i].detail = failure_detail(error)
            self.frozen[i] = self._row(i, states)
