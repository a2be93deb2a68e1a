"""How a run ends: each member's `Solution`, decided once, for all methods.

After the last chunk the driver evaluates the loss at every member's last point (`theta`
stays put between steps, so a run that used up its budget or converged ends there, with the
loss there). A member whose run failed, or whose last point has no finite loss (or raises),
keeps its last good point instead: the last `theta` whose loss is known, and, for a stateful
loss, the model state that loss was evaluated with. So `res.theta`, `res.loss` and
`res.state` always describe one evaluation.
"""

import dataclasses
import time

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.tree_util as jtu
import numpy as np

from .._distributed import host, local
from .._result import RESULTS, Solution, finish
from ._failures import RUNTIME_ERRORS, failure_detail
from ._fused import final_members, good_values, model_states
from ._on_mesh import rerun_alone
from ._recover import Member, Members, alone
from ._stateful import EvaluatedState


class Conclusion(Members):
    """The driver's last part (`_run._Driver`): every member's `Solution`."""

    stateful: bool
    step_loss_is_value: bool  # the method's own (`AbstractStepper.step_loss_is_value`)
    model: object

    def conclude(self) -> list[Solution]:
        final, self.model = self._final()
        good = (local(self.good_theta), np.asarray(host(self.good_loss), dtype=np.float64))
        # The loss a step reports is `value` at its point, except on a minibatch (or with
        # the step's key): then `res.loss` of a member that keeps its last good point is the
        # loss on all the data there, evaluated here.
        fresh = [not m.history or not self.step_loss_is_value for m in self.members]
        if any(fresh):
            good = (good[0], self._values_at_good(good[1], fresh))
        return [self._one(i, m, good, final) for i, m in enumerate(self.members)]

    def _final(self):
        """`(theta, loss)` at every member's last point (`theta` stays put) and the model
        state there. Where evaluating the loss there raises (`eqx.error_if`), that member
        fails, keeping the last point whose loss is known: `(None, None)` for a single run
        (NaN in that member's place for an ensemble)."""
        at = lambda dynamic, layout: final_members(self.stepper, self.args, self.static,
                                                   dynamic, layout)  # fmt: skip
        try:
            theta, loss, model = at(self.dynamic, self.layout)
            return (local(theta), np.asarray(host(loss), dtype=np.float64)), model
        except RUNTIME_ERRORS as e:
            if not rerun_alone(self.layout):
                for m in self.members:
                    _failed_by(m, e)
                return None, None
        thetas, losses, models = [], [], []
        for i, m in enumerate(self.members):
            row = self._row(i)
            out = alone(at, row, None)
            if isinstance(out, Exception):
                _failed_by(m, out)
                out = (self.good_theta[i : i + 1], jnp.full(1, jnp.nan),
                       model_states(self.stepper, self.static, row))  # fmt: skip
            else:  # a single run's kernel hands back `theta` and the state without the axis
                out = (out[0][None], out[1], jtu.tree_map(lambda x: x[None], out[2]))
            thetas.append(local(out[0]))
            losses.append(np.asarray(host(out[1]), dtype=np.float64))
            models.append(out[2])
        model = jax.tree.map(lambda *xs: jnp.concatenate(xs), *models)
        return (jnp.concatenate(thetas), np.concatenate(losses)), model

    def _values_at_good(self, losses, fresh: list[bool]):
        """The loss at each member's last good point where `fresh` (a member stopped before
        any step finished keeps `theta0`; `loss == loss(theta)`), with the model state its
        last good loss was evaluated with (each member's own), unless evaluating it fails
        too."""
        states = self._own_states()
        at = lambda dynamic, thetas, layout: good_values(self.stepper, self.args, self.static,
                                                         dynamic, thetas, layout)  # fmt: skip
        try:
            start = np.asarray(host(at(states, self.good_theta, self.layout)), np.float64)
        except RUNTIME_ERRORS:
            if not self.batched:
                return losses
            if not rerun_alone(self.layout):
                return losses
            start = [alone(at, self._row(i, states), self.good_theta[i : i + 1], None)
                     for i in range(len(self.members))]  # fmt: skip
            start = [lo if isinstance(s, Exception) else float(np.asarray(host(s))[0])
                     for lo, s in zip(losses, start)]  # fmt: skip
        return np.array([s if f else lo for lo, s, f in zip(losses, start, fresh)])

    def _model_state(self, i: int, at_last: bool):
        """Member `i`'s model state (`None` for a stateless loss): the state at its last point
        (`at_last`), else the one its last good point's loss was evaluated with, from its own
        solver state (not its stand-in's)."""
        if not self.stateful:
            return None
        if at_last:
            return jtu.tree_map(lambda x: x[i], self.model) if self.batched else self.model
        state = eqx.combine(self.frozen.get(i, self._row(i)), self.static)
        return jtu.tree_map(lambda x: x[0], EvaluatedState.evaluated(state))

    def _one(self, i: int, m: Member, good, final) -> Solution:
        theta, loss, history = good[0], float(good[1][i]), list(m.history)
        failed = m.result is not None and m.result is not RESULTS.interrupted
        at_last = final is not None and not failed and bool(np.isfinite(final[1][i]))
        # A method whose converged step keeps `theta` (Optax with `tol`, "ssbfgs"): the run
        # ended where its last loss was recorded, so that loss is not a step of its own (it
        # said "converged after 1 steps" at the minimum, where SciPy says 0).
        stayed = final is not None and m.done and at_last and bool(history) \
            and np.array_equal(_member_row(final[0], i), _member_row(good[0], i))  # fmt: skip
        result, text = self._ending(m, m.steps - stayed)
        if final is not None and at_last:
            theta, loss = final[0], float(final[1][i])
            history = history[:-1] if stayed else history
            history.append(loss)
        else:
            if final is not None and not failed:
                result, text = RESULTS.nonfinite, ""
            if history and not self.step_loss_is_value:
                history[-1] = loss  # the last good point's loss on all the data: `res.loss`
        if result is RESULTS.nonfinite and not text:
            text = _nonfinite_text(len(history))
        run = self.run
        theta = theta[i] if theta.ndim == 2 else theta
        sol = finish(theta=theta, loss=loss, state=self._model_state(i, at_last),
                     history=history or [loss], steps=max(len(history) - 1, 0),
                     result=result, wall_time=time.perf_counter() - run.start,
                     method=run.method, where=run.where, text=text, throw=False)  # fmt: skip
        return dataclasses.replace(sol, message=m.message) if m.message else sol

    def _ending(self, m: Member, taken: int) -> tuple[RESULTS, str]:
        """How member `m` ended; `taken` the steps that moved it (a converged run's last
        step may have kept its `theta`)."""
        if m.result is RESULTS.interrupted:
            return m.result, m.detail or (f"interrupted (Ctrl-C) after {m.steps} steps; "
                                          "`res.theta` is the point reached at the last "
                                          "finished chunk")  # fmt: skip
        if m.result is not None:
            return m.result, m.detail
        if m.by_callback:
            return RESULTS.successful, f"stopped by `callback` after {m.steps} steps"
        if m.done:
            return RESULTS.successful, f"converged after {_steps(taken)}: " \
                                       f"{self.stepper.criterion()}"
        if m.steps > self.run.max_steps:  # resumed from a checkpoint already past the budget
            return (RESULTS.max_steps_reached if self.stepper.has_stopping_rule()
                    else RESULTS.successful), (
                f"resumed from a checkpoint already at step {m.steps}, past "
                f"`max_steps={self.run.max_steps}`: no step was taken. Fix: pass a `max_steps` "
                f"above {m.steps} to go on")  # fmt: skip
        if self.stepper.has_stopping_rule():
            return RESULTS.max_steps_reached, ""
        return RESULTS.successful, (
            f"ran its full budget of `max_steps={self.run.max_steps}` steps. This method has no "
            "stopping rule here, so that is its normal end, not a convergence test (pass `tol=` "
            "to stop on the gradient norm)")


def _member_row(theta, i: int):
    return np.asarray(theta[i] if theta.ndim == 2 else theta)


def _steps(n: int) -> str:
    return f"{n} step" if n == 1 else f"{n} steps"


def _failed_by(m: Member, e: Exception) -> None:
    if m.result is None or m.result is RESULTS.interrupted:
        m.result, m.detail = RESULTS.solver_failed, failure_detail(e)


def _nonfinite_text(n_good: int) -> str:
    if n_good == 0:
        return "the loss is non-finite at `theta0` itself (step 0)"
    # A line search can accept a point of finite loss whose gradient is NaN (`jnp.sqrt` at
    # 0): Optimistix's methods stop there too, with the loss never non-finite.
    return (f"the loss (or its gradient) became non-finite at step {n_good}; the returned "
            f"`theta` is from step {n_good - 1}, the last with a finite loss")  # fmt: skip
