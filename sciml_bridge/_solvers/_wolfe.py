"""A strong-Wolfe line search (bracketing + zoom) that runs inside `jit`.

Nocedal & Wright, "Numerical Optimization" (2nd ed., 2006), Algorithms 3.5 (bracketing) and
3.6 (zoom), written as one `lax.while_loop` whose carry says which phase it is in. Each trial
evaluates the loss and its gradient together and the accepted point's gradient is returned,
so the quasi-Newton step that called it needs no extra gradient evaluation. The self-scaled
methods (Urban, Stefanou & Pons, JCP 2025, arXiv 2405.04230; Kiyani et al., CMAME 2025, arXiv
2501.16371) rely on strong-Wolfe steps to keep `y^T s > 0` and their scaling meaningful.
"""

from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp
from jaxtyping import Array


class _Point(NamedTuple):
    alpha: Array
    f: Array
    slope: Array  # d/dalpha f(theta + alpha p) = g . p
    g: Array


class _Carry(NamedTuple):
    lo: _Point  # the best point so far that satisfies the sufficient decrease
    hi: _Point  # the other end of the bracket (meaningful once `bracketed`)
    trial: Array  # next step size to try while expanding
    bracketed: Array
    done: Array
    i: Array


def _cubic_minimiser(lo: _Point, hi: _Point) -> Array:
    """Minimiser of the cubic through `(alpha, f, slope)` at both ends, bisection as fallback
    when it falls outside the middle 80% of the bracket (N&W eq. 3.59, safeguarded)."""
    a, b = lo.alpha, hi.alpha
    d1 = lo.slope + hi.slope - 3 * (lo.f - hi.f) / jnp.where(a == b, 1, a - b)
    disc = d1 * d1 - lo.slope * hi.slope
    d2 = jnp.sign(b - a) * jnp.sqrt(jnp.maximum(disc, 0))
    denom = hi.slope - lo.slope + 2 * d2
    x = b - (b - a) * (hi.slope + d2 - d1) / jnp.where(denom == 0, 1, denom)
    width = jnp.abs(b - a)
    inside = (jnp.abs(x - a) >= 0.1 * width) & (jnp.abs(x - b) >= 0.1 * width)
    ok = (disc >= 0) & (denom != 0) & jnp.isfinite(x) & inside
    return jnp.where(ok, x, (a + b) / 2)


def strong_wolfe(
    value_and_grad: Callable[[Array], tuple[Array, Array]],
    f0: Array,
    g0: Array,
    p: Array,
    alpha0: Array,
    *,
    c1: float = 1e-4,
    c2: float = 0.9,
    max_iters: int = 30,
) -> tuple[Array, Array, Array, Array]:
    """Step size along the descent direction `p` meeting the strong Wolfe conditions.

    `value_and_grad(alpha)` returns the loss and gradient at `theta + alpha * p`. Returns
    `(alpha, f, g, found)`: when the conditions are not met within `max_iters` trials, the
    best sufficient-decrease point seen (`alpha = 0`, `f0`, `g0` if there was none).
    """
    slope0 = g0 @ p
    start = _Point(jnp.zeros_like(f0), f0, slope0, g0)
    carry = _Carry(start, start, alpha0, jnp.asarray(False), jnp.asarray(False), jnp.asarray(0))

    def cond(c: _Carry):
        return ~c.done & (c.i < max_iters)

    def body(c: _Carry) -> _Carry:
        alpha = jnp.where(c.bracketed, _cubic_minimiser(c.lo, c.hi), c.trial)
        f, g = value_and_grad(alpha)
        t = _Point(alpha, f, g @ p, g)
        fails = ~(f <= f0 + c1 * alpha * slope0) | (f >= c.lo.f) | ~jnp.isfinite(f)
        curvature = jnp.abs(t.slope) <= -c2 * slope0
        expand = ~fails & ~c.bracketed & (t.slope < 0)
        # Sufficient decrease but the slope says the minimum lies behind `t` (or the bracket
        # must turn around): N&W Algorithm 3.6, "if phi'(alpha_j)(alpha_hi - alpha_lo) >= 0".
        flip = ~c.bracketed | (t.slope * (c.hi.alpha - c.lo.alpha) >= 0)
        pick = lambda cond, a, b: jax.tree.map(lambda x, y: jnp.where(cond, x, y), a, b)
        new_hi = pick(fails, t, pick(flip & ~expand, c.lo, c.hi))
        new_lo = pick(fails, c.lo, t)
        return _Carry(
            lo=new_lo,
            hi=new_hi,
            trial=2 * alpha,
            bracketed=c.bracketed | fails | (~curvature & ~expand),
            done=~fails & curvature,
            i=c.i + 1,
        )

    out = jax.lax.while_loop(cond, body, carry)
    return out.lo.alpha, out.lo.f, out.lo.g, out.done
