"""The residual vector of an `sb.pinn` problem, and its Jacobian built point by point.

A PINN residual is a stack of small per-point functions of `theta`: each term's
`residual_fn(u, x)` evaluated at each of its points (`jax.vmap`), scaled by
`sqrt(weight / points)`, flattened and concatenated in term order. That structure is what makes
the Jacobian cheap (see `PointwiseResidual`); `sb.least_squares` finds it through the
`residual_and_jacobian` attribute (`_solvers/_own_jacobian.py`).

The vector is always real: a complex residual (a Schrodinger-type PDE, a complex network)
enters as its real and imaginary parts, so `0.5 * sum(r**2)` is `0.5 * sum |r|**2` and every
least-squares solver takes it. Kept complex, `0.5 * sum(r * r)` was a complex number (no loss
at all), and the reverse-mode Jacobian of a complex residual of a real `theta` kept only its
real part (JAX's VJP of a real input), 0.67 off `jax.jacfwd` on a small case.
"""

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, PyTree

from ._custom_types import Theta
from ._pinn_field import Field
from ._precision import is_complex, is_inexact


_MSG_RESIDUAL = """\
`sb.pinn` term {name!r}: expected `residual_fn(u, x)` to return one floating or complex array
(the residual at that point, any shape), but it returned {got}.
Fix: {fix}"""

_FIX_TREE = """return one array, e.g. `jnp.concatenate([jnp.ravel(a), jnp.ravel(b)])`, or make each
part its own term (each then gets its own weight)."""

_FIX_DTYPE = """compute the residual in floating point, e.g. `u(x) - g(x)`: a boolean or
integer value has no derivative, so it would enter the loss as a constant."""


class PointwiseResidual:
    """`residual(theta)`, the concatenated scaled residuals of a PINN, and its Jacobian.

    A PINN residual is a stack of small per-point functions of `theta`, and that is what makes
    its Jacobian cheap: `residual_and_jacobian` differentiates each point's residual (a few
    outputs) in reverse mode over its own forward pass (for `sb.FlatMLP`, the forward-Laplacian
    pass), vmapped over points. Differentiating the concatenated vector as a black box costs a
    full pass over all points per parameter (`jax.jacfwd`) or per residual (`jax.jacrev`):
    measured 317 ms and 3.7 s against 0.7 ms on the 2-D Poisson problem of issue 14 (129
    parameters, 1020 points). `sb.least_squares` uses it when present.
    """

    def __init__(self, fm: Callable[..., Any], named: dict, scales: dict):
        self._fm, self._named, self._scales = fm, named, scales

    def terms(self, theta: Theta) -> dict[str, Array]:
        """Each term's scaled residuals, flattened, by name (in the order of `terms`)."""
        u = Field(self._fm, theta)
        return {
            name: self._scales[name] * _evaluate(name, fn, u, points).reshape(-1)
            for name, (fn, points) in self._named.items()
        }

    def __call__(self, theta: Theta) -> Array:
        return jnp.concatenate(list(self.terms(theta).values()))

    def residual_and_jacobian(self, theta: Theta) -> tuple[Array, Array]:
        """`(r, J)`: the residual vector and its `(residuals, parameters)` Jacobian."""
        pairs = [
            _term_jacobian(self._fm, name, fn, points, self._scales[name], theta)
            for name, (fn, points) in self._named.items()
        ]
        r = jnp.concatenate([p[0] for p in pairs])
        return r, jnp.concatenate([p[1] for p in pairs])


def _term_jacobian(fm, name: str, fn: Callable, points, scale: float, theta: Theta):
    def at_point(row):
        call = (lambda u: fn(u, *row)) if isinstance(points, tuple) else (lambda u: fn(u, row))
        g = lambda t: scale * _real_vector(name, call(Field(fm, t)))
        k = jax.eval_shape(g, theta).size
        if k <= theta.size:  # the cheaper mode by shape, per point: reverse for few outputs
            out, pullback = jax.vjp(g, theta)
            return out, jax.vmap(lambda e: pullback(e)[0])(jnp.eye(k, dtype=out.dtype))
        out, lin = jax.linearize(g, theta)
        return out, jax.vmap(lin, out_axes=1)(jnp.eye(theta.size, dtype=theta.dtype))

    r, J = jax.vmap(at_point)(points)
    return r.reshape(-1), J.reshape(-1, theta.size)


def _evaluate(name: str, fn: Callable, u: Field, points: PyTree[Array]) -> Array:
    if isinstance(points, tuple):
        return jax.vmap(lambda row: _real_vector(name, fn(u, *row)))(points)
    return jax.vmap(lambda x: _real_vector(name, fn(u, x)))(points)


def _real_vector(name: str, value: Any) -> Array:
    """One point's residual as a real 1-D vector (checked at trace time): a complex value
    gives its real and imaginary parts, interleaved, so `sum(r**2)` is `sum |value|**2`."""
    if not isinstance(value, jax.Array | np.ndarray | np.generic | float | int | complex):
        got = f"a {type(value).__name__}"
        raise TypeError(_MSG_RESIDUAL.format(name=name, got=got, fix=_FIX_TREE))
    value = jnp.asarray(value)
    if not is_inexact(value.dtype):
        got = f"an array of dtype {value.dtype}"
        raise TypeError(_MSG_RESIDUAL.format(name=name, got=got, fix=_FIX_DTYPE))
    if is_complex(value.dtype):
        return jnp.stack([jnp.real(value), jnp.imag(value)], axis=-1).reshape(-1)
    return value.reshape(-1)
