"""What SciPy's methods would get wrong on their own, caught before or around a SciPy run.

- Budgets: SciPy's C and Fortran methods keep `maxiter`/`maxfun`/`max_nfev` in a 32-bit int.
  SLSQP wrapped `max_steps=2**31` to a negative count and returned "Iteration limit reached"
  at `theta0`; TNC and MINPACK's `lm` raised a bare `OverflowError`. `INT32_MAX` caps them.
- COBYLA (PRIMA, SciPy >= 1.16) needs `n + 2` evaluations to build its first simplex: with a
  smaller `maxiter` it warned "Invalid MAXFUN" and spent `n + 2` anyway, more than
  `max_steps`. A `tol` (its final radius) above its initial radius `rhobeg` was replaced by
  1e-6 after a warning, and COBYQA raised a bare `ValueError`. Both are our `ValueError`.
- `scipy_numerics`: NumPy's floating-point warnings inside SciPy's own numerics (trlib's
  "overflow in dot" at trust-krylov's rounding floor, PRIMA's) are silenced while SciPy runs:
  every value SciPy hands our functions and every value they return is checked for
  finiteness, and under `-W error` such a warning escaped as an exception, losing the run.
  Equinox's `filter_jit` hides JAX's "jax.pure_callback failed" log of an `eqx.error_if`
  inside the loss; our objective is a plain `jax.jit` (PITFALLS.md: dispatch cost), so the
  same filter is installed here, and the run reports the error itself.
- `first_value`: the SciPy float rule evaluates the loss at float64 `theta`; a loss that only
  runs at `theta0`'s narrower dtype (strict promotion against float32 data) raised JAX's
  `TypePromotionError`, which did not say why `theta` was float64.
"""

import contextlib
import logging
from collections.abc import Callable

import numpy as np

from ._failures import first_line, in_callback


INT32_MAX = int(np.iinfo(np.int32).max)

_MSG_COBYLA_BUDGET = """\
`{where}` got a budget of {max_steps} evaluations (`max_steps`, or `maxiter=`) for
method={method!r}, which needs at least n + 2 = {need} to build its first simplex (n = {n}
parameters): SciPy would spend {need} anyway. Fix: `max_steps={need}` or more."""

_MSG_RADIUS = """\
`{where}` got tol={tol!r} for method={method!r}, whose `tol` is its final trust-region radius
and must not exceed the initial one ({key}={start!r}): SciPy would {what}. Fix: `tol={start!r}` or
smaller, or a larger `{key}=`."""

_MSG_DTYPE_RULE = """\
`{where}` evaluates the {f} at `theta` in {wide} on SciPy routes (SciPy iterates in float64),
whatever `theta0`'s dtype ({dtype}). The {f} runs at a {dtype} `theta` but raised {kind} at a
{wide} one: {line}
Fix: let the {f} follow `theta`'s dtype (e.g. `x.astype(theta.dtype)` for {dtype} data), cast
inside it (`theta.astype(jnp.{dtype})`), or use a method of ours (e.g. "lbfgs", "bfgs"; "lm"
in `sb.least_squares`), which trains in `theta0`'s dtype."""

# (the initial-radius option, its default, what SciPy would do with a larger `tol`)
_RADIUS = {
    "cobyla": ("rhobeg", 1.0, "replace it by 1e-6 after a warning"),
    "cobyqa": ("initial_tr_radius", 1.0, "raise"),
}


def check_cobyla(method: str, name: str, n: int, tol: float | None, options: dict,
                 where: str) -> None:  # fmt: skip
    """Refuse what COBYLA/COBYQA would silently change: a budget below COBYLA's first simplex,
    a final radius (`tol`, or COBYQA's `final_tr_radius`) above the initial one. `method` is
    `name` (as given) in lower case; `options` carry the budget (`budget`)."""
    if method == "cobyla" and options["maxiter"] < n + 2:
        fields = dict(max_steps=options["maxiter"], method=f"scipy:{name}", need=n + 2, n=n)
        raise ValueError(_MSG_COBYLA_BUDGET.format(where=where, **fields))
    if method not in _RADIUS:
        return
    key, default, what = _RADIUS[method]
    start = options.get(key, default)
    final = options.get("final_tr_radius", tol) if method == "cobyqa" else tol
    if final is not None and final > start:
        raise ValueError(_MSG_RADIUS.format(where=where, tol=final, method=f"scipy:{name}",
                                            key=key, start=start, what=what))  # fmt: skip


class _CallbackLog(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return record.getMessage() != "jax.pure_callback failed"


@contextlib.contextmanager
def scipy_numerics():
    """While SciPy runs: NumPy's floating-point warnings off, JAX's callback-failure log quiet.
    Yields the caller's `np.geterr()` (to restore around the user's callback)."""
    outer = np.geterr()
    log, quiet = logging.getLogger("jax._src.callback"), _CallbackLog()
    log.addFilter(quiet)
    try:
        with np.errstate(all="ignore"):
            yield outer
    finally:
        log.removeFilter(quiet)


def loss_raised(e: Exception) -> str | None:
    """`"the loss raised Kind: message"` when `e` is XLA's wrap of an exception raised inside a
    host callback of the loss (`jax.pure_callback`), else None (`first_line` finds the
    exception's own line in the traceback XLA puts in its message)."""
    if not in_callback(e):
        return None
    return "the loss raised " + first_line(e).removeprefix("a host callback raised ")


def _runs(fn: Callable, x0) -> bool:
    try:
        fn(x0)
    except Exception:
        return False
    return True


def first_value(fn: Callable, x0, at: Callable | None, f: str, wide, dtype, where: str):
    """`fn(x0)`; where it raises for SciPy's dtype `wide` but `at` (the same function in
    `theta0`'s `dtype`) runs, our `TypeError` saying why `theta` was `wide`."""
    try:
        return fn(x0)
    except (TypeError, ValueError) as e:  # jax's `TypePromotionError` is a `ValueError`
        if at is None or str(e).startswith("`") or not _runs(at, x0):  # not the dtype's fault
            raise
        names = dict(wide=np.dtype(wide).name, dtype=np.dtype(dtype).name)
        raise TypeError(_MSG_DTYPE_RULE.format(where=where, f=f, kind=type(e).__name__,
                                               line=first_line(e), **names)) from e  # fmt: skip
