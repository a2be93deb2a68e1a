"""The stepper protocol: one step of one method, written once, driven by `_run.py`.

Every backend of `method=` (Optax, Optimistix, the dense Gauss-Newton, ...) is an
`AbstractStepper`. The driver runs many steps per dispatch inside one `jit` (PITFALLS.md,
"Dispatch cost"), vmapped over ensemble members or not, and owns everything around the steps:
the last good `theta`, the loss curve, progress, callbacks, checkpoints and Ctrl-C.

Status is data, as in Optimistix and Diffrax: `step` returns a `RESULTS` member (an
`equinox.internal.Enumeration`), the same vocabulary the host reports in `res.result`.
"""

import abc
from typing import Any, ClassVar

import equinox as eqx
import jax
import jax.numpy as jnp

from .._custom_types import LossScalar, Theta
from .._result import RESULTS as RESULTS


def traced(tol: float | jax.Array) -> jax.Array:
    """`tol` as a JAX scalar: a stepper field that is data, not part of the compiled program,
    so a new `tol` reuses the kernels compiled for the last (a Python float field is static:
    each value compiled `init`, the chunk and the final kernel again). Weakly typed, as the
    Python float was, so it takes the dtype of what it is compared with."""
    return jnp.asarray(tol)


def traced_or_none(tol: float | jax.Array | None) -> jax.Array | None:
    """`traced`, keeping `None` (no stopping rule)."""
    return None if tol is None else traced(tol)


class AbstractStepper(eqx.Module):
    """One step of one method on `loss(theta, *args)` (or a residual, for least squares).

    **Class variables:**

    - `chunkable`: whether the driver may run a few steps per dispatch and carry the state
        across `jit` boundaries (array leaves carried, the rest kept static, as
        `optimistix/_iterate.py` does). Default `True`.
    - `step_loss_is_value`: whether the loss `step` returns is `value` at the same point.
        `False` on minibatches (or with a key per step): the driver then evaluates `value` at
        the last good point of a run that stops there. Default `True`.

    **Methods:**

    - `has_stopping_rule()`: whether `step` can ever say `done` (a tolerance). Without one,
        running out of `max_steps` is the normal end of the run (`success=True`).
    - `criterion()`: a phrase naming the stopping rule, for the "converged" message
        (optional; the default is generic).
    - `init(theta, args) -> state`.
    - `theta(state) -> theta`: the current point.
    - `value(theta, args) -> scalar`: the loss at a point (for least squares `0.5 * sum(r**2)`).
    - `value_of(state, args) -> scalar`: the loss at `theta(state)`, with whatever else the
        state carries (a model state); default `value(theta(state), args)`.
    - `model_state(state)`: the model state a stateful loss carries (`sb.minimize(...,
        state=)`), else `None` (the default).
    - `with_model_state(model)`: this stepper with `value` evaluating a stateful loss with
        `model`; by default `self`, or for a wrapper (a stepper field `inner`) the wrapper
        around `inner.with_model_state(model)`.
    - `value_at_good(state, theta, args) -> scalar`: the loss at the driver's last good
        `theta`, with the model state it was evaluated with there; default `value`.
    - `step(state, args) -> (new_state, loss, done, result)`: `loss` is the loss at
        `theta(state)` (the point *before* the step); `done` a bool array, stop after applying
        this step (converged); `result` a `RESULTS` member: `RESULTS.successful` applies the
        step, any failure member stops the run without applying it (the driver keeps the last
        good `theta`). A non-finite `loss` is turned into `RESULTS.nonfinite` by the driver.
    """

    chunkable: ClassVar[bool] = True
    step_loss_is_value: ClassVar[bool] = True

    def has_stopping_rule(self) -> bool:
        return True

    def criterion(self) -> str:
        return "the method's stopping rule (`tol`) was met"

    @abc.abstractmethod
    def init(self, theta: Theta, args: tuple) -> Any: ...

    @abc.abstractmethod
    def theta(self, state: Any) -> Theta: ...

    def model_state(self, state: Any) -> Any:
        return None

    def value_of(self, state: Any, args: tuple) -> LossScalar:
        return self.value(self.theta(state), args)

    def with_model_state(self, model: Any) -> "AbstractStepper":
        inner = getattr(self, "inner", None)
        if not isinstance(inner, AbstractStepper):
            return self
        return eqx.tree_at(lambda s: s.inner, self, inner.with_model_state(model))

    def value_at_good(self, state: Any, theta: Theta, args: tuple) -> LossScalar:
        return self.value(theta, args)

    @abc.abstractmethod
    def value(self, theta: Theta, args: tuple) -> LossScalar: ...

    @abc.abstractmethod
    def step(
        self, state: Any, args: tuple
    ) -> tuple[Any, LossScalar, jax.Array, RESULTS]: ...
