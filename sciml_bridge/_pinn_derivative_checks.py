"""What input derivatives need from a model and its point, checked before taking them.

`sb.laplacian`, `sb.grad_x`, `sb.HardConstraint` and `sb.Field` all differentiate a flat model
with respect to its input `x`. Two things decide whether the numbers mean what they say:

- the dtype derivatives are taken in: autodiff works in the dtype of `x`, so `x` is first put
  in the dtype the model computes in (the wider of `x` and `theta`), as `sb.FlatMLP` does;
- smoothness: a network whose activation is not twice differentiable (relu) has a Laplacian
  that autodiff reports as 0 almost everywhere. The fast path refuses it; the general path of
  the same network (`sb.flat(mlp, fast=False)`) must refuse it too, not return zeros.
"""

from typing import Any

import jax
from jaxtyping import Array

from ._activations import check_twice_differentiable
from ._fast import Unsupported, recognise
from ._flat import FlatModel
from ._precision import is_inexact, promote, real_dtype


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


def check_smooth(fm: Any) -> None:
    """Raise, as the fast path does, if `fm` is the general path of a network the fast path
    recognises (`sb.flat(eqx.nn.MLP(..., activation=jax.nn.relu), fast=False)`) with an
    activation that is not twice differentiable: `trace(jax.hessian)` gave 0 where `fast="auto"`
    raised. Other models are opaque here: a kink inside them cannot be seen."""
    if not isinstance(fm, FlatModel):
        return
    for activation in _activations(fm):
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
