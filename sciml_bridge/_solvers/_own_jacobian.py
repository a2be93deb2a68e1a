"""Residuals that know their Jacobian: `residual.residual_and_jacobian(theta, *args)`.

An `sb.pinn` residual computes its Jacobian per collocation point in reverse mode over the
forward-Laplacian pass. Differentiating the whole residual vector instead (`jax.jacfwd`, as
Optimistix and SciPy's Jacobian do) pushes every parameter's tangent through every point's
Laplacian at once: on the Burgers PINN of `benchmarks/pinn_accuracy.py` (4,300 residuals,
1,341 parameters) that asks for a 30 GB buffer, where the per-point Jacobian is 46 MB. Every
backend of `sb.least_squares` uses the residual's own Jacobian when it has one:
Gauss-Newton reads it directly, SciPy gets it as its `jac`, and Optimistix ("lm", "dogleg")
sees a residual whose `jax.custom_jvp` is `J @ t`, so its `jacfwd` costs one `J` and a matmul.
"""

from collections.abc import Callable

import equinox as eqx
import jax

from ._batches import KeyedLoss, takes_key
from ._outputs import Residual


def own_jacobian(fn: Callable) -> Callable | None:
    """The `residual_and_jacobian` of a residual that knows its structure (`sb.pinn`'s, per
    point), looking through the output check `sb.least_squares` wraps around every residual.
    It is called with the residual's own arguments, `residual_and_jacobian(theta, *args)`, so
    a residual that takes its collocation points as `args` (resampled between runs without
    recompiling) keeps it. Missing it costs the black-box Jacobian instead: 5.2 against 0.6
    CPU s per step on the 2-D Helmholtz PINN of `benchmarks/pinn_accuracy.py` (1020
    residuals, 2751 parameters). A residual drawing its points from `key=` (resampled at every
    step) is called as `residual_and_jacobian(theta, *args, key=k)`."""
    inner = fn.fn if isinstance(fn, Residual) else fn
    if isinstance(inner, KeyedLoss):
        # One that cannot take the key would see other points than the residual: not used.
        own = getattr(inner.fn, "residual_and_jacobian", None)
        if own is None or not takes_key(own):
            return None
        return lambda theta, *args: own(theta, *args[:-1], key=args[-1])
    return getattr(inner, "residual_and_jacobian", None)


class _WithOwnJacobian(eqx.Module):
    fn: Callable
    own: Callable

    def __call__(self, theta, *args):
        shape = jax.eval_shape(self.fn, theta, *args).shape

        @jax.custom_jvp
        def residual(t):
            return self.fn(t, *args)

        @residual.defjvp
        def residual_jvp(primals, tangents):
            r, J = self.own(primals[0], *args)
            return r.reshape(shape), (J @ tangents[0]).reshape(shape)

        return residual(theta)


def with_own_jacobian(fn: Callable) -> Callable:
    """`fn` itself, differentiated through its own Jacobian when it has one (see the module
    docstring): values are `fn`'s, `jvp`/`jacfwd`/`vjp` are `J @ t` / `J^T c`."""
    own = own_jacobian(fn)
    return fn if own is None else _WithOwnJacobian(fn, own)
