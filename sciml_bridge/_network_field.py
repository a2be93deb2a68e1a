"""How a flat model becomes a Diffrax vector field, and when `theta` is rebuilt per solve.

Shared by `sb.NeuralODE`, `sb.NeuralSDE` and `sb.NeuralCDE`: the field is a module (so Diffrax's
caches see a stable term), and `theta` always travels as Diffrax's `args`, so every adjoint
differentiates it.
"""

from collections.abc import Callable

import diffrax
import equinox as eqx
import jax.numpy as jnp
from jaxtyping import Array

from ._flat import AbstractFlatModel, FlatModel
from ._flat_mlp import FlatMLP


class NetworkField(eqx.Module):
    """Diffrax vector field `(t, y, args) -> apply(p, y)` with `args = (p, None)`.

    A module, not a fresh lambda per call: Diffrax's internal `filter_jit` keys its cache on
    the term's static parts, so a stable field means repeated `node(...)` calls outside `jit`
    compile once.
    """

    apply: Callable
    time_dependent: bool = eqx.field(static=True)

    def __call__(self, t, y, args):
        p, _ = args
        return self.apply(p, t, y) if self.time_dependent else self.apply(p, y)


def network_parts(fm: Callable, time_dependent: bool,
                   adjoint: diffrax.AbstractAdjoint) -> tuple[Callable, Callable]:
    """`(prepare, field)`: `prepare(theta)` runs once per solve, `field` at every stage.

    PITFALLS (Diffrax): rebuilding a model inside the vector field repeats the unravel at every
    solver stage; rebuilding once outside `diffeqsolve` and passing the rebuilt pytree as `args`
    costs nothing. So every flat model whose call is its rebuilt model's call (`sb.FlatModel`,
    and `sb.FlatMLP`, whose `restructure` gives the equivalent Equinox network) is rebuilt once
    per solve: inside a vector field that beat `FlatMLP`'s slicing 2x (issue 15: 0.24 vs
    0.59 ms per value and gradient, 17.4 vs 27.6 ms for 256 vmapped states). Except under
    `BacksolveAdjoint`, whose backward solve carries one cotangent per leaf of `args`: there
    one flat vector is cheaper (1.90 vs 2.13 ms on the spiral), so `FlatMLP` keeps `theta`.
    """
    backsolve = isinstance(adjoint, diffrax.BacksolveAdjoint)
    if isinstance(fm, FlatModel):
        # Same math as `fm(theta, y)`, which is `fm.apply(fm.restructure(theta), y)`.
        return fm.restructure, NetworkField(fm.apply, time_dependent)
    if isinstance(fm, FlatMLP) and not backsolve and not time_dependent:
        # `fm(theta, y)` is `fm.restructure(theta)(y)` (the `FlatMLP` layout contract).
        return fm.restructure, NetworkField(call_model, False)
    if isinstance(fm, AbstractFlatModel):
        # `theta0` is never read by `fm(theta, y)`, but as an array inside the term
        # `BacksolveAdjoint` would integrate its (zero) cotangent too: 1.6x slower per
        # loss+gradient step on the spiral, measured. An empty array keeps the module hashable.
        fm = eqx.tree_at(lambda m: m.theta0, fm, jnp.zeros((0,), fm.theta0.dtype))
    return identity, NetworkField(fm, time_dependent)


def call_model(model: Callable, y: Array) -> Array:
    return model(y)


def identity(theta):
    return theta
