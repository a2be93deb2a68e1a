"""Input derivatives for PINN residuals: `sb.laplacian(fm)` and `sb.grad_x(fm)`.

On `sb.FlatMLP` both come from one forward pass that carries `(value, Jacobian, Laplacian)`
through the layers (forward Laplacian, Li et al. 2023): cost grows like `d`, not `d^2`, in
the input dimension `d`. Any other `f(theta, x, *args)` uses nested autodiff (`jax.jacfwd`,
`trace(jax.hessian)`). Both are plain JAX functions: `jax.grad` over `theta` and `jax.vmap`
over `x` compose with them.
"""

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
from jaxtyping import Array, ArrayLike

from ._activations import check_twice_differentiable
from ._custom_types import ThetaLike, Validated
from ._flat_mlp import FlatMLP


_MSG_CALLABLE = """\
`sb.{name}(fm)` expected a flat model `fm(theta, x, *args)` (e.g. from `sb.flat` or
`sb.FlatMLP`), but got a {kind}.
Fix: pass the model itself, then call the result: `sb.{name}(fm)(theta, x)`."""


def _check_callable(fm: Any, name: str) -> None:
    if not callable(fm):
        raise TypeError(_MSG_CALLABLE.format(name=name, kind=type(fm).__name__))


def laplacian(fm: Validated[Callable[..., Any]]) -> Callable[..., Array]:
    """The Laplacian of a model with respect to its input: `lap(theta, x)`.

    `lap(theta, x)` has the shape of `fm(theta, x)`: for each output, the sum over input
    dimensions of its second derivatives, `sum_k d^2 y / dx_k^2`. On an `sb.FlatMLP` (also what
    `sb.flat(eqx.nn.MLP(...))` gives) it is a forward-Laplacian pass; on any other flat model
    it is `trace(jax.hessian)` over the first input (extra inputs pass through:
    `lap(theta, x, *args)`). One point at a time, like the model; use `jax.vmap` for a batch.

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
        ```

    The forward pass needs each activation's first and second derivatives: known activations
    have closed forms, `sb.FlatMLP(..., activation=(f, df, d2f))` supplies them, and any other
    callable gets them by nested forward-mode AD.

    **Arguments:**

    - `fm`: an `sb.FlatMLP`, or any `fm(theta, x, *args)` (e.g. an `sb.FlatModel`).

    **Returns:**

    A function `lap(theta, x, *args)`.

    **Raises:**

    `ValueError` if `fm` is an `sb.FlatMLP` with an activation that is not twice
    differentiable (relu); `TypeError` if `fm` is not callable.
    """
    _check_callable(fm, "laplacian")
    if isinstance(fm, FlatMLP):
        for activation in fm.activations:
            check_twice_differentiable(activation)

        def forward_laplacian(theta: ThetaLike, x: ArrayLike) -> Array:
            return fm.forward_derivatives(theta, x, order=2)[2]

        return forward_laplacian

    def hessian_trace(theta: ThetaLike, x: ArrayLike, *args: Any) -> Array:
        x = jnp.asarray(x)
        at = lambda v: fm(theta, v.reshape(x.shape), *args)
        # x of any shape: differentiate w.r.t. its entries, trace the last two axes.
        hessian = jax.hessian(at)(x.reshape(-1))
        return jnp.trace(hessian, axis1=-2, axis2=-1)

    return hessian_trace


def grad_x(fm: Validated[Callable[..., Any]]) -> Callable[..., Array]:
    """The derivative of a model with respect to its input: `jac(theta, x)`.

    The Jacobian has shape `y.shape + x.shape` (as `jax.jacfwd`): the gradient `(d,)` for a
    scalar output, `(out, d)` for a vector one. On an `sb.FlatMLP` it comes from one forward
    pass (works with relu too); on any other flat model it is `jax.jacfwd` over the first input.

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
    if isinstance(fm, FlatMLP):

        def forward_jacobian(theta: ThetaLike, x: ArrayLike) -> Array:
            return fm.forward_derivatives(theta, x, order=1)[1]

        return forward_jacobian

    def jacobian(theta: ThetaLike, x: ArrayLike, *args: Any) -> Array:
        return jax.jacfwd(lambda v: fm(theta, v, *args))(jnp.asarray(x))

    return jacobian
