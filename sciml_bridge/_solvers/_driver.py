"""The Python side of the fused driver: chunks, progress, callbacks, checkpoints, Ctrl-C.

Nothing here runs per step. Between chunks it reads back the losses of the chunk, updates the
bar, writes a checkpoint and hands the callback the last good `theta`.
"""

import dataclasses
import os
import re
import time
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.tree_util as jtu
import numpy as np

from .._progress import Progress
from .._result import RESULTS, Solution, finish
from .._serialise import check_layout, read_arrays, write_arrays
from ._fused import (
    CONVERGED,
    NONFINITE,
    RUNNING,
    AbstractStepper,
    final_value,
    init_state,
    run_chunk,
    run_whole,
)


@dataclasses.dataclass
class Run:
    """Options of one run that are not the method's own."""

    where: str
    method: Any
    max_steps: int
    chunk: int
    progress: bool
    callback: Any
    throw: bool
    checkpoint: str | os.PathLike | None
    checkpoint_every: int | None
    stops_on_budget: bool
    start: float = dataclasses.field(default_factory=time.perf_counter)


@dataclasses.dataclass
class _Book:
    """What the host keeps between chunks (the last good point and the loss curve)."""

    good_theta: Any
    good_loss: Any
    history: list
    evaluated: int = 0
    status: int = RUNNING


def method_name(method: Any) -> str:
    """A name that is stable across processes (object reprs hold addresses)."""
    return method if isinstance(method, str) else type(method).__name__


def _state_layout(state, theta) -> dict:
    leaves = jtu.tree_leaves_with_path(state)
    return {
        "size": int(theta.size),
        "paths": [jtu.keystr(p) for p, _ in leaves],
        "shapes": [list(np.shape(x)) for _, x in leaves],
        "dtypes": [np.dtype(x.dtype).name for _, x in leaves],
    }


def _save_checkpoint(run: Run, state, book: _Book) -> None:
    arrays = {f"state_{i}": np.asarray(x) for i, x in enumerate(jtu.tree_leaves(state))}
    arrays["good_theta"] = np.asarray(book.good_theta)
    arrays["good_loss"] = np.asarray(book.good_loss)
    arrays["history"] = np.asarray(book.history, dtype=np.float64)
    layout = _state_layout(state, book.good_theta)
    layout.update(method=method_name(run.method), evaluated=book.evaluated)
    write_arrays(run.checkpoint, arrays, layout)


def _resume(run: Run, state, book: _Book):
    arrays, layout = read_arrays(run.checkpoint, run.where)
    if layout.get("method") != method_name(run.method):
        raise ValueError(
            f"`{run.where}` found a checkpoint at {os.fspath(run.checkpoint)!r} written by "
            f"method={layout.get('method')!r}, but was called with "
            f"method={method_name(run.method)!r}. "
            "Fix: use the same method to resume, or another `checkpoint=` path."
        )
    check_layout(layout, _state_layout(state, book.good_theta), run.where)
    leaves, treedef = jtu.tree_flatten(state)
    new = [jnp.asarray(arrays[f"state_{i}"], dtype=x.dtype) for i, x in enumerate(leaves)]
    state = jtu.tree_unflatten(treedef, new)
    book.good_theta = jnp.asarray(arrays["good_theta"], dtype=book.good_theta.dtype)
    book.good_loss = jnp.asarray(arrays["good_loss"], dtype=book.good_loss.dtype)
    book.history = [float(x) for x in arrays["history"]]
    book.evaluated = int(layout["evaluated"])
    return state


def _absorb(book: _Book, hist, status: int, count: int) -> None:
    losses = np.asarray(hist[:count], dtype=np.float64)
    if status == NONFINITE and count and not np.isfinite(losses[-1]):
        losses = losses[:-1]
    book.history.extend(losses.tolist())
    book.evaluated += count
    book.status = status


def _chunks(stepper, args, state, book: _Book, run: Run, bar: Progress):
    """Run chunk after chunk; returns the final state and whether a callback asked to stop."""
    every = run.checkpoint_every
    while book.evaluated < run.max_steps and book.status == RUNNING:
        n = min(run.chunk, run.max_steps - book.evaluated)
        keep = (stepper, args, book.good_theta, book.good_loss, jnp.asarray(n), run.chunk)
        state, good_theta, good_loss, status, count, hist = run_chunk(keep, state)
        # Wait here: a runtime failure inside the chunk (a Diffrax solve that hits max_steps
        # under `throw=True`, say) must surface before the book takes the chunk's outputs.
        jax.block_until_ready((good_theta, good_loss, status))
        book.good_theta, book.good_loss = good_theta, good_loss
        _absorb(book, hist, int(status), int(count))
        bar.update(book.evaluated, float(good_loss))
        if run.checkpoint is not None and book.status == RUNNING:
            if book.evaluated % every == 0 or book.evaluated == run.max_steps:
                _save_checkpoint(run, state, book)
        if run.callback is not None and book.status == RUNNING:
            if run.callback(book.evaluated, good_theta, float(good_loss)):
                return state, True
    return state, False


def drive(stepper: AbstractStepper, theta0, args: tuple, run: Run) -> Solution:
    """Run `stepper` from `theta0` under the options in `run`; see `sb.minimize`."""
    book = _Book(good_theta=theta0, good_loss=None, history=[])
    if not stepper.chunkable:
        return _drive_whole(stepper, theta0, args, run, book)
    # The state is donated to each chunk: never hand the user's own `theta0` buffer over.
    state, book.good_loss = init_state(stepper, args, jnp.array(theta0, copy=True))
    if run.checkpoint is not None and os.path.exists(run.checkpoint):
        state = _resume(run, state, book)
    with Progress(run.max_steps, run.progress, run.where) as bar:
        try:
            bar.update(book.evaluated, float("nan"))
            state, by_callback = _chunks(stepper, args, state, book, run, bar)
        except KeyboardInterrupt:
            return _conclude(run, book, RESULTS.interrupted, None)
        except _RUNTIME_ERRORS as e:
            return _conclude(run, book, RESULTS.solver_failed, None, detail=_first_line(e))
    if book.status in (RUNNING, CONVERGED):
        theta, loss = final_value(stepper, args, state)
        return _conclude(run, book, _ending(run, book, by_callback), (theta, loss), by_callback)
    return _conclude(run, book, _failure(book), None)


def _drive_whole(stepper, theta0, args, run: Run, book: _Book) -> Solution:
    with Progress(run.max_steps, run.progress, run.where) as bar:
        try:
            out = jax.block_until_ready(run_whole(stepper, args, theta0, run.max_steps))
        except _RUNTIME_ERRORS as e:
            book.good_loss = jnp.nan
            return _conclude(run, book, RESULTS.solver_failed, None, detail=_first_line(e))
        good_theta, good_loss, status, count, hist, theta, loss = out
        book.good_theta, book.good_loss = good_theta, good_loss
        _absorb(book, hist, int(status), int(count))
        bar.update(book.evaluated, float(good_loss))
    if book.status in (RUNNING, CONVERGED):
        return _conclude(run, book, _ending(run, book, False), (theta, loss))
    return _conclude(run, book, _failure(book), None)


def _ending(run: Run, book: _Book, by_callback: bool) -> RESULTS:
    if book.status == CONVERGED or by_callback or not run.stops_on_budget:
        return RESULTS.successful
    return RESULTS.max_steps_reached


def _failure(book: _Book) -> RESULTS:
    return RESULTS.nonfinite if book.status == NONFINITE else RESULTS.solver_failed


# Failures raised while a compiled chunk runs (not while it is traced): Equinox's `error_if`
# (Diffrax's max_steps / step-size collapse under `throw=True`) and XLA runtime errors.
_RUNTIME_ERRORS = (eqx.EquinoxRuntimeError, jax.errors.JaxRuntimeError)


def _first_line(e: Exception) -> str:
    """The failure's own message, without the tracebacks JAX and Equinox wrap around it."""
    text = str(e)
    found = re.search(r"EquinoxRuntimeError: (.+)", text)
    if found:
        return found.group(1).strip()[:300]
    lines = [line for line in text.splitlines() if line.strip() and "stack" not in line]
    return (lines[0] if lines else type(e).__name__)[:300]


def _conclude(run: Run, book: _Book, result: RESULTS, final, by_callback=False,
              detail: str = "") -> Solution:
    theta, loss, history = book.good_theta, book.good_loss, list(book.history)
    detail = "stopped by `callback`" if by_callback else detail
    if final is not None:
        if bool(jnp.isfinite(final[1])):
            theta, loss = final
            history.append(float(loss))
        else:
            result = RESULTS.nonfinite
    if result is RESULTS.nonfinite:
        detail = f"at step {len(history)}; the returned `theta` is from step {len(history) - 1}"
    if not history:
        history = [float(loss)]
    return finish(
        theta=jax.block_until_ready(theta),
        loss=float(loss),
        history=history,
        steps=len(history) - 1,
        result=result,
        wall_time=time.perf_counter() - run.start,
        method=run.method,
        where=run.where,
        detail=detail,
        throw=run.throw,
    )
