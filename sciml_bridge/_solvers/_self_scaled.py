"""`"ssbfgs"` / `"ssbroyden"`: self-scaled BFGS and Broyden with a strong-Wolfe line search.

A dense inverse-Hessian approximation `H`, updated after every step by the self-scaled Broyden
family (Urban, Stefanou & Pons, "Unveiling the optimization process of physics informed neural
networks", JCP 2025, arXiv 2405.04230, section 3; Kiyani et al., CMAME 2025, arXiv 2501.16371;
the scalings go back to Al-Baali 1998 and Oren & Luenberger 1974). With `s = theta_{k+1} -
theta_k`, `y = g_{k+1} - g_k`:

    H_{k+1} = (1 / tau_k) [H - (H y y^T H) / (y^T H y) + phi_k v v^T] + (s s^T) / (y^T s),
    v = sqrt(y^T H y) [s / (y^T s) - H y / (y^T H y)],

with `h_k = y^T H y / y^T s`, `b_k = s^T B s / y^T s = -alpha_k s^T g_k / y^T s` (since
`B s = -alpha g`) and `a_k = b_k h_k - 1`:

- SSBFGS: `phi_k = 1` (the BFGS member), `tau_k = min(1, 1 / b_k)`;
- SSBroyden: `c_k = sqrt(a_k / (1 + a_k))`, `rho_k^- = min(1, h_k (1 - c_k))`,
  `theta_k^- = (rho_k^- - 1) / a_k`, `theta_k^+ = 1 / rho_k^-`,
  `theta_k = max(theta_k^-, min(theta_k^+, (1 - b_k) / b_k))`, `sigma_k = 1 + a_k theta_k`,
  `sigma_k^(n) = |sigma_k|^(1 / (1 - n))`, `rho_k = min(1, 1 / b_k)`,
  `tau_k = min(rho_k sigma_k^(n), sigma_k)` if `theta_k <= 0`, else
  `rho_k min(sigma_k^(n), 1 / theta_k)`; and `phi_k = (1 - theta_k) / (1 + a_k theta_k)`.

On the first update both use `tau_0 = h_0 / (1 + a_0 theta_0)` (SSBFGS: `theta_0 = 0`), which
rescales the initial identity to the curvature seen along the first step. An update whose
`y^T s` is not positive, or whose result is not finite, is skipped (the line search keeps
`y^T s > 0` in exact arithmetic). Dense `n x n`: for networks up to a few thousand parameters.
"""

from collections.abc import Callable
from typing import ClassVar

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, Float

from ._option_checks import count, unit_interval
from ._stepper import RESULTS, AbstractStepper, traced
from ._wolfe import strong_wolfe


def _ssbroyden_scaling(a, b, n):
    """`(tau, phi, theta)` of SSBroyden (formulas in the module docstring)."""
    tiny = jnp.finfo(a.dtype).tiny
    a = jnp.maximum(a, 0)
    c = jnp.sqrt(a / (1 + a))
    rho_minus = jnp.minimum(1, (a + 1) / b * (1 - c))  # h = (a + 1) / b
    theta_minus = jnp.where(a > tiny, (rho_minus - 1) / jnp.maximum(a, tiny), -jnp.inf)
    theta = jnp.maximum(theta_minus, jnp.minimum(1 / rho_minus, (1 - b) / b))
    sigma = 1 + a * theta
    # In one dimension the secant condition fixes `H` whatever `tau` is: any finite factor.
    sigma_n = jnp.abs(sigma) ** (1 / (1 - n)) if n > 1 else jnp.ones_like(sigma)
    rho = jnp.minimum(1, 1 / b)
    tau = jnp.where(
        theta <= 0,
        jnp.minimum(rho * sigma_n, sigma),
        rho * jnp.minimum(sigma_n, 1 / jnp.where(theta == 0, 1, theta)),
    )
    return tau, (1 - theta) / sigma, theta


def self_scaled_update(
    H: Float[Array, "n n"],
    s: Float[Array, " n"],
    y: Float[Array, " n"],
    g: Float[Array, " n"],
    alpha: Array,
    first: Array,
    kind: str,
    apply: Array | bool = True,
) -> Float[Array, "n n"]:
    """One self-scaled update of the inverse Hessian `H` (`kind`: "ssbfgs" or "ssbroyden");
    `H` itself where `apply` is false or the update is rejected (see the module docstring).

    The `n x n` work is two reads of `H` (`H @ y` and `max |H|` for the overflow bound) and one
    fused pass that writes the result: every check is made on scalars and vectors before it,
    and the branch not taken costs nothing (`lax.cond`). The update keeps a
    symmetric `H` exactly symmetric (each entry `(i, j)` is computed from the same numbers as
    `(j, i)`), so it needs no symmetrising pass.
    """
    ys = y @ s
    Hy = H @ y
    yHy = y @ Hy
    h = yHy / ys
    b = -alpha * (s @ g) / ys
    a = b * h - 1
    if kind == "ssbfgs":
        theta, phi, tau = jnp.zeros_like(a), jnp.ones_like(a), jnp.minimum(1, 1 / b)
    else:
        tau, phi, theta = _ssbroyden_scaling(a, b, s.size)
    tau = jnp.where(first, h / (1 + a * theta), tau)
    v = s / ys - Hy / yHy
    # A bound on every entry of the result, each term computed in the order the update
    # computes it: finite bound, finite update (it overflows exactly when a term does).
    big = lambda w: jnp.max(jnp.abs(w))
    bound = (big(H) + big(Hy) * big(Hy) / yHy + jnp.abs(phi * yHy) * (big(v) * big(v))) \
        / jnp.abs(tau) + big(s) * big(s) / ys  # fmt: skip
    ok = apply & (ys > jnp.finfo(ys.dtype).eps * jnp.linalg.norm(s) * jnp.linalg.norm(y))
    ok = ok & jnp.isfinite(bound) & (tau != 0)

    def update(H):
        return (H - jnp.outer(Hy, Hy) / yHy + (phi * yHy) * jnp.outer(v, v)) / tau \
            + jnp.outer(s, s) / ys  # fmt: skip

    return jax.lax.cond(ok, update, lambda H: H, H)


_MIN = "minimize"


class SelfScaledStepper(AbstractStepper):
    """One self-scaled quasi-Newton step; the state is `(theta, f, g, H, k)`."""

    OPTIONS: ClassVar[tuple] = ("c1", "c2", "line_search_steps")

    fn: Callable
    kind: str = eqx.field(static=True)
    tol: jax.Array = eqx.field(converter=traced)
    # Plain Python values (`_option_checks.py`): `0 < c1 < c2 < 1` (Nocedal & Wright, 3.7), at
    # least one trial. Out of range they ran silently wrong: `c1 < 0` accepts steps that
    # raise the loss, `c1 >= c2` or no trials stop at `theta0` as a "stall".
    c1: float = eqx.field(static=True, default=1e-4,
                          converter=lambda c: unit_interval(c, "c1", _MIN, "1e-4"))
    c2: float = eqx.field(static=True, default=0.9,
                          converter=lambda c: unit_interval(c, "c2", _MIN, "0.9"))
    line_search_steps: int = eqx.field(
        static=True, default=30, converter=lambda k: count(k, "line_search_steps", _MIN, 1))

    def __check_init__(self):
        if not self.c1 < self.c2:
            raise ValueError(f"`sb.minimize` expected `c1 < c2` (the strong Wolfe conditions "
                             f"need a curvature bound above the decrease bound), got c1="
                             f"{self.c1!r}, c2={self.c2!r}. Fix: e.g. c1=1e-4, c2=0.9 (the "
                             "defaults).")

    def criterion(self) -> str:
        return ("the gradient max-norm, or the relative decrease the quasi-Newton model "
                "predicts, fell to `tol`")

    def _objective(self, args, theta):
        # The line search carries the loss in `theta`'s (real) precision: a float32 loss of
        # float64 parameters (or the reverse, float64 data) would change the carry's type.
        dtype = jnp.finfo(theta.dtype).dtype
        return jax.value_and_grad(lambda t: self.fn(t, *args).astype(dtype))

    def init(self, theta, args):
        f, g = self._objective(args, theta)(theta)
        H = jnp.eye(theta.size, dtype=theta.dtype)
        return theta, f, g, H, jnp.asarray(0)

    def theta(self, state):
        return state[0]

    def value(self, theta, args):
        return self.fn(theta, *args)

    def step(self, state, args):
        theta, f, g, H, k = state
        p = -(H @ g)
        descent = g @ p < 0
        # Not a descent direction (rounding in a badly conditioned `H`): restart from `I`.
        H = jax.lax.cond(descent, lambda: H, lambda: jnp.eye(theta.size, dtype=H.dtype))
        p = jnp.where(descent, p, -g)
        # First step: identity `H`, so scale the trial to a unit max-norm move.
        alpha0 = jnp.where(k == 0, 1 / jnp.maximum(1, jnp.max(jnp.abs(g))), 1).astype(f.dtype)
        fg = self._objective(args, theta)
        alpha, f_new, g_new, _ = strong_wolfe(
            lambda a: fg(theta + a * p), f, g, p, alpha0,
            c1=self.c1, c2=self.c2, max_iters=self.line_search_steps,
        )  # fmt: skip
        moved = alpha > 0
        s, y = alpha * p, g_new - g
        H = self_scaled_update(H, s, y, g, alpha, k == 0, self.kind, apply=moved)
        # Converged: a small gradient, or a quadratic model (`H`) that predicts a relative
        # decrease `-0.5 g.p / |f|` below `tol`. A line search that cannot move before either
        # holds is a stall (`RESULTS.stalled`), not convergence.
        met = jnp.max(jnp.abs(jnp.where(moved, g_new, g))) <= self.tol
        stuck = ~moved & ~met & (-0.5 * (g @ p) > self.tol * jnp.abs(f))
        new_state = (theta + s, f_new, g_new, H, k + moved.astype(k.dtype))
        result = RESULTS.where(stuck, RESULTS.stalled, RESULTS.successful)
        # A NaN gradient at a finite loss makes every direction NaN: no trial moves, which
        # read as a stall; the contract calls it non-finite (BFGS, L-BFGS, Adam do).
        result = RESULTS.where(jnp.all(jnp.isfinite(g)), result, RESULTS.nonfinite)
        return new_state, f, ~moved | met, result
