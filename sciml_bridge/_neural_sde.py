"""Neural SDEs: `dy = drift(theta, y) dt + diffusion(theta, y) dW`, solved by Diffrax.

The Brownian motion `W` is a `diffrax.VirtualBrownianTree` built from the `key` of each call,
so a path is reproducible from its key and a fresh key gives a fresh path. Itô or Stratonovich
is decided by the solver, as in Diffrax: `diffrax.Euler()` converges to the Itô solution,
`diffrax.Heun()` / `diffrax.EulerHeun()` / `diffrax.ReversibleHeun()` to the Stratonovich one.
The Brownian motion (with the Lévy area a solver needs) is built in `_sde_brownian.py`; the
solvers and adjoints that cannot run a neural SDE are refused in `_sde_solver.py`.
"""

from collections.abc import Callable
from typing import Any, cast

import diffrax
import equinox as eqx
import jax
import jax.numpy as jnp
import lineax as lx
from jaxtyping import Array, ArrayLike, Inexact, PRNGKeyArray, Real

from ._custom_types import KeyLike, Theta, ThetaLike, Validated
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
    progress_meter,
    report,
    shapes,
)
from ._flat import AbstractFlatModel
from ._network_field import network_parts
from ._sde_brownian import brownian_tree, check_brownian_shape, check_key
from ._sde_solver import check_sde_solver


_WHERE = "sb.NeuralSDE(...)(theta, y0, ts, key)"

_MSG_SHAPE = (
    "`sb.NeuralSDE(...)(theta, y0, ts, key)`: the {which} must return an array of {want_what} "
    "{want}, but it returned {got}. Fix: {fix}"
)
_MSG_IMPLICIT = (
    "`sb.NeuralSDE(..., adjoint=diffrax.ImplicitAdjoint())` is not supported: "
    "`ImplicitAdjoint` differentiates a steady state (`drift(theta, y1) = 0`) by the implicit "
    "function theorem, and a sample path of an SDE has none (the noise keeps it moving). Fix: "
    "use `adjoint=diffrax.RecursiveCheckpointAdjoint()` (the default), "
    "`diffrax.DirectAdjoint()`, or `diffrax.BacksolveAdjoint()` with a Stratonovich solver "
    "such as `diffrax.Heun()`."
)
_MSG_THETA0 = (
    "`sb.NeuralSDE(...).theta0` exists only when `drift` and `diffusion` are both flat models "
    "(`sb.flat(...)`, `sb.FlatMLP`), whose `theta0`s it concatenates. Fix: build `theta0` "
    "yourself for hand-written callables (both receive the whole `theta`)."
)


class _Drift(eqx.Module):
    field: Callable

    def __call__(self, t, y, args):
        return self.field(t, y, (args[0], None))


class _Diffusion(eqx.Module):
    field: Callable
    diagonal: bool = eqx.field(static=True)

    def __call__(self, t, y, args):
        out = self.field(t, y, (args[1], None))
        # Diagonal noise: one Brownian motion per state entry (Diffrax's neural SDE example).
        return lx.DiagonalLinearOperator(out) if self.diagonal else out


class NeuralSDE(eqx.Module):
    """A neural SDE `dy = drift(theta, y) dt + diffusion(theta, y) dW` as `sde(theta, y0, ts, key)`.

    Built as Diffrax builds one: `MultiTerm(ODETerm(drift), ControlTerm(diffusion,
    VirtualBrownianTree(ts[0], ts[-1], tol=dt0 / 2, key=key)))`. The `key` is an argument of
    every call: the same key gives the same Brownian path (and the same `ys`), another key
    another path. Training follows the engine's convention: a loss with a `key` keyword gets
    a fresh key per step from `sb.minimize(..., key=key)`.

    When `drift` and `diffusion` are both flat models (`sb.flat`, `sb.FlatMLP`), `theta` is
    their two vectors concatenated (`sde.theta0`), and each receives its own part; otherwise
    both receive the whole `theta` (slice it yourself).

    !!! example

        ```python
        import diffrax, jax, jax.numpy as jnp
        import sciml_bridge as sb

        jax.config.update("jax_enable_x64", True)
        drift = lambda theta, y: theta[0] * (theta[1] - y)         # Ornstein-Uhlenbeck
        diffusion = lambda theta, y: theta[2] * jnp.ones_like(y)   # diagonal noise
        sde = sb.NeuralSDE(drift, diffusion, dt0=0.01)
        theta, ts = jnp.array([1.0, 1.0, 0.3]), jnp.linspace(0.0, 1.0, 11)
        keys = jax.random.split(jax.random.key(0), 64)
        paths = jax.vmap(sde, in_axes=(None, None, None, 0))(theta, jnp.zeros(1), ts, keys)
        assert paths.shape == (64, 11, 1)
        ```

    **Arguments:**

    - `drift`: `drift(theta, y) -> dy/dt`, the shape and dtype of `y`.
    - `diffusion`: `diffusion(theta, y)`: with `diagonal=True` (default) an array like `y`
        (one independent Brownian motion per entry); with `diagonal=False` a matrix of shape
        `(*y.shape, *brownian_shape)`.
    - `brownian_shape`: the shape of `W` when `diagonal=False`.
    - `solver`: a Diffrax SDE solver; it decides Itô vs Stratonovich. Default
        `diffrax.Euler()` (Itô). Stochastic Runge-Kutta solvers (`diffrax.ShARK()`,
        `diffrax.SRA1()`, `diffrax.SEA()` for additive noise; `diffrax.GeneralShARK()`,
        `diffrax.SlowRK()`, `diffrax.SPaRK()`) get a Brownian motion with the Lévy area they
        declare (`solver.minimal_levy_area`), so a key gives another path with them than
        with `Euler`.
    - `adjoint`: default `diffrax.RecursiveCheckpointAdjoint()`; `diffrax.DirectAdjoint()`
        and, for Stratonovich solvers that take the SDE as one term (Diffrax's rule:
        `diffrax.Heun()`, `diffrax.Midpoint()`, `diffrax.ReversibleHeun()`),
        `diffrax.BacksolveAdjoint()` (with `diffrax.ReversibleHeun()` only for
        `ts = [t0, t1]`; not with `EulerHeun`, Milstein or stochastic Runge-Kutta solvers:
        see **Raises**). Not `diffrax.ImplicitAdjoint()`: a sample path has no steady state.
    - `dt0`: the step size (constant steps), a positive number. Default 0.01. `ts` must be
        non-decreasing with `ts[-1] > ts[0]` (a sample path runs forwards).
    - `max_steps`, `throw`, `progress`: as for [`sb.NeuralODE`][sciml_bridge.NeuralODE].

    **Returns:**

    `sde(theta, y0, ts, key) -> ys` of shape `(len(ts), *y0.shape)`.

    **Raises:**

    As [`sb.NeuralODE`][sciml_bridge.NeuralODE]; `ValueError` when `drift` or
    `diffusion` return the wrong shape, or `dt0` is not positive; `TypeError` when `key` is
    not one PRNG key, or `brownian_shape` is not a tuple of ints;
    `ValueError` for `adjoint=diffrax.ImplicitAdjoint()`, for a solver that cannot take
    `MultiTerm(ODETerm, ControlTerm)` (`diffrax.SemiImplicitEuler()`, the underdamped
    Langevin solvers), and for `diffrax.BacksolveAdjoint()` with an Itô solver or one that
    takes drift and diffusion as two terms (at construction; `TypeError` for a solver that
    is not a Diffrax solver instance), and for
    `solver=diffrax.ReversibleHeun()` with `adjoint=diffrax.BacksolveAdjoint()` and more than
    two times in `ts` (Diffrax's gradient is wrong there, 31% off on a small SDE).
    """

    drift: Callable
    diffusion: Callable
    solver: diffrax.AbstractSolver
    adjoint: diffrax.AbstractAdjoint
    dt0: float
    brownian_shape: tuple[int, ...] | None = eqx.field(static=True)
    max_steps: int = eqx.field(static=True)
    throw: bool = eqx.field(static=True)
    progress: bool = eqx.field(static=True)

    def __init__(
        self,
        drift: Callable,
        diffusion: Callable,
        *,
        diagonal: bool = True,
        brownian_shape: Validated[tuple[int, ...] | None] = None,
        solver: Validated[diffrax.AbstractSolver] = diffrax.Euler(),
        adjoint: diffrax.AbstractAdjoint = diffrax.RecursiveCheckpointAdjoint(),
        dt0: Validated[float] = 0.01,
        max_steps: Validated[int] = 4096,
        throw: bool = True,
        progress: bool = False,
    ):
        if diagonal == (brownian_shape is not None):
            raise ValueError(
                "`sb.NeuralSDE(...)` takes `brownian_shape=` exactly when `diagonal=False` "
                f"(got diagonal={diagonal!r}, brownian_shape={brownian_shape!r}). Fix: e.g. "
                "`diagonal=False, brownian_shape=(3,)` for a `(*y.shape, 3)` diffusion matrix."
            )
        if isinstance(adjoint, diffrax.ImplicitAdjoint):
            raise ValueError(_MSG_IMPLICIT)
        check_sde_solver(solver, adjoint)
        self.drift, self.diffusion = drift, diffusion
        self.solver, self.adjoint = solver, adjoint
        self.dt0 = check_dt0(dt0, "sb.NeuralSDE(dt0=...)", positive=True)
        self.brownian_shape = None if diagonal else check_brownian_shape(brownian_shape)
        self.max_steps = check_max_steps(max_steps, "sb.NeuralSDE(max_steps=...)")
        self.throw, self.progress = throw, progress

    @property
    def theta0(self) -> Theta:
        """`drift.theta0` and `diffusion.theta0`, concatenated (flat models only)."""
        if not self._split:
            raise TypeError(_MSG_THETA0)
        drift = cast(AbstractFlatModel, self.drift)
        diffusion = cast(AbstractFlatModel, self.diffusion)
        return jnp.concatenate([drift.theta0, diffusion.theta0])

    @property
    def _split(self) -> bool:
        return isinstance(self.drift, AbstractFlatModel) and isinstance(
            self.diffusion, AbstractFlatModel
        )

    def __call__(
        self,
        theta: ThetaLike,
        y0: Validated[Inexact[ArrayLike, "*state"]],
        ts: Validated[Real[ArrayLike, " times"]],
        key: KeyLike,
    ) -> Inexact[Array, " times *state"]:
        """One sample path from `y0` at `ts[0]`, driven by the Brownian motion of `key`."""
        theta, y0, ts = as_arrays(_WHERE, theta=theta, y0=y0, ts=ts)
        check_inputs(theta, y0, ts, _WHERE)
        ts = backsolve_times(ts, self.adjoint, _WHERE)
        check_key(key)
        bad_inputs = ~all_finite((theta, y0))
        bad_ts = bad_times(ts, steady_end=False)
        bad_order = out_of_order(ts, "increasing")
        ts = placeholder_times(ts, bad_ts | bad_order)
        saveat = diffrax.SaveAt(ts=ts)
        check_reversible_backsolve(self.solver, self.adjoint, saveat, True, _WHERE)
        terms, p = self._terms(theta, y0, ts, key)
        sol = diffeqsolve(
            _WHERE, terms=terms, solver=self.solver, t0=ts[0], t1=ts[-1], dt0=self.dt0,
            y0=y0, args=p, saveat=saveat,
            adjoint=honest_adjoint(self.adjoint, None, _WHERE, self.throw),
            max_steps=self.max_steps, throw=False, progress_meter=progress_meter(self.progress),
        )  # fmt: skip
        drift, diffusion = terms.terms[0].vector_field, terms.terms[1].vector_field
        bad_field = ~all_finite((drift(ts[0], y0, p), _as_array(diffusion(ts[0], y0, p))))
        sol = report(sol, saveat, _WHERE, self.throw, anchor=(theta, y0), bad_inputs=bad_inputs,
                     bad_ts=bad_ts, bad_order=bad_order, order="increasing",
                     bad_field=bad_field)
        return cast(Array, sol.ys)

    def _terms(self, theta: Array, y0: Array, ts: Array, key: PRNGKeyArray):
        n = cast(AbstractFlatModel, self.drift).size if self._split else None
        parts = (theta[:n], theta[n:]) if self._split else (theta, theta)
        prep_d, field_d = network_parts(self.drift, False, self.adjoint)
        prep_s, field_s = network_parts(self.diffusion, False, self.adjoint)
        p = (prep_d(parts[0]), prep_s(parts[1]))
        drift, diffusion = _Drift(field_d), _Diffusion(field_s, self.brownian_shape is None)
        noise = y0.shape if self.brownian_shape is None else self.brownian_shape
        self._checkshapes(drift, diffusion, ts[0], y0, p, noise)
        brownian = brownian_tree(self.solver, ts, self.dt0, noise, y0.dtype, key)
        terms = diffrax.MultiTerm(diffrax.ODETerm(drift), diffrax.ControlTerm(diffusion, brownian))
        return terms, p

    def _checkshapes(self, drift, diffusion, t0, y0, p, noise) -> None:
        want = jax.ShapeDtypeStruct(y0.shape, y0.dtype)
        got = field_shape(_WHERE, "drift", "y0", drift, t0, y0, p)
        if (got.shape, got.dtype) != (want.shape, want.dtype):
            raise ValueError(_MSG_SHAPE.format(
                which="drift", want_what="the state's shape and dtype", want=shapes(want),
                got=shapes(got), fix="return one dy/dt entry per state entry."))  # fmt: skip
        shape = y0.shape if self.brownian_shape is None else (*y0.shape, *noise)
        got = field_shape(_WHERE, "diffusion", "y0", lambda *a: _as_array(diffusion(*a)), t0,
                          y0, p)
        if (got.shape, got.dtype) != (shape, y0.dtype):
            fix = ("with `diagonal=True`, return one entry per state entry (or pass "
                   "`diagonal=False, brownian_shape=...` for a matrix).")  # fmt: skip
            raise ValueError(_MSG_SHAPE.format(
                which="diffusion", want_what="shape and dtype",
                want=shapes(jax.ShapeDtypeStruct(shape, y0.dtype)), got=shapes(got), fix=fix))


def _as_array(out: Any) -> Array:
    return out.diagonal if isinstance(out, lx.DiagonalLinearOperator) else out
