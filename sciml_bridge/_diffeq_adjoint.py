"""Adjoints we hand to Diffrax: only those whose gradients can be trusted, checked where not.

A failed backward solve of `diffrax.BacksolveAdjoint` is reported (Diffrax returns its
gradient as if it were good), and the solver/adjoint pairs whose gradient Diffrax gets wrong
without a warning are refused before anything is solved.
"""

import functools as ft
from collections.abc import Callable
from typing import Any

import diffrax
import equinox as eqx
import jax
from jax.custom_derivatives import SymbolicZero
from jaxtyping import Array

from ._diffeq_report import FIX, is_sub, poison


_MSG_IMPLICIT_CONTROLLER = (
    "`{where}` with `adjoint=diffrax.ImplicitAdjoint()` checks that the solve ended at a steady "
    "state with the `rtol`/`atol` of an adaptive step size controller, but got "
    "`stepsize_controller={controller}`. Fix: pass e.g. "
    "`stepsize_controller=diffrax.PIDController(rtol=1e-6, atol=1e-6)`."
)
_MSG_BACKWARD = (
    "`{where}`: the backward (adjoint) solve of `diffrax.BacksolveAdjoint` failed (max steps, "
    "step size collapse or a failed implicit step), so its gradient would be garbage. Stiff "
    "problems are often unstable backwards in time. Fix: use "
    "`adjoint=diffrax.RecursiveCheckpointAdjoint()` (exact and memory-light), give the "
    "backward solve a stiff solver (`diffrax.BacksolveAdjoint(solver=diffrax.Kvaerno5())`) or "
    "more `max_steps`; " + FIX
)
_MSG_REVERSIBLE_BACKSOLVE = (
    "`{where}` with `solver=diffrax.ReversibleHeun()` and `adjoint=diffrax.BacksolveAdjoint()` "
    "saves at {n} times, some between the ends of the span: Diffrax then restarts the backward "
    "solve at each saved time from the saved state but keeps ReversibleHeun's auxiliary "
    "state, which breaks its exact reversibility, and the gradient comes back wrong without a "
    "warning (31% off central differences on a small SDE). Fix: use "
    "`adjoint=diffrax.RecursiveCheckpointAdjoint()` (exact, memory-light), or solve over the "
    "span alone (`ts = jnp.array([t0, t1])`, or `saveat=diffrax.SaveAt(t1=True)`), or keep "
    "Backsolve with `solver=diffrax.Heun()`."
)

_MSG_BACKSOLVE_TS = (
    "`{where}` with `adjoint=diffrax.BacksolveAdjoint()` cannot differentiate with respect to "
    "`ts`: Diffrax's backward solve differentiates only the vector field, the initial state "
    "and `args` (it raised \"Unexpected tangent ... cannot be autodifferentiated\"). Fix: "
    "use `adjoint=diffrax.RecursiveCheckpointAdjoint()` (or `DirectAdjoint()`; "
    "`ForwardMode()` for `jax.jvp`) to differentiate the times, or hold them fixed "
    "(`jax.lax.stop_gradient(ts)`)."
)
_MSG_FORWARD = (
    "`{where}` with `adjoint=diffrax.{adjoint}()` differentiates in reverse mode only "
    "(`jax.grad`, `jax.vjp`, `jax.jacrev`), but was differentiated in forward mode "
    "(`jax.jvp`, `jax.jacfwd`, `jax.linearize`; JAX: \"can't apply forward-mode autodiff (jvp) "
    "to a custom_vjp function\"). Fix: `adjoint=diffrax.ForwardMode()` for forward mode (or "
    "`diffrax.DirectAdjoint()`, which does both, slower), or differentiate with `jax.grad` / "
    "`jax.jacrev`."
)


def diffeqsolve(where: str, **kwargs: Any) -> diffrax.Solution:
    """`diffrax.diffeqsolve(**kwargs)`, with forward-mode differentiation of a reverse-mode
    adjoint our `TypeError` (PITFALLS, Diffrax: `RecursiveCheckpointAdjoint` cannot be
    differentiated in forward mode; raised here, while tracing the solve)."""
    try:
        return diffrax.diffeqsolve(**kwargs)
    except TypeError as e:
        adjoint = kwargs["adjoint"]
        # Under `ForwardMode`/`DirectAdjoint` the `custom_vjp` is the user's, inside the field.
        both = isinstance(adjoint, diffrax.ForwardMode | diffrax.DirectAdjoint)
        if both or "forward-mode autodiff (jvp) to a custom_vjp" not in str(e):
            raise
        adjoint = ("BacksolveAdjoint" if isinstance(adjoint, diffrax.BacksolveAdjoint) else
                   type(adjoint).__name__)  # fmt: skip
        raise TypeError(_MSG_FORWARD.format(where=where, adjoint=adjoint)) from e


@ft.partial(jax.custom_jvp, nondiff_argnums=(1,))
def _fixed_times(ts: Array, where: str) -> Array:
    return ts


@ft.partial(_fixed_times.defjvp, symbolic_zeros=True)
def _fixed_times_jvp(where: str, primals: tuple, tangents: tuple) -> tuple[Array, Any]:
    if not isinstance(tangents[0], SymbolicZero):
        raise TypeError(_MSG_BACKSOLVE_TS.format(where=where))
    return primals[0], tangents[0]


def backsolve_times(ts: Array, adjoint: diffrax.AbstractAdjoint, where: str) -> Array:
    """`ts`, with a derivative that is our error under `BacksolveAdjoint` (traced, so free)."""
    if isinstance(adjoint, diffrax.BacksolveAdjoint):
        return _fixed_times(ts, where)
    return ts


class _HonestBacksolve(diffrax.BacksolveAdjoint):
    """`diffrax.BacksolveAdjoint` whose backward solves report failure.

    Diffrax runs the backward `diffeqsolve` with the forward call's `throw` (`_adjoint.py`,
    `_loop_backsolve_bwd`), and with `SaveAt(t1=True)` a failed solve still returns the last
    state it reached: the gradient comes back finite and wrong (6.5e296 on a stiff Robertson
    UDE, issue 15). Here each backward solve's `result` is checked: an error under `throw`,
    NaN cotangents otherwise.
    """

    where: str = eqx.field(static=True)
    throw: bool = eqx.field(static=True)

    def __init__(self, kwargs: dict[str, Any], where: str, throw: bool):
        self.kwargs = kwargs
        self.where = where
        self.throw = throw

    @property
    def _diffeqsolve(self) -> Callable[..., diffrax.Solution]:
        # Not `throw=`: Diffrax passes its own `throw` to this call, which would override ours.
        return ft.partial(_backward_solve, sb_where=self.where, sb_throw=self.throw)


def _backward_solve(*, sb_where: str, sb_throw: bool, **kwargs: Any) -> diffrax.Solution:
    sol = diffrax.diffeqsolve(**{**kwargs, "throw": False})
    failed = ~diffrax.is_okay(sol.result)
    if sb_throw:
        return eqx.error_if(sol, failed, _MSG_BACKWARD.format(where=sb_where))
    return eqx.tree_at(lambda s: s.ys, sol, poison(sol.ys, failed))


def honest_adjoint(adjoint: diffrax.AbstractAdjoint, controller: Any, where: str,
                   throw: bool) -> diffrax.AbstractAdjoint:
    """The adjoint to hand to Diffrax: Backsolve with checked backward solves, others as given."""
    if isinstance(adjoint, diffrax.ImplicitAdjoint) and not isinstance(
        controller, diffrax.AbstractAdaptiveStepSizeController
    ):
        raise ValueError(_MSG_IMPLICIT_CONTROLLER.format(where=where, controller=controller))
    if type(adjoint) is diffrax.BacksolveAdjoint:
        return _HonestBacksolve(dict(adjoint.kwargs), where, throw)
    return adjoint


def check_reversible_backsolve(solver: Any, adjoint: Any, saveat: diffrax.SaveAt,
                               from_t0: bool, where: str) -> None:
    """Refuse `ReversibleHeun` + `BacksolveAdjoint` with saved times inside the span.

    Diffrax 0.7.2 `_loop_backsolve_bwd` runs one backward solve per pair of saved times,
    each restarted from the forward pass's saved `y` but with the solver state carried over
    from the previous backward solve: for `ReversibleHeun` that state is the auxiliary `z`
    of its reversible step, which then no longer belongs to `y`. With one backward solve it
    is exact (measured 7e-8 against central differences; 31% off with 6 saved times on an
    SDE, 0.4% on an ODE, where `Heun` gives 2e-8). `from_t0`: the saved `ts` start at `t0`
    (ours do), so their first backward solve is empty.
    """
    if not (isinstance(solver, diffrax.ReversibleHeun)
            and isinstance(adjoint, diffrax.BacksolveAdjoint)):
        return
    sub = saveat.subs
    if not is_sub(sub) or sub.ts is None:
        return  # `t0`/`t1` only: one backward solve
    n = len(sub.ts) + int(sub.t0) + int(sub.t1)
    if n > (2 if from_t0 else 1):
        raise ValueError(_MSG_REVERSIBLE_BACKSOLVE.format(where=where, n=n))
