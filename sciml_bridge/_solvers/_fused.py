"""The fused driver: many steps per dispatch, the last good `theta` always kept.

Every compiled backend (Optax, Optimistix, the dense Gauss-Newton) is an `AbstractStepper`:
`init`, `step` and `value` written for one step. The driver runs `chunk` steps inside one
`eqx.filter_jit` of a `lax.while_loop` (PITFALLS.md, "Dispatch cost": ~29 us/step fused versus
~320 us/step for an `eqx.filter_jit` step in a Python loop), donates the solver state, and
returns to Python between chunks only, for the progress bar, callbacks and checkpoints.
The number of steps in a chunk is a traced scalar, so the last, shorter chunk never retraces.
"""

import abc
from typing import Any, ClassVar

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.tree_util as jtu

from .._custom_types import LossScalar, Theta


RUNNING, CONVERGED, NONFINITE, FAILED = 0, 1, 2, 3


class AbstractStepper(eqx.Module):
    """One step of one method, on `loss(theta, *args)` (or a residual for least squares).

    `step(state, args)` returns `(new_state, loss, status)`: `loss` is the loss at
    `theta(state)` (the point before the step) and `status` one of `RUNNING`, `CONVERGED`
    (apply this step, then stop), `NONFINITE` (a trial point had a non-finite loss: stop
    without applying) or `FAILED` (stop without applying).
    """

    chunkable: ClassVar[bool] = True

    @abc.abstractmethod
    def init(self, theta: Theta, args: tuple) -> Any: ...

    @abc.abstractmethod
    def theta(self, state: Any) -> Theta: ...

    @abc.abstractmethod
    def value(self, theta: Theta, args: tuple) -> LossScalar: ...

    @abc.abstractmethod
    def step(self, state: Any, args: tuple) -> tuple[Any, LossScalar, jax.Array]: ...


def _tree_where(pred, new, old):
    return jtu.tree_map(lambda a, b: jnp.where(pred, a, b), new, old)


def _loop(stepper, args, state, good_theta, good_loss, n, chunk):
    # Optimistix states hold jaxprs next to arrays: carry the arrays, keep the rest static,
    # exactly as `optimistix/_iterate.py` does. For array-only states this is a no-op.
    dynamic, static = eqx.partition(state, eqx.is_array)
    hist = jnp.full((chunk,), jnp.nan, dtype=good_loss.dtype)
    init = (dynamic, good_theta, good_loss, jnp.asarray(RUNNING), jnp.asarray(0), hist)

    def cond(carry):
        return (carry[4] < n) & (carry[3] == RUNNING)

    def body(carry):
        dynamic, good_theta, good_loss, _, i, hist = carry
        state = eqx.combine(dynamic, static)
        theta = stepper.theta(state)
        new_state, loss, step_status = stepper.step(state, args)
        new_dynamic = eqx.filter(new_state, eqx.is_array)
        finite = jnp.isfinite(loss)
        status = jnp.where(finite, step_status, NONFINITE)
        apply = finite & ((step_status == RUNNING) | (step_status == CONVERGED))
        dynamic = _tree_where(apply, new_dynamic, dynamic)
        good_theta = jnp.where(finite, theta, good_theta)
        good_loss = jnp.where(finite, loss, good_loss)
        return dynamic, good_theta, good_loss, status, i + 1, hist.at[i].set(loss)

    dynamic, *rest = jax.lax.while_loop(cond, body, init)
    return (eqx.combine(dynamic, static), *rest)


@eqx.filter_jit(donate="all-except-first")
def run_chunk(keep, state):
    """`chunk` steps at most; only the solver `state` is donated, so the last good `theta`
    survives a Ctrl-C that arrives while the chunk runs."""
    stepper, args, good_theta, good_loss, n, chunk = keep
    return _loop(stepper, args, state, good_theta, good_loss, n, chunk)


@eqx.filter_jit
def init_state(stepper, args, theta0):
    # Strong-type every leaf: Optax inits hold weak-typed scalars that come back strong from
    # the first chunk, and a weak/strong flip is a new `jit` signature, i.e. one retrace.
    state = stepper.init(theta0, args)
    state = jtu.tree_map(lambda x: jax.lax.convert_element_type(x, x.dtype), state)
    return state, _nan_loss(stepper, args, theta0)


def _nan_loss(stepper, args, theta0):
    """A NaN of the loss's dtype: the "no good loss yet" placeholder, made inside a trace so
    that asking for the dtype costs no trace per call."""
    struct = jax.eval_shape(lambda t: stepper.value(t, args), theta0)
    return jnp.full((), jnp.nan, dtype=struct.dtype)


def _final(stepper, args, state):
    theta = stepper.theta(state)
    return theta, stepper.value(theta, args)


final_value = eqx.filter_jit(_final)


@eqx.filter_jit
def run_whole(stepper, args, theta0, max_steps: int):
    """For backends whose state cannot cross a `jit` boundary (Optimistix linearisations
    hold jaxprs): init, every step and the final loss in one dispatch."""
    state = stepper.init(theta0, args)
    good_loss = _nan_loss(stepper, args, theta0)
    out = _loop(stepper, args, state, theta0, good_loss, max_steps, max_steps)
    state, good_theta, good_loss, status, i, hist = out
    theta, loss = _final(stepper, args, state)
    return good_theta, good_loss, status, i, hist, theta, loss
