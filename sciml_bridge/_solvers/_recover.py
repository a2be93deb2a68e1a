"""After a chunk raised: run it again up to the step that raises.

A runtime error inside the loss (`eqx.error_if`, a Diffrax solve under `throw=True`) aborts
the whole compiled chunk: up to `chunk_size` steps, and, in an ensemble, every member, since
`error_if` under `vmap` fires when any member trips it. The chunk's start state is kept (the
chunk donates nothing), so the driver runs the chunk again for one member at a time, here,
and finds the longest run of steps that does not raise by halving: from the last state known
to run, try half of the steps left; keep them if they run, else halve again. That costs at
most about twice the chunk's steps, in `log2(chunk)` dispatches of the same compiled program
(the number of steps is traced). The member then ends as a non-finite loss ends it: at its
last point with a known loss, its steps and loss curve up to there.
"""

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from .._result import RESULTS
from ._fused import run_chunk


# Failures raised while a compiled chunk runs (not while it is traced): Equinox's `error_if`
# (Diffrax's max_steps / step-size collapse under `throw=True`) and XLA runtime errors.
RUNTIME_ERRORS = (eqx.EquinoxRuntimeError, jax.errors.JaxRuntimeError)


def one_member_may_be_at_fault(e: Exception) -> bool:
    """Whether running again step by step could find where it raised: not when the device ran
    out of memory (that is the batch's or the step's size, not a point in the run)."""
    return "RESOURCE_EXHAUSTED" not in str(e)


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
