"""`sb.HardConstraint`: boundary conditions built into the network, `u = lift + distance * N`.

A soft boundary term leaves the boundary values as free as the rest of the fit: on the 2-D
Helmholtz problem of `benchmarks/pinn_accuracy.py` they stayed 1.6e-5 off (rms) and held the
error near 8e-6, while `u = (1 - x^2)(1 - y^2) N` (Lagaris et al. 1998; Sukumar & Srivastava,
CMAME 2022), zero on the edges for every `theta`, reached 9.4e-8 (median of five seeds). The
derivatives a PINN residual needs come from the product rule around the network's own input
derivatives, so an `sb.FlatMLP` keeps its forward-Laplacian pass:

    grad u = grad a + N grad g + g grad N
    Lap u  = Lap a + N Lap g + 2 grad g . grad N + g Lap N

with `g = distance(x)` and `a = lift(x)` differentiated by JAX (they are small functions of
`x` alone).
"""

from collections.abc import Callable
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, ArrayLike

from ._custom_types import Theta, ThetaLike, Validated
from ._flat_mlp import FlatMLP
from ._pinn_derivative_checks import WrapsNetwork, as_computed, check_smooth
from ._precision import complex_dtype, guard_x64, is_complex, is_inexact, promote


_MSG_POINT = """\
`sb.HardConstraint` expected one point `x` of shape (d,), but got shape {shape} (a network
with input size "scalar" takes shape ()).
Fix: call it on one point, and `jax.vmap` over a batch (as `sb.pinn` does)."""

_MSG_DISTANCE = """\
`sb.HardConstraint` expected `distance(x)` to return a scalar (shape ()), but got shape
{shape}. Fix: return one number per point, zero where the condition holds, e.g.
`lambda x: (1 - x[0] ** 2) * (1 - x[1] ** 2)` on [-1, 1]^2."""

_MSG_LIFT = """\
`sb.HardConstraint` expected `lift(x)` to have the model's output shape {want} (or a shape
that broadcasts to it), but got shape {got}, which would change the output to {out}.
Fix: return the boundary values with the model's output shape, e.g. `jnp.zeros({want})`."""


def _scalar_derivatives(f: Callable, x: Array, order: int) -> tuple[Array, ...]:
    """`(f, grad f, Lap f)` of a function of one point (any output shape), by JAX.

    An integer output (`lift = lambda x: 3`) is taken in `x`'s dtype, and a complex one (a
    complex boundary value) by forward over forward mode: `jax.hessian` is forward over
    reverse, and reverse mode refused both ("jacrev requires real-valued outputs")."""
    g = lambda v: _inexact(f(v), v.dtype)
    value, grad = g(x), jax.jacfwd(g)(x)
    if order == 1:
        return value, grad
    second = jax.jacfwd(jax.jacfwd(g)) if is_complex(value.dtype) else jax.hessian(g)
    return value, grad, jnp.trace(second(x), axis1=-2, axis2=-1)


def _inexact(value: Any, dtype: Any) -> Array:
    """`value` as an inexact array: an integer in `dtype` (the point's), and a Python float
    or complex in `dtype`'s precision, as JAX's weak typing would have it."""
    value = jnp.asarray(value)
    if not is_inexact(value.dtype):
        return value.astype(dtype)
    if getattr(value, "weak_type", False):
        return value.astype(complex_dtype(dtype) if is_complex(value.dtype) else dtype)
    return value


class HardConstraint(WrapsNetwork):
    """The flat model `u(theta, x) = lift(x) + distance(x) * model(theta, x)`.

    With `distance` zero on the boundary, `u` equals `lift` there for every `theta`: a
    Dirichlet condition holds exactly and the PINN loss needs no boundary term. `sb.laplacian`
    and `sb.grad_x` (so `u.laplacian`, `u.grad` in `sb.pinn` residuals) use the product rule
    around the network's derivatives (the forward-Laplacian pass on an `sb.FlatMLP`), and
    `sb.pinn`, `sb.least_squares`, `sb.error_report` take it like any flat model.

    !!! example

        ```python
        fm = sb.FlatMLP((2, 16, "scalar"), key=jax.random.key(0), dtype=jnp.float64)
        # u = 0 on the edges of [-1, 1]^2, for every theta:
        u = sb.HardConstraint(fm, lambda x: (1 - x[0] ** 2) * (1 - x[1] ** 2))
        problem = sb.pinn(u, {"pde": (lambda u, x: u.laplacian(x) + 1.0,
                                      sb.collocation_points((-1, -1), (1, 1), 64))})
        res = sb.least_squares(problem.residual, u.theta0, "natural-gradient", max_steps=5)
        u(res.theta, jnp.array([1.0, 0.3]))  # 0.0
        ```

    **Arguments:**

    - `model`: the network `model(theta, x)` on one point `x` of shape `(d,)` (or `()`): an
        `sb.FlatMLP` (derivatives from its forward pass) or any flat model (nested autodiff).
    - `distance`: `distance(x) -> scalar`, zero exactly where the condition is imposed and
        nonzero inside (for a box, the product of `(x_k - lo_k)(hi_k - x_k)`; for other
        domains an approximate distance function, Sukumar & Srivastava 2022). It must be
        twice differentiable inside: the exact distance `min_k(...)` or an `abs` has kinks
        whose second derivative autodiff reports as 0, so the Laplacian would be wrong there.
    - `lift`: `lift(x)` with the shape of `model`'s output, the boundary values extended
        inside (default: zero).

    **Attributes:** those arguments, `theta0` and `size` (the network's).
    """

    model: Validated[Callable[..., Any]]
    distance: Validated[Callable[[Array], Array]] = eqx.field(static=True)
    lift: Validated[Callable[[Array], Array] | None] = eqx.field(static=True, default=None)

    def __check_init__(self):
        if not callable(self.model) or not callable(self.distance):
            raise TypeError(
                "`sb.HardConstraint(model, distance, lift=None)` expected a flat model "
                "`model(theta, x)` and a function `distance(x)`, but got "
                f"{type(self.model).__name__} and {type(self.distance).__name__}."
            )
        if self.lift is not None and not callable(self.lift):
            raise TypeError("`sb.HardConstraint` expected `lift` to be a function `lift(x)` or "
                            f"None, but got {type(self.lift).__name__}.")  # fmt: skip

    @property
    def theta0(self) -> Theta:
        theta0 = getattr(self.model, "theta0", None)
        if theta0 is None:
            raise AttributeError(
                "`sb.HardConstraint.theta0` is its model's `theta0`, and this model (a "
                f"{type(self.model).__name__}) has none. Fix: pass your own initial `theta`."
            )
        return theta0

    @property
    def size(self) -> int:
        return int(jnp.size(self.theta0))

    def _lift(self, x: Array) -> Array:
        return jnp.zeros((), x.dtype) if self.lift is None else _inexact(self.lift(x), x.dtype)

    @staticmethod
    def _add_lift(a: Array, rest: Array) -> Array:
        # Broadcasting a wrongly shaped lift would silently change the field's shape.
        out = jnp.broadcast_shapes(jnp.shape(a), jnp.shape(rest))
        if out != jnp.shape(rest):
            raise ValueError(_MSG_LIFT.format(want=jnp.shape(rest), got=jnp.shape(a), out=out))
        return a + rest

    def _distance(self, x: Array) -> Array:
        g = _inexact(self.distance(x), x.dtype)
        if jnp.shape(g) != ():
            raise ValueError(_MSG_DISTANCE.format(shape=jnp.shape(g)))
        return g

    def __call__(self, theta: ThetaLike, x: ArrayLike) -> Array:
        guard_x64(x, "`sb.HardConstraint(...)(theta, x)`", "a NumPy `x`")
        x = _point(theta, x)
        a, g, n = self._lift(x), self._distance(x), jnp.asarray(self.model(theta, x))
        dtype = promote([a.dtype, g.dtype, n.dtype])
        return self._add_lift(a.astype(dtype), g.astype(dtype) * n.astype(dtype))

    def _network_derivatives(self, theta: ThetaLike, x: Array, order: int) -> tuple[Array, ...]:
        """The network's `(N, grad N, Lap N)` at `x`, the gradient with a trailing axis of
        length `d` (length 1 for a scalar `x`, as the rest of the product rule takes it).
        A network inside a nested `sb.HardConstraint` is checked, and differentiated, through
        it: its Laplacian by `jax.hessian` was 0 around a relu network."""
        if order == 2:
            check_smooth(self.model)
        if isinstance(self.model, FlatMLP | HardConstraint):
            own = (self.model.forward_derivatives if isinstance(self.model, FlatMLP)
                   else self.model.derivatives)  # fmt: skip
            n = own(theta, x, order=order)
            return n if x.ndim else (n[0], n[1][..., None]) + n[2:]
        return _scalar_derivatives(lambda v: self.model(theta, v.reshape(x.shape)),
                                   x.reshape(-1), order)

    def derivatives(self, theta: ThetaLike, x: ArrayLike, order: int = 2) -> tuple[Array, ...]:
        """`(u, du/dx, Lap u)` at one point `x` (or `(u, du/dx)` for `order=1`), shapes as
        `sb.FlatMLP.forward_derivatives`: the Jacobian is `u.shape + x.shape`."""
        guard_x64(x, "`sb.HardConstraint` derivatives", "a NumPy `x`")
        x = _point(theta, x)
        n = self._network_derivatives(theta, x, order)
        # A scalar `x` (a `"scalar"`-input network) as a point of shape (1,), then back.
        at = lambda f: lambda v: f(v.reshape(x.shape))
        g = _scalar_derivatives(at(self._distance), x.reshape(-1), order)
        a = _scalar_derivatives(at(self._lift), x.reshape(-1), order)
        # One dtype for all three: a complex lift or network with a real distance mixed
        # complex and real arrays, which `jax_numpy_dtype_promotion="strict"` refused.
        dtype = promote([leaf.dtype for leaf in (*n, *g, *a)])
        n, g, a = ([t.astype(dtype) for t in terms] for terms in (n, g, a))
        value = self._add_lift(a[0], g[0] * n[0])
        grad = self._add_lift(a[1], n[0][..., None] * g[1] + g[0] * n[1])
        grad = grad if x.ndim else grad[..., 0]
        if order == 1:
            return value, grad
        lap = self._add_lift(a[2], n[0] * g[2] + 2 * (n[1] @ g[1]) + g[0] * n[2])
        return value, grad, lap


def _point(theta: ThetaLike, x: ArrayLike) -> Array:
    """One point `x` of shape (d,), or () for a `"scalar"`-input network, in the model's
    dtype (a scalar `x` was refused, so such a network could not be constrained at all)."""
    x = jnp.asarray(x)
    if x.ndim > 1:
        raise ValueError(_MSG_POINT.format(shape=x.shape))
    return as_computed(theta, x)
