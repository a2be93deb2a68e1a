"""Neural CDEs: `dz = fm(theta, z) dX(t)`, with `X` a cubic Hermite interpolation of the data.

As in Diffrax's neural CDE example (Kidger et al. 2020): the control is
`diffrax.CubicInterpolation(ts, diffrax.backward_hermite_coefficients(ts, xs))` and the
equation is solved as the ODE `dz/dt = fm(theta, z) @ dX/dt` (`ControlTerm(...).to_ode()`).
Compute the coefficients once, outside training, and pass them like data.
"""

from collections.abc import Callable
from typing import Any, cast

import diffrax
import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, ArrayLike, Inexact, PyTree, Real

from ._custom_types import ThetaLike, Validated
from ._diffeq import (
    all_finite,
    as_arrays,
    backsolve_times,
    bad_times,
    check_dt0,
    check_inputs,
    check_max_steps,
    check_reversible_backsolve,
    diffeqsolve,
    field_shape,
    honest_adjoint,
    out_of_order,
    placeholder_times,
    report,
    shapes,
)
from ._diffeq_report import FIX
from ._network_field import network_parts


_WHERE = "sb.NeuralCDE(...)(theta, z0, ts, coeffs)"

_MSG_FIELD = (
    "`sb.NeuralCDE(...)(theta, z0, ts, coeffs)`: the vector field must return a matrix of shape "
    "`(*z.shape, channels)` = {want} (one column per channel of the control), but it returned "
    "{got}. Fix: e.g. `fm(theta, z).reshape(hidden, channels)`."
)
_MSG_NO_YS = (
    "`sb.NeuralCDE(..., saveat={saveat})` saves no values: a CDE is called for its path "
    "`zs`, and a dense-only `SaveAt` gives none (the call returned `None`). Fix: add the "
    "times to save, e.g. `diffrax.SaveAt(ts=ts, dense=True)` or `diffrax.SaveAt(t1=True)`, "
    "or leave `saveat=None` (every time in `ts`)."
)
_MSG_IMPLICIT = (
    "`sb.NeuralCDE(..., adjoint=diffrax.ImplicitAdjoint())` is not supported: "
    "`ImplicitAdjoint` differentiates a steady state (`fm(theta, z1) @ dX/dt(t1) = 0`) by the "
    "implicit function theorem, which a CDE driven by data reaches only where the control "
    "stops moving, and `sb.NeuralCDE` has no `event=` to stop there; at any other final state "
    "its gradient is wrong without a warning (7x off on a small CDE). Fix: use "
    "`adjoint=diffrax.RecursiveCheckpointAdjoint()` (the default), `diffrax.DirectAdjoint()`, "
    "`diffrax.BacksolveAdjoint()` or `diffrax.ForwardMode()`."
)
_MSG_COEFFS = (
    "`sb.NeuralCDE(...)(theta, z0, ts, coeffs)` expected `coeffs` from "
    "`diffrax.backward_hermite_coefficients(ts, xs)`: four arrays of shape "
    "`(len(ts) - 1, channels)` in the dtype of `theta`, but got {got}. Fix: compute them once "
    "from the same `ts` and data `xs` of shape `(len(ts), channels)`."
)
_MSG_KNOTS = (
    "`sb.NeuralCDE(...)(theta, z0, ts, coeffs)`: `coeffs` do not fit `ts`: the cubic of a "
    "segment does not end where the next one starts (at a knot `ts[i]`, off by more than "
    "`sqrt(eps)` relative), so the control `X(t)` would jump there and its derivative, which "
    "drives the CDE, be wrong without a warning. They were computed from other times (e.g. "
    "`ts` rescaled), are in another order than `(d, c, b, a)`, or come from elsewhere. Fix: "
    "`coeffs = diffrax.backward_hermite_coefficients(ts, xs)` with the same `ts` as the call; "
    + FIX
)


class NeuralCDE(eqx.Module):
    """A neural CDE `dz = fm(theta, z) dX(t)` as a plain function `cde(theta, z0, ts, coeffs)`.

    `X` is the cubic Hermite interpolation (backward differences) of data observed at `ts`,
    given by its `coeffs = diffrax.backward_hermite_coefficients(ts, xs)`. The vector field
    `fm(theta, z)` returns a `(*z.shape, channels)` matrix. Everything else (solver, adjoint,
    `saveat=`, paths of flat models, failure handling) is as for
    [`sb.NeuralODE`][sciml_bridge.NeuralODE], except that a plain `diffrax.PIDController` gets
    `jump_ts=ts`: the solver steps onto every knot of the interpolation, where the control's
    derivatives jump. That is more accurate and costs steps (1.4x the time per training step
    on Diffrax's spiral example); to take Diffrax's own steps, pass the controller wrapped as
    `diffrax.ClipStepSizeController(pid)`, which is left alone. For a batch of series use
    `jax.vmap(cde, in_axes=(None, 0, None, 0))`.

    Pass the flat model itself as `fm` (its module doing any reshape, as Diffrax's example
    does), not a lambda around it: a flat model is rebuilt into its network once per solve,
    a lambda slices `theta` at every solver stage (1.4x slower per step on the spiral).

    !!! example

        ```python
        import diffrax, jax, jax.numpy as jnp
        import sciml_bridge as sb

        jax.config.update("jax_enable_x64", True)
        ts = jnp.linspace(0.0, 1.0, 20)
        xs = jnp.stack([ts, jnp.sin(3 * ts)], axis=1)        # 2 channels: time and a signal
        coeffs = diffrax.backward_hermite_coefficients(ts, xs)
        fm = sb.FlatMLP((4, 16, 8), activation="softplus", final_activation="tanh",
                        key=jax.random.key(0), dtype=jnp.float64)
        cde = sb.NeuralCDE(lambda theta, z: fm(theta, z).reshape(4, 2))
        zs = cde(fm.theta0, jnp.zeros(4), ts, coeffs)        # (20, 4)
        ```

    **Arguments:**

    - `fm`: `fm(theta, z) -> (*z.shape, channels)`.
    - `solver`, `adjoint`, `stepsize_controller`, `dt0`, `saveat`, `max_steps`, `throw`: as
        for [`sb.NeuralODE`][sciml_bridge.NeuralODE] (defaults `Tsit5`,
        `RecursiveCheckpointAdjoint`, `PIDController(rtol=1e-6, atol=1e-6)`, `None`, every
        time in `ts`, 4096, `True`; `adjoint` not `diffrax.ImplicitAdjoint()`).

    **Returns:**

    `cde(theta, z0, ts, coeffs) -> zs`, of shape `(len(ts), *z0.shape)` by
    default (with `saveat=diffrax.SaveAt(t1=True)`: `(1, *z0.shape)`).

    **Raises:**

    As [`sb.NeuralODE`][sciml_bridge.NeuralODE] (`ts`, the knots, must be strictly
    increasing); `ValueError` for a field of the wrong shape or `coeffs` that do not fit
    `ts` (`TypeError` for `coeffs` that are not a tuple or list of arrays); `ValueError` for
    `adjoint=diffrax.ImplicitAdjoint()`, at construction (no steady state to differentiate:
    see the message), and for a `saveat` that saves no values (dense output only). Inside
    the solve (an error under `throw=True`, NaN otherwise): `coeffs` that do not fit `ts`
    (computed from other times, or in another order than `(d, c, b, a)`: the control would
    jump at the knots).
    """

    fm: Callable
    solver: diffrax.AbstractSolver
    adjoint: diffrax.AbstractAdjoint
    stepsize_controller: diffrax.AbstractStepSizeController
    dt0: float | None
    saveat: diffrax.SaveAt | None
    max_steps: int = eqx.field(static=True)
    throw: bool = eqx.field(static=True)

    def __init__(
        self,
        fm: Callable,
        *,
        solver: diffrax.AbstractSolver = diffrax.Tsit5(),
        adjoint: diffrax.AbstractAdjoint = diffrax.RecursiveCheckpointAdjoint(),
        stepsize_controller: diffrax.AbstractStepSizeController = diffrax.PIDController(
            rtol=1e-6, atol=1e-6
        ),
        dt0: Validated[float | None] = None,
        saveat: diffrax.SaveAt | None = None,
        max_steps: Validated[int] = 4096,
        throw: bool = True,
    ):
        if isinstance(adjoint, diffrax.ImplicitAdjoint):
            raise ValueError(_MSG_IMPLICIT)
        if saveat is not None and saveat.subs is None:  # dense output only
            raise ValueError(_MSG_NO_YS.format(saveat=saveat))
        self.fm, self.solver, self.adjoint = fm, solver, adjoint
        self.stepsize_controller, self.saveat = stepsize_controller, saveat
        self.dt0 = check_dt0(dt0, "sb.NeuralCDE(dt0=...)")
        self.max_steps = check_max_steps(max_steps, "sb.NeuralCDE(max_steps=...)")
        self.throw = throw
        honest_adjoint(adjoint, stepsize_controller, _WHERE, throw)  # fails early if it must

    def __call__(
        self,
        theta: ThetaLike,
        z0: Validated[Inexact[ArrayLike, "*hidden"]],
        ts: Validated[Real[ArrayLike, " times"]],
        coeffs: Validated[PyTree[Inexact[ArrayLike, "segments channels"]]],
    ) -> Inexact[Array, " saved *hidden"]:
        """Solve from `z0` at `ts[0]` driven by the interpolated data; the saved states."""
        theta, z0, ts = as_arrays(_WHERE, theta=theta, z0=z0, ts=ts)
        if not isinstance(coeffs, tuple | list | jax.Array | np.ndarray):  # a dict iterated keys
            raise TypeError(_MSG_COEFFS.format(got=f"a {type(coeffs).__name__}"))
        coeffs = tuple(as_arrays(_WHERE, **{f"coeffs[{i}]": c for i, c in enumerate(coeffs)}))
        check_inputs(theta, z0, ts, _WHERE, "z0")
        ts = backsolve_times(ts, self.adjoint, _WHERE)
        _check_coeffs(coeffs, ts, theta.dtype)
        bad_ts = bad_times(ts, steady_end=False)
        bad_order = out_of_order(ts, "strict")
        jumps = _off_knots(coeffs, ts)
        ts = placeholder_times(ts, bad_ts | bad_order)
        prepare, field = network_parts(self.fm, False, self.adjoint)
        control = diffrax.CubicInterpolation(ts, coeffs)
        term, p = diffrax.ControlTerm(field, control).to_ode(), (prepare(theta), None)
        _check_field(field, ts[0], z0, p, coeffs[0].shape[-1])
        bad_inputs = ~all_finite((theta, z0, coeffs))
        off = jumps & ~(bad_inputs | bad_ts | bad_order)
        if self.throw:
            z0 = eqx.error_if(z0, off, _MSG_KNOTS)
        bad_inputs = bad_inputs | off
        saveat = diffrax.SaveAt(ts=ts) if self.saveat is None else self.saveat
        check_reversible_backsolve(self.solver, self.adjoint, saveat, self.saveat is None, _WHERE)
        sol = diffeqsolve(
            _WHERE, terms=term, solver=self.solver, t0=ts[0], t1=ts[-1], dt0=self.dt0, y0=z0,
            args=p, saveat=saveat,
            stepsize_controller=_with_knots(self.stepsize_controller, ts),
            adjoint=honest_adjoint(self.adjoint, self.stepsize_controller, _WHERE, self.throw),
            max_steps=self.max_steps, throw=False,
        )  # fmt: skip
        bad_field = ~all_finite(term.vf(ts[0], z0, p))
        sol = report(sol, saveat, _WHERE, self.throw, anchor=(theta, z0, coeffs),
                     bad_inputs=bad_inputs, bad_ts=bad_ts, bad_order=bad_order, order="strict",
                     bad_field=bad_field)
        return cast(Array, sol.ys)


def _with_knots(controller: Any, ts: Array) -> Any:
    """A `PIDController` steps onto every knot of the interpolation (`jump_ts=ts`).

    The control's derivatives jump there; stepping across a knot fools the error estimate. On a
    small CDE without it the solution at rtol 1e-10 was wrong at 7e-8 and finite differences of
    the loss off by 2.5x; with it both agree with a fixed fine step to 1e-9 (measured).
    """
    # Diffrax 0.7.2: `PIDController(jump_ts=...)` is itself `ClipStepSizeController(pid, ...)`.
    # Only the interior knots: with a jump at `t1` a solve that reaches `t1` in its first step
    # never saves there and still reports success (`ts=[0, 0.01]` gave `[inf, inf]`).
    if isinstance(controller, diffrax.PIDController) and ts.shape[0] > 2:
        return diffrax.ClipStepSizeController(controller, jump_ts=ts[1:-1])
    return controller


def _off_knots(coeffs: tuple[Array, ...], ts: Array) -> Array:
    """Whether the cubic of some segment misses the start of the next one (Diffrax's
    `CubicInterpolation.evaluate`: `a + f (b + f (c + f d))`, `f = t - ts[i]`), relative to
    the size of its terms. Every continuous cubic spline on `ts` passes (to rounding, 3e-16
    on uneven knots near 1e4, plus the rounding of the knots themselves); coefficients of
    `ts / 2` missed by 0.6, reversed ones by 1e306.
    """
    d, c, b, a = (x[:-1] for x in coeffs)
    h = jnp.diff(ts)[:-1, None]
    end = a + h * (b + h * (c + h * d))
    scale = jnp.maximum(jnp.maximum(jnp.abs(a), jnp.abs(coeffs[3][1:])),
                        jnp.maximum(jnp.abs(h * b), jnp.abs(h * h * c)))
    scale = jnp.maximum(scale, jnp.abs(h * h * h * d))
    eps = jnp.finfo(ts.dtype).eps
    # Knots rounded to `ts`'s dtype (float32 times near 1e4: 2e-3 of a step of 0.25) move the
    # end by the slope times that rounding.
    slope = jnp.abs(b + h * (2 * c + 3 * h * d))
    tol = jnp.sqrt(eps) * scale + slope * 8 * eps * jnp.max(jnp.abs(ts))
    return jnp.any(jnp.abs(end - coeffs[3][1:]) > tol)


def _check_coeffs(coeffs: tuple[Array, ...], ts: Array, dtype: Any) -> None:
    shapes = [(c.shape, c.dtype) for c in coeffs]
    ok = len(coeffs) == 4 and all(
        c.ndim == 2 and c.shape == coeffs[0].shape and c.shape[0] == ts.shape[0] - 1
        and c.dtype == dtype for c in coeffs
    )  # fmt: skip
    if not ok:
        raise ValueError(_MSG_COEFFS.format(got=shapes))


def _check_field(field: Callable, t0: Array, z0: Array, p: Any, channels: int) -> None:
    got = field_shape(_WHERE, "vector field", "z0", field, t0, z0, p)
    want = jax.ShapeDtypeStruct((*z0.shape, channels), z0.dtype)
    if not isinstance(got, jax.ShapeDtypeStruct) or (got.shape, got.dtype) != (
        want.shape, want.dtype
    ):
        raise ValueError(_MSG_FIELD.format(want=shapes(want), got=shapes(got)))
