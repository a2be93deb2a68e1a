"""The Brownian motion of a neural SDE: built from the key of each call, with the Lévy area
the solver needs.

Diffrax's stochastic Runge-Kutta solvers (`diffrax.ShARK`, `diffrax.SRA1`, `diffrax.SEA`,
`diffrax.SPaRK`, `diffrax.GeneralShARK`, `diffrax.SlowRK`) read the space-time (and
space-time-time) Lévy area of each Brownian increment, and declare the least they need as
`solver.minimal_levy_area` (diffrax `_solver/srk.py`, `AbstractSRK.minimal_levy_area`). A
Brownian motion built without it makes Diffrax raise its raw `TermAndSolverIncompatible`, so
the tree here is built with the smallest concrete Lévy area that the solver accepts. A
solver that declares none gets `diffrax.BrownianIncrement`, Diffrax's default (the paths of
Euler, Heun, ... are unchanged). The Lévy area changes the path drawn from a key (Diffrax's
`VirtualBrownianTree` docstring): the same key gives another `W` with `ShARK` than with
`Euler`.
"""

from typing import Any

import diffrax
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, PRNGKeyArray


_MSG_KEY = (
    "`sb.NeuralSDE(...)(theta, y0, ts, key)` expected `key` to be one PRNG key (e.g. "
    "`jax.random.key(0)`), but got {got}. Fix: pass one key per path; for many paths use "
    "`jax.vmap(sde, in_axes=(None, None, None, 0))(theta, y0, ts, jax.random.split(key, n))`."
)
_MSG_BROWNIAN_SHAPE = (
    "`sb.NeuralSDE(..., diagonal=False, brownian_shape=...)` expected the shape of the Brownian "
    "motion as a tuple of positive ints, but got {got!r}. Fix: e.g. `brownian_shape=(3,)` for "
    "three Brownian motions and a `(*y.shape, 3)` diffusion matrix."
)
_MSG_LEVY = (
    "`sb.NeuralSDE(solver={solver})`: the solver asks for a Brownian motion with Lévy area "
    "{want}, which Diffrax's `VirtualBrownianTree` cannot generate (it offers {offered}). "
    "Fix: pick a solver of Diffrax's `AbstractSRK` family (e.g. `diffrax.ShARK()`) or "
    "`diffrax.Heun()`."
)

# From least to most: the first subclass of what the solver declares is the cheapest.
_LEVY_AREAS = (
    diffrax.BrownianIncrement,
    diffrax.SpaceTimeLevyArea,
    diffrax.SpaceTimeTimeLevyArea,
)


def levy_area(solver: diffrax.AbstractSolver) -> type:
    """The cheapest concrete Lévy area that `solver` (or the solver it wraps) accepts."""
    minimal, inner = getattr(solver, "minimal_levy_area", None), getattr(solver, "solver", None)
    if minimal is None and isinstance(inner, diffrax.AbstractSolver):
        return levy_area(inner)  # `diffrax.HalfSolver(ShARK())`, ...
    if minimal is None:
        return diffrax.BrownianIncrement
    for area in _LEVY_AREAS:
        if issubclass(area, minimal):
            return area
    offered = ", ".join(f"`diffrax.{a.__name__}`" for a in _LEVY_AREAS)
    raise ValueError(_MSG_LEVY.format(solver=type(solver).__name__, want=minimal.__name__,
                                      offered=offered))  # fmt: skip


def brownian_tree(
    solver: diffrax.AbstractSolver, ts: Array, dt0: float, noise: tuple[int, ...], dtype: Any,
    key: PRNGKeyArray,
) -> diffrax.VirtualBrownianTree:
    """Diffrax's `VirtualBrownianTree(ts[0], ts[-1], tol=dt0 / 2, ...)`, with the Lévy area
    `solver` needs."""
    return diffrax.VirtualBrownianTree(
        ts[0], ts[-1], tol=dt0 / 2, shape=jax.ShapeDtypeStruct(noise, dtype), key=key,
        levy_area=levy_area(solver),
    )  # fmt: skip


def check_brownian_shape(shape: Any) -> tuple[int, ...]:
    """A tuple of positive ints (an int alone failed with "'int' object is not iterable")."""
    ints = isinstance(shape, tuple | list) and all(
        isinstance(n, int | np.integer) and not isinstance(n, bool) for n in shape
    )
    if not ints:
        raise TypeError(_MSG_BROWNIAN_SHAPE.format(got=shape))
    if any(n < 1 for n in shape):
        raise ValueError(_MSG_BROWNIAN_SHAPE.format(got=shape))
    return tuple(int(n) for n in shape)


def check_key(key: Any) -> None:
    """One PRNG key: a typed key of shape `()`, or a raw `uint32[2]`."""
    is_key = isinstance(key, jax.Array) and (
        jnp.issubdtype(key.dtype, jax.dtypes.prng_key)
        or (key.dtype == jnp.uint32 and key.shape == (2,))
    )
    if not is_key or (jnp.issubdtype(key.dtype, jax.dtypes.prng_key) and key.shape):
        raise TypeError(_MSG_KEY.format(got=f"{type(key).__name__} {getattr(key, 'shape', '')}"))
