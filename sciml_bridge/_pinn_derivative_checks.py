"""What input derivatives need from a model and its point, checked before taking them.

`sb.laplacian`, `sb.grad_x`, `sb.HardConstraint` and `sb.Field` all differentiate a flat model
with respect to its input `x`. Two things decide whether the numbers mean what they say:

- the dtype derivatives are taken in: autodiff works in the dtype of `x`, so `x` is first put
  in the dtype the model computes in (the wider of `x` and `theta`), as `sb.FlatMLP` does;
- smoothness: a network whose activation is not twice differentiable (relu) has a Laplacian
  that autodiff reports as 0 almost everywhere. The fast path refuses it; the general path of
  the same network (`sb.flat(mlp, fast=False)`), and any `sb.HardConstraint` around it, nested
  or not, must refuse it too, not return zeros. `check_smooth` is the one place that decides.

A kink inside an opaque model (a hand-written `jnp.maximum(z, 0)` in an `eqx.Module`) is not
seen: autodiff is exact on each linear piece, so no pointwise derivative reveals the Dirac
mass of the second derivative, and a scan of the jaxpr for `max`/`abs`/`select_n` would flag
smooth functions built from them (`jax.nn.softplus` is `logaddexp`, which uses both).
"""

from collections.abc import Callable
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array

from ._activations import check_twice_differentiable
from ._fast import Unsupported, recognise
from ._flat import FlatModel
from ._flat_mlp import FlatMLP
from ._precision import is_complex, is_inexact, promote, real_dtype


class WrapsNetwork(eqx.Module):
    """A flat model built around a network `model` (`sb.HardConstraint`): it is as smooth in
    `x` as that network, which `check_smooth` reads through any depth of nesting."""

    model: eqx.AbstractVar[Callable[..., Any]]


def as_computed(theta: Any, x: Array) -> Array:
    """`x` in the dtype a flat model computes in: the wider of `x` and `theta`'s real dtype,
    or `theta`'s for an integer `x` (as `sb.FlatMLP` does). Derivatives by autodiff are taken
    in the dtype of `x`: a float32 point with float64 weights gave float32 derivatives of a
    hard constraint's distance and lift (2e-9 off in a float64 result), and an integer point
    none at all (`jax.jacfwd` and `jax.jvp` refuse integer inputs)."""
    # `theta` may be any pytree for a hand-written `fm`; Python scalars are weakly typed.
    dtypes = [leaf.dtype for leaf in jax.tree.leaves(theta) if hasattr(leaf, "dtype")
              and is_inexact(leaf.dtype) and not getattr(leaf, "weak_type", False)]
    if not dtypes:
        return x
    real = real_dtype(promote(dtypes))
    return x.astype(promote([x.dtype, real]) if is_inexact(x.dtype) else real)


def along_real_directions(model: Callable[[Array], Any], theta: Any,
                          x: Any) -> tuple[Callable[[Array], Any], Array]:
    """`model` as a function of the real coordinates `v` of `x` (flattened), and `v`.

    Derivatives are taken in the dtype the model computes in, as the fast path does: the
    wider of `x` and `theta` (reverse mode differentiates in the dtype of `x`, so a float32
    point with float64 weights gave a float32 Laplacian), and an integer `x` in `theta`'s
    real dtype (autodiff refuses integer inputs, `fm(theta, x)` accepts them). A complex `x`
    moves along the real axis of each entry (the complex derivative of a holomorphic model,
    as the fast path computes): `jax.jacrev` and `jax.jacfwd` refuse complex inputs."""
    x = as_computed(theta, jnp.asarray(x))
    shape = x.shape
    if not is_complex(x.dtype):
        return (lambda v: model(v.reshape(shape))), x.reshape(-1)
    imag = jnp.imag(x).reshape(-1)
    return (lambda v: model(jax.lax.complex(v, imag).reshape(shape))), jnp.real(x).reshape(-1)


def check_smooth(fm: Any) -> None:
    """Raise the error of `sb.laplacian` if `fm` has an activation that is not twice
    differentiable (relu): an `sb.FlatMLP`, the general path of a network the fast path
    recognises (`sb.flat(eqx.nn.MLP(..., activation=jax.nn.relu), fast=False)`, where
    `trace(jax.hessian)` gave 0), or either inside any nesting of `sb.HardConstraint`. Other
    models are opaque here: a kink inside them cannot be seen (see the module docstring)."""
    while isinstance(fm, WrapsNetwork):
        fm = fm.model
    if isinstance(fm, FlatMLP):
        activations = fm.activations
    elif isinstance(fm, FlatModel):
        activations = _activations(fm)
    else:
        return
    for activation in activations:
        check_twice_differentiable(activation)


# `fm.restructure` -> the activations of the network it rebuilds, `()` if not recognised: they
# follow from its structure alone, and rebuilding the model to find them cost ~0.8 ms per call.
_ACTIVATIONS: dict[Any, tuple] = {}


def _activations(fm: FlatModel) -> tuple:
    key = fm.restructure
    try:
        return _ACTIVATIONS[key]
    except (KeyError, TypeError):  # not seen yet, or a static part that cannot be hashed
        pass
    try:
        found = tuple(recognise(fm.restructure(fm.theta0), fm.restructure).activations)
    except Unsupported:
        found = ()
    if len(_ACTIVATIONS) >= 256:  # bounded: each key holds a model's static parts
        _ACTIVATIONS.clear()
    try:
        _ACTIVATIONS[key] = found
    except TypeError:
        pass
    return found
