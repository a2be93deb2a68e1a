"""Stateful losses (`sb.minimize(..., state=state0)`) and what only first-order Optax runs take.

The convention, one for every framework: `loss(theta, state, *args) -> (value, new_state)`,
with `state` whatever `fm.init_state()` gives (an `eqx.nn.State`, Linen `batch_stats`
collections, an NNX `State` with BatchNorm statistics and `Rngs` streams). Step `k` evaluates
the loss at `theta_k` with the state the step before returned, and carries `new_state` on, as
a hand-written Optax loop does. Only a method that evaluates the loss once per step can do
that: a line search or trust region evaluates it at trial points, and which of their states
to keep has no right answer, so those methods refuse `state=` (and complex `theta`, whose
Wirtinger gradients they do not handle) up front.

The solver state holds `(theta_k, ..., state_k)`, one step ahead of the last point whose loss is
known: a run that stops there (a non-finite loss, a raise) ends at `theta_{k-1}`, whose loss
was evaluated with `state_{k-1}`. `EvaluatedState` carries that state through the loop and the
checkpoint, so `res.theta`, `res.state` and `res.loss` always describe one evaluation, as
`eqx.nn.State` is used: the state a model is called with at its parameters.
"""

from collections.abc import Callable

import equinox as eqx
import jax
import jax.numpy as jnp

from .._precision import is_lossless
from .._state_leaves import check_state
from ._optax import OptaxStepper
from ._stepper import AbstractStepper


_MSG_PAIR = """\
`{where}` with `state=` expected `loss(theta, state, *args)` to return `(value, new_state)`:
a real scalar and a state with the same structure, shapes and dtypes as `state`; but {got}.
Fix: {fix}"""

_FIX_RETURN = """return the state your model call gave back, e.g.
`y, state = fm(theta, x, state=state); return jnp.mean((y - target) ** 2), state`."""

_FIX_NARROW = """the loss computes the state in {new} (e.g. a {new} `theta0` for a model stored in
{old}: `theta`'s precision wins), and a {old} `state` cannot be narrowed without loss. Pass
the state in that precision, `state=jax.tree.map(lambda a: a.astype(jnp.{new}) if
jnp.issubdtype(a.dtype, jnp.floating) else a, state)`, or a `theta0` in {old}."""

_MSG_FIRST_ORDER = """\
`{where}` cannot run method={method!r} with {what}: {why}.
Fix: use a first-order Optax method (method="adam", "sgd", ... or an
`optax.GradientTransformation` without a line search){fix}."""

_WHY_STATE = ("its line search or trust region evaluates the loss at trial points, so there is"
              " no single next model state")  # fmt: skip
_FIX_STATE = ", or freeze the state (`fm = eqx.nn.inference_mode(fm)`, then a loss without it)"
_WHY_COMPLEX = ("only Optax's first-order methods follow Optax's convention for complex "
                "parameters (updates from the conjugate gradient)")  # fmt: skip
_FIX_COMPLEX = (", or train the real view: `n = theta0.size`, "
                "`r0 = jnp.concatenate([theta0.real, theta0.imag])`, "
                "`loss_r = lambda r, *a: loss(r[:n] + 1j * r[n:], *a)`")  # fmt: skip


def prepare_state(fn: Callable, theta, state, args: tuple):
    """`state` ready to carry through the steps: Python numbers as arrays, and each floating
    leaf widened to the dtype `fn(theta, state, *args)` gives back for it, where that holds
    it exactly. Flax keeps BatchNorm statistics float32 under float64 parameters and returns
    them float64 after one step, which a loop carry cannot take (a narrowing is left for
    `StatefulLoss` to report). A leaf JAX cannot carry (a string) is our `TypeError`."""
    check_state(state, "sb.minimize(..., state=state)")
    number = lambda x: jnp.asarray(x) if isinstance(x, bool | int | float | complex) else x
    state = jax.tree.map(number, state)
    out = jax.eval_shape(fn, theta, state, *args)
    if not (isinstance(out, tuple | list) and len(out) == 2):
        return state
    if jax.tree.structure(out[1]) != jax.tree.structure(state):
        return state

    def widen(old, new):
        dtype = getattr(old, "dtype", None)
        if dtype is None or not jnp.issubdtype(dtype, jnp.floating):
            return old
        if jnp.shape(old) != new.shape or not is_lossless(dtype, new.dtype):
            return old
        return old.astype(new.dtype)

    return jax.tree.map(widen, state, out[1])


def _narrowed(out, state) -> tuple[str, str] | None:
    """`(old, new)` dtype names if the first leaf `_describe` names is a floating leaf the
    loss gave back in a narrower floating dtype (a float32 `theta` of a float64 model)."""
    if not (isinstance(out, tuple | list) and len(out) == 2):
        return None
    if jax.tree.structure(out[1]) != jax.tree.structure(state):
        return None
    for a, b in zip(jax.tree.leaves(out[1]), jax.tree.leaves(state)):
        new, old = jnp.result_type(a), jnp.result_type(b)
        if jnp.shape(a) == jnp.shape(b) and new == old:
            continue
        floats = jnp.issubdtype(new, jnp.floating) and jnp.issubdtype(old, jnp.floating)
        if floats and jnp.shape(a) == jnp.shape(b) and is_lossless(new, old):
            return str(old), str(new)
        return None
    return None


def _describe(out, state) -> str:
    if isinstance(out, tuple | list) and len(out) != 2:
        return f"it returned a {type(out).__name__} of {len(out)} items"
    if not isinstance(out, tuple | list):
        if hasattr(out, "dtype"):
            return f"it returned one array of shape {jnp.shape(out)} and dtype {out.dtype}"
        return f"it returned a {type(out).__name__}"
    value, new = out
    if not (hasattr(value, "dtype") and jnp.shape(value) == ()
            and jnp.issubdtype(value.dtype, jnp.floating)):  # fmt: skip
        shape, dtype = jnp.shape(value), getattr(value, "dtype", type(value).__name__)
        return f"its value has shape {shape} and dtype {dtype}"
    if jax.tree.structure(new) != jax.tree.structure(state):
        return "its new state has another tree structure than `state`"
    for a, b in zip(jax.tree.leaves(new), jax.tree.leaves(state)):
        a_dtype, b_dtype = jnp.result_type(a), jnp.result_type(b)
        if jnp.shape(a) != jnp.shape(b) or a_dtype != b_dtype:
            return (f"a leaf of its new state has shape {jnp.shape(a)} and dtype {a_dtype} "
                    f"where `state` has {jnp.shape(b)} and {b_dtype}")  # fmt: skip
    return ""


class StatefulLoss(eqx.Module):
    """`loss(theta, state, *args) -> (value, new_state)`, checked when it is traced."""

    fn: Callable
    where: str = eqx.field(static=True)

    def __call__(self, theta, state, *args):
        out = self.fn(theta, state, *args)
        got = _describe(out, state)
        if got:
            narrowed = _narrowed(out, state)
            fix = _FIX_RETURN if narrowed is None else _FIX_NARROW.format(
                old=narrowed[0], new=narrowed[1])  # fmt: skip
            raise TypeError(_MSG_PAIR.format(where=self.where, got=got, fix=fix))
        return out


def check_first_order(stepper, method, where: str, *, stateful: bool, complex_: bool) -> None:
    """Refuse `state=` or a complex `theta0` for a method that is not first-order Optax."""
    if isinstance(stepper, OptaxStepper) and not stepper.linesearch:
        return
    method = method if isinstance(method, str) else type(method).__name__
    if stateful:
        raise NotImplementedError(_MSG_FIRST_ORDER.format(
            where=where, method=method, what="`state=` (a stateful loss)", why=_WHY_STATE,
            fix=_FIX_STATE))  # fmt: skip
    if complex_:
        raise TypeError(_MSG_FIRST_ORDER.format(
            where=where, method=method, what="a complex `theta0`", why=_WHY_COMPLEX,
            fix=_FIX_COMPLEX))  # fmt: skip


class EvaluatedState(AbstractStepper):
    """`inner`, a stepper of a stateful loss, whose state also holds the model state the loss
    was last evaluated with: `(inner_state, evaluated)`. A step applied at `theta_k` leaves
    `state_k` there, the state its loss was evaluated with, next to `theta_{k+1}` and
    `state_{k+1}`; a step that fails is not applied, so `evaluated` stays the state of the
    driver's last good `theta` (steps fail only on a non-finite loss or a raise: first-order
    Optax methods report nothing else). At the start it is `state_0`.

    `step_loss_is_value` is `inner`'s: the driver asks `inner` (a class variable)."""

    inner: AbstractStepper

    def has_stopping_rule(self) -> bool:
        return self.inner.has_stopping_rule()

    def criterion(self) -> str:
        return self.inner.criterion()

    def init(self, theta, args):
        state = self.inner.init(theta, args)
        return state, self.inner.model_state(state)

    def theta(self, state):
        return self.inner.theta(state[0])

    def model_state(self, state):
        return self.inner.model_state(state[0])

    @staticmethod
    def evaluated(state):
        """The model state the loss was last evaluated with (at the last good `theta`)."""
        return state[1]

    def value(self, theta, args):
        return self.inner.value(theta, args)

    def value_of(self, state, args):
        return self.inner.value_of(state[0], args)

    def value_at_good(self, state, theta, args):
        # With the state the last good loss was evaluated with, not `state0` (`value`'s):
        # on all the data, for a run on minibatches that stops at its last good point.
        return self.inner.with_model_state(self.evaluated(state)).value(theta, args)

    def step(self, state, args):
        new, loss, done, result = self.inner.step(state[0], args)
        return (new, self.inner.model_state(state[0])), loss, done, result


def keep_evaluated_state(stepper: AbstractStepper, dynamic, static):
    """`(stepper, dynamic, static)` of a run just set up (`_fused.init_members`): unchanged for
    a stateless loss, else as `EvaluatedState(stepper)` runs them, each member's `evaluated`
    its own model state at `theta0`."""
    model = stepper.model_state(eqx.combine(dynamic, static))
    if model is None:
        return stepper, dynamic, static
    evaluated, rest = eqx.partition(model, eqx.is_array)
    return EvaluatedState(stepper), (dynamic, evaluated), (static, rest)
