"""`sb.least_squares(..., "scipy:...")`'s residual and Jacobian, as float64 NumPy for SciPy.

As `_scipy.py` does for losses: module-level `jax.jit`s with the static part of
`(residual, args)` as a static argument, so that every call and every ensemble member with the
same residual, shapes and dtypes shares one compile, and new `theta0` or `args` values never
recompile (a fresh `jax.jit` closure per run compiled the residual and its Jacobian again for
every call and every member: 12 compiles for a 4-member ensemble with trf).
"""

from collections.abc import Callable
from typing import Any, cast

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from .._result import RESULTS
from ._own_jacobian import own_jacobian
from ._scipy_steps import MSG_GRADIENT, Abort


def _r(x, dynamic, static):
    fn, args = eqx.combine(dynamic, static)
    return jnp.ravel(fn(x, *args))


def _own_j(x, dynamic, static):
    fn, args = eqx.combine(dynamic, static)
    return cast(Callable, own_jacobian(fn))(x, *args)[1]  # set: `fn`'s type has one


def _half_ssq(x, dynamic, static):
    r = _r(x, dynamic, static)
    return 0.5 * jnp.sum(r * r)


_RAW = {"r": _r, "fwd": jax.jacfwd(_r), "rev": jax.jacrev(_r), "own": _own_j, "loss": _half_ssq}
_JIT = {kind: jax.jit(f, static_argnums=2) for kind, f in _RAW.items()}


def _compiled(kind: str, static) -> Callable:
    """`_RAW[kind]` compiled, as a function of `(x, dynamic)`."""
    try:
        hash(static)
    except TypeError:  # e.g. a residual holding a list: compile for this object only
        raw = _RAW[kind]
        return jax.jit(lambda x, dynamic: raw(x, dynamic, static))
    return lambda x, dynamic: _JIT[kind](x, dynamic, static)


class ScipyResidual:
    """Jitted flattened residual and dense Jacobian, as float64 NumPy for SciPy.

    It keeps the lowest finite loss evaluated (`best`, returned when a later evaluation is
    non-finite) and the losses evaluated since the last Jacobian. MINPACK's `lm` calls back
    nothing, but it evaluates the Jacobian once per iteration, at the point that iteration
    starts from, which it has already evaluated: so `on_iterate(x, loss)` (set for `lm`) is
    called at every Jacobian but the first, which is at `x0`."""

    def __init__(self, fn, args, dtype, jac: str):
        dynamic, static = eqx.partition((fn, args), eqx.is_array)
        self.dtype, self._dynamic = dtype, dynamic
        self._r, self._loss = _compiled("r", static), _compiled("loss", static)
        # The residual's own Jacobian when it has one (`_own_jacobian.py`: `sb.pinn`'s).
        kind = "own" if own_jacobian(fn) is not None else "fwd" if jac == "fwd" else "rev"
        self._j = _compiled(kind, static)
        self.best: tuple[float, Any] = (float("inf"), None)
        self.on_iterate: Callable | None = None
        self._losses: dict[bytes, float] = {}
        self._jacobians = 0

    def loss_at(self, x, dtype) -> float:
        """`0.5 * sum(r**2)` at `x` rounded to `dtype`, evaluated in `dtype` (`res.loss`)."""
        x = jnp.asarray(np.asarray(x, dtype=np.float64).astype(dtype))
        return float(self._loss(x, self._dynamic))

    def residual(self, x) -> np.ndarray:
        out = np.asarray(self._r(jnp.asarray(x, dtype=self.dtype), self._dynamic), np.float64)
        if not np.all(np.isfinite(out)):
            raise Abort(RESULTS.nonfinite)
        loss = 0.5 * float(out @ out)
        self._losses[np.asarray(x, np.float64).tobytes()] = loss
        if loss < self.best[0]:
            self.best = (loss, np.array(x, dtype=np.float64))
        return out

    def jacobian(self, x) -> np.ndarray:
        self._jacobians += 1
        if self.on_iterate is not None and self._jacobians > 1:
            key = np.asarray(x, np.float64).tobytes()
            if key not in self._losses:  # not seen in MINPACK; kept for safety
                self.residual(x)
            self.on_iterate(x, self._losses[key])
        self._losses.clear()
        out = np.asarray(self._j(jnp.asarray(x, dtype=self.dtype), self._dynamic), np.float64)
        if not np.all(np.isfinite(out)):  # trf and dogbox raised on it; `lm` "converged"
            detail = MSG_GRADIENT.format(what="Jacobian", f="residual", alt="")
            raise Abort(RESULTS.solver_failed, detail)
        return out
