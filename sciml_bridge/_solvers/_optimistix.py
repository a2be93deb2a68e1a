"""Optimistix backends: `"bfgs"`, `"nonlinear-cg"` (minimize), `"lm"`, `"dogleg"` (least squares).

We drive `solver.init/step/terminate` ourselves (as `optimistix/_iterate.py` does) so that the
loss curve, the last good `theta`, progress, Ctrl-C and checkpoints are the same as for every
other method; the driver carries the array part of the state across chunks and keeps the
static part (jaxprs) fixed, as `_iterate.py` does inside its `while_loop`.

A float32 (or narrower) `theta` with x64 on is solved in float64: Optimistix's searches and
trust regions start their step sizes as default-dtype scalars, so its own state turns float64
and its `while_loop`/Lineax structure checks fail on a float32 `y` (a raw `TypeError` before).
The loss still sees `theta` in its own dtype; only the solver's bookkeeping is wider, and
`theta` comes back in its own dtype.

One loss evaluation per step, as in `optx.minimise`: the loss at the accepted point is read
from the solver's own `f_info` instead of being recomputed. A non-finite trial point is left to
the solver's line search / trust region, which rejects it and backs off, as `optx.minimise`
would; only a non-finite loss, or gradient, at an accepted point stops the run (with a NaN
gradient there every direction is NaN, no trial point is ever accepted, and BFGS ran its whole
budget at that point, to end with "try a larger `max_steps`").
"""

from collections.abc import Callable
from typing import Any, cast

import equinox as eqx
import equinox.internal as eqxi
import jax
import jax.numpy as jnp
import lineax as lx
import numpy as np
import optimistix as optx

from ._ls_stationary import rule_met
from ._stepper import RESULTS, AbstractStepper, traced


def _sum_squares(r):
    r = jnp.ravel(r)
    return 0.5 * jnp.sum(r * r)


class SumOfSquares(eqx.Module):
    """`0.5 * sum(residual(theta, *args) ** 2)`: a residual for an Optimistix minimiser passed
    to `sb.least_squares` (as `optx.least_squares` does; it raised "Pred must be a scalar")."""

    fn: Callable

    def __call__(self, theta, *args):
        return _sum_squares(self.fn(theta, *args))


def _solve_dtype(dtype) -> str | None:
    """float64 where Optimistix would mix it into a narrower `theta` (see the module
    docstring); with x64 off, float32 for a half-precision `theta` (its default-dtype scalars
    are float32 then: "lm" on bfloat16 raised lineax's "Vector and operator structures do not
    match", "dogleg" a `cond` type mismatch); else None (solve in `theta`'s own dtype)."""
    size = np.dtype(dtype).itemsize if jnp.issubdtype(dtype, jnp.floating) else 8
    if size < 8 and jax.config.read("jax_enable_x64"):
        return "float64"
    return "float32" if size < 4 else None


def _cast(tree, dtype):
    return jax.tree.map(lambda x: x.astype(dtype) if jnp.issubdtype(x.dtype, jnp.floating)
                        else x, tree)  # fmt: skip


class OptimistixStepper(AbstractStepper):
    fn: Callable
    solver: Any
    least_squares: bool = eqx.field(static=True)
    options: dict
    dtype: str = eqx.field(static=True)  # `theta`'s own
    solve_dtype: str | None = eqx.field(static=True, default=None)

    def criterion(self) -> str:
        return ("Optimistix's Cauchy criterion was met (the changes in `theta` and in the "
                "loss fell below `rtol`/`atol`, i.e. `tol`)")

    def _wrapped(self, y, args):
        if self.solve_dtype is None:
            return self.fn(y, *args), None
        return _cast(self.fn(y.astype(self.dtype), *args), self.solve_dtype), None

    def init(self, theta, args):
        y = theta if self.solve_dtype is None else theta.astype(self.solve_dtype)
        f_struct, aux_struct = eqx.filter_eval_shape(self._wrapped, y, args)
        state = self.solver.init(
            self._wrapped, y, args, self.options, f_struct, aux_struct, frozenset()
        )
        return y, state

    def theta(self, state):
        return state[0].astype(self.dtype)

    def value(self, theta, args):
        out = self.fn(theta, *args)
        return _sum_squares(out) if self.least_squares else out

    def _loss_before(self, y, st, new_st, args):
        # optimistix/_solver/{quasi_newton,gradient_methods,gauss_newton}.py: `f_info` holds
        # the loss at the accepted `y`; the first step accepts `y0` itself, so after it
        # `new_st.f_info` is the loss at `y0`. Solvers without that state are evaluated.
        if hasattr(st, "f_info") and hasattr(st, "first_step"):
            return jnp.where(st.first_step, new_st.f_info.as_min(), st.f_info.as_min())
        return self.value(y.astype(self.dtype), args)

    def step(self, state, args):
        y, st = state
        tags = frozenset()
        new_y, new_st, _ = self.solver.step(self._wrapped, y, args, self.options, st, tags)
        done, result = self.solver.terminate(
            self._wrapped, new_y, args, self.options, new_st, tags
        )
        loss = self._loss_before(y, st, new_st, args)
        if self.solve_dtype is not None:
            loss = loss.astype(self.dtype)  # exact: the loss was computed in `self.dtype`
        failed = result != optx.RESULTS.successful
        result = RESULTS.where(failed, RESULTS.solver_failed, RESULTS.successful)
        if self.least_squares:
            done, failed, result = self._judge(new_y, new_st, done, failed, result)
        result = RESULTS.where(_finite_gradient(new_st), result, RESULTS.nonfinite)
        return (new_y, new_st), loss, done & ~failed, result

    def _judge(self, y, st, done, failed, result):
        """Optimistix's verdict, checked by the Gauss-Newton rule at the point the step returns
        (`_ls_stationary.py`): "done" where the rule fails is a stall (a trust region shrunk at
        the edge of a NaN region), a failure where it holds is convergence (a zero Jacobian's
        singular solve)."""
        atol, rtol = (getattr(self.solver, name, None) for name in ("atol", "rtol"))
        if atol is None or rtol is None:
            return done, failed, result
        check = lambda: rule_met(st.f_info, atol, rtol, y.astype(self.dtype))
        if jax.eval_shape(check) is None:  # a state without `f_info`: nothing to check with
            return done, failed, result
        # One check per run (where it stops), not per step; `unvmap_any` keeps an ensemble's
        # `cond` a branch (a batched predicate would run it at every step).
        stop = done | failed
        met = jax.lax.cond(eqxi.unvmap_any(stop), check, lambda: jnp.asarray(False)) & stop
        result = RESULTS.where(met, RESULTS.successful, result)
        result = RESULTS.where(done & ~failed & ~met, RESULTS.stalled, result)
        return done | met, failed & ~met, result


def _finite_gradient(st) -> jax.Array:
    """Whether the gradient at the accepted point (`f_info.grad` of Optimistix's quasi-Newton
    and gradient methods) is finite; `True` for states without one."""
    grad = getattr(getattr(st, "f_info", None), "grad", None)
    leaves = jax.tree.leaves(grad)
    return jnp.all(jnp.stack([jnp.all(jnp.isfinite(g)) for g in leaves])) if leaves \
        else jnp.asarray(True)  # fmt: skip


# `rtol`/`atol` as JAX scalars (`traced`): Optimistix only computes with them, so a new `tol`
# reuses the compiled kernels.
def minimiser(name: str, tol: float):
    t = cast(float, traced(tol))  # Optimistix annotates them `float`
    return {
        "bfgs": lambda: optx.BFGS(rtol=t, atol=t),
        "nonlinear-cg": lambda: optx.NonlinearCG(rtol=t, atol=t),
    }[name]()


def least_squares_solver(name: str, tol: float):
    t = cast(float, traced(tol))
    return {
        "lm": lambda: optx.LevenbergMarquardt(rtol=t, atol=t),
        # lineax's default for a tall `J` is QR, which assumes full rank: at a rank-deficient
        # `J` the Gauss-Newton point went to |theta| ~ 4.6e15 (a 20 x 6 linear fit of rank 3),
        # where rounding in the residual passed for a decrease (and `res.loss` was not the
        # loss at `res.theta`). The SVD solve takes the minimum-norm step.
        "dogleg": lambda: optx.Dogleg(rtol=t, atol=t,
                                      linear_solver=lx.AutoLinearSolver(well_posed=False)),
    }[name]()


def is_optimistix_solver(method: Any) -> bool:
    return isinstance(method, optx.AbstractMinimiser | optx.AbstractLeastSquaresSolver)


def optimistix_stepper(fn, solver, *, least_squares: bool, jac: str | None, options: dict,
                       dtype) -> OptimistixStepper:  # fmt: skip
    options = dict(options)
    if least_squares and jac is not None:
        # optimistix/_solver/gauss_newton.py reads `options["jac"]` ("fwd" default, or "bwd").
        options.setdefault("jac", jac)
    return OptimistixStepper(fn, solver, least_squares, options, np.dtype(dtype).name,
                             _solve_dtype(dtype))  # fmt: skip


