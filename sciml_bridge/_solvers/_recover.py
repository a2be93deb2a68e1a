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


def run_until_raise(keep: tuple, dynamic, error: Exception | None = None):
    """`run_chunk(keep, dynamic)` for one member (a leading member axis of 1), or, if it
    raises (`error`: it is known to), its longest run of steps that does not. Returns the
    chunk's output for the driver and the error (`None` when the whole chunk ran, or the
    member stopped by itself first)."""
    stepper, args, static, good_theta, good_loss, active, n, chunk, layout = keep

    def probe(steps, dynamic, good_theta, good_loss):
        keep = (stepper, args, static, good_theta, good_loss, active, jnp.asarray(steps),
                chunk, layout)  # fmt: skip
        return run_chunk(keep, dynamic)

    if error is None:
        try:
            return run_chunk(keep, dynamic), None
        except RUNTIME_ERRORS as e:
            error = e
    lo, hi, losses = 0, int(n), []  # `lo` steps run, `hi` raise
    result, done = jnp.asarray(RESULTS.successful._value), False
    while hi - lo > 1:
        steps = (hi - lo) // 2
        try:
            new, (theta, loss, res, stop, count, hist) = probe(steps, dynamic, good_theta,
                                                               good_loss)  # fmt: skip
        except RUNTIME_ERRORS as e:
            hi, error = lo + steps, e
            continue
        taken = int(np.asarray(count)[0])
        losses.extend(np.asarray(hist, dtype=np.float64)[0, :taken].tolist())
        dynamic, good_theta, good_loss, lo = new, theta, loss, lo + taken
        result, done = res[0], bool(np.asarray(stop)[0])
        if int(result) != int(RESULTS.successful._value) or done:  # stopped by itself first
            error = None
            break
    return (dynamic, chunk_output(good_theta, good_loss, chunk, losses, result, done)), error


def chunk_output(good_theta, good_loss, chunk: int, losses=(), result=None, done=False):
    """What `run_chunk` returns beside the state, for one member (a leading axis of 1) that
    took `len(losses)` steps with these losses, as the kernel's dtypes have it."""
    result = RESULTS.successful._value if result is None else result
    hist = np.full((1, chunk), np.nan, dtype=good_loss.dtype)
    hist[0, : len(losses)] = losses
    return (good_theta, good_loss, jnp.asarray([result], jnp.asarray(result).dtype),
            jnp.asarray([done]), jnp.asarray([len(losses)], jnp.asarray(0).dtype),
            jnp.asarray(hist))  # fmt: skip
