"""A loss JAX cannot differentiate, in our words: which method needs what, and what to use.

Every method of `sb.minimize` but SciPy's derivative-free ones (and an `optimistix.NelderMead`
object) differentiates the loss. A loss
JAX cannot differentiate (a `jax.pure_callback` without a JVP rule, a primitive without a
differentiation rule) made JAX raise from deep
inside the first traced step: "Pure callbacks do not support JVP", with nothing saying that
"scipy:Nelder-Mead" would run. The failure is diagnosed only after it happened (no extra
trace on a run that works): the loss traces alone but its gradient does not.
"""

from collections.abc import Callable

import jax

from ._failures import first_line


# What JAX raises while tracing a derivative it has no rule for: "Pure callbacks do not
# support JVP" (ValueError), "Differentiation rule for '...' not implemented"
# (NotImplementedError). Where only reverse mode fails ("Reverse-mode differentiation does not
# work for lax.while_loop"), JAX's message stands: it names the mode.
TRACE_ERRORS = (ValueError, TypeError, NotImplementedError)

DERIVATIVE_FREE = ("Nelder-Mead", "Powell", "COBYLA", "COBYQA")

_MSG = """\
`{where}` with method={method} needs the {needs} of `{what}`, but JAX cannot differentiate it
(the {what} itself runs): {kind}: {line}
Fix: {fix}; or make the {what} differentiable (e.g. `jax.custom_jvp` around a
`jax.pure_callback`, `lax.scan` or a `lax.fori_loop` with fixed bounds instead of a
`lax.while_loop`)."""
_FIX_MINIMIZE = (
    "a derivative-free method, which only evaluates the loss: {free}, or "
    "`optimistix.NelderMead(rtol=1e-6, atol=1e-6)` as `method=` (it runs in our fused loop)"
)
# Every least-squares method needs the Jacobian: the derivative-free ones are `sb.minimize`'s.
_FIX_LEAST_SQUARES = (
    "minimise the sum of squares with a derivative-free method of `sb.minimize`, e.g. "
    "`sb.minimize(lambda t: 0.5 * jnp.sum(residual(t) ** 2), theta0, \"scipy:Nelder-Mead\")` "
    "(or {free})"
)


def _raised(fn: Callable, theta, args: tuple) -> Exception | None:
    try:
        jax.eval_shape(fn, theta, args)
    except Exception as e:
        return e
    return None


def _head(e: Exception) -> tuple:
    return type(e), (str(e).splitlines() or [""])[0]


def not_differentiable(e: Exception, value: Callable, theta, args: tuple, where: str,
                       method) -> TypeError | None:  # fmt: skip
    """Our `TypeError` for `e` (raised by a run of `method` from `theta`) when `e` is JAX's
    refusal to differentiate `value(theta, args)`: the value traces, its gradient raises the
    same error. `None` when `e` is anything else (our own messages start with a backtick; a
    `jax.pure_callback` without `vmap_method` raised by a method that vmaps the loss, such
    as `optimistix.NelderMead`, is not about derivatives)."""
    if not isinstance(e, TRACE_ERRORS) or str(e).startswith("`"):
        return None
    if _raised(value, theta, args) is not None:
        return None
    grad = _raised(jax.grad(value), theta, args)
    if grad is None or _head(grad) != _head(e):
        return None
    # Forward mode works (a `lax.while_loop`, Diffrax's `ForwardMode()`): the method needs
    # reverse mode, which JAX's own message says; "cannot differentiate" would be wrong
    # ("dogleg" on a `ForwardMode()` solve, which "lm" and "gauss-newton" fit).
    forward = lambda t, a: jax.jvp(lambda x: value(x, a), (t,), (t,))
    if _raised(forward, theta, args) is None:
        return None
    free = ", ".join(f'"scipy:{m}"' for m in DERIVATIVE_FREE)
    shown = repr(method) if isinstance(method, str) else type(method).__name__
    squares = where == "sb.least_squares"
    fix = (_FIX_LEAST_SQUARES if squares else _FIX_MINIMIZE).format(free=free)
    return TypeError(_MSG.format(where=where, method=shown, kind=type(e).__name__,
                                 line=first_line(e), fix=fix,
                                 needs="Jacobian" if squares else "gradient",
                                 what="residual" if squares else "loss"))  # fmt: skip


def differentiating(solve: Callable, value: Callable, theta, args: tuple, where: str, method):
    """`solve()`, where a loss JAX cannot differentiate is our `TypeError` (`from` JAX's)."""
    try:
        return solve()
    except TRACE_ERRORS as e:
        ours = not_differentiable(e, value, theta, args, where, method)
        if ours is None:
            raise
        raise ours from e
