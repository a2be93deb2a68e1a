"""A failure inside a run in its own words: which errors are runtime failures, their line.

JAX, XLA and Equinox wrap a failure in tracebacks and prefixes ("INTERNAL: CpuCallback error
calling callback: Traceback ..."); a `Solution`'s message carries the failure's own line.
"""

import re

import equinox as eqx
import jax


# Failures raised while a compiled chunk runs (not while it is traced): Equinox's `error_if`
# (Diffrax's max_steps / step-size collapse under `throw=True`) and XLA runtime errors.
RUNTIME_ERRORS = (eqx.EquinoxRuntimeError, jax.errors.JaxRuntimeError)

MSG_OUT_OF_MEMORY = (
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

# A callback that raised, on either route (`_run.py`, `_scipy_steps.py`).
MSG_CALLBACK = (
    "the callback raised {kind}: {line}. `{where}` stopped {member}at step {steps}, the point "
    "the callback was given: `err.theta` is the `theta` it got, `err.result` the run up to "
    "there. Fix: correct the callback (the run can go on from `err.theta`)."
)


_RAISED = re.compile(r"^(\w[\w.]*): (.*)$")
# Long enough for our own messages (Diffrax's failures with their fix run to ~450 characters),
# short enough that a huge `repr` raised in a callback does not flood the result.
_LIMIT = 1000


def _clip(text: str) -> str:
    return text if len(text) <= _LIMIT else text[: _LIMIT - 6] + " [...]"


def in_callback(e: Exception) -> bool:
    """Whether `e` is XLA's report of an exception raised in a host callback of the loss
    (`jax.pure_callback`): "INTERNAL: CpuCallback error ..." with the traceback inside."""
    return "callback error" in str(e).lower()


def first_line(e: Exception) -> str:
    """The failure's own message, without the tracebacks JAX and Equinox wrap around it: for
    an exception raised in a host callback (`jax.pure_callback`), whose traceback XLA puts in
    its message ("INTERNAL: CpuCallback error ..."), the exception's own last line."""
    text = str(e)
    found = re.search(r"EquinoxRuntimeError: (.+)", text)
    if found:
        return _clip(found.group(1).strip())
    if in_callback(e):
        raised = [line.strip() for line in text.splitlines() if _RAISED.match(line.strip())]
        if raised:
            return _clip(f"a host callback raised {raised[-1]}")
    lines = [line for line in text.splitlines() if line.strip() and "stack" not in line]
    return _clip(lines[0] if lines else type(e).__name__)


def failure_detail(e: Exception, fix: str = _MSG_STEP_MEMORY) -> str:
    """The failure's own line (`first_line`); when it is XLA's out-of-memory line, followed by
    what holds the memory and how to fit (`fix`)."""
    detail = first_line(e)
    if "RESOURCE_EXHAUSTED" not in detail:
        return detail
    return f"{detail.rstrip('.')}: {fix}"


def one_member_may_be_at_fault(e: Exception) -> bool:
    """Whether running again step by step could find where it raised: not when the device ran
    out of memory (that is the batch's or the step's size, not a point in the run)."""
    return "RESOURCE_EXHAUSTED" not in str(e)
