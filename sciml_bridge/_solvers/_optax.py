"""Optax backends: `"adam"` (any Optax alias by name), `"lbfgs"`, or a transformation object.

All are first-order steps, so they run fused (many steps per dispatch, see `_fused.py`).
L-BFGS's zoom line search reuses the value and gradient it stored in the state
(`optax.value_and_grad_from_state`), so a step costs one gradient evaluation, as in the
Optax L-BFGS guide.

Complex `theta` follows Optax's convention (`optax.contrib.split_real_and_imaginary`'s notes):
`jax.grad` of a real loss at complex `z` returns the conjugate of the steepest-ascent
direction, so the update is fed `jnp.conj(grad)`, and `apply_updates` then descends.

A transformation object is compared by what it computes (`Transformation`), so a fresh
`optax.adam(1e-3)` in every call reuses the program compiled for the first one.
"""

import functools
import types
from collections.abc import Callable
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.tree_util as jtu
import numpy as np
import optax
import optax.tree_utils as otu

from ._setup import check_options
from ._stepper import RESULTS, AbstractStepper, traced_or_none


_VALUES = (bool, int, float, complex, str, bytes, type(None), np.generic, np.dtype)


class _Identity:
    """A closure value we cannot compare by content: equal only to itself (kept alive)."""

    __slots__ = ("obj",)

    def __init__(self, obj):
        self.obj = obj

    def __eq__(self, other):
        return isinstance(other, _Identity) and self.obj is other.obj

    def __hash__(self):
        return id(self.obj)


def _cells(fn, seen) -> tuple:
    out = []
    for cell in fn.__closure__ or ():
        try:
            out.append(structural_key(cell.cell_contents, seen))
        except ValueError:  # an empty cell
            out.append(("empty",))
    return tuple(out)


def structural_key(obj: Any, seen: frozenset = frozenset()) -> Any:
    """A hashable key of what `obj` computes: functions by code object, defaults and closure
    contents (recursively), numbers and strings by type and value, containers by content;
    anything else (arrays, objects) by identity. Equal keys mean the same traced program."""
    if isinstance(obj, _VALUES):
        return (type(obj), obj)
    if id(obj) in seen:
        return ("cycle",)
    seen = seen | {id(obj)}
    key = functools.partial(structural_key, seen=seen)
    if isinstance(obj, tuple | list):
        return (type(obj), tuple(map(key, obj)))
    if type(obj) is dict:
        return (dict, tuple((key(k), key(v)) for k, v in obj.items()))
    if isinstance(obj, functools.partial):
        return (functools.partial, key(obj.func), key(obj.args), key(obj.keywords))
    if isinstance(obj, types.MethodType):
        return (types.MethodType, key(obj.__func__), key(obj.__self__))
    if isinstance(obj, types.FunctionType):
        return (types.FunctionType, obj.__code__, _cells(obj, seen), key(obj.__defaults__),
                key(obj.__kwdefaults__))  # fmt: skip
    return _Identity(obj)


class Transformation:
    """An `optax.GradientTransformation` that compares equal to any other built the same way
    with the same hyperparameters (`structural_key`), so that `jit` reuses its program."""

    __slots__ = ("transform", "key")

    def __init__(self, transform: optax.GradientTransformation):
        self.transform = transform
        self.key = structural_key(transform)
        try:
            hash(self.key)
        except TypeError:  # a value whose type claims to be hashable but is not
            self.key = _Identity(transform)

    def __eq__(self, other):
        return isinstance(other, Transformation) and self.key == other.key

    def __hash__(self):
        return hash(self.key)


def _fresh(model_state):
    # Flax NNX variables remember the trace they were made in and refuse an update from
    # another (`jax.grad` inside our `jit`): rebuild them in the trace that uses them.
    return jtu.tree_map(lambda x: x, model_state)


def _optax_promotion():
    # Optax computes `decay ** count` (a Python float to an int32 power), which JAX's strict
    # dtype promotion refuses; its dtype handling is otherwise careful (updates keep the dtype
    # of `theta`), so its internals run under standard promotion, the user's loss does not.
    return jax.numpy_dtype_promotion("standard")


class OptaxStepper(AbstractStepper):
    """An Optax step. With `stateful`, `fn(theta, model_state, *args)` returns `(loss,
    new_model_state)` and the model state rides in the solver state next to `theta`."""

    fn: Callable
    optimizer: Transformation = eqx.field(static=True)
    tol: jax.Array | None = eqx.field(converter=traced_or_none)
    linesearch: bool = eqx.field(static=True)
    state0: Any = None
    stateful: bool = eqx.field(static=True, default=False)

    def has_stopping_rule(self) -> bool:
        return self.tol is not None

    def criterion(self) -> str:
        tol = float("nan") if self.tol is None else float(self.tol)
        return f"the gradient norm fell to `tol={tol:g}` or below"

    def init(self, theta, args):
        with _optax_promotion():
            opt_state = self.optimizer.transform.init(theta)
        return (theta, opt_state, self.state0) if self.stateful else (theta, opt_state)

    def theta(self, state):
        return state[0]

    def model_state(self, state):
        return state[2] if self.stateful else None

    def value(self, theta, args):
        if self.stateful:
            return self.fn(theta, _fresh(self.state0), *args)[0]
        return self.fn(theta, *args)

    def with_model_state(self, model):
        return eqx.tree_at(lambda s: s.state0, self, model) if self.stateful else self

    def value_of(self, state, args):
        if self.stateful:
            return self.fn(state[0], _fresh(state[2]), *args)[0]
        return self.fn(state[0], *args)

    def _value_and_grad(self, state, args):
        theta, opt_state = state[0], state[1]
        if self.stateful:
            f = lambda t: self.fn(t, _fresh(state[2]), *args)
            (loss, model_state), grad = jax.value_and_grad(f, has_aux=True)(theta)
            return loss, grad, {}, (model_state,)
        f = lambda t: self.fn(t, *args)
        if self.linesearch:
            # Optax's line search carries the loss in `theta`'s (real) precision: cast it, or
            # a float32 loss of float64 parameters (or float64 data) breaks its `cond`.
            f = lambda t: self.fn(t, *args).astype(jnp.finfo(theta.dtype).dtype)
            loss, grad = optax.value_and_grad_from_state(f)(theta, state=opt_state)
            return loss, grad, dict(value=loss, grad=grad, value_fn=f), ()
        loss, grad = jax.value_and_grad(f)(theta)
        return loss, grad, {}, ()

    def step(self, state: Any, args: tuple) -> tuple[Any, Any, jax.Array, Any]:
        theta, opt_state = state[0], state[1]
        loss, grad, extra, model_state = self._value_and_grad(state, args)
        if jnp.iscomplexobj(theta):
            grad = jnp.conj(jnp.asarray(grad))  # Optax's convention for complex parameters
        with _optax_promotion():
            updates, opt_state = self.optimizer.transform.update(grad, opt_state, theta,
                                                                 **extra)  # fmt: skip
        new_theta = optax.apply_updates(theta, updates)
        new = (new_theta, opt_state, *model_state)
        done = jnp.asarray(False)
        if self.tol is not None:
            # The gradient was measured at `theta`, not after the update: a converged run
            # stays where the test held (a step from a point already within `tol` could
            # lose many orders of magnitude, e.g. Adam's fixed-size first step).
            done = optax.tree.norm(grad) <= self.tol
            new = jax.tree.map(lambda old, step: jnp.where(done, old, step),
                               (theta, state[1], *state[2:]), new)  # fmt: skip
        return new, loss, done, RESULTS.successful


@functools.lru_cache(maxsize=64)
def _cached(name: str, frozen: tuple) -> optax.GradientTransformation:
    return _build(name, dict(frozen))


def _build(name: str, options: dict) -> optax.GradientTransformation:
    factory = getattr(optax, name)
    if name != "lbfgs":
        options.setdefault("learning_rate", 1e-3)
    return factory(**options)


def is_alias(name: str) -> bool:
    """Whether `optax.<name>` is an optimizer factory (not a class, not private)."""
    factory = getattr(optax, name, None)
    return not name.startswith("_") and callable(factory) and not isinstance(factory, type)


def optax_transform(name: str, options: dict, where: str, valid) -> optax.GradientTransformation:
    """The Optax transformation for `method=name` (an Optax alias, `is_alias`); cached so
    repeated calls share one compile. `valid`: the keywords its factory takes (None: any)."""
    if valid is not None:
        check_options(options, valid, where, name)
    try:
        return _cached(name, tuple(sorted(options.items())))
    except TypeError:
        # Unhashable options (an array schedule, say): build afresh, compile afresh.
        return _build(name, dict(options))


@functools.lru_cache(maxsize=64)
def _has_linesearch(optimizer: Transformation, shape: tuple, dtype) -> bool:
    # An abstract trace of `init` costs milliseconds: once per optimizer and theta shape.
    state = eqx.filter_eval_shape(optimizer.transform.init, jax.ShapeDtypeStruct(shape, dtype))
    return otu.tree_get(state, "value", default=None) is not None


def has_linesearch(optimizer: optax.GradientTransformation, theta0) -> bool:
    """Whether `optimizer` line-searches (it then re-evaluates the loss inside a step)."""
    return _has_linesearch(Transformation(optimizer), tuple(theta0.shape), theta0.dtype)


def optax_stepper(fn, optimizer, theta0, tol, state0=None, stateful=False) -> OptaxStepper:
    wrapped = Transformation(optimizer)
    linesearch = _has_linesearch(wrapped, tuple(theta0.shape), theta0.dtype)
    return OptaxStepper(fn, wrapped, tol, linesearch, state0, stateful)
