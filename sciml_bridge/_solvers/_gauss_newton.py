"""`"gauss-newton"` / `"natural-gradient"`: truncated Gauss-Newton with a grid line search.

For a residual-form loss `0.5 * |r|^2` the energy natural gradient of Mueller & Zeinhofer
(ICML 2023, arXiv 2302.13163) is the Gauss-Newton direction, so both method names run this one
stepper. A step: linearise `r` once (residual and Jacobian from the same pass), take
`d = -pinv(J) r` with singular values below `rcond * sigma_max` cut off (`_natural_gradient.py`
says why each ingredient matters) for each cutoff in `rcond` (one eigendecomposition), evaluate
the loss at `theta + 2^-k d` for every `k = 0..line_search_steps` and every cutoff in one
`vmap`, and move to the best point. With `geodesic=True` the curved trial steps
`alpha d + alpha^2 / 2 a` join the straight ones, `a` the geodesic acceleration
(`_natural_gradient.py`), which follows curved valleys of the residual. The run converges when
the gradient max-norm or the relative decrease the Gauss-Newton model predicts falls to `tol`
(or the loss to 0). When no step along the `rcond` directions lowers the loss, the coarser
`fallback_rcond` directions (default `(1e-4, 1e-2)`, from the same factorisation) get the same
line search: far from a solution the model of the fine directions can be wrong at every step
size. When they cannot lower it either before `tol` is met, the run stops as
`RESULTS.stalled` (`success=False`: the model is wrong there, the run is not at a minimum). No
damping: a damping floor stalls PINNs near 1e-5 (PITFALLS.md).
Everything runs in the fused driver; the state is `theta` itself.
"""

from collections.abc import Callable

import equinox as eqx
import equinox.internal as eqxi
import jax
import jax.numpy as jnp

from ._ls_stationary import model_met
from ._natural_gradient import (
    cgls_step,
    geodesic_corrections,
    grid_line_search,
    residual_and_jacobian,
    truncated_solver,
)
from ._option_checks import check_solver, count, cutoffs, flag, unit_interval
from ._own_jacobian import own_jacobian
from ._stepper import RESULTS, AbstractStepper, traced


_LS = "least_squares"
SOLVERS = ("auto", "svd", "gramian", "kernel", "cg")

# Above this many Jacobian entries (`m * n`, 160 MB in float64) `solver="auto"` goes
# matrix-free: a dense `J` of a 1e5-parameter network would not fit next to its Gramian.
DENSE_LIMIT = 20_000_000

_MSG_GEODESIC_CG = """\
`sb.least_squares` got `geodesic=True` with the matrix-free `solver="cg"` (chosen by
`solver="auto"` above 2e7 Jacobian entries), but the geodesic correction reuses a factorisation
of the Jacobian, which CGLS never forms. Fix: pass `solver="svd"`, `"gramian"` or `"kernel"`,
or drop `geodesic=True`."""

class GaussNewtonStepper(AbstractStepper):
    """One truncated Gauss-Newton (ENGD) step; see the module docstring."""

    fn: Callable
    jac: str = eqx.field(static=True)
    tol: jax.Array = eqx.field(converter=traced)
    # Two cutoffs, both tried by the line search: 1e-7 (numpy's lstsq cutoff on J^T J for
    # ~100 parameters) takes the early steps, 1e-8 the last digits. On the Poisson problem of
    # issue 14, seeds 0 and 3: 1.2e-7 and 3.8e-7 with both, against 3.6e-7 and 8.5e-5 with
    # 1e-7 alone and 6.4e-7 and 4.2e-6 with (1e-6, 1e-7). In the Gramian form 1e-8 lies below
    # the rounding floor of `eigh` (~n * eps relative on J^T J, i.e. ~1.7e-7 on J for n = 129):
    # it admits noise-level directions, which the line search takes only when they help.
    # Every option is converted to a plain Python value (`_option_checks.py`: a JAX array in a
    # static field broke every later run of the process).
    rcond: tuple[float, ...] = eqx.field(static=True, default=(1e-7, 1e-8),
                                         converter=lambda c: cutoffs(c, "rcond", 1))
    solver: str = eqx.field(static=True, default="auto",
                            converter=lambda name: check_solver(name, SOLVERS))
    line_search_steps: int = eqx.field(
        static=True, default=30, converter=lambda k: count(k, "line_search_steps", _LS, 0))
    cg_steps: int = eqx.field(static=True, default=200,
                              converter=lambda k: count(k, "cg_steps", _LS, 1))
    cg_tol: float = eqx.field(
        static=True, default=1e-10,
        converter=lambda t: unit_interval(t, "cg_tol", _LS, "1e-10", closed_low=True))
    geodesic: bool = eqx.field(static=True, default=False,
                               converter=lambda g: flag(g, "geodesic", _LS))
    # Line-search trials evaluated this many at a time; 0: one at a time on CPU (4x faster
    # there, `grid_line_search`), all at once in one `vmap` on accelerators.
    line_search_batch: int = eqx.field(
        static=True, default=0, converter=lambda k: count(k, "line_search_batch", _LS, 0))
    # Coarser cutoffs, tried only when no step along the `rcond` directions lowers the loss:
    # far from a solution the model of the fine directions can be wrong at every step size
    # (issue 14's Helmholtz seed 3 starts there: |d| ~ 1e8, no decrease down to 2^-39). Tried
    # always next to `rcond` instead, their greedy larger decreases cost Poisson 1000x in
    # accuracy (2e-7 -> 2e-4 over 300 steps).
    fallback_rcond: tuple[float, ...] = eqx.field(
        static=True, default=(1e-4, 1e-2), converter=lambda c: cutoffs(c, "fallback_rcond", 0))

    def _cutoffs(self) -> tuple[tuple[float, ...], tuple[float, ...]]:
        return self.rcond, self.fallback_rcond

    def criterion(self) -> str:
        return ("the gradient max-norm, or the relative decrease the truncated Gauss-Newton "
                "model predicts, fell to `tol` (or the loss to 0)")

    def init(self, theta, args):
        return theta

    def theta(self, state):
        return state

    def _residual(self, theta, args):
        return jnp.ravel(self.fn(theta, *args))

    def value(self, theta, args):
        r = self._residual(theta, args)
        return 0.5 * jnp.sum(r * r)

    def form(self, theta, args) -> str:
        """The solver `"auto"` resolves to for this problem's shape (static)."""
        if self.solver != "auto":
            return self.solver
        m = jax.eval_shape(lambda t: self._residual(t, args), theta).size
        if m * theta.size > DENSE_LIMIT:
            return "cg"
        return "gramian" if m >= theta.size else "kernel"

    def direction(self, theta, args):
        """`(r, d, g, a)`: residual, truncated Gauss-Newton directions (one row per cutoff of
        `rcond`, then of `fallback_rcond`; CGLS: one row), gradient `J^T r`, and geodesic
        accelerations (one row per direction, or `None`)."""
        f = lambda t: self._residual(t, args)
        form = self.form(theta, args)
        if form == "cg":
            if self.geodesic:
                raise ValueError(_MSG_GEODESIC_CG)
            r, d, g = cgls_step(f, theta, self.cg_steps, self.cg_tol, min(self.rcond))
            return r, d[None], g, None
        own = own_jacobian(self.fn)
        if own is not None:
            r, J = own(theta, *args)
        else:
            r, J = residual_and_jacobian(f, theta, self.jac)
        solve = truncated_solver(J, sum(self._cutoffs(), ()), form)
        d = -solve(r)
        a = geodesic_corrections(f, theta, d, solve) if self.geodesic else None
        return r, d, J.T @ r, a

    def _search(self, value, theta, loss, d, a):
        batch = self.line_search_batch or (1 if jax.default_backend() == "cpu" else None)
        if a is not None:
            # Straight and curved candidates both: the line search keeps whichever lowers the
            # loss more, so the correction never costs a step.
            d, a = jnp.concatenate([d, d]), jnp.concatenate([jnp.zeros_like(a), a])
        step, _, decreased, _ = grid_line_search(value, theta, d, loss, self.line_search_steps, a,
                                                 batch)
        return step, decreased

    def step(self, state, args):
        theta = state
        r, d, g, a = self.direction(theta, args)
        # In `theta`'s dtype: a float64 residual of float32 parameters gives float64 steps.
        d, g = d.astype(theta.dtype), g.astype(theta.dtype)
        a = None if a is None else a.astype(theta.dtype)
        loss = 0.5 * jnp.sum(r * r)
        value = lambda t: self.value(t, args)
        fine = len(self._cutoffs()[0]) if d.shape[0] > 1 else 1
        rows = lambda x, s: None if x is None else x[s]
        step, decreased = self._search(value, theta, loss, d[:fine], rows(a, slice(fine)))
        if d.shape[0] > fine:
            need = ~decreased

            def coarse():
                c_step, c_decreased = self._search(value, theta, loss, d[fine:],
                                                   rows(a, slice(fine, None)))
                return jnp.where(need, c_step, step), jnp.where(need, c_decreased, decreased)

            # Under `vmap` (ensembles) a batched predicate turns `cond` into `select`, which
            # runs the coarse line search for every member at every step (an 8-start Poisson
            # ensemble took 1.6x the time of 8 runs). `unvmap_any` keeps it a branch, taken
            # only when some member needs it; the others keep their fine step.
            step, decreased = jax.lax.cond(eqxi.unvmap_any(need), coarse,
                                           lambda: (step, decreased))
        solved = jnp.all(jnp.isfinite(d[:fine]))
        # For `d = -pinv_k(J) r` the Gauss-Newton model predicts the decrease
        # `0.5 |U_k^T r|^2 = -0.5 g.d` (CGLS: the same up to its tolerance); the finest cutoff
        # predicts the most.
        predicted = jnp.max(-0.5 * (d[:fine] @ g)).astype(loss.dtype)
        met = model_met(g, predicted, loss, self.tol)  # the rule "lm"/"dogleg" are held to
        new_theta = jnp.where(decreased & solved, theta + step, theta)
        result = RESULTS.where(decreased | met, RESULTS.successful, RESULTS.stalled)
        result = RESULTS.where(solved, result, RESULTS.solver_failed)
        # A non-finite Jacobian at a finite residual (`sqrt` at 0) is a non-finite gradient,
        # as for every other method (the contract), not a failed solve; CGLS said "stalled".
        result = RESULTS.where(jnp.all(jnp.isfinite(g)), result, RESULTS.nonfinite)
        return new_theta, loss, ~decreased | met, result
