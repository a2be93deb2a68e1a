"""Input derivatives for PINN residuals: `sb.laplacian(fm)` and `sb.grad_x(fm)`.

On `sb.FlatMLP` both come from one forward pass that carries `(value, Jacobian, Laplacian)`
through the layers (forward Laplacian, Li et al. 2023): cost grows like `d`, not `d^2`, in
the input dimension `d`. Any other `f(theta, x, *args)` uses nested autodiff (`jax.jacfwd`,
`trace(jax.hessian)`). Both are plain JAX functions: `jax.grad` over `theta` and `jax.vmap`
over `x` compose with them.

`sb.laplacian(fm, batched=True)` runs a whole batch of points as one pass in which every
carry keeps the points on its last (contiguous) axis: the Jacobian is `(width, d, points)`,
so every layer is one plain 2-D matmul `W @ J.reshape(width, d * points)`, and so is every
product of the reverse pass, without the transposed copies that XLA CPU inserts for the
weight gradient of `jax.vmap`'s `(points, d, width)` layout (about a third of the kernel
time of the theta-gradient at d = 8 and 32, measured with `jax.profiler`). The first
layer's Jacobian `W1 * f'(z1)` is never stored per point: the second layer uses
`(W2 * W1^T) @ f'(z1)`.
"""

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import jax.tree_util as jtu
import numpy as np
from jaxtyping import Array, ArrayLike, PyTree

from ._activations import Activation
from ._custom_types import ThetaLike, Validated
from ._flat_mlp import FlatMLP, widen_layers
from ._hard_constraint import HardConstraint
from ._pinn_derivative_checks import along_real_directions, check_smooth
from ._precision import guard_x64, is_complex, is_inexact, promote


_MSG_CALLABLE = """\
`sb.{name}(fm)` expected a flat model `fm(theta, x, *args)` (e.g. from `sb.flat` or
`sb.FlatMLP`), but got a {kind}.
Fix: pass the model itself, then call the result: `sb.{name}(fm)(theta, x)`."""


_MSG_BATCH = """\
`sb.laplacian(fm, batched=True)(theta, xs)` (an `sb.FlatMLP` with input size {size!r})
expected a batch `xs` of shape (points,) + {want}, but got shape {got}.
Fix: stack the points along a new first axis, or call `sb.laplacian(fm)(theta, x)` for one
point."""


_MSG_EXTRA = """\
`sb.{name}(fm)(theta, x)` on an `sb.{kind}` takes no inputs after `x` (the model is
`fm(theta, x)`), but got {n} more.
Fix: pass `(theta, x)` only; a model that needs more inputs is a plain function
`fm(theta, x, *args)`, and `sb.{name}(fm)(theta, x, *args)` passes them on."""


def _check_callable(fm: Any, name: str) -> None:
    if not callable(fm):
        raise TypeError(_MSG_CALLABLE.format(name=name, kind=type(fm).__name__))


def _two_inputs(fn: Callable[[Any, Any], Array], fm: Any, name: str) -> Callable[..., Array]:
    """`fn(theta, x)`, refusing extra inputs by name (Python's "takes 2 positional arguments
    but 3 were given" named a lambda of ours)."""

    def call(theta: ThetaLike, x: ArrayLike, *args: Any) -> Array:
        if args:
            raise TypeError(_MSG_EXTRA.format(name=name, kind=type(fm).__name__, n=len(args)))
        return fn(theta, x)

    return call


def laplacian(fm: Validated[Callable[..., Any]], *, batched: bool = False) -> Callable[..., Array]:
    """The Laplacian of a model with respect to its input: `lap(theta, x)`.

    `lap(theta, x)` has the shape of `fm(theta, x)`: for each output, the sum over input
    dimensions of its second derivatives, `sum_k d^2 y / dx_k^2`. On an `sb.FlatMLP` (also what
    `sb.flat(eqx.nn.MLP(...))` gives) it is a forward-Laplacian pass (on an
    `sb.HardConstraint`, the product rule around its network's); on any other flat model
    it is `trace(jax.hessian)` over the first input (extra inputs pass through:
    `lap(theta, x, *args)`; a complex output takes its real and imaginary parts in turn).
    One point at a time, like the model; use `jax.vmap` for a batch, or `batched=True` for
    the faster batched kernel (a PINN loss over many points).

    !!! example

        ```python
        import jax, jax.numpy as jnp
        import sciml_bridge as sb

        fm = sb.FlatMLP((2, 32, 32, "scalar"), activation="tanh", key=jax.random.key(0))
        lap = sb.laplacian(fm)
        xs = jnp.ones((100, 2))
        residual = lambda theta: jax.vmap(lap, in_axes=(None, 0))(theta, xs) + 1.0
        loss = lambda theta: jnp.mean(residual(theta) ** 2)
        g = jax.jit(jax.grad(loss))(fm.theta0)  # PINN training differentiates through it
        lap_all = sb.laplacian(fm, batched=True)  # the same numbers for all points at once
        g = jax.jit(jax.grad(lambda theta: jnp.mean((lap_all(theta, xs) + 1.0) ** 2)))(fm.theta0)
        ```

    The forward pass needs each activation's first and second derivatives: known activations
    have closed forms, `sb.FlatMLP(..., activation=(f, df, d2f))` supplies them, and any other
    callable gets them by nested forward-mode AD.

    **Arguments:**

    - `fm`: an `sb.FlatMLP`, or any `fm(theta, x, *args)` (e.g. an `sb.FlatModel`).
    - `batched`: if `True`, `lap(theta, xs, *args)` takes a batch `xs` of shape
        `(points,) + x.shape` and returns `(points,) + y.shape`. On an `sb.FlatMLP` this is
        one forward-Laplacian pass over all points with the points on every carry's last
        axis: the same Laplacian as `jax.vmap` of the per-point function (up to rounding),
        and its theta-gradient is 1.5-2.4x faster at d = 2..32 (`benchmarks/laplacian.py`;
        forward and reverse mode both work). On any other model it is `jax.vmap` over `xs`
        (`args` are shared by all points). Default `False`.

    **Returns:**

    A function `lap(theta, x, *args)` (`lap(theta, xs, *args)` if `batched`).

    **Raises:**

    `ValueError` if `fm` is an `sb.FlatMLP` with an activation that is not twice
    differentiable (relu), or the general path of such a network (`sb.flat(mlp, fast=False)`,
    which would report 0); `TypeError` if `fm` is not callable.
    """
    _check_callable(fm, "laplacian")
    if isinstance(fm, HardConstraint):
        # The product rule around the network's own derivatives (`_hard_constraint.py`).
        one = lambda theta, x: fm.derivatives(theta, x, order=2)[2]
        return _two_inputs(jax.vmap(one, in_axes=(None, 0)) if batched else one, fm, "laplacian")
    if isinstance(fm, FlatMLP):
        check_smooth(fm)
        if batched:
            return _two_inputs(lambda theta, xs: _batched_laplacian(fm, theta, xs), fm,
                               "laplacian")
        return _two_inputs(lambda theta, x: fm.forward_derivatives(theta, x, order=2)[2], fm,
                           "laplacian")

    def hessian_trace(theta: ThetaLike, x: ArrayLike, *args: Any) -> PyTree[Array]:
        guard_x64((x, args), "`sb.laplacian(fm)(theta, x)`", "a NumPy input")
        check_smooth(fm)  # at call time, as the x64 guard: `sb.laplacian(fm)` itself is cheap
        at, v = along_real_directions(lambda p: fm(theta, p, *args), theta, x)
        return _trace_of_hessian(at, v)

    if batched:

        def batched_hessian_trace(theta: ThetaLike, xs: ArrayLike, *args: Any) -> PyTree[Array]:
            guard_x64((xs, args), "`sb.laplacian(fm, batched=True)(theta, xs)`", "a NumPy input")
            in_axes = (None, 0) + (None,) * len(args)
            return jax.vmap(hessian_trace, in_axes=in_axes)(theta, xs, *args)

        return batched_hessian_trace
    return hessian_trace


def _trace_of_hessian(at: Callable[[Array], Any], v: Array) -> Any:
    """`sum_k d^2 at / dv_k^2` by `trace(jax.hessian)`, for real or complex outputs, and for
    any pytree of them, as `grad_x` takes them (reading `.dtype` off a tuple output raised
    `AttributeError`).

    `jax.hessian` is forward over reverse, and reverse mode needs real outputs ("jacrev
    requires real-valued outputs"): a complex output is the Laplacian of its real part plus
    `i` times that of its imaginary part (the operator is real-linear)."""
    shapes = jax.eval_shape(at, v)
    if any(is_complex(s.dtype) for s in jax.tree.leaves(shapes)):
        part = lambda p: lambda u: jax.tree.map(lambda y: p(y) if is_complex(y.dtype) else y, at(u))
        re, im = (_trace_of_hessian(part(p), v) for p in (jnp.real, jnp.imag))
        join = lambda s, a, b: jax.lax.complex(a, b) if is_complex(s.dtype) else a
        return jax.tree.map(join, shapes, re, im)
    return jax.tree.map(lambda h: jnp.trace(h, axis1=-2, axis2=-1), jax.hessian(at)(v))


def _batched_laplacian(fm: FlatMLP, theta: ThetaLike, xs: ArrayLike) -> Array:
    """The forward Laplacian of `fm` at every point of `xs`, one pass, points last."""
    params = fm._params(theta)
    if not isinstance(xs, jax.Array):
        guard_x64(xs, "`sb.laplacian(fm, batched=True)(theta, xs)`", "a NumPy `xs`")
        xs = np.asarray(xs)
    xs = jnp.asarray(xs)
    point = () if fm.in_size == "scalar" else (fm.in_size,)
    if xs.shape[1:] != point or xs.ndim != len(point) + 1:
        raise ValueError(_MSG_BATCH.format(size=fm.in_size, want=point, got=xs.shape))
    # As `fm(theta, x)`: each layer in the promotion of its own dtype and what flows into it
    # (a wider later layer of a `precision="model"` network is never rounded to the first's).
    w_dtype = np.dtype(params[0][0].dtype)
    dtype = promote([w_dtype, xs.dtype]) if is_inexact(xs.dtype) else w_dtype
    params = widen_layers(params, dtype)
    size = int(np.prod(point, dtype=np.int64))
    points = xs.astype(params[0][0].dtype).reshape(xs.shape[0], size)
    lap = _column_laplacian(params, fm.activations, points)
    return lap[:, 0] if fm.out_size == "scalar" else lap


def _column_laplacian(params: list, activations: tuple[Activation | None, ...],
                      xs: Array) -> Array:
    """`(points, out)` Laplacians; each carry is `(width, ...)` with the points last.

    The Jacobian is one of: `w` (`(width, d)`, the same at every point: only linear layers so
    far), `(w, df)` (`w * df` per point, never stored: one activation so far), or a
    `(width, d, points)` array. Each layer maps `(h, J, L)` as in `fm.forward_derivatives`.
    """
    h, jac, lap = xs.T, None, None
    for (w, b), activation in zip(params, activations):
        h, jac, lap = jtu.tree_map(lambda y, t=w.dtype: y.astype(t), (h, jac, lap))
        h = w @ h if b is None else w @ h + b[:, None]
        jac = w if jac is None else _jacobian_times(w, jac)
        lap = None if lap is None else w @ lap
        if activation is not None:
            f, df, d2f = activation.derivatives(h, 2)
            square = _squared_norm(jac)
            lap = d2f * square if lap is None else df * lap + d2f * square
            jac = (jac, df) if jac.ndim == 2 else df[:, None, :] * jac
            h = f
    return jnp.zeros_like(h.T) if lap is None else lap.T


def _jacobian_times(w: Array, jac) -> Array:
    """`W @ J` for each point, as one 2-D matmul: `(width', d, points)` (or `(width', d)`)."""
    if isinstance(jac, tuple):
        first, df = jac
        # W (first * df) = (W * first^T) df: J after one activation is never stored per point.
        v = w[:, None, :] * first.T[None]
        return (v.reshape(-1, v.shape[-1]) @ df).reshape(*v.shape[:2], df.shape[-1])
    if jac.ndim == 2:
        return w @ jac
    width, d, points = jac.shape
    return (w @ jac.reshape(width, d * points)).reshape(-1, d, points)


def _squared_norm(jac: Array) -> Array:
    """`sum_k J[:, k]^2` per unit (and point): what `f''` multiplies in the Laplacian."""
    if jac.ndim == 2:
        return jnp.sum(jac * jac, axis=1)[:, None]
    if jac.shape[1] <= 2:
        # Measured at d = 2 (one process, interleaved): the loss alone 1.3x faster than with
        # the axis reduction, which XLA CPU fuses poorly there; at d = 8 the slices made the
        # theta-gradient 1.5x slower, so only the smallest inputs take this route.
        total = jac[:, 0] * jac[:, 0]
        for k in range(1, jac.shape[1]):
            total = total + jac[:, k] * jac[:, k]
        return total
    return jnp.sum(jac * jac, axis=1)


def grad_x(fm: Validated[Callable[..., Any]]) -> Callable[..., Array]:
    """The derivative of a model with respect to its input: `jac(theta, x)`.

    The Jacobian has shape `y.shape + x.shape` (as `jax.jacfwd`): the gradient `(d,)` for a
    scalar output, `(out, d)` for a vector one. On an `sb.FlatMLP` it comes from one forward
    pass (works with relu too; on an `sb.HardConstraint`, the product rule around it); on any
    other flat model it is `jax.jacfwd` over the first input.

    !!! example

        ```python
        import jax, jax.numpy as jnp
        import sciml_bridge as sb

        fm = sb.FlatMLP((3, 16, "scalar"), activation="softplus", key=jax.random.key(0))
        g = sb.grad_x(fm)(fm.theta0, jnp.ones(3))  # shape (3,)
        ```

    **Arguments:**

    - `fm`: an `sb.FlatMLP`, or any `fm(theta, x, *args)`.

    **Returns:**

    A function `jac(theta, x, *args)`.

    **Raises:**

    `TypeError` if `fm` is not callable.
    """
    _check_callable(fm, "grad_x")
    if isinstance(fm, HardConstraint):
        return _two_inputs(lambda theta, x: fm.derivatives(theta, x, order=1)[1], fm, "grad_x")
    if isinstance(fm, FlatMLP):
        return _two_inputs(lambda theta, x: fm.forward_derivatives(theta, x, order=1)[1], fm,
                           "grad_x")

    def jacobian(theta: ThetaLike, x: ArrayLike, *args: Any) -> PyTree[Array]:
        guard_x64((x, args), "`sb.grad_x(fm)(theta, x)`", "a NumPy input")
        at, v = along_real_directions(lambda p: fm(theta, p, *args), theta, x)
        # Back to `y.shape + x.shape` (any pytree of outputs, as `jax.jacfwd` gives).
        unflatten = lambda jac: jac.reshape(jac.shape[:-1] + jnp.shape(x))
        return jax.tree.map(unflatten, jax.jacfwd(at)(v))

    return jacobian
