"""The linear algebra of natural-gradient / Gauss-Newton steps for residual-form losses.

For `L(theta) = 0.5 * |r(theta)|^2` the energy natural gradient (ENGD, Mueller & Zeinhofer,
ICML 2023, arXiv 2302.13163) is the Gauss-Newton direction `d = -pinv(J) r`, with `J` the
Jacobian of the residual vector. Three facts decide whether it reaches 1e-7 on a PINN
(PITFALLS.md, "PINN Gauss-Newton", measured on the 2-D Poisson problem of issue 14):

- the pseudo-inverse must be *truncated* at a relative cutoff `rcond` of the singular values of
  `J` near 1e-7: `lstsq(J, r)` with its default cutoff (~2e-13) keeps near-null directions,
  steps of norm 2.5e6, and the loss never decreases;
- the step size must be free to go far below 2^-11 early on: a grid line search evaluates
  `alpha = 2^-k`, `k = 0..K`, all at once (one `vmap`), and takes the best decrease;
- no damping floor: a Levenberg-Marquardt term stalls the run near 1e-5.

Each direction has four forms:

- `"svd"`: the thin SVD of `J` itself, which does not square its condition number, so cutoffs
  far below 1e-7 stay meaningful (chosen by hand: it costs a few times one of the two below);
- `"gramian"`: eigen-decompose `G = J^T J` (`n x n`), for tall `J` (residuals >= parameters,
  the default there);
- `"kernel"`: eigen-decompose `K = J J^T` (`m x m`) and map back, `d = -J^T pinv(K) r` (the
  Woodbury / kernel form of ENGD-Woodbury and SPRING, arXiv 2505.12149), for wide `J`;
- `"cg"`: matrix-free CGLS on `min |J d + r|` through `jvp`/`vjp` only, never forming `J`,
  for 1e4..1e5 parameters; stopping CGLS early is itself a truncation (Hanke 1995).

All four give the same `d` up to rounding when nothing is truncated; they differ in cost.
"""

from collections.abc import Callable

import jax
import jax.numpy as jnp
from jaxtyping import Array, Float


def residual_and_jacobian(
    f: Callable[[Array], Array], theta: Array, mode: str
) -> tuple[Array, Array]:
    """`r = f(theta)` and `J = df/dtheta` (`m x n`) from one linearisation.

    `mode="fwd"` pushes the `n` unit tangents through `jax.linearize` (cheaper for tall `J`);
    `"bwd"` pulls the `m` unit cotangents through `jax.vjp` (cheaper for wide `J`). Either way
    the residual comes from the same forward pass as the Jacobian (for a `FlatMLP` PINN, the
    forward-Laplacian pass), not from a second evaluation.
    """
    if mode == "fwd":
        r, lin = jax.linearize(f, theta)
        eye = jnp.eye(theta.size, dtype=theta.dtype)
        return r, jax.vmap(lin, out_axes=1)(eye)
    r, pullback = jax.vjp(f, theta)
    eye = jnp.eye(r.size, dtype=r.dtype)
    return r, jax.vmap(lambda e: pullback(e)[0])(eye)


def _truncated_inverse(w: Array, rcond: Array) -> Array:
    # Eigenvalues of J^T J (or J J^T) are the squared singular values of J: a relative cutoff
    # `rcond` on the singular values is `rcond**2` on them. Negative rounding noise is cut too.
    keep = w > (rcond * rcond) * jnp.max(w)
    return jnp.where(keep, 1 / jnp.where(keep, w, 1), 0)


def truncated_solver(
    J: Float[Array, "m n"], rconds: tuple[float, ...], form: str
) -> Callable[[Array], Array]:
    """`b -> pinv_c(J) b` for each cutoff `c` in `rconds` (rows of the `(c, n)` result):
    singular values of `J` below `rcond * sigma_max` cut off, all from one factorisation.

    `form="svd"` takes the thin SVD of `J` (accurate down to cutoffs near `eps`);
    `"gramian"` eigen-decomposes `J^T J` (`n x n`) and `"kernel"` `J J^T` (`m x m`), which
    square the condition number: cutoffs below ~`sqrt(n * eps)` (~1.7e-7 for `n = 129`) are
    at the rounding floor there. Without truncation all three give the minimum-norm
    least-squares solution.
    """
    cut = jnp.asarray(rconds, dtype=J.dtype)[:, None]
    if form == "svd":
        U, s, Vt = jnp.linalg.svd(J, full_matrices=False)
        filt = _truncated_inverse(s * s, cut) * s
        return lambda b: (filt * (U.T @ b)) @ Vt
    if form == "gramian":
        w, V = jnp.linalg.eigh(J.T @ J)
        inv = _truncated_inverse(w, cut)
        return lambda b: (inv * (V.T @ (J.T @ b))) @ V.T
    w, U = jnp.linalg.eigh(J @ J.T)
    inv = _truncated_inverse(w, cut)
    return lambda b: (inv * (U.T @ b)) @ U.T @ J


def truncated_steps(
    J: Float[Array, "m n"], r: Float[Array, " m"], rconds: tuple[float, ...], form: str
) -> Float[Array, "c n"]:
    """`d = -pinv(J) r` for each cutoff in `rconds` (see `truncated_solver`): the
    minimum-norm least-squares step of each truncated problem."""
    return -truncated_solver(J, rconds, form)(r)


def truncated_step(
    J: Float[Array, "m n"], r: Float[Array, " m"], rcond: float, form: str
) -> Float[Array, " n"]:
    """`truncated_steps` for one cutoff."""
    return truncated_steps(J, r, (rcond,), form)[0]


def geodesic_corrections(
    f: Callable[[Array], Array], theta: Array, v: Array, solve: Callable[[Array], Array]
) -> Float[Array, "c n"]:
    """Geodesic acceleration `a_c = -pinv_c(J) r''(theta)[v_c, v_c]` for each velocity row `v_c`
    (Transtrum & Sethna, arXiv 1201.5885, eq. 14), so that `alpha v + alpha^2 / 2 a` follows the
    curved valley of the residual to second order. The directional second derivative is one
    forward-over-forward pass per row; `solve` is the `truncated_solver` of the same `J`.
    """
    def along(vc):
        return jax.jvp(lambda t: jax.jvp(f, (t,), (vc,))[1], (theta,), (vc,))[1]

    rvv = jax.vmap(along)(v)
    pick = jnp.arange(v.shape[0])
    return -jax.vmap(solve)(rvv)[pick, pick]


def cgls_step(
    f: Callable[[Array], Array], theta: Array, max_iters: int, tol: float, rcond: float = 0.0
) -> tuple[Array, Array, Array]:
    """`(r, d, g)`: `r = f(theta)`, `d ~ argmin |J d + r|` by CGLS (matrix-free), `g = J^T r`.

    CGLS (conjugate gradients on the normal equations, written with `J` and `J^T` separately
    for stability; Bjorck, "Numerical Methods for Least Squares Problems", 1996, 7.4) needs one
    `jvp` and one `vjp` per iteration, from a single `jax.linearize`. It stops after
    `max_iters` iterations, when `|J^T (J d + r)| <= max(tol, eps) * |J^T r|` (`eps` of
    `theta`'s dtype: below it the recurrence iterates on rounding), or before a step along a
    search direction `p` whose curvature `|J p| / |p|` is at most `max(rcond, eps)` times the
    largest seen so far (an estimate of `sigma_max` from below: the truncation of the dense
    forms), or once `|J^T s| <= 4 eps sigma |s|` (the rounding level of `J^T s`; at a
    least-squares solution that is `J^T r` itself, and `d = 0`). Without these, CGLS at the
    solution of a rank-deficient `J` (where `J^T r` is rounding noise, so the relative rule
    asks for digits that are not there) stepped along noise-level singular directions to
    `|theta| ~ 1e12`, which the line search accepted as a rounding-level "decrease"; in
    float32 the default `tol=1e-10` lies below the rounding floor: past convergence the
    recurrence drifted, `|J^T s|` grew again and `d` reached 1e18 on a two-parameter fit (no
    step lowered the loss: a stall at `theta0`).
    """
    r, lin = jax.linearize(f, theta)
    lin_t = jax.linear_transpose(lin, theta)
    jt = lambda v: lin_t(v)[0]
    q0 = jt(-r)
    gamma0 = q0 @ q0
    zero = jnp.zeros_like(theta)
    eps = float(jnp.finfo(theta.dtype).eps)
    cut, floor = max(rcond, eps) ** 2, max(tol, eps) ** 2

    def cond(c):
        _, _, _, gamma, i, _, flat = c
        return (i < max_iters) & (gamma > floor * gamma0) & ~flat

    def body(c):
        d, s, p, gamma, i, top, _ = c
        t = lin(p)
        tt, pp = t @ t, p @ p
        top = jnp.maximum(top, tt / jnp.maximum(pp, jnp.finfo(pp.dtype).tiny))
        # A flat direction, or `|J^T s|` at the rounding level of computing it (~eps sigma |s|).
        flat = (tt <= cut * top * pp) | (gamma <= (4 * eps) ** 2 * top * (s @ s))
        alpha = jnp.where(flat, 0, gamma / jnp.maximum(tt, jnp.finfo(t.dtype).tiny))
        d, s = d + alpha * p, s - alpha * t
        q = jt(s)
        new_gamma = q @ q
        return d, s, q + (new_gamma / gamma) * p, new_gamma, i + 1, top, flat

    init = (zero, -r, q0, gamma0, jnp.asarray(0), jnp.zeros_like(gamma0), jnp.asarray(False))
    d, *_ = jax.lax.while_loop(cond, body, init)
    return r, d, -q0


def grid_line_search(
    value: Callable[[Array], Array], theta: Array, d: Array, loss: Array, max_halvings: int,
    a: Array | None = None, batch: int | None = None,
) -> tuple[Array, Array, Array, Array]:
    """The best of `theta + 2^-k d_c`, `k = 0..max_halvings`, over the rows `d_c` of `d`
    (one or more candidate directions). With `a` (rows of geodesic accelerations, one per
    direction) the trial steps are `alpha d_c + alpha^2/2 a_c`.

    Returns `(step, new_loss, decreased, alpha)`; non-finite trial losses never win. As in the
    ENGD reference code, the whole grid is evaluated (no early exit), so early steps may take
    `alpha` far below 2^-11. The trials run `batch` at a time (`jax.lax.map`), all at once in
    one `vmap` when `batch` is `None`. On CPU one at a time is fastest: 7.4 against 29 ms per
    natural-gradient step on the 2-D Poisson PINN of issue 14 (62 trials over 1020 points; the
    batched intermediates leave the cache), 86 against 370 ms for an 8-member ensemble.
    """
    d = jnp.atleast_2d(d)
    alphas = 0.5 ** jnp.arange(max_halvings + 1, dtype=theta.dtype)
    steps = alphas[:, None, None] * d[None]
    if a is not None:
        steps = steps + (0.5 * alphas * alphas)[:, None, None] * jnp.atleast_2d(a)[None]
    steps = steps.reshape(-1, theta.size)
    trial = lambda s: value(theta + s)
    trials = jax.vmap(trial)(steps) if batch is None else jax.lax.map(trial, steps,
                                                                     batch_size=batch)
    trials = jnp.where(jnp.isfinite(trials), trials, jnp.inf)
    best = jnp.argmin(trials)
    return steps[best], trials[best], trials[best] < loss, alphas[best // d.shape[0]]
