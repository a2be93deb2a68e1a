"""Types named once, used in every public signature."""

from typing import Any, TypeAlias

from jaxtyping import Array, ArrayLike, Inexact, PyTree, Scalar


Theta: TypeAlias = Inexact[Array, " n"]
"""The flat parameter vector: one 1-D floating or complex array."""

ThetaLike: TypeAlias = Inexact[ArrayLike, " n"]
"""Anything a user may pass as `theta` (JAX or NumPy)."""

ThetaBatch: TypeAlias = Inexact[Array, "members n"]
"""A stack of flat parameter vectors, one row per ensemble member."""

Model: TypeAlias = PyTree[Any]
"""A nested model: an Equinox module, Flax params, a dict of arrays, ..."""

LossScalar: TypeAlias = Inexact[Scalar, ""]

Precision: TypeAlias = str
"""One of `"vector"`, `"model"`, `"strict"`; see `sb.destructure`."""
