"""Ensembles: train a `(members, n)` matrix of thetas at once, each member on its own.

The fused loop of `_solvers/_fused.py` is `jax.vmap`ped over members. A batched
`lax.while_loop` keeps running while any member runs and freezes the carry of the members
that stopped, so a member that hits a NaN stops alone, keeps its own last good theta, and
leaves the others' arithmetic untouched: each member equals its single run.
"""

import dataclasses
import time

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from ._progress import Progress
from ._result import Solution
from ._solvers._driver import (
    Run,
    _absorb,
    _Book,
    _conclude,
    _ending,
    _failure,
    drive,
)
from ._solvers._fused import (
    CONVERGED,
    RUNNING,
    AbstractStepper,
    _final,
    _loop,
    init_state,
    run_whole,
)


@dataclasses.dataclass(frozen=True)
class EnsembleSolution:
    """What `sb.minimize`/`sb.least_squares` return for a `(members, n)` `theta0`.

    `res[i]` (or `res.members[i]`) is member `i`'s own `sb.Solution`; `theta` stacks their
    parameters, `loss`/`success`/`steps` are NumPy arrays over members. A member's failure
    never raises: it is reported in its own `Solution` (`res[i].message`).
    """

    members: tuple[Solution, ...]
    wall_time: float

    @property
    def theta(self) -> jax.Array:
        return jnp.stack([m.theta for m in self.members])

    @property
    def loss(self) -> np.ndarray:
        return np.array([m.loss for m in self.members])

    @property
    def success(self) -> np.ndarray:
        return np.array([m.success for m in self.members])

    @property
    def steps(self) -> np.ndarray:
        return np.array([m.steps for m in self.members])

    def __len__(self) -> int:
        return len(self.members)

    def __getitem__(self, i: int) -> Solution:
        return self.members[i]

    def __repr__(self) -> str:
        ok = int(self.success.sum())
        return (f"EnsembleSolution({len(self)} members, {ok} successful, "
                f"losses={np.array2string(self.loss, precision=3)}, "
                f"wall_time={self.wall_time:.3g}s)")


@eqx.filter_jit
def _init_members(stepper, args, thetas):
    return jax.vmap(lambda t: init_state(stepper, args, t))(thetas)


@eqx.filter_jit(donate="all-except-first")
def _chunk_members(keep, state):
    stepper, args, good_theta, good_loss, n, chunk = keep
    loop = lambda s, t, lo: _loop(stepper, args, s, t, lo, n, chunk)
    return jax.vmap(loop)(state, good_theta, good_loss)


@eqx.filter_jit
def _final_members(stepper, args, state):
    return jax.vmap(lambda s: _final(stepper, args, s))(state)


def _whole_members(stepper, args, thetas, max_steps: int):
    member = lambda t: run_whole(stepper, args, t, max_steps)
    return eqx.filter_jit(jax.vmap(member))(thetas)


def _absorb_all(books: list[_Book], good_theta, good_loss, status, count, hist) -> None:
    status, count, hist = np.asarray(status), np.asarray(count), np.asarray(hist)
    for i, book in enumerate(books):
        if book.status != RUNNING:
            continue
        book.good_theta, book.good_loss = good_theta[i], good_loss[i]
        _absorb(book, hist[i], int(status[i]), int(count[i]))


def _report(bar: Progress, books: list[_Book]) -> None:
    losses = [float(b.good_loss) for b in books if np.isfinite(float(b.good_loss))]
    bar.update(max(b.evaluated for b in books), min(losses) if losses else float("nan"))


def _run_chunks(stepper, args, thetas, books, run: Run, bar: Progress):
    # The state is donated to each chunk: never hand the user's own buffer over.
    state, good_loss = _init_members(stepper, args, jnp.array(thetas, copy=True))
    good_theta = thetas
    while True:
        running = [b for b in books if b.status == RUNNING and b.evaluated < run.max_steps]
        if not running:
            break
        n = min(run.chunk, run.max_steps - running[0].evaluated)
        keep = (stepper, args, good_theta, good_loss, jnp.asarray(n), run.chunk)
        state, good_theta, good_loss, status, count, hist = _chunk_members(keep, state)
        _absorb_all(books, good_theta, good_loss, status, count, hist)
        _report(bar, books)
        if run.callback is not None and run.callback(running[0].evaluated, good_theta,
                                                     np.asarray(good_loss)):
            return _final_members(stepper, args, state), True
    return _final_members(stepper, args, state), False


def drive_ensemble(stepper: AbstractStepper, thetas, args: tuple, run: Run) -> EnsembleSolution:
    """Run every row of `thetas` as its own member, all in the same dispatches."""
    start = time.perf_counter()
    books = [_Book(good_theta=t, good_loss=jnp.nan, history=[]) for t in thetas]
    run = dataclasses.replace(run, throw=False)
    with Progress(run.max_steps, run.progress, run.where) as bar:
        if stepper.chunkable:
            (theta, loss), by_callback = _run_chunks(stepper, args, thetas, books, run, bar)
        else:
            out = _whole_members(stepper, args, thetas, run.max_steps)
            _absorb_all(books, *out[:5])
            theta, loss, by_callback = out[5], out[6], False
            _report(bar, books)
    members = []
    for i, book in enumerate(books):
        if book.status in (RUNNING, CONVERGED):
            ending = _ending(run, book, by_callback)
            members.append(_conclude(run, book, ending, (theta[i], loss[i]), by_callback))
        else:
            members.append(_conclude(run, book, _failure(book), None))
    return EnsembleSolution(tuple(members), time.perf_counter() - start)


def sequential_ensemble(solve_one, thetas) -> EnsembleSolution:
    """Backends that cannot be vmapped (SciPy's own loops): one member after another."""
    start = time.perf_counter()
    members = tuple(solve_one(theta) for theta in thetas)
    return EnsembleSolution(members, time.perf_counter() - start)



_MSG_CHECKPOINT = """\
`{where}` cannot checkpoint an ensemble (a 2-D `theta0`): a checkpoint holds one run's
optimizer state. Fix: drop `checkpoint=`, and save `res.theta` (all members) with `numpy.save`
or each member with `sb.save`."""


def first_member(theta0):
    """The shape a single member has: what backends build their state from."""
    return theta0[0] if theta0.ndim == 2 else theta0


def drive_members(stepper: AbstractStepper, theta0, args: tuple, run: Run):
    """`drive` for one theta, `drive_ensemble` for a `(members, n)` matrix of them."""
    if theta0.ndim == 1:
        return drive(stepper, theta0, args, run)
    if run.checkpoint is not None:
        raise NotImplementedError(_MSG_CHECKPOINT.format(where=run.where))
    return drive_ensemble(stepper, theta0, args, run)


def each_member(solve_one, theta0, run: Run):
    """Backends with loops of their own (SciPy): one member after another, never raising."""
    if theta0.ndim == 1:
        return solve_one(theta0, run)
    run = dataclasses.replace(run, throw=False)
    return sequential_ensemble(lambda theta: solve_one(theta, run), theta0)
