"""Failures of a solve, reported: raised with our remedy, or as values that cannot pass for good.

`sb.NeuralODE`, `sb.NeuralSDE` and `sb.NeuralCDE` all solve with `diffeqsolve(throw=False)` and
turn Diffrax's `result` into either an error with our remedy (`throw=True`) or `NaN` / `inf`
values with `NaN` derivatives (`throw=False`), so a loss turns non-finite and `sb.minimize`
keeps the last good `theta`.
"""

import functools as ft
from typing import Any, cast

import diffrax
import equinox as eqx
import jax
import jax.numpy as jnp
import jax.tree_util as jtu
from jaxtyping import Array, PyTree

from ._diffeq_inputs import ORDERS


FIX = (
    "or pass `throw=False` so training sees a non-finite loss and `sb.minimize` keeps the last "
    "good `theta`."
)
_MSG_INPUTS = (
    "`{where}` got non-finite values (NaN or inf) in `theta` or the initial state (or in "
    "`args` or `coeffs`), so there is nothing to solve. Fix: check where they came from (a "
    "previous step that diverged, a NaN in the data); " + FIX
)
_MSG_TIMES = (
    "`{where}` got non-finite values in `ts` (NaN, or an infinite time other than a "
    "steady-state end), so there is no time span to solve over. Every time must be finite; the "
    "one exception is `ts[-1] = jnp.inf` for `sb.NeuralODE(..., event=diffrax.Event("
    "diffrax.steady_state_event()), saveat=diffrax.SaveAt(t1=True))`, which stops at the "
    "steady state (the default `saveat` would save at `t = inf`, never reached). Fix: check "
    "where `ts` came from, e.g. `ts = jnp.linspace(0.0, 1.5, 30)`, or pass that `saveat`; " + FIX
)
_MSG_FIELD = (
    "`{where}`: the vector field returned non-finite values (NaN or inf) at the initial state "
    "`y0`, at `t = ts[0]`, with this `theta`. Fix: check the network and any physics terms "
    "(`log`/`sqrt` of negative values, division by zero) at `y0`; " + FIX
)
_MSG_MAX_STEPS = (
    "`{where}`: Diffrax reached `max_steps` before the last time in `ts`. The dynamics at this "
    "`theta` are probably stiff or blowing up. Fix: raise `max_steps=`, loosen "
    "`stepsize_controller=` tolerances or use a stiff solver (e.g. `diffrax.Kvaerno5()`); " + FIX
)
_MSG_DT_MIN = (
    "`{where}`: the step size collapsed to `dtmin` of the step size controller. Fix: use a stiff "
    "solver (e.g. `solver=diffrax.Kvaerno5()`), lower `dtmin`, " + FIX
)
_MSG_FAILED = (
    "`{where}`: the Diffrax solve failed (an implicit solver's nonlinear solve or the step size "
    "controller gave up, or an event could not be located). Fix: change `solver=` or "
    "`stepsize_controller=`, " + FIX
)
_MSG_ORDER = (
    "`{where}` got `ts` out of order: {rule}. Diffrax would stop with its own error even "
    "under `throw=False`. Fix: sort them (`jnp.sort(ts)`), e.g. "
    "`ts = jnp.linspace(0.0, 1.5, 30)`; " + FIX
)
_MSG_BLEW_UP = (
    "`{where}`: the solution turned non-finite (NaN or inf) during the solve, although Diffrax "
    "reported success: with constant steps (`diffrax.ConstantStepSize()`, or any SDE) no step "
    "is ever rejected, so a blow-up or a `dt0` too large for the dynamics overflows. Fix: a "
    "smaller `dt0`, an adaptive `stepsize_controller=diffrax.PIDController(...)` (ODEs, CDEs), "
    "or check the dynamics at this `theta`; " + FIX
)
_MSG_NOT_STEADY = (
    "`{where}` with `adjoint=diffrax.ImplicitAdjoint()`: the solution at the final time is not a "
    "steady state (`norm(f(y1)) >= atol + rtol * norm(y1)` with the tolerances of "
    "`stepsize_controller`), so the implicit-function-theorem gradient would be wrong. Fix: "
    "stop at the steady state with `event=diffrax.Event(diffrax.steady_state_event())` (and a "
    "large final time), or use another adjoint; " + FIX
)


def all_finite(tree: PyTree[Any]) -> Array:
    """One boolean: every inexact array leaf of `tree` is finite."""
    leaves = [jnp.all(jnp.isfinite(x)) for x in jtu.tree_leaves(tree) if eqx.is_inexact_array(x)]
    return jnp.all(jnp.stack(leaves)) if leaves else jnp.array(True)


@ft.partial(jax.custom_jvp, nondiff_argnums=(3,))
def _spoil(x: Array, bad: Array, anchor: tuple[Array, ...], fill: float) -> Array:
    """`where(bad, fill, x)`, whose derivative is NaN where `bad`, also through `anchor`.

    A plain `where` has a zero derivative there: the loss would turn non-finite and the
    gradient stay finite, so a caller that checks the gradient would not see the failure.
    `anchor` (the inputs of the solve) carries the NaN to them in reverse mode: the rows a
    failed solve never reached are Diffrax's constant `inf` fill, so a NaN cotangent on `x`
    alone would end at that constant and the gradient would stay finite (measured: an `inf`
    loss with gradient 2.0 from `RecursiveCheckpointAdjoint` and `DirectAdjoint`).
    """
    del anchor
    return jnp.where(bad, jnp.array(fill, x.dtype), x)


@_spoil.defjvp
def _spoil_jvp(fill: float, primals: tuple, tangents: tuple) -> tuple[Array, Array]:
    x, bad, anchor = primals
    dx, _, d_anchor = tangents
    nan, zero, one = (jnp.array(v, dx.dtype) for v in (jnp.nan, 0, 1))
    # Linear in `dx` and `d_anchor`, so its transpose (reverse mode) is NaN where `bad` too,
    # and exactly zero for the anchor where nothing is `bad`.
    real = jnp.real(dx).dtype  # the anchor may mix dtypes (a hybrid field's float32 `args`)
    s = sum((jnp.sum(jnp.real(d)).astype(real) for d in d_anchor), jnp.zeros((), real))
    spread = jnp.where(bad, nan, zero) * s.astype(dx.dtype)
    return _spoil(x, bad, anchor, fill), dx * jnp.where(bad, nan, one) + spread


def poison(tree: PyTree[Any], bad: Array, fill: float = jnp.nan,
           anchor: PyTree[Any] = None) -> PyTree[Any]:
    """Every inexact leaf of `tree` set to `fill` where `bad` (per row if `bad` is 1-D), with
    NaN derivatives there, also with respect to the inexact leaves of `anchor`."""
    anchors = tuple(x for x in jtu.tree_leaves(anchor) if eqx.is_inexact_array(x))

    def one(x):
        if not eqx.is_inexact_array(x):
            return x
        mask = jnp.reshape(bad, bad.shape + (1,) * (x.ndim - bad.ndim))
        return _spoil(x, mask, anchors, fill)

    return jtu.tree_map(one, tree)


def is_sub(x: Any) -> bool:
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


def _poison_failed(sol: diffrax.Solution, saveat: diffrax.SaveAt, failed: Array,
                   anchor: PyTree[Any]) -> PyTree[Any]:
    def one(sub, ts, ys):
        return poison(ys, _failed_rows(sub, ts, failed), jnp.inf, anchor)

    return jtu.tree_map(one, saveat.subs, sol.ts, sol.ys, is_leaf=is_sub)


def _rows_blew_up(ts: Array, ys: PyTree[Any]) -> Array:
    """Some row of `ys` whose time in `ts` was reached (is finite) is not finite."""
    rows = [jnp.isfinite(y).reshape(y.shape[0], -1).all(axis=1)
            for y in jtu.tree_leaves(ys) if eqx.is_inexact_array(y)]
    if not rows:
        return jnp.array(False)
    return jnp.any(jnp.isfinite(ts) & ~jnp.all(jnp.stack(rows), axis=0))


def _blew_up(sol: diffrax.Solution, saveat: diffrax.SaveAt) -> Array:
    """A saved value that Diffrax reached is not finite although it reports success.

    With constant steps nothing rejects a step: an explicit solver overflows to `inf`/NaN and
    Diffrax says `successful` (measured: `sb.NeuralSDE` with `Euler` on `dy = 10 y^2 dt` gave
    `[1, nan, nan]` under `throw=True`; a NaN `dt0` gave all `inf`). Unreached rows (`ts`
    of `inf`: after an event, unused `steps` slots) are Diffrax's fill, not a result; so are
    the unused steps of dense output, whose step `i` ends at `interpolation.ts[i + 1]`.
    """
    found = [jnp.array(False)]
    if sol.ys is not None:
        structure = jtu.tree_structure(saveat.subs, is_leaf=is_sub)
        found += [_rows_blew_up(ts, ys) for ts, ys in
                  zip(jtu.tree_leaves(sol.ts), structure.flatten_up_to(sol.ys))]
    interp = sol.interpolation
    if isinstance(interp, diffrax.DenseInterpolation):
        found.append(_rows_blew_up(interp.ts[1:], interp.infos))
    return jnp.any(jnp.stack(found))


def _poison_dense(sol: diffrax.Solution, bad: Array, anchor: PyTree[Any]) -> diffrax.Solution:
    # A dense-only solution has `ys=None` (`eqx.tree_at` cannot replace a `None`): the failure
    # must show in what the user reads, `sol.evaluate(t)`, which is built from `infos`.
    interp = sol.interpolation
    if not isinstance(interp, diffrax.DenseInterpolation):
        return sol
    return eqx.tree_at(lambda s: (s.interpolation.infos, s.interpolation.y0_if_trivial), sol,
                       (poison(interp.infos, bad, anchor=anchor),
                        poison(interp.y0_if_trivial, bad, anchor=anchor)))


def report(sol: diffrax.Solution, saveat: diffrax.SaveAt, where: str, throw: bool, *,
           anchor: PyTree[Any], bad_inputs: Array, bad_ts: Array, bad_order: Array,
           order: str, bad_field: Array, not_steady: Array | None = None) -> diffrax.Solution:
    """Every failure of one solve, most basic cause first: raised (`throw`), or as NaN (the
    whole solution is meaningless) or `inf` (a failed solve: see `_failed_rows`) values,
    with NaN derivatives (also with respect to `anchor`, the solve's inputs), in `ys` and in
    dense output. `order` names the rule `bad_order` broke (`ORDERS`)."""
    result = sol.result
    blew_up = _blew_up(sol, saveat) & diffrax.is_okay(result)
    no_steady = jnp.array(False) if not_steady is None else not_steady
    causes = [  # (condition, message), most basic first
        (bad_inputs, _MSG_INPUTS), (bad_ts, _MSG_TIMES),
        (bad_order, _MSG_ORDER.replace("{rule}", ORDERS[order])), (bad_field, _MSG_FIELD),
        (result == diffrax.RESULTS.max_steps_reached, _MSG_MAX_STEPS),
        (result == diffrax.RESULTS.dt_min_reached, _MSG_DT_MIN),
        (~diffrax.is_okay(result), _MSG_FAILED), (blew_up, _MSG_BLEW_UP),
        (no_steady, _MSG_NOT_STEADY),
    ]  # fmt: skip
    meaningless = bad_inputs | bad_ts | bad_order | bad_field | no_steady
    failed = ~diffrax.is_okay(result) | blew_up
    if throw:
        # Ranked most basic = highest, -1 for no failure: under `vmap` Equinox shows the
        # message of the largest index across the batch (`branched_error_if`), so a member
        # that did not fail must not win (it named `ImplicitAdjoint`, the default, for a
        # `max_steps` failure of another member).
        n = len(causes)
        rank = jnp.select([c for c, _ in causes], list(range(n - 1, -1, -1)), default=-1)
        messages = tuple(m.format(where=where) for _, m in reversed(causes))
        return eqx.branched_error_if(sol, meaningless | failed, rank, messages)
    if sol.ys is not None:
        ys = poison(_poison_failed(sol, saveat, failed, anchor), meaningless, anchor=anchor)
        sol = eqx.tree_at(lambda s: s.ys, sol, ys)
    return _poison_dense(sol, meaningless, anchor)


def not_steady(sol: diffrax.Solution, terms: Any, solver: Any, controller: Any,
               args: Any) -> Array:
    """`ImplicitAdjoint` assumes `f(y1) = 0`; the same test as `diffrax.steady_state_event`."""
    y1 = jtu.tree_map(lambda y: y[-1], sol.ys)
    cond = diffrax.steady_state_event()
    steady = cond(cast(Array, sol.ts)[-1], y1, args, terms=terms, solver=solver,
                  stepsize_controller=controller)
    return cast(Array, ~jax.lax.stop_gradient(steady))
