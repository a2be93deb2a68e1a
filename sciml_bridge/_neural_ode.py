"""Neural ODEs: `dy/dt = fm(theta, y)` solved by Diffrax, differentiable with every adjoint."""

from collections.abc import Callable
from typing import Any

import diffrax
import equinox as eqx
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
    honest_adjoint,
    not_steady,
    out_of_order,
    placeholder_times,
    progress_meter,
    report,
)
from ._neural_ode_field import MSG_HYBRID_TIME, Hybrid, check_field, ode_parts
from ._precision import guard_x64


_WHERE = "sb.NeuralODE(...)(theta, y0, ts)"
_MSG_NO_YS = (
    "`sb.NeuralODE(...)(theta, y0, ts)` returns `sol.ys`, but `saveat={saveat}` saves none. "
    "Fix: call `node.solve(theta, y0, ts)` for the whole `diffrax.Solution` (e.g. "
    "`sol.evaluate(t)` for dense output)."
)


class NeuralODE(eqx.Module):
    """A neural ODE `dy/dt = fm(theta, y)` as a plain function `node(theta, y0, ts) -> ys`.

    `fm` is any callable of a flat parameter vector: a `sb.FlatModel`, a `sb.FlatMLP`, or a
    hand-written `fm(theta, y)`. The ODE is solved by `diffrax.diffeqsolve` with the solver,
    adjoint and step size controller given here, passed through unchanged. `theta` always
    travels as Diffrax's `args` (never closed over), so every adjoint differentiates it:
    `RecursiveCheckpointAdjoint`, `BacksolveAdjoint`, `DirectAdjoint` and, for `jax.jvp` /
    `jax.jacfwd` / Levenberg–Marquardt, `ForwardMode`. For a batch of initial conditions use
    `jax.vmap(node, in_axes=(None, 0, None))`. (PITFALLS, Diffrax: `vmap` over trajectories
    with `BacksolveAdjoint` is ~20x slower than with the default adjoint; with Backsolve,
    solve the batch as one `(batch, dim)` state, with `fm` vmapped over the rows, instead.)

    For known physics plus a network (a universal differential equation), see
    [`sb.NeuralODE.hybrid`][sciml_bridge.NeuralODE.hybrid].

    Paths: a `sb.FlatModel` (and a `sb.FlatMLP`, also the one `sb.flat(eqx.nn.MLP)` picks) is
    rebuilt into its Equinox model once per solve, outside `diffeqsolve`, and the rebuilt model
    is the vector field: inside a solve that is faster than slicing `theta` at every stage
    (issue 15, 2x). Under `BacksolveAdjoint` a `FlatMLP` keeps slicing one flat vector, whose
    single cotangent is cheaper for the backward solve than one per layer. Same numbers either
    way (same `theta` layout).

    Failures never give a silent wrong answer: non-finite `theta`/`y0`/`args`, a NaN or
    infinite time in `ts` (except `ts[-1] = jnp.inf` with an `event=` and a `saveat=`: the
    default would save at `t = inf`), `ts` out of order
    (they may decrease, to solve backwards in time, but not both), a field that is not
    finite at `y0`, a failed forward solve, a solution that turns non-finite although Diffrax
    reports success (constant steps reject nothing), a failed backward solve of
    `BacksolveAdjoint`, and a final state that is not steady under `ImplicitAdjoint` each
    raise their own error under `throw=True`. Under `throw=False` they give NaN; a failed
    forward solve gives `inf` in every saved value after the failure time (as Diffrax does)
    and also in the last value saved, which stands for the end of the span it never reached
    (the `SaveAt(t1=True)` value, the last of `steps=True`, the last of `ts` that all lie
    before the failure); dense output is NaN past the failure time (Diffrax), and everywhere
    for the NaN causes. The derivatives of those values are NaN (in reverse mode the whole
    gradient of a loss that reads them, with every adjoint), so a loss and its gradient are
    non-finite and `sb.minimize` keeps the last good `theta`.

    !!! example

        ```python
        import diffrax, jax, jax.numpy as jnp
        import sciml_bridge as sb

        jax.config.update("jax_enable_x64", True)
        fm = lambda theta, y: theta.reshape(2, 2) @ y    # linear ODE dy/dt = A y
        node = sb.NeuralODE(fm)
        theta = jnp.array([0.0, 1.0, -1.0, 0.0])
        ts = jnp.linspace(0.0, 1.0, 5)
        ys = node(theta, jnp.array([1.0, 0.0]), ts)       # shape (5, 2): cos/sin
        loss = lambda theta: jnp.sum(node(theta, jnp.array([1.0, 0.0]), ts) ** 2)
        grad = jax.grad(loss)(theta)
        ```

    **Arguments:**

    - `fm`: the network, `fm(theta, y) -> dy/dt` (or `fm(theta, t, y)` when
        `time_dependent=True`), returning an array of the shape and dtype of `y`.
    - `solver`: a Diffrax solver. Default `diffrax.Tsit5()`.
    - `adjoint`: how to differentiate the solve. Default `diffrax.RecursiveCheckpointAdjoint()`,
        which supports reverse mode only; use `diffrax.ForwardMode()` for forward mode.
    - `stepsize_controller`: default `diffrax.PIDController(rtol=1e-6, atol=1e-6)`.
    - `dt0`: the first step size; `None` lets an adaptive controller choose it (a
        `diffrax.ConstantStepSize()` needs a number).
    - `saveat`: a `diffrax.SaveAt`; `None` (default) saves at every time in `ts`. With
        `SaveAt(t1=True)` or `SaveAt(dense=True)`, only `ts[0]` and `ts[-1]` are used (the span;
        `ts[-1]` may be `jnp.inf` with a steady-state `event`). `diffrax.ImplicitAdjoint` needs
        `SaveAt(t1=True)` and a steady state (checked, see above).
    - `event`: a `diffrax.Event`, e.g. `diffrax.Event(diffrax.steady_state_event())`.
    - `max_steps`: the most solver steps per solve, a positive int. Default 4096.
    - `time_dependent`: whether `fm` takes `(theta, t, y)`. Default `False`.
    - `throw`: if `True` (default), a failure (see above) raises a runtime error naming the
        cause and the fix, on the forward or the backward pass. If `False`, values and
        gradients turn non-finite instead, so `sb.minimize` stops with the last good `theta`.
    - `progress`: show a tqdm progress bar over the time span. Default `False`.

    **Returns:**

    A callable `node(theta, y0, ts) -> ys` (an `eqx.Module`) with `ys` of shape
    `(len(ts), *y0.shape)` and the dtype of `y0`; `ys[0] == y0` (with a `saveat=`: what it
    saves). `node.solve(theta, y0, ts)` returns the whole `diffrax.Solution` (dense output:
    `sol.evaluate(t)`).

    **Raises:**

    At construction: `ValueError` if `max_steps` is not a positive int, if `dt0` is not
    `None` or a finite non-zero number (`TypeError` if not a number), or for
    `ImplicitAdjoint` without an adaptive step size controller. At call time: `ValueError` if
    `ts` is not 1-D with at least two times or if the vector field returns another shape than
    `y0`; `ValueError` for `diffrax.ReversibleHeun()` with `diffrax.BacksolveAdjoint()` when
    values are saved inside the span (Diffrax's gradient is wrong there); `TypeError` if
    `theta` is not a 1-D floating vector, if `theta` or `y0` is complex (split the state into
    real and imaginary parts), if any of them is a 16-bit float (`bfloat16`, `float16`: the
    time steps round away; solve in float32), if `y0`, `ts` and `theta` differ in dtype, if
    float64 NumPy data arrive with x64 off, if `args` are given without a hybrid vector
    field, if the vector field does not take the arguments it is called with (e.g.
    `time_dependent=` the wrong way round), for a derivative with respect to `ts` under
    `diffrax.BacksolveAdjoint()` (Diffrax cannot), or for forward mode (`jax.jacfwd`) through
    a reverse-mode adjoint. Inside the solve, see `throw`.
    """

    fm: Callable | Hybrid  # `Hybrid`: made by `NeuralODE.hybrid`
    solver: diffrax.AbstractSolver
    adjoint: diffrax.AbstractAdjoint
    stepsize_controller: diffrax.AbstractStepSizeController
    dt0: float | None
    saveat: diffrax.SaveAt | None
    event: diffrax.Event | None
    max_steps: int = eqx.field(static=True)
    time_dependent: bool = eqx.field(static=True)
    throw: bool = eqx.field(static=True)
    progress: bool = eqx.field(static=True)

    def __init__(
        self,
        fm: Callable | Hybrid,
        *,
        solver: diffrax.AbstractSolver = diffrax.Tsit5(),
        adjoint: diffrax.AbstractAdjoint = diffrax.RecursiveCheckpointAdjoint(),
        stepsize_controller: diffrax.AbstractStepSizeController = diffrax.PIDController(
            rtol=1e-6, atol=1e-6
        ),
        dt0: Validated[float | None] = None,
        saveat: diffrax.SaveAt | None = None,
        event: diffrax.Event | None = None,
        max_steps: Validated[int] = 4096,
        time_dependent: bool = False,
        throw: bool = True,
        progress: bool = False,
    ):
        if isinstance(fm, Hybrid) and time_dependent:
            raise ValueError(MSG_HYBRID_TIME)
        max_steps = check_max_steps(max_steps, "sb.NeuralODE(max_steps=...)")
        honest_adjoint(adjoint, stepsize_controller, _WHERE, throw)  # fails early if it must
        self.fm = fm
        self.solver = solver
        self.adjoint = adjoint
        self.stepsize_controller = stepsize_controller
        self.dt0 = check_dt0(dt0, "sb.NeuralODE(dt0=...)")
        self.saveat = saveat
        self.event = event
        self.max_steps = max_steps
        self.time_dependent = time_dependent
        self.throw = throw
        self.progress = progress

    @classmethod
    def hybrid(cls, vector_field: Callable, **kwargs: Any) -> "NeuralODE":
        """A universal differential equation: known physics plus a network, one `theta`.

        `vector_field(t, y, theta, args) -> dy/dt` is written by the user and calls the
        network itself, e.g. `fm(theta, y)`. `theta` still travels as Diffrax's `args` (so every
        adjoint works), next to the user's `args`, which are differentiable too: pass known
        constants, or physical parameters to learn jointly with `jax.grad(..., argnums=...)`.

        !!! example

            ```python
            import jax, jax.numpy as jnp
            import sciml_bridge as sb

            jax.config.update("jax_enable_x64", True)
            fm = sb.FlatMLP((2, 16, 2), activation="tanh", key=jax.random.key(0), dtype=jnp.float64)

            def lotka_volterra(t, y, theta, args):
                alpha, delta = args                     # known linear growth and decay
                u = fm(theta, y)                        # unknown interactions, learned
                return jnp.stack([alpha * y[0] + u[0], -delta * y[1] + u[1]])

            node = sb.NeuralODE.hybrid(lotka_volterra)
            y0, ts = jnp.array([0.44, 4.6]), jnp.linspace(0.0, 1.0, 11)
            ys = node(fm.theta0, y0, ts, (1.3, 1.8))   # shape (11, 2)
            ```

        **Arguments:**

        - `vector_field`: `vf(t, y, theta, args)` returning an array (or pytree) like `y`.
        - `**kwargs`: `solver`, `adjoint`, `stepsize_controller`, `dt0`, `max_steps`,
            `throw`, `progress`, as for [`sb.NeuralODE`][sciml_bridge.NeuralODE].

        **Returns:**

        A [`sb.NeuralODE`][sciml_bridge.NeuralODE] called as `node(theta, y0, ts, args=None) -> ys`.

        **Raises:**

        `ValueError` if `time_dependent` is given (`vf` always receives `t`).
        """
        return cls(Hybrid(vector_field), **kwargs)

    def __call__(
        self,
        theta: ThetaLike,
        y0: Validated[Inexact[ArrayLike, "*state"]],
        ts: Validated[Real[ArrayLike, " times"]],
        args: PyTree[Any] = None,
    ) -> Inexact[Array, " times *state"]:
        """Solve from `y0` at `ts[0]` and return the saved states (by default at every time in
        `ts`, shape `(len(ts), *y0.shape)`)."""
        sol = self.solve(theta, y0, ts, args)
        if sol.ys is None:
            raise TypeError(_MSG_NO_YS.format(saveat=self.saveat))
        return sol.ys

    def solve(
        self,
        theta: ThetaLike,
        y0: Validated[Inexact[ArrayLike, "*state"]],
        ts: Validated[Real[ArrayLike, " times"]],
        args: PyTree[Any] = None,
    ) -> diffrax.Solution:
        """The whole `diffrax.Solution` (`sol.ys`, `sol.ts`, `sol.evaluate(t)` for dense
        output, `sol.stats`), with failures handled as in `__call__`."""
        theta, y0, ts = as_arrays(_WHERE, theta=theta, y0=y0, ts=ts)
        guard_x64(args, f"`{_WHERE}`", "`args`")
        check_inputs(theta, y0, ts, _WHERE)
        ts = backsolve_times(ts, self.adjoint, _WHERE)
        prepare, field = ode_parts(self.fm, self.time_dependent, self.adjoint, args)
        term, p = diffrax.ODETerm(field), (prepare(theta), args)
        check_field(field, ts[0], y0, p)
        adjoint = honest_adjoint(self.adjoint, self.stepsize_controller, _WHERE, self.throw)
        bad_inputs = ~all_finite((theta, y0, args))
        # `ts[-1] = inf` is how a steady-state solve (an `event=`) is asked for; NaN never is.
        # Not with the default `saveat`: it saves at `t = inf`, never reached, so the call
        # returned `[y0, inf]` without a word under `throw=True`.
        bad_ts = bad_times(ts, steady_end=self.event is not None and self.saveat is not None)
        bad_order = out_of_order(ts, "monotone")
        ts = placeholder_times(ts, bad_ts | bad_order)
        saveat = diffrax.SaveAt(ts=ts) if self.saveat is None else self.saveat
        check_reversible_backsolve(self.solver, self.adjoint, saveat, self.saveat is None, _WHERE)
        sol = diffeqsolve(
            _WHERE, terms=term, solver=self.solver, t0=ts[0], t1=ts[-1], dt0=self.dt0, y0=y0,
            args=p, saveat=saveat,
            stepsize_controller=self.stepsize_controller, adjoint=adjoint, event=self.event,
            max_steps=self.max_steps, throw=False, progress_meter=progress_meter(self.progress),
        )  # fmt: skip
        bad_field = ~all_finite(field(ts[0], y0, p))
        steady = None
        if isinstance(self.adjoint, diffrax.ImplicitAdjoint):
            steady = not_steady(sol, term, self.solver, self.stepsize_controller, p)
        return report(sol, saveat, _WHERE, self.throw, anchor=(theta, y0, args),
                      bad_inputs=bad_inputs, bad_ts=bad_ts, bad_order=bad_order,
                      order="monotone", bad_field=bad_field, not_steady=steady)
