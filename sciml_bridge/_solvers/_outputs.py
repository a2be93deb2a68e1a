"""What the user's function must return, checked once, at trace time, at no run-time cost.

Optimistix's `OutAsArray` idea (STYLE.md 14): the loss and the residual are wrapped in tiny
modules that look at the *abstract* output while the first chunk is traced. A loss returning a
tuple, a vector or a complex number, or a residual that is complex, integer or a dict, is a
`TypeError` saying what was returned and what is expected, instead of a deep traceback.
Equal wrappers of the same function compare equal, so compiled programs are still reused.
"""

from collections.abc import Callable

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np


_MSG_LOSS = """\
`{where}` expected `loss(theta, *args)` to return a real scalar (shape () and a floating
dtype), but it returned {got}. {fix}"""

_MSG_RESIDUAL = """\
`{where}` expected `residual(theta, *args)` to return one real floating array (any shape; it
is flattened), but it returned {got}. {fix}"""


def _describe(out) -> str:
    if isinstance(out, tuple | list | dict):
        return f"a {type(out).__name__} of {len(out)} items"
    if not hasattr(out, "shape") or not hasattr(out, "dtype"):
        return f"a {type(out).__name__}"
    return f"an array of shape {tuple(out.shape)} and dtype {np.dtype(out.dtype)}"


def _kind(out) -> str:
    """"" for a real floating array; else which problem it has."""
    if isinstance(out, int | float | complex):  # `bool` too: not computed from `theta`
        return "constant"
    if isinstance(out, tuple | list | dict) or not hasattr(out, "dtype"):
        return "container"
    dtype = np.dtype(out.dtype)
    if jnp.issubdtype(dtype, jnp.complexfloating):
        return "complex"
    if not jnp.issubdtype(dtype, jnp.floating):  # bfloat16 too (NumPy kind "V")
        return "integer"
    return ""


_CONSTANT_FIX = ("Return a JAX array computed from `theta` (a Python number is a constant: "
                 "no gradient flows through it).")
_LOSS_FIX = {
    "constant": _CONSTANT_FIX,
    "container": "If it returns `(loss, aux)`, return only the loss: `lambda th: f(th)[0]`.",
    "complex": "Return a real number, e.g. `jnp.sum(jnp.abs(z) ** 2)` for a complex `z`.",
    "integer": "Compute the loss in floating point (an integer loss has no gradient).",
    "shape": "Reduce it (`jnp.sum`/`jnp.mean`), or pass the vector to `sb.least_squares`, "
    "which minimises `0.5 * sum(residual ** 2)`.",
}
_RESIDUAL_FIX = {
    "constant": _CONSTANT_FIX,
    "container": "Concatenate the pieces: `jnp.concatenate([jnp.ravel(a), jnp.ravel(b)])`.",
    "complex": "Stack real and imaginary parts: `jnp.concatenate([z.real, z.imag])`.",
    "integer": "Compute the residual in floating point (an integer one has no Jacobian).",
}


class ScalarLoss(eqx.Module):
    """`loss(theta, *args)`, refusing anything but a real scalar when it is traced."""

    fn: Callable
    where: str = eqx.field(static=True)

    def __call__(self, theta, *args):
        out = self.fn(theta, *args)
        kind = _kind(out) or ("" if jax.numpy.shape(out) == () else "shape")
        if kind:
            got = _describe(out)
            raise TypeError(_MSG_LOSS.format(where=self.where, got=got, fix=_LOSS_FIX[kind]))
        return out


class Residual(eqx.Module):
    """`residual(theta, *args)`, refusing anything but one real floating array."""

    fn: Callable
    where: str = eqx.field(static=True)

    def __call__(self, theta, *args):
        out = self.fn(theta, *args)
        kind = _kind(out)
        if kind:
            fix = _RESIDUAL_FIX[kind]
            raise TypeError(_MSG_RESIDUAL.format(where=self.where, got=_describe(out), fix=fix))
        return out
