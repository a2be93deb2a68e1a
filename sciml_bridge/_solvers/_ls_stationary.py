"""When a least-squares run may say "converged": the Gauss-Newton stopping rule, one for
`"gauss-newton"`/`"natural-gradient"` and for the Optimistix solvers (`"lm"`, `"dogleg"`, or a
solver object).

The rule: the gradient max-norm `|J^T r|_inf` is at most `tol`, or the loss is 0, or the
relative decrease the Gauss-Newton model predicts, `0.5 |U^T r|^2 / loss` (`U` the left
singular vectors of `J` kept by the cutoff), is at most `tol` while the model predicts a
decrease at all. Optimistix stops on a Cauchy criterion instead (small changes in `y` and in
the residual), which a trust region meets wherever it shrinks: at the edge of a region where
the loss is NaN, "lm" and "dogleg" said "converged" with the gradient of order 1, where
"gauss-newton" said "stalled". And "dogleg" reported a failed linear solve at a zero Jacobian
(a stationary point, where "lm" and "gauss-newton" converge). So when Optimistix stops or
fails, this rule decides, at the point it returns: met -> converged, else a stall (after
"done") or the failure it reported.
"""

import jax
import jax.numpy as jnp
from jaxtyping import Array, Bool


# The checking solve: the thin SVD of `J` truncated at Gauss-Newton's finest default cutoff.
_CHECK_RCOND = 1e-8


def model_met(g: Array, predicted: Array, loss: Array, tol: Array,
              rtol: Array | None = None) -> Bool[Array, ""]:
    """The rule of the module docstring, given the gradient `g = J^T r`, the decrease the
    model predicts (`0.5 |U^T r|^2`) and the loss; `rtol` (default `tol`) bounds the relative
    decrease (an Optimistix solver's `rtol`, next to its `atol` for the gradient). A model
    that predicts nothing at all (every cutoff removed the whole residual) says nothing about
    a minimum while the gradient is not small: that is no convergence (`J = diag(1e6, 1e-3)`
    with the residual along the small direction said "converged" at `theta0`, gradient 1e3).
    """
    informative = (predicted > 0) | (loss == 0)
    return (jnp.max(jnp.abs(g)) <= tol) | (loss == 0) \
        | ((predicted <= (tol if rtol is None else rtol) * loss) & informative)  # fmt: skip


def _residual_jacobian(info) -> tuple[Array, Array] | None:
    """`(r, J)` (flat, `J` dense) from an Optimistix `FunctionInfo.ResidualJac` (the state of
    every `optx.AbstractGaussNewton`, at the point the step returns), else None. Dense: the
    Jacobian of a forward-mode linearisation through a `while_loop` (a Diffrax solve with
    `ForwardMode`) cannot be transposed, so `J^T s` is read off the matrix; "lm" and "dogleg"
    form it at every step anyway (lineax's QR)."""
    jac = getattr(info, "jac", None)
    residual = getattr(info, "residual", None)
    if jac is None or not isinstance(residual, jax.Array):
        return None
    J = jac.as_matrix()
    return jnp.ravel(residual), J.reshape(-1, J.shape[-1])


def rule_met(info, atol: Array, rtol: Array, theta: Array) -> Bool[Array, ""] | None:
    """Whether the Gauss-Newton rule holds where the solver's `FunctionInfo` was taken, at
    `theta` (None for a state without a residual and Jacobian: the solver's own verdict
    stands). Also met when the Gauss-Newton step is below `sqrt(eps) |theta|` (MINPACK's
    `xtol`): at an exact float32 fit the residual is rounding noise `~eps |y|`, whose gradient
    is above a small absolute `tol` (an exact fit of `3000 exp(-1.3 x) + 500` said "stalled")."""
    parts = _residual_jacobian(info)
    if parts is None:
        return None
    r, J = parts
    # LAPACK has no half-precision SVD: the check runs in at least float32.
    dtype = r.dtype if jnp.finfo(r.dtype).bits >= 32 else jnp.dtype(jnp.float32)
    r, J = r.astype(dtype), J.astype(dtype)
    g = J.T @ r
    U, sv, _ = jnp.linalg.svd(J, full_matrices=False)
    kept = jnp.where(sv > _CHECK_RCOND * sv[0], U.T @ r, 0)
    predicted, loss = 0.5 * (kept @ kept), 0.5 * (r @ r)
    as_loss = lambda x: jnp.asarray(x).astype(dtype)
    met = model_met(g, predicted, loss, as_loss(atol), as_loss(rtol))
    step = jnp.linalg.norm(jnp.where(sv > _CHECK_RCOND * sv[0], kept / jnp.where(sv > 0, sv, 1), 0))
    # `theta`'s own precision: "lm" on a float32 `theta` solves in float64.
    xtol = float(jnp.finfo(theta.dtype).eps) ** 0.5
    negligible = step <= xtol * jnp.linalg.norm(jnp.ravel(theta).astype(dtype))
    return met | negligible | at_rounding_level(g, J @ g, r)


def at_rounding_level(g: Array, Jg: Array, r: Array) -> Bool[Array, ""]:
    """Whether the gradient `g = J^T r` is at the rounding level of computing it,
    `|g| <= 4 eps sigma |r|` with `sigma ~ |J g| / |g|` (from below; exact along the top
    singular direction): zero to working precision, whatever `tol` asks. At the exact fit of a
    residual with a constant part (loss 1.5e8, `tol=1e-12`) "lm" stopped with `|g| ~ 1e-8`
    from rounding in the fit."""
    eps = float(jnp.finfo(r.dtype).eps)
    return (g @ g) <= 4 * eps * jnp.linalg.norm(Jg) * jnp.linalg.norm(r)
