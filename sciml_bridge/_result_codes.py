"""How a run ended: the `RESULTS` vocabulary shared by the steppers (inside `jit`) and the host.

Failures inside a run are data (the Optimistix `RESULTS` idea): each kind carries its remedy in
its message, so a returned or raised result always says what to try.
"""

import equinox.internal as eqxi
import numpy as np


class RESULTS(eqxi.Enumeration):
    """How a run ended: one vocabulary inside `jit` and on the host.

    Steppers return it as data inside `jit` (as Optimistix and Diffrax do); `res.result` holds
    it on the host. `RESULTS[res.result]` is the message, which says what to try. Members:
    `successful`, `max_steps_reached`, `nonfinite`, `interrupted`, `solver_failed`, `stalled`.

    !!! example

        ```python
        res = sb.minimize(lambda t: jnp.sum(t**2), jnp.ones(2), method="adam", max_steps=3,
                          throw=False)
        if res.result == sb.RESULTS.max_steps_reached:
            print(sb.RESULTS[res.result])          # "stopped after `max_steps` steps ..."
        ```
    """

    successful = "converged"
    max_steps_reached = (
        "stopped after `max_steps` steps without meeting the tolerance. Try a larger "
        "`max_steps=`, a looser `tol=`, or continue from `res.theta` (chaining is free)."
    )
    nonfinite = (
        "the loss (or its gradient) became non-finite (NaN or inf). The last `theta` with a "
        "finite loss is kept in `res.theta`. Try a lower learning rate, float64 "
        '(`jax.config.update("jax_enable_x64", True)` and a float64 `theta0`), or check the '
        "loss for log/sqrt/division of values that can reach zero or below."
    )
    interrupted = "interrupted (Ctrl-C) between chunks; `res.theta` is the last finished step"
    solver_failed = (
        "the backend reported a failure (e.g. a singular linear solve, a failed line search, "
        "or a runtime error inside the loss such as `eqx.error_if`). The last good `theta` is "
        "kept in `res.theta`. Try another `method=`, a smaller step, or rescaling the problem."
    )
    stalled = (
        "stopped early: no step size lowered the loss along the method's direction, yet the "
        "stopping rule (`tol`) is not met: the gradient and the decrease the method's local "
        "model predicts are both above it. `res.theta` is the last point reached. The local "
        "model is poor here: continue from `res.theta` with another method (e.g. "
        '"ssbroyden" or "adam"), or, if the loss is at its rounding floor, loosen `tol=`.'
    )


_BY_INDEX = {int(item._value): item for item in RESULTS._name_to_item.values()}
_NAMES = {int(item._value): name for name, item in RESULTS._name_to_item.items()}


def canonical(result) -> RESULTS:
    """The module-level `RESULTS` member for a concrete result (one that came out of `jit`),
    so that `res.result is sb.RESULTS.nonfinite` holds on the host."""
    return _BY_INDEX[int(np.asarray(result._value))]


def result_name(result) -> str:
    """`"nonfinite"` for `RESULTS.nonfinite`, etc."""
    return _NAMES[int(np.asarray(result._value))]


def message_of(result) -> str:
    return RESULTS[canonical(result)]


_FAILURES = ("nonfinite", "solver_failed")


def failed(result) -> bool:
    """A failure in the sense of the contract: non-finite loss or a breakdown (not the
    budget, not Ctrl-C)."""
    return result_name(result) in _FAILURES


def result_at(index: int) -> RESULTS:
    return _BY_INDEX[int(index)]
