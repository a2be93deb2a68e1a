"""What `sb.minimize` and `sb.least_squares` hand back: one result type (`Solution`, and
`EnsembleSolution` for several members) and the errors that carry it.

Failures inside a run are data (the Optimistix `RESULTS` idea, in `_result_codes`): each kind
carries its remedy, `throw=False` returns it next to the last good `theta`, `throw=True` raises
an error that still holds that `theta`, so an expensive run is never lost.
"""

import dataclasses
from typing import Any, TypeVar

import jax
import jax.numpy as jnp
import jax.tree_util as jtu
import numpy as np

from ._custom_types import Theta, ThetaBatch

# The vocabulary of outcomes lives in its own module; re-exported so `from ._result import
# RESULTS, result_at, ...` keeps working.
from ._result_codes import (
    RESULTS as RESULTS,
    canonical as canonical,
    failed as failed,
    message_of as message_of,
    result_at as result_at,
    result_name as result_name,
)


@dataclasses.dataclass(frozen=True)
class Solution:
    """What `sb.minimize` and `sb.least_squares` return.

    On failure with `throw=False` it still holds the last good `theta`, with `success=False`
    and a `message` that says what to try (with `throw=True` the same object rides on the
    raised `sb.OptimizationError` as `err.result`).

    !!! example

        ```python
        res = sb.minimize(lambda t: jnp.sum((t - 1.0) ** 2), jnp.zeros(3), method="adam",
                          learning_rate=0.1, max_steps=20)
        assert res.steps == 20 and res.history[-1] == res.loss < res.history[0]
        print(res.success, res.message)  # True: Adam without `tol=` ends by running its budget
        ```

    **Attributes:**

    - `theta`: the final parameters, same shape and dtype as `theta0` (on failure: the last
        `theta` whose loss was finite).
    - `loss`: the loss at `theta`, a Python float (for `sb.least_squares`: `0.5 * sum(r**2)`).
    - `history`: NumPy float64 array, `history[i]` is the loss after `i` steps (so
        `history[-1] == loss` and `len(history) == steps + 1`); SciPy methods record one
        entry per iteration (`"scipy:COBYQA"`, which calls back once per evaluation: one per
        evaluation, its best loss so far; `max_steps` caps its evaluations).
    - `steps`: number of steps taken to reach `theta`.
    - `success`: whether `result` is `RESULTS.successful`.
    - `message`: a sentence saying how the run ended and what to try.
    - `wall_time`: seconds spent in the call, compilation included.
    - `result`: a `RESULTS` member.
    - `method`: the method as given (a string or an optimizer object).
    - `stats`: backend-specific extras (e.g. the SciPy `OptimizeResult`).
    - `state`: the final model state of a stateful run (`sb.minimize(..., state=state0)`):
        the model state `theta` was evaluated with (`loss(theta, state)` gives `loss`);
        `None` without `state=`.
    """

    theta: Theta
    loss: float
    history: np.ndarray
    steps: int
    success: bool
    message: str
    wall_time: float
    result: RESULTS
    method: Any = None
    stats: dict = dataclasses.field(default_factory=dict)
    state: Any = None

    def __repr__(self) -> str:
        return (
            f"Solution(success={self.success}, loss={self.loss:.6g}, steps={self.steps}, "
            f"wall_time={self.wall_time:.3g}s, result={result_name(self.result)}, "
            f"theta=<{self.theta.dtype} array of {self.theta.size}>)"
        )


@dataclasses.dataclass(frozen=True)
class EnsembleSolution:
    """What `sb.minimize`/`sb.least_squares` return for a `(members, n)` `theta0`.

    `res[i]` (or `res.members[i]`) is member `i`'s own `sb.Solution`, with the same outcome
    contract as a single run.

    !!! example

        ```python
        loss = lambda t: jnp.sum((t - 1.0) ** 2)
        theta0 = jnp.stack([jnp.zeros(3), jnp.ones(3), -jnp.ones(3)])
        res = sb.minimize(loss, theta0, method="adam", max_steps=20)   # 3 members at once
        assert len(res) == 3 and res.best is res[1]     # member 1 started at the minimum
        ```

    **Attributes:**

    - `members`: one `sb.Solution` per row of `theta0`.
    - `theta`: their parameters stacked, shape `(members, n)`.
    - `loss`, `success`, `steps`: NumPy arrays over members.
    - `history`, `result`: tuples over members (histories differ in length), so that code
        written for an `sb.Solution` reads them too: `res.history[i] is res[i].history`.
    - `best`: the member with the lowest finite loss (`ValueError` if none is finite); a
        failed member counts with its last good loss (a tie goes to a successful member),
        so check `res.best.success`.
    - `message`: one line per member.
    - `wall_time`: seconds spent in the whole call.
    """

    members: tuple[Solution, ...]
    wall_time: float
    # Members trained split over a mesh's "members" axis come back split the same way.
    sharding: Any = dataclasses.field(default=None, repr=False, compare=False)

    @property
    def theta(self) -> ThetaBatch:
        stacked = jnp.stack([m.theta for m in self.members])
        return stacked if self.sharding is None else jax.device_put(stacked, self.sharding)

    @property
    def loss(self) -> np.ndarray:
        return np.array([m.loss for m in self.members])

    @property
    def state(self) -> Any:
        """The members' final model states stacked on a leading axis (`None` without
        `state=`)."""
        states = [m.state for m in self.members]
        if states[0] is None:
            return None
        return jtu.tree_map(lambda *xs: jnp.stack(xs), *states)

    @property
    def success(self) -> np.ndarray:
        return np.array([m.success for m in self.members])

    @property
    def steps(self) -> np.ndarray:
        return np.array([m.steps for m in self.members])

    @property
    def history(self) -> tuple[np.ndarray, ...]:
        return tuple(m.history for m in self.members)

    @property
    def result(self) -> tuple[RESULTS, ...]:
        return tuple(m.result for m in self.members)

    @property
    def best(self) -> Solution:
        """The member with the lowest finite loss (`ValueError` if no loss is finite); of
        members tied at it, the first successful one (two starts that reach the same
        minimum, one of which failed after it, gave the failed one when it came first)."""
        loss = np.where(np.isfinite(self.loss), self.loss, np.inf)
        if not np.isfinite(loss).any():
            raise ValueError("`EnsembleSolution.best`: no member has a finite loss; see "
                             "`res[i].message` for what happened to each.")  # fmt: skip
        return self.members[int(np.lexsort((~self.success, loss))[0])]

    @property
    def message(self) -> str:
        return "\n".join(f"member {i}: {m.message}" for i, m in enumerate(self.members))

    def __len__(self) -> int:
        return len(self.members)

    def __getitem__(self, i: int) -> Solution:
        return self.members[i]

    def __repr__(self) -> str:
        ok = int(self.success.sum())
        return (f"EnsembleSolution({len(self)} members, {ok} successful, "
                f"losses={np.array2string(self.loss, precision=3)}, "
                f"wall_time={self.wall_time:.3g}s)")


class OptimizationError(RuntimeError):
    """A run failed under `throw=True`; the error carries the last good parameters.

    So `sb.minimize(..., throw=True)` never loses work. A budget run out
    (`RESULTS.max_steps_reached`), a stall (`RESULTS.stalled`: returned with `success=False`,
    as SciPy returns its "precision loss") or Ctrl-C is not a failure and is never raised.
    A `callback` that raises (anything but `KeyboardInterrupt`, which is Ctrl-C) stops the
    run at the point it was given, and this error is raised whatever `throw=` says, `from`
    the callback's exception (`err.__cause__`): its message starts "the callback raised
    {Type}: {first line}", `err.theta` is the `theta` the callback got, and `err.result` the
    run up to there (`RESULTS.solver_failed`; for an ensemble, every member's).

    !!! example

        ```python
        loss = lambda t: jnp.sum(jnp.log(t))        # -inf once an entry reaches 0
        try:
            sb.minimize(loss, jnp.ones(2), method="adam", learning_rate=1.0, max_steps=50)
        except sb.OptimizationError as err:          # here an `sb.NonFiniteLossError`
            assert isinstance(err, sb.NonFiniteLossError)
            theta = err.theta                        # the last theta with a finite loss
        assert jnp.isfinite(loss(theta))
        ```

    **Attributes:**

    - `result`: the full `sb.Solution` (an `sb.EnsembleSolution` when a member of an
        ensemble failed).
    - `theta`: the last good parameters, `result.theta`.

    The message is `result.message` unless `message` is given (a callback's error).
    """

    def __init__(self, result: "Solution | EnsembleSolution", message: str | None = None):
        super().__init__(result.message if message is None else message)
        self.result = result
        self.theta = result.theta


class NonFiniteLossError(OptimizationError):
    """The loss became NaN or inf; `err.theta` is the last `theta` with a finite loss.

    A subclass of `sb.OptimizationError` (whose example raises one), with the same
    attributes `result` and `theta`.
    """


_Out = TypeVar("_Out", bound="Solution | EnsembleSolution")


def raise_if_failed(out: _Out, throw: bool) -> _Out:
    """Raise `out` as an `OptimizationError` when `throw` and it (or any member) failed."""
    members = out.members if isinstance(out, EnsembleSolution) else (out,)
    bad = [m for m in members if failed(m.result)]
    if throw and bad:
        nonfinite = all(m.result is RESULTS.nonfinite for m in bad)
        raise (NonFiniteLossError if nonfinite else OptimizationError)(out)
    return out


def finish(
    *,
    theta,
    loss: float,
    history,
    steps: int,
    result: RESULTS,
    wall_time: float,
    method,
    where: str,
    text: str = "",
    detail: str = "",
    throw: bool,
    stats: dict | None = None,
    state: Any = None,
) -> Solution:
    """Build the `Solution` and phrase its message: `text` replaces the result's own message
    (e.g. "converged after 12 steps: ..."), `detail` is put in front of it."""
    result = canonical(result)
    head = f"`{where}` ({detail})" if detail else f"`{where}`"
    message = f"{head}: {text or RESULTS[result]}"
    if result is not RESULTS.successful and text and RESULTS[result] not in text:
        remedy = RESULTS[result]  # a sentence of its own here: "... step 5. The loss ..."
        message = f"{message.rstrip('.')}. {remedy[:1].upper()}{remedy[1:]}"
    sol = Solution(
        theta=theta,
        loss=float(loss),
        history=np.asarray(history, dtype=np.float64),
        steps=int(steps),
        success=result is RESULTS.successful,
        message=message,
        wall_time=float(wall_time),
        result=result,
        method=method,
        stats=dict(stats or {}),
        state=state,
    )
    return raise_if_failed(sol, throw)
