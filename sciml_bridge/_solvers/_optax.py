"""Optax backends: `"adam"` (any Optax alias by name), `"lbfgs"`, or a transformation object.

All are first-order steps, so they run fused (many steps per dispatch, see `_fused.py`).
L-BFGS's zoom line search reuses the value and gradient it stored in the state
(`optax.value_and_grad_from_state`), so a step costs one gradient evaluation, as in the
Optax L-BFGS guide.
"""

import functools
from collections.abc import Callable
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import optax
import optax.tree_utils as otu

from ._setup import check_options
from ._stepper import RESULTS, AbstractStepper


_MSG_UNKNOWN = """\
`{where}` got method={name!r}, which is neither a method of sciml_bridge nor an Optax
optimizer. Fix: use one of {known}, any `optax.<name>` alias (e.g. "sgd", "adamw"),
"scipy:<Method>", or pass an `optax.GradientTransformation` object."""


def _optax_promotion():
    # Optax computes `decay ** count` (a Python float to an int32 power), which JAX's strict
    # dtype promotion refuses; its dtype handling is otherwise careful (updates keep the dtype
    # of `theta`), so its internals run under standard promotion, the user's loss does not.
    return jax.numpy_dtype_promotion("standard")


class OptaxStepper(AbstractStepper):
    fn: Callable
    optimizer: optax.GradientTransformation
    tol: float | None = eqx.field(static=True)
    linesearch: bool = eqx.field(static=True)

    def has_stopping_rule(self) -> bool:
        return self.tol is not None

    def criterion(self) -> str:
        return f"the gradient norm fell to `tol={self.tol:g}` or below"

    def init(self, theta, args):
        with _optax_promotion():
            return theta, self.optimizer.init(theta)

    def theta(self, state):
        return state[0]

    def value(self, theta, args):
        return self.fn(theta, *args)

    def step(self, state: Any, args: tuple) -> tuple[Any, Any, jax.Array, RESULTS]:
        theta, opt_state = state
        f = lambda t: self.fn(t, *args)
        if self.linesearch:
            loss, grad = optax.value_and_grad_from_state(f)(theta, state=opt_state)
            extra = dict(value=loss, grad=grad, value_fn=f)
        else:
            loss, grad = jax.value_and_grad(f)(theta)
            extra = {}
        with _optax_promotion():
            updates, opt_state = self.optimizer.update(grad, opt_state, theta, **extra)
        new_theta = optax.apply_updates(theta, updates)
        done = jnp.asarray(False)
        if self.tol is not None:
            done = optax.tree.norm(grad) <= self.tol
        return (new_theta, opt_state), loss, done, RESULTS.successful


@functools.lru_cache(maxsize=64)
def _cached(name: str, frozen: tuple) -> optax.GradientTransformation:
    return _build(name, dict(frozen))


def _build(name: str, options: dict) -> optax.GradientTransformation:
    factory = getattr(optax, name)
    if name != "lbfgs":
        options.setdefault("learning_rate", 1e-3)
    return factory(**options)


def optax_transform(name: str, options: dict, where: str, valid) -> optax.GradientTransformation:
    """The Optax transformation for `method=name`; cached so repeated calls share one compile.
    `valid`: the keywords its factory takes (None: any)."""
    factory = getattr(optax, name, None)
    if name.startswith("_") or not callable(factory) or isinstance(factory, type):
        known = '"adam", "lbfgs", "bfgs", "nonlinear-cg"'
        raise ValueError(_MSG_UNKNOWN.format(where=where, name=name, known=known))
    if valid is not None:
        check_options(options, valid, where, name)
    try:
        return _cached(name, tuple(sorted(options.items())))
    except TypeError:
        # Unhashable options (an array schedule, say): build afresh, compile afresh.
        return _build(name, dict(options))


@functools.lru_cache(maxsize=64)
def _has_linesearch(optimizer, shape: tuple, dtype) -> bool:
    # An abstract trace of `init` costs milliseconds: once per optimizer and theta shape.
    state = eqx.filter_eval_shape(optimizer.init, jax.ShapeDtypeStruct(shape, dtype))
    return otu.tree_get(state, "value", default=None) is not None


def optax_stepper(fn, optimizer, theta0, tol) -> OptaxStepper:
    try:
        linesearch = _has_linesearch(optimizer, tuple(theta0.shape), theta0.dtype)
    except TypeError:  # an unhashable transformation: trace it every time
        linesearch = _has_linesearch.__wrapped__(optimizer, tuple(theta0.shape), theta0.dtype)
    return OptaxStepper(fn, optimizer, tol, linesearch)
