"""Optimistix backends: `"bfgs"`, `"nonlinear-cg"` (minimize), `"lm"`, `"dogleg"` (least squares).

We drive `solver.init/step/terminate` ourselves (as `optimistix/_iterate.py` does) so the loss
curve, the last good `theta` and the stop-on-non-finite rule are the same as for every other
method. Their states hold jaxprs (PITFALLS.md: a whole `optx.Solution` cannot leave a `jit`), so
the whole solve is one dispatch rather than chunks.
"""

from collections.abc import Callable
from typing import Any, ClassVar

import equinox as eqx
import jax.numpy as jnp
import optimistix as optx

from ._fused import CONVERGED, FAILED, NONFINITE, RUNNING, AbstractStepper


def _sum_squares(r):
    r = jnp.ravel(r)
    return 0.5 * jnp.sum(r * r)


class OptimistixStepper(AbstractStepper):
    chunkable: ClassVar[bool] = False
    fn: Callable
    solver: Any
    least_squares: bool = eqx.field(static=True)
    options: dict

    def _wrapped(self, y, args):
        return self.fn(y, *args), None

    def init(self, theta, args):
        f_struct, aux_struct = eqx.filter_eval_shape(self._wrapped, theta, args)
        state = self.solver.init(
            self._wrapped, theta, args, self.options, f_struct, aux_struct, frozenset()
        )
        return theta, state

    def theta(self, state):
        return state[0]

    def value(self, theta, args):
        out = self.fn(theta, *args)
        return _sum_squares(out) if self.least_squares else out

    def step(self, state, args):
        y, st = state
        loss = self.value(y, args)
        tags = frozenset()
        new_y, new_st, _ = self.solver.step(self._wrapped, y, args, self.options, st, tags)
        done, result = self.solver.terminate(
            self._wrapped, new_y, args, self.options, new_st, tags
        )
        status = jnp.where(result == optx.RESULTS.successful, RUNNING, FAILED)
        status = jnp.where(done & (status == RUNNING), CONVERGED, status)
        # The point the solver will evaluate next: a non-finite loss there stops the run
        # (the line search would otherwise quietly back off from NaNs we promised to report).
        trial = getattr(new_st, "y_eval", new_y)
        trial_ok = jnp.isfinite(self.value(trial, args)) & jnp.all(jnp.isfinite(new_y))
        status = jnp.where(trial_ok, status, NONFINITE)
        return (new_y, new_st), loss, status


def minimiser(name: str, tol: float):
    return {
        "bfgs": lambda: optx.BFGS(rtol=tol, atol=tol),
        "nonlinear-cg": lambda: optx.NonlinearCG(rtol=tol, atol=tol),
    }[name]()


def least_squares_solver(name: str, tol: float):
    return {
        "lm": lambda: optx.LevenbergMarquardt(rtol=tol, atol=tol),
        "dogleg": lambda: optx.Dogleg(rtol=tol, atol=tol),
    }[name]()


def is_optimistix_solver(method: Any) -> bool:
    return isinstance(method, optx.AbstractMinimiser | optx.AbstractLeastSquaresSolver)


def optimistix_stepper(fn, solver, *, least_squares: bool, jac: str | None, options: dict):
    options = dict(options)
    if least_squares and jac is not None:
        # optimistix/_solver/gauss_newton.py reads `options["jac"]` ("fwd" default, or "bwd").
        options.setdefault("jac", jac)
    return OptimistixStepper(fn, solver, least_squares, options)


