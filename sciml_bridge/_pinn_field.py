"""`sb.Field`: the network a PINN residual function sees, with its input derivatives.

Residual functions given to `sb.pinn` receive `u = Field(fm, theta)`: `u(x)`, `u.grad(x)`,
`u.laplacian(x)`, `u.hessian(x)` and `u.second_derivative(x, axis)`, computed by `sb.grad_x` /
`sb.laplacian` (a forward-Laplacian pass on the fast path) or by forward-mode AD. `theta` is
held fixed here; `sb.pinn` differentiates through it.
"""

from collections.abc import Callable
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array

from ._custom_types import Theta
from ._laplacian import grad_x, laplacian
from ._pinn_derivative_checks import along_real_directions, as_computed, check_smooth
from ._precision import guard_x64


_MSG_AXIS = """\
`u.second_derivative(x, axis)` expected `axis` to pick one entry of `x` (shape {shape}): {want},
but got {axis!r}. Fix: e.g. `u.second_derivative(x, 0)`."""


class Field(eqx.Module):
    """The network `x -> fm(theta, x)` at fixed `theta`, with its input derivatives.

    Residual functions given to `sb.pinn` receive one as their first argument. Shapes follow
    `fm`: for `fm(theta, x)` of shape `out`, `u.grad(x)` has shape `out + x.shape`,
    `u.laplacian(x)` has shape `out`, and `u.hessian(x)` has shape `out + x.shape + x.shape`.

    !!! example

        ```python
        def pde(u, x):           # -u'' = f  ->  residual -u'' - f
            return -u.laplacian(x) - f(x)
        ```

    **Attributes:** `model` (the flat model) and `theta` (its parameters, held fixed).
    """

    model: Callable[..., Any]
    theta: Theta

    def __call__(self, x: Array) -> Array:
        return self.model(self.theta, x)

    def grad(self, x: Array) -> Array:
        """Jacobian of the output with respect to `x` (`sb.grad_x`)."""
        return grad_x(self.model)(self.theta, x)

    def laplacian(self, x: Array) -> Array:
        """Sum of the second derivatives over all input axes (`sb.laplacian`)."""
        return laplacian(self.model)(self.theta, x)

    def hessian(self, x: Array) -> Array:
        """All second input derivatives (forward mode over `sb.grad_x`), for mixed operators.

        A complex `x` moves along the real axis of each entry, as `u.grad` and `u.laplacian`
        (the complex derivatives of a holomorphic model)."""
        x = self._second_order_point(x, "`u.hessian(x)`")
        at, v = along_real_directions(lambda y: grad_x(self.model)(self.theta, y), self.theta, x)
        hessian = jax.jacfwd(at)(v)
        return hessian.reshape(hessian.shape[:-1] + x.shape)

    def _second_order_point(self, x: Any, where: str) -> Array:
        """`x` in the model's dtype, after the checks `u.laplacian` makes: no float64 NumPy
        point with x64 off (truncated without a word), and no activation whose second
        derivative autodiff reports as 0 (relu: `u.hessian` and `u.second_derivative` gave
        zeros where `u.laplacian` raised)."""
        guard_x64(x, where, "a NumPy `x`")
        check_smooth(self.model)
        return as_computed(self.theta, jnp.asarray(x))

    def second_derivative(self, x: Array, axis: int | tuple[int, ...]) -> Array:
        """`d^2 u / dx_axis^2` alone (shape of `u(x)`), by forward over forward mode.

        Cheaper than `hessian(x)[..., axis, axis]` when one axis needs it (the `u_xx` of a
        space-time problem): two directional derivatives instead of the full Hessian. `axis`
        indexes the entries of `x`: an int for a 1-D `x`, `0` (or `-1`) for a scalar `x`, a
        tuple of `x.ndim` ints otherwise.
        """
        # An integer `x` in the model's dtype, as `u.grad` and `u.laplacian` take it (autodiff
        # refuses integer inputs: `jax.jvp` wanted a float0 tangent).
        x = self._second_order_point(x, "`u.second_derivative(x, axis)`")
        e = jnp.zeros_like(x).at[_entry(x.shape, axis)].set(1)
        first = lambda y: jax.jvp(lambda z: self.model(self.theta, z), (y,), (e,))[1]
        return jax.jvp(first, (x,), (e,))[1]


def _entry(shape: tuple[int, ...], axis: Any) -> tuple[int, ...]:
    """`axis` as an index of one entry of an `x` of `shape`; JAX would drop an out-of-range
    `.at[...]` update without a word (and a zero direction gives a zero derivative)."""
    want = ("an int in [-1, 0] for a scalar `x`" if not shape else
            f"an int in [-{shape[0]}, {shape[0] - 1}]" if len(shape) == 1 else
            f"a tuple of {len(shape)} ints within the shape")  # fmt: skip
    index = (axis,) if isinstance(axis, int | np.integer) else axis
    ok = isinstance(index, tuple) and all(
        isinstance(i, int | np.integer) and not isinstance(i, bool) for i in index
    )
    if ok and not shape:
        ok = len(index) == 1 and index[0] in (0, -1)
        index = ()
    elif ok:
        ok = len(index) == len(shape) and all(-n <= i < n for i, n in zip(index, shape))
    if not ok:
        raise ValueError(_MSG_AXIS.format(shape=shape, want=want, axis=axis))
    return tuple(int(i) for i in index)
