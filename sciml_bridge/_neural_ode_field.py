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
    out = field_shape("sb.NeuralODE(...)(theta, y0, ts)", "vector field", "y0", field, t0, y0,
                      args)
    want = jax.eval_shape(lambda: y0)
    if jtu.tree_structure(out) != jtu.tree_structure(want) or any(
        (o.shape, o.dtype) != (w.shape, w.dtype)
        for o, w in zip(jtu.tree_leaves(out), jtu.tree_leaves(want))
    ):
        raise ValueError(_MSG_FIELD_SHAPE.format(got=shapes(out), want=shapes(want)))
