"""Which vector field `sb.NeuralODE` solves: a network `fm(theta, y)` or a user's hybrid
`vf(t, y, theta, args)`, checked to return dy/dt of the state's shape and dtype.

Either way `theta` travels as Diffrax's `args` (never closed over), so every adjoint
differentiates it; a hybrid field receives the user's `args` next to it.
"""

from collections.abc import Callable
from typing import Any

import diffrax
import equinox as eqx
import jax
import jax.tree_util as jtu
from jaxtyping import Array, PyTree

from ._diffeq import field_shape, shapes
from ._network_field import identity, network_parts


_MSG_ARGS = (
    "`sb.NeuralODE(fm)(theta, y0, ts, args)` got `args`, but a network-only vector field "
    "`fm(theta, y)` has nowhere to put them. Fix: drop `args`, or use "
    "`sb.NeuralODE.hybrid(vf)` with `vf(t, y, theta, args)`."
)
_MSG_FIELD_SHAPE = (
    "`sb.NeuralODE(...)(theta, y0, ts)`: the vector field must return dy/dt of the shape and "
    "dtype of the state `y0`, but it returned {got} for a state {want} (Diffrax would "
    "broadcast it silently). Fix: make `fm(theta, y)` return one value per state entry."
)
_MSG_ARITY = (
    "`sb.NeuralODE(...)(theta, y0, ts)` called the vector field as `{call}`, which it does "
    "not take ({error}). Fix: {fix}"
)
_FIX_ARITY = {
    False: "for a field of time `fm(theta, t, y)` pass `time_dependent=True`; else write "
           "`fm(theta, y)`.",
    True: "for a field without time `fm(theta, y)` drop `time_dependent=True` (default "
          "`False`); else write `fm(theta, t, y)`.",
    None: "write the hybrid field as `vf(t, y, theta, args)` (`args` is `None` when the call "
          "passes none).",
}  # fmt: skip
MSG_HYBRID_TIME = (
    "`sb.NeuralODE.hybrid(vf, time_dependent=...)`: a hybrid vector field `vf(t, y, theta, "
    "args)` always receives `t`, so `time_dependent` does not apply. Fix: drop it."
)


class Hybrid(eqx.Module):
    """Marks a user vector field `vf(t, y, theta, args)` (see `NeuralODE.hybrid`)."""

    vf: Callable


class _HybridField(eqx.Module):
    """Diffrax vector field `(t, y, args) -> vf(t, y, theta, user_args)`."""

    vf: Callable

    def __call__(self, t, y, args):
        theta, user_args = args
        return self.vf(t, y, theta, user_args)


def ode_parts(fm: Callable | Hybrid, time_dependent: bool, adjoint: diffrax.AbstractAdjoint,
              args: PyTree[Any]) -> tuple[Callable, Callable]:
    """`(prepare, field)` as `network_parts`, for a network or a hybrid field."""
    if isinstance(fm, Hybrid):
        return identity, _HybridField(fm.vf)
    if args is not None:
        raise TypeError(_MSG_ARGS)
    return network_parts(fm, time_dependent, adjoint)


def check_field(field: Callable, t0: Array, y0: Array, args: Any) -> None:
    """A field returning another shape than `y` would be broadcast by Diffrax (issue 12)."""
    try:
        out = field_shape("sb.NeuralODE(...)(theta, y0, ts)", "vector field", "y0", field, t0,
                          y0, args)
    except ValueError as e:
        _arity(field, e)
        raise
    want = jax.eval_shape(lambda: y0)
    if jtu.tree_structure(out) != jtu.tree_structure(want) or any(
        (o.shape, o.dtype) != (w.shape, w.dtype)
        for o, w in zip(jtu.tree_leaves(out), jtu.tree_leaves(want))
    ):
        raise ValueError(_MSG_FIELD_SHAPE.format(got=shapes(out), want=shapes(want)))


def _arity(field: Callable, e: ValueError) -> None:
    """A field called with the wrong number of arguments (`time_dependent=` the wrong way round)
    is a `TypeError` naming the call, not "pass a `y0` of the shape the network takes"."""
    cause = e.__cause__
    if not (isinstance(cause, TypeError) and "positional argument" in str(cause)):
        return
    if isinstance(field, _HybridField):
        call, key = "vf(t, y, theta, args)", None
    else:
        key = bool(getattr(field, "time_dependent", False))
        call = "fm(theta, t, y)" if key else "fm(theta, y)"
    raise TypeError(_MSG_ARITY.format(call=call, error=cause, fix=_FIX_ARITY[key])) from cause
