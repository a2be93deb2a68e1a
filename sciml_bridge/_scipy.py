"""`sb.scipy_objective`: a JAX loss as the float64 NumPy callables SciPy-style APIs want.

The float rule of every SciPy route (this object, `sb.minimize(..., "scipy:...")` and
`sb.least_squares(..., "scipy:...")`): SciPy iterates in float64, so the loss sees `theta` in
the widest float JAX has, float64 with x64 on and float32 with x64 off, whatever the dtype of
`theta0` or of the model (DESIGN.md's precision policy: the flat vector's precision wins, and
SciPy's vector is float64). `args` pass through unchanged (integers stay integers). The verbs
return `res.theta` in `theta0`'s dtype and `res.loss` as the loss there: where that dtype
rounds SciPy's `x`, the loss is evaluated once more at the rounded point, in `theta0`'s dtype
(`_scipy_steps.py`). A complex `x` or `dtype` is refused: SciPy iterates over real vectors.

PITFALLS.md (SciPy): keep one cached jitted `value_and_grad` and one Hessian-vector product, so
that L-BFGS-B, BFGS and trust-ncg share the same compiled functions, and hand SciPy float64
NumPy arrays. `fun` and `jac` at the same `x` cost one evaluation: the last result is cached.
`value` is the loss alone, for derivative-free methods: no gradient is computed, so it costs
one forward pass and works for a loss JAX cannot differentiate (a `jax.pure_callback`).
"""

from collections.abc import Callable
from typing import Any, cast

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from ._custom_types import DTypeLike
from ._precision import check_x64, guard_x64


_REAL_VIEW = """\
optimise the real view of complex parameters `z0`: `n = z0.size`,
`x0 = np.concatenate([z0.real, z0.imag])`, `loss_r = lambda x, *a: loss(x[:n] + 1j * x[n:], *a)`,
then `sb.scipy_objective(loss_r, *args)`."""

_MSG_COMPLEX = """\
`sb.scipy_objective(...).{name}` expected a real {what} (SciPy's optimizers iterate over real
float64 vectors), but got a {got} array: its imaginary part would be dropped without a word.
Fix: """ + _REAL_VIEW

_MSG_DTYPE = """\
`sb.scipy_objective` expected `dtype` to be a real floating dtype (the dtype the loss sees
`x` in; SciPy's optimizers iterate over real float64 vectors), but got dtype={got}.
Fix: `dtype=None` (float64, float32 with x64 off) or `dtype=jnp.float32`; or """ + _REAL_VIEW


def _f(x, dynamic, static):
    loss, args = eqx.combine(dynamic, static)
    return loss(x, *args)


def _hvp(x, p, dynamic, static):
    g = lambda y: jax.grad(_f)(y, dynamic, static)
    return jax.jvp(g, (x,), (p,))[1]


# Module-level `jax.jit`s with the static part of `(loss, args)` as a static argument: a new
# objective for the same loss and argument shapes (each `sb.minimize(..., "scipy:...")` call,
# each ensemble member) reuses the compiled functions instead of compiling afresh. JAX's own
# jit cache bounds them.
_VALUE = jax.jit(_f, static_argnums=2)
_VALUE_AND_GRAD = jax.jit(jax.value_and_grad(_f), static_argnums=2)
_HVP = jax.jit(_hvp, static_argnums=3)
_HESS = jax.jit(jax.hessian(_f), static_argnums=2)
# Reverse-over-reverse, for a loss forward mode cannot enter: a `jax.custom_vjp` (Diffrax's
# default adjoint) made `jax.hessian` raise "can't apply forward-mode autodiff (jvp) to a
# custom_vjp function" out of "scipy:trust-exact"/"scipy:dogleg" (`hessp`, unbatched, ran).
_HESS_REVERSE = jax.jit(jax.jacrev(jax.grad(_f)), static_argnums=2)


def _compiled(static):
    """`(value, value_and_grad, hvp, hess, hess_reverse)` taking `(x[, p], dynamic)`."""
    try:
        hash(static)
    except TypeError:  # e.g. a loss holding a list: compile for this object only
        f = lambda x, d: _f(x, d, static)
        hvp = lambda x, p, d: _hvp(x, p, d, static)
        return (jax.jit(f), jax.jit(jax.value_and_grad(f)), jax.jit(hvp),
                jax.jit(jax.hessian(f)), jax.jit(jax.jacrev(jax.grad(f))))  # fmt: skip
    return (lambda x, d: _VALUE(x, d, static),
            lambda x, d: _VALUE_AND_GRAD(x, d, static),
            lambda x, p, d: _HVP(x, p, d, static),
            lambda x, d: _HESS(x, d, static),
            lambda x, d: _HESS_REVERSE(x, d, static))  # fmt: skip


class ScipyObjective:
    """Float64 NumPy `fun`, `jac`, `fun_and_jac`, `value`, `hessp`, `hess` of `loss(theta, *args)`.

    Made by `sb.scipy_objective`; each is one jitted function, compiled once per loss and
    argument shapes (shared by every objective made for them).

    !!! example

        ```python
        obj = sb.scipy_objective(lambda t: jnp.sum((t - 1.0) ** 2))
        f, g = obj.fun_and_jac(np.zeros(3))        # 3.0 and [-2., -2., -2.], float64 NumPy
        assert f == obj.fun(np.zeros(3)) and np.array_equal(g, obj.jac(np.zeros(3)))
        ```

    **Attributes:** `dtype`, the dtype in which the loss is evaluated (`x` is cast to it).
    """

    def __init__(self, loss: Callable, args: tuple, dtype: Any):
        dynamic, static = eqx.partition((loss, args), eqx.is_array)
        self.dtype = np.dtype(dtype)
        self._dynamic = dynamic
        self._value, self._value_and_grad, self._hvp, self._hess, self._hess_reverse = \
            _compiled(static)  # fmt: skip
        self._last_x: np.ndarray | None = None
        self._last: tuple[float, np.ndarray] | None = None
        self._last_value: tuple[np.ndarray, float] | None = None

    def _x(self, x: np.ndarray) -> jax.Array:
        return jnp.asarray(x.astype(self.dtype))

    def _fun_and_jac(self, x, name: str) -> tuple[float, np.ndarray]:
        x = _real(x, name).copy()
        if self._last_x is None or not np.array_equal(x, self._last_x):
            value, grad = self._value_and_grad(self._x(x), self._dynamic)
            self._last = (float(value), np.asarray(grad, dtype=np.float64))
            self._last_x = x
        value, grad = cast(tuple[float, np.ndarray], self._last)  # set just above
        return value, grad.copy()

    def fun_and_jac(self, x) -> tuple[float, np.ndarray]:
        """`(loss, gradient)` as `(float, float64 ndarray)`; use with `jac=True` in SciPy."""
        return self._fun_and_jac(x, "fun_and_jac")

    def fun(self, x) -> float:
        """The loss at `x` as a Python float."""
        return self._fun_and_jac(x, "fun")[0]

    def jac(self, x) -> np.ndarray:
        """The gradient at `x`, a float64 NumPy array."""
        return self._fun_and_jac(x, "jac")[1]

    def value(self, x) -> float:
        """The loss at `x` without its gradient (one forward pass): for derivative-free
        methods, and for a loss JAX cannot differentiate. The last result is cached."""
        x = _real(x, "value").copy()
        if self._last_x is not None and np.array_equal(x, self._last_x):
            return cast(tuple[float, np.ndarray], self._last)[0]  # set with `_last_x`
        if self._last_value is None or not np.array_equal(x, self._last_value[0]):
            self._last_value = (x, float(self._value(self._x(x), self._dynamic)))
        return self._last_value[1]

    def hessp(self, x, p) -> np.ndarray:
        """Hessian-vector product at `x` with `p` (forward-over-reverse), float64 NumPy."""
        x, p = self._x(_real(x, "hessp")), self._x(_real(p, "hessp", "`p`"))
        return np.asarray(self._hvp(x, p, self._dynamic), dtype=np.float64)

    def hess(self, x) -> np.ndarray:
        """The dense Hessian at `x` (for `dogleg`/`trust-exact`; small problems only)."""
        x = self._x(_real(x, "hess"))
        try:
            hess = self._hess(x, self._dynamic)
        except (TypeError, NotImplementedError):  # traced: forward mode refused (see above)
            if self._hess is self._hess_reverse:
                raise
            self._hess = self._hess_reverse
            hess = self._hess(x, self._dynamic)
        return np.asarray(hess, dtype=np.float64)


def _real(x, name: str, what: str = "`x`") -> np.ndarray:
    """`x` as float64 NumPy; a complex `x` is refused (NumPy would drop its imaginary part)."""
    if np.iscomplexobj(x):
        got = np.asarray(x).dtype
        raise TypeError(_MSG_COMPLEX.format(name=name, what=what, got=got))
    return np.asarray(x, dtype=np.float64)


def scipy_dtype() -> Any:
    """The dtype SciPy's float64 `x` reaches the loss in: float64, or float32 with x64 off."""
    return jnp.float64 if jax.config.read("jax_enable_x64") else jnp.float32


def scipy_objective(loss: Callable, *args: Any, dtype: DTypeLike | None = None) -> ScipyObjective:
    """Wrap `loss(theta, *args)` for `scipy.optimize` (or any SciPy-style API).

    SciPy works in float64 NumPy; JAX works on device arrays, possibly in float32. This object
    converts at the boundary, compiles `value_and_grad` and a Hessian-vector product once, and
    answers `fun` then `jac` at the same point with one evaluation.

    !!! example

        ```python
        import scipy.optimize
        fm = sb.FlatMLP((1, 8, 1), key=jax.random.key(0), dtype=jnp.float64)
        x = jnp.linspace(-1, 1, 32)[:, None]
        y = jnp.sin(3 * x)
        loss = lambda th, x, y: jnp.mean((jax.vmap(fm, (None, 0))(th, x) - y) ** 2)
        obj = sb.scipy_objective(loss, x, y)
        res = scipy.optimize.minimize(obj.fun_and_jac, np.asarray(fm.theta0), jac=True,
                                      method="L-BFGS-B")
        res = scipy.optimize.minimize(obj.fun, res.x, jac=obj.jac, hessp=obj.hessp,
                                      method="trust-ncg")
        ```

    **Arguments:**

    - `loss`: `loss(theta, *args) -> scalar`, JAX-traceable.
    - `*args`: extra arguments for `loss` (arrays are passed to the compiled functions, so
        new values of the same shape do not recompile).
    - `dtype`: the dtype `theta` is cast to before `loss` sees it. Default: float64, or
        float32 when JAX runs with x64 off (the rule `sb.minimize(..., "scipy:...")` follows
        too, whatever the dtype of its `theta0`).

    **Returns:**

    An object with float64 NumPy `fun(x)`, `jac(x)`, `fun_and_jac(x)`, `hessp(x, p)`, `hess(x)`,
    and `value(x)`, the loss alone (for derivative-free methods such as Nelder-Mead).

    **Raises:**

    `TypeError` if `dtype=jnp.float64` is asked for while JAX runs with x64 off, or float64
    NumPy data arrives in `args` then; if `dtype` is not a real floating dtype (complex
    included: SciPy iterates over real vectors), or a complex `x` (or `p`) reaches one of
    the callables (NumPy would drop its imaginary part).
    """
    wanted = np.dtype(scipy_dtype() if dtype is None else dtype)
    if not jnp.issubdtype(wanted, jnp.floating):
        raise TypeError(_MSG_DTYPE.format(got=wanted))
    check_x64(wanted, "`sb.scipy_objective`", "`dtype=`")
    guard_x64(args, "`sb.scipy_objective`", "`*args`")
    return ScipyObjective(loss, args, wanted)
