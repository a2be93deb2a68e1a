"""What every neural differential equation shares: failures that are reported, adjoints that
never return a gradient from a failed backward solve, and inputs checked before Diffrax sees them.

`sb.NeuralODE`, `sb.NeuralSDE` and `sb.NeuralCDE` all solve with `diffeqsolve(throw=False)` and
turn Diffrax's `result` into either an error with our remedy (`throw=True`) or `NaN` values
(`throw=False`), so a loss turns non-finite and `sb.minimize` keeps the last good `theta`.
"""

import functools as ft
from collections.abc import Callable
from typing import Any, cast

import diffrax
import equinox as eqx
import jax
import jax.numpy as jnp
import jax.tree_util as jtu
import numpy as np
from jaxtyping import Array, PyTree

from ._precision import guard_x64


_FIX = (
    "or pass `throw=False` so training sees a non-finite loss and `sb.minimize` keeps the last "
    "good `theta`."
)
_MSG_INPUTS = (
    "`{where}` got non-finite values (NaN or inf) in `theta` or the initial state (or in "
    "`args` or `coeffs`), so there is nothing to solve. Fix: check where they came from (a "
    "previous step that diverged, a NaN in the data); " + _FIX
)
_MSG_TIMES = (
    "`{where}` got non-finite values in `ts` (NaN, or an infinite time other than a "
    "steady-state end), so there is no time span to solve over. Every time must be finite; the "
    "one exception is `ts[-1] = jnp.inf` for `sb.NeuralODE(..., event=diffrax.Event("
    "diffrax.steady_state_event()))`, which stops at the steady state. Fix: check where `ts` "
    "came from, e.g. `ts = jnp.linspace(0.0, 1.5, 30)`; " + _FIX
)
_MSG_FIELD = (
    "`{where}`: the vector field returned non-finite values (NaN or inf) at the initial state "
    "`y0`, at `t = ts[0]`, with this `theta`. Fix: check the network and any physics terms "
    "(`log`/`sqrt` of negative values, division by zero) at `y0`; " + _FIX
)
_MSG_MAX_STEPS = (
    "`{where}`: Diffrax reached `max_steps` before the last time in `ts`. The dynamics at this "
    "`theta` are probably stiff or blowing up. Fix: raise `max_steps=`, loosen "
    "`stepsize_controller=` tolerances or use a stiff solver (e.g. `diffrax.Kvaerno5()`); " + _FIX
)
_MSG_DT_MIN = (
    "`{where}`: the step size collapsed to `dtmin` of the step size controller. Fix: use a stiff "
    "solver (e.g. `solver=diffrax.Kvaerno5()`), lower `dtmin`, " + _FIX
)
_MSG_FAILED = (
    "`{where}`: the Diffrax solve failed (an implicit solver's nonlinear solve or the step size "
    "controller gave up, or an event could not be located). Fix: change `solver=` or "
    "`stepsize_controller=`, " + _FIX
)
_MSG_NOT_STEADY = (
    "`{where}` with `adjoint=diffrax.ImplicitAdjoint()`: the solution at the final time is not a "
    "steady state (`norm(f(y1)) >= atol + rtol * norm(y1)` with the tolerances of "
    "`stepsize_controller`), so the implicit-function-theorem gradient would be wrong. Fix: "
    "stop at the steady state with `event=diffrax.Event(diffrax.steady_state_event())` (and a "
    "large final time), or use another adjoint; " + _FIX
)
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
    "more `max_steps`; " + _FIX
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
_MSG_DTYPE = (
    "`{where}` expected `{state}` and `ts` of the dtype of `theta` "
    "({theta}), but got `{state}` {y0} and `ts` {ts}. Mixing precisions inside the vector field "
    "would promote (or fail under strict promotion). Fix: cast them, e.g. "
    "`{state}.astype(theta.dtype)`, or build `theta` in the precision you want "
    "(`sb.flat(model, dtype=...)`)."
)
_MSG_THETA = (
    "`{where}` expected `theta` to be one 1-D floating vector (e.g. "
    "`fm.theta0`), but got shape {shape} and dtype {dtype}. Fix: pass the flat vector; for an "
    "ensemble of vectors use `jax.vmap` over `theta` (`in_axes=0` for `theta` only)."
)
_MSG_TS = (
    "`{where}` expected `ts` to be a 1-D array of at least two "
    "increasing times (the first is the time of `{state}`), but got shape {shape}. Fix: pass e.g. "
    "`ts = jnp.linspace(0.0, 1.5, 30)`."
)
_MSG_MAX_STEPS_ARG = (
    "`{where}` expected `max_steps` to be a positive int (the most solver steps per solve), but "
    "got {got!r}. Fix: pass e.g. `max_steps=4096`."
)


def check_max_steps(max_steps: Any, where: str) -> int:
    """`max_steps` as a positive int; Diffrax itself fails obscurely on 0 and -1."""
    if isinstance(max_steps, bool | np.bool_) or not isinstance(max_steps, int | np.integer):
        raise ValueError(_MSG_MAX_STEPS_ARG.format(where=where, got=max_steps))
    if max_steps < 1:
        raise ValueError(_MSG_MAX_STEPS_ARG.format(where=where, got=max_steps))
    return int(max_steps)


def as_arrays(where: str, **named: Any) -> tuple[Array, ...]:
    """The one x64 guard, then `jnp.asarray`, for each named input, in order."""
    for name, value in named.items():
        guard_x64(value, f"`{where}`", f"`{name}`")
    return tuple(jnp.asarray(value) for value in named.values())


def all_finite(tree: PyTree[Any]) -> Array:
    """One boolean: every inexact array leaf of `tree` is finite."""
    leaves = [jnp.all(jnp.isfinite(x)) for x in jtu.tree_leaves(tree) if eqx.is_inexact_array(x)]
    return jnp.all(jnp.stack(leaves)) if leaves else jnp.array(True)


@ft.partial(jax.custom_jvp, nondiff_argnums=(2,))
def _spoil(x: Array, bad: Array, fill: float) -> Array:
    """`where(bad, fill, x)`, whose derivative is NaN where `bad`.

    A plain `where` has a zero derivative there: the loss would turn non-finite and the
    gradient stay finite, so a caller that checks the gradient would not see the failure.
    """
    return jnp.where(bad, jnp.array(fill, x.dtype), x)


@_spoil.defjvp
def _spoil_jvp(fill: float, primals: tuple, tangents: tuple) -> tuple[Array, Array]:
    x, bad = primals
    dx = tangents[0]
    # Linear in `dx`, so its transpose (reverse mode) is NaN where `bad` too.
    return _spoil(x, bad, fill), dx * jnp.where(bad, jnp.array(jnp.nan, dx.dtype),
                                                jnp.array(1, dx.dtype))


def _poison(tree: PyTree[Any], bad: Array, fill: float = jnp.nan) -> PyTree[Any]:
    """Every inexact leaf of `tree` set to `fill` where `bad` (per row if `bad` is 1-D)."""

    def one(x):
        if not eqx.is_inexact_array(x):
            return x
        mask = jnp.reshape(bad, bad.shape + (1,) * (x.ndim - bad.ndim))
        return _spoil(x, mask, fill)

    return jtu.tree_map(one, tree)


def _is_sub(x: Any) -> bool:
    return isinstance(x, diffrax.SubSaveAt)


def _failed_rows(sub: diffrax.SubSaveAt, ts: Array, failed: Array) -> Array:
    """The rows of one saved output that a failed forward solve must not leave finite.

    Diffrax leaves the rows it never reached at `inf` (times after the failure, unused `steps`
    slots). But the row saved by `t1=True` holds the state *at the failure time* (issue: a
    blow-up at t=0.998 < t1=2 came back as a finite `y(t1)`), as does the last row of
    `steps=True`, and `ts` that all lie before the failure are all finite: in each case the
    last row saved stands for the end of the span it did not reach, and becomes `inf` too.
    """
    reached = jnp.isfinite(ts)
    last = jnp.arange(ts.shape[0]) == jnp.sum(reached) - 1
    ends = bool(sub.t1 or sub.steps)
    return failed & (~reached | (last & jnp.logical_or(ends, jnp.all(reached))))


def _poison_failed(sol: diffrax.Solution, saveat: diffrax.SaveAt, failed: Array) -> PyTree[Any]:
    if sol.ys is None:
        return None
    return jtu.tree_map(lambda sub, ts, ys: _poison(ys, _failed_rows(sub, ts, failed), jnp.inf),
                        saveat.subs, sol.ts, sol.ys, is_leaf=_is_sub)


def _poison_dense(sol: diffrax.Solution, bad: Array) -> diffrax.Solution:
    # A dense-only solution has `ys=None` (`eqx.tree_at` cannot replace a `None`): the failure
    # must show in what the user reads, `sol.evaluate(t)`, which is built from `infos`.
    interp = sol.interpolation
    if not isinstance(interp, diffrax.DenseInterpolation):
        return sol
    return eqx.tree_at(lambda s: (s.interpolation.infos, s.interpolation.y0_if_trivial), sol,
                       (_poison(interp.infos, bad), _poison(interp.y0_if_trivial, bad)))


def report(sol: diffrax.Solution, saveat: diffrax.SaveAt, where: str, throw: bool, *,
           bad_inputs: Array, bad_ts: Array, bad_field: Array,
           not_steady: Array | None = None) -> diffrax.Solution:
    """Every failure of one solve, most basic cause first: raised (`throw`), or as NaN (the
    whole solution is meaningless) or `inf` (a failed solve: see `_failed_rows`) values,
    with NaN derivatives, in `ys` and in dense output."""
    result = sol.result
    index = jnp.select(
        [bad_inputs, bad_ts, bad_field, result == diffrax.RESULTS.max_steps_reached,
         result == diffrax.RESULTS.dt_min_reached, ~diffrax.is_okay(result)],
        [0, 1, 2, 3, 4, 5], default=6,
    )  # fmt: skip
    meaningless = bad_inputs | bad_ts | bad_field
    if not_steady is not None:
        meaningless = meaningless | not_steady
    failed = ~diffrax.is_okay(result)
    messages = (_MSG_INPUTS, _MSG_TIMES, _MSG_FIELD, _MSG_MAX_STEPS, _MSG_DT_MIN, _MSG_FAILED,
                _MSG_NOT_STEADY)
    if throw:
        messages = tuple(m.format(where=where) for m in messages)
        return eqx.branched_error_if(sol, meaningless | failed, index, messages)
    if sol.ys is not None:
        ys = _poison(_poison_failed(sol, saveat, failed), meaningless)
        sol = eqx.tree_at(lambda s: s.ys, sol, ys)
    return _poison_dense(sol, meaningless)


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
    where = sb_where
    if sb_throw:
        return eqx.error_if(sol, failed, _MSG_BACKWARD.format(where=where))
    return eqx.tree_at(lambda s: s.ys, sol, _poison(sol.ys, failed))


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


def not_steady(sol: diffrax.Solution, terms: Any, solver: Any, controller: Any,
               args: Any) -> Array:
    """`ImplicitAdjoint` assumes `f(y1) = 0`; the same test as `diffrax.steady_state_event`."""
    y1 = jtu.tree_map(lambda y: y[-1], sol.ys)
    cond = diffrax.steady_state_event()
    steady = cond(cast(Array, sol.ts)[-1], y1, args, terms=terms, solver=solver,
                  stepsize_controller=controller)
    return cast(Array, ~jax.lax.stop_gradient(steady))


def bad_times(ts: Array, steady_end: bool) -> Array:
    """`ts` not all finite; `ts[-1] = +inf` is allowed when the solve stops at an `event`."""
    finite = jnp.isfinite(ts)
    if steady_end:
        finite = finite.at[-1].set(finite[-1] | (ts[-1] == jnp.inf))
    return ~jnp.all(finite)


def placeholder_times(ts: Array, bad: Array) -> Array:
    """Diffrax rejects a NaN `ts` (and runs out of steps from `-inf`) even under
    `throw=False`: solve on placeholder times instead and report the bad `ts` as ours."""
    return jnp.where(bad, jnp.arange(ts.shape[0], dtype=ts.dtype), ts)


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
    if not _is_sub(sub) or sub.ts is None:
        return  # `t0`/`t1` only: one backward solve
    n = len(sub.ts) + int(sub.t0) + int(sub.t1)
    if n > (2 if from_t0 else 1):
        raise ValueError(_MSG_REVERSIBLE_BACKSOLVE.format(where=where, n=n))


def progress_meter(progress: bool) -> diffrax.AbstractProgressMeter:
    return diffrax.TqdmProgressMeter() if progress else diffrax.NoProgressMeter()


def check_inputs(theta: Array, y0: Array, ts: Array, where: str, state: str = "y0") -> None:
    """Trace-time checks: shapes and dtypes are static, so this costs nothing per call."""
    if theta.ndim != 1 or not jnp.issubdtype(theta.dtype, jnp.inexact):
        raise TypeError(_MSG_THETA.format(where=where, shape=theta.shape, dtype=theta.dtype))
    if ts.ndim != 1 or ts.shape[0] < 2:
        raise ValueError(_MSG_TS.format(where=where, state=state, shape=ts.shape))
    if not (y0.dtype == theta.dtype == ts.dtype):
        raise TypeError(_MSG_DTYPE.format(where=where, state=state, theta=theta.dtype,
                                          y0=y0.dtype, ts=ts.dtype))


def shapes(tree: Any) -> str:
    return str(jtu.tree_map(lambda x: f"{x.dtype}{list(x.shape)}", tree))
