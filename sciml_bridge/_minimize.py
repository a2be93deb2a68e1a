"""`sb.minimize`: one front door to Optax, Optimistix and SciPy for `loss(theta, *args)`.

The method is an argument (STYLE.md 1): switching from `"adam"` to `"lbfgs"` or
`"scipy:trust-ncg"` is a one-word edit, and every method returns the same `sb.Solution`.
"""

import os
from collections.abc import Callable
from typing import Any, Literal

import jax
from jax.sharding import Mesh

from ._custom_types import ThetaBatchLike, ThetaLike, Validated
from ._precision import guard_x64
from ._result import EnsembleSolution, Solution
from ._sharding import place
from ._solvers._batches import KeyedLoss, check_batches_method, prepare_batches, with_batches
from ._solvers._checkpoint import fingerprint
from ._solvers._methods import resolve_minimize
from ._solvers._outputs import ScalarLoss
from ._solvers._recompile import warn_python_numbers
from ._solvers._run import drive
from ._solvers._run_gradient import differentiating
from ._solvers._scipy_backend import scipy_minimize, solve_scipy
from ._solvers._setup import check_run_inputs, check_tol, make_run, prepare_args, prepare_theta0
from ._solvers._stateful import StatefulLoss, prepare_state
from ._state_members import check_not_stacked


_MSG_SCIPY_BATCHES = """\
`{where}` cannot draw minibatches or keys for a SciPy method: SciPy expects a deterministic
objective. Fix: use an Optax method (e.g. "adam") with `batch_size=`/`key=`, or drop them."""

_MSG_CHECKPOINT = """\
`{where}` cannot checkpoint method={method!r}: SciPy runs its own loop, so there is no state
between chunks to save. Fix: checkpoint a method of ours (an Optax method such as "adam" or
"lbfgs", "bfgs", or "gauss-newton"/"lm" in `sb.least_squares`), or save `res.theta` yourself
with `sb.save` and chain runs."""

def minimize(
    loss: Callable[..., Any],
    theta0: ThetaLike | ThetaBatchLike,
    method: Any = "adam",
    *,
    args: Validated[tuple] = (),
    max_steps: Validated[int] = 1000,
    tol: Validated[float | None] = None,
    progress: Validated[bool] = True,
    callback: Validated[Callable | None] = None,
    throw: Validated[bool] = True,
    checkpoint: str | os.PathLike | None = None,
    checkpoint_every: Validated[int | None] = None,
    resume: Validated[Literal["check", "force"]] = "check",
    mesh: Validated[Mesh | None] = None,
    batch_size: Validated[int | None] = None,
    key: Any = None,
    state: Any = None,
    **options: Any,
) -> Solution | EnsembleSolution:
    """Minimise `loss(theta, *args)` over the flat vector `theta`, with any backend.

    Every method except SciPy's runs in the same fused driver: `chunk_size` steps per dispatch
    inside one `jit` (the loss curve is the same as a step-by-step loop's), with progress,
    callbacks, checkpoints and Ctrl-C between chunks. Chaining is natural:

    !!! example

        ```python
        fm = sb.flat(eqx.nn.MLP(1, 1, 10, 2, activation=jnp.tanh, key=jax.random.key(0)))
        x = jnp.linspace(-1, 1, 64)[:, None]
        loss = lambda th, x: jnp.mean((jax.vmap(fm, (None, 0))(th, x) - jnp.sin(3 * x)) ** 2)
        res = sb.minimize(loss, fm.theta0, "adam", args=(x,), max_steps=2000, learning_rate=1e-2)
        res = sb.minimize(loss, res.theta, "lbfgs", args=(x,), max_steps=500)
        ```

    **The outcome contract** (the same for every method, single runs and ensembles):

    - converged: `success=True`; the message names the stopping rule that was met.
    - budget used up: returns, never raises, whatever `throw`. With a stopping rule that was
        not met: `success=False`, `result=sb.RESULTS.max_steps_reached`. Without one (Optax
        methods without `tol`): `success=True`, and the message says the budget ran out.
    - stalled (`"ssbfgs"`/`"ssbroyden"`, and Gauss-Newton in `sb.least_squares`): the line
        search cannot lower the loss before `tol` is met. Returns, never raises:
        `success=False`, `result=sb.RESULTS.stalled`, `theta` the last point reached (SciPy
        reports the same case as "precision loss").
    - non-finite loss, solver breakdown, runtime error inside the loss (`eqx.error_if`, a
        failing Diffrax solve): `throw=True` raises `sb.OptimizationError` (or its subclass
        `sb.NonFiniteLossError`) carrying the last good `theta`; `throw=False` returns it.
        A runtime error aborts the compiled chunk; the chunk is then run again up to the
        step that raised, so the steps before it are kept (in an ensemble, for the members
        that raised only: the others go on).
        For `"lbfgs"` and the Optimistix methods a non-finite *trial* point is a rejected
        step: their line search / trust region backs off, as `optx.minimise` does.
    - Ctrl-C: one SIGINT returns the partial result (`result=sb.RESULTS.interrupted`); the
        chunk in flight finishes first. A second SIGINT raises `KeyboardInterrupt`.
    - a checkpoint write that fails: a `RuntimeWarning`; the run goes on.

    **Arguments:**

    - `loss`: `loss(theta, *args) -> scalar`, JAX-traceable (a real scalar; anything else
        is a `TypeError` saying what it returned). With `state=`:
        `loss(theta, state, *args) -> (value, new_state)`.
    - `theta0`: 1-D floating start (float64 stays float64; float64 NumPy data with x64
        off is a `TypeError`), or 2-D `(members, n)` for an ensemble. Complex `theta0`
        (complex64/complex128) trains with the first-order Optax methods, following Optax's
        convention (each update is fed `jnp.conj(jax.grad(loss))`, so a real loss of complex
        parameters descends); the other methods refuse it with a `TypeError` showing how to
        train the real view `jnp.concatenate([theta0.real, theta0.imag])` instead.
    - `method`: `"adam"` (default) or any `optax` alias by name (`"sgd"`, `"adamw"`, ...;
        `learning_rate` defaults to 1e-3), `"lbfgs"` (Optax L-BFGS with zoom line search),
        `"bfgs"`/`"nonlinear-cg"` (Optimistix), `"ssbfgs"`/`"ssbroyden"` (self-scaled
        BFGS/Broyden with a strong-Wolfe line search and a dense inverse Hessian, for up to a
        few thousand parameters; options `c1`, `c2` with `0 < c1 < c2 < 1`, defaults 1e-4 and 0.9,
        and `line_search_steps >= 1`, default 30), `"scipy:<Method>"` (any
        `scipy.optimize.minimize` method; trust-region methods get `hessp`), an
        `optax.GradientTransformation` or an Optimistix minimiser object. A transformation
        object is compared by what it computes (its functions' code and the hyperparameters
        they close over, by value; arrays by identity), so `optax.adam(1e-3)` built afresh in
        every call reuses the loop compiled for the first one, and `optax.adam(1e-2)` gets
        its own. SciPy methods evaluate the loss in float64 (float32 with x64 off) whatever
        the dtype of `theta0`, exactly as `sb.scipy_objective` does; `res.theta` comes back
        in `theta0`'s dtype and `res.loss` is the loss there: where that dtype rounds
        SciPy's `x` (float32/float16/bfloat16), the loss is evaluated once more at
        `res.theta`, so `res.loss == loss(res.theta)`.
    - `args`: a tuple of extra arguments passed to `loss` (default `()`). Arrays in it are
        traced; a Python number is static, as in `eqx.filter_jit`: a new value compiles the run
        again (a warning says so the second time), so pass a swept coefficient as
        `jnp.asarray(lam)`.
    - `max_steps`: step budget (default 1000). SciPy methods take it as `maxiter`;
        Nelder-Mead and trust-constr too take exactly `max_steps` iterations when no
        tolerance stops them. TNC (`maxfun`) and COBYLA (whose `maxiter` counts evaluations)
        spend it on evaluations while `res.steps` counts their iterations, so they may stop
        "after `max_steps`" with fewer steps; COBYQA (`maxfev`) counts a step per evaluation.
        COBYLA needs at least n + 2 evaluations (its first simplex): a smaller `max_steps` is
        a `ValueError`. Budgets above 2**31 - 1 are capped there (SciPy's compiled methods
        count in 32 bits).
    - `tol`: gradient-norm tolerance (Optax; default `None` runs the whole budget, except
        `"lbfgs"`; `"ssbfgs"`/`"ssbroyden"`: gradient max-norm, or the relative decrease
        `-0.5 g.p / |f|` their quadratic model predicts), `rtol=atol` (Optimistix), or SciPy's
        `tol`. `None` means 1e-8 in float64, 1e-4 in float32 where a default is needed.
        Not with `batch_size=` (or a `key=` the loss takes): see `batch_size`.
    - `progress`: tqdm bar with the loss between chunks (off when stderr is not a terminal).
    - `callback`: `callback(step, theta, loss)` between chunks (SciPy: every iteration), with
        the last `theta` whose loss is known, `loss` there (a Python float) and the steps
        taken to reach it (`history[step] == loss`); for an ensemble it is called once per
        running member with that member's; `theta` is in `theta0`'s dtype. Returning `True`
        stops the run (that member) successfully. A callback that raises (anything but
        `KeyboardInterrupt`, which is Ctrl-C) stops the run at the point it was given:
        `sb.OptimizationError` is raised whatever `throw=` says, `from` the callback's
        exception, with `err.theta` the `theta` the callback got and `err.result` the run up
        to there (`RESULTS.solver_failed`; for an ensemble an `sb.EnsembleSolution`, whose
        other running members stop as by Ctrl-C).
    - `throw`: raise `sb.OptimizationError` on failure (default) or return it in the result.
    - `checkpoint`, `checkpoint_every`: a path to save the full optimizer state (every
        member's) to every `checkpoint_every` steps (not for SciPy methods); an existing file
        there is resumed from, and `max_steps` counts the steps before the resume.
    - `resume`: `"check"` (default) refuses a checkpoint written with another method, other
        options or another `tol` (naming what changed); `"force"` resumes it anyway.
    - `mesh`: a `jax.sharding.Mesh` for data parallelism and sharded ensembles. A mesh axis
        named `"members"` splits the members of a `(members, n)` `theta0` (with their
        optimiser states, and the returned `theta`) over its devices; the member count must
        be a multiple of its size (members are not padded). Every other axis splits the data
        in `args` along its leading axis (see `sb.shard`); `theta` is replicated over them
        and XLA reduces the gradients. `("data",)`: data parallelism; `("members",)`: each
        device trains its share of the members on the whole data; `("members", "data")`:
        both. The mesh may span several processes (`sb.distributed_init`,
        `jax.distributed.initialize`): pass each process's own rows with
        `sb.shard(args, mesh, process_local=True)`; results are then the same on every
        process, checkpoints are written once (process 0) and resumed by all, the progress
        bar is drawn by process 0, callbacks run everywhere. Results agree with a
        single-device run to rounding (the reduction order differs); quasi-Newton line
        searches can amplify that over many steps. On CPU devices an ensemble's members run
        one at a time on each device (not batched): a multi-core CPU then trains its share
        of the starts on every core, e.g. after `jax.config.update("jax_num_cpu_devices", 2)`.
    - `batch_size`: minibatches drawn inside the compiled loop (default `None`: all the
        data every step). Every array in `args` shares a leading axis of N rows; step `k`
        sees `batch_size` of them, every row once per epoch of `N // batch_size` steps,
        reshuffled each epoch from `key` (`jax.random.key(0)` when `key` is `None`).
        `res.loss` and a failed run's last good loss are on all the data; `res.history` holds
        each step's minibatch loss. A stopping rule would test one minibatch's gradient (a
        run on two rows said "converged" at loss 50 with the minimum at 25), so `tol=` is a
        `ValueError` here, and methods with a default tolerance (`"lbfgs"`, `"bfgs"`, ...)
        run without one: the run takes all `max_steps` steps unless it fails
        (`success=True`, the message says the budget ran out). Check convergence afterwards
        on all the data, e.g. by continuing from `res.theta` without `batch_size=`. Not for
        SciPy methods, nor `"ssbfgs"`/`"ssbroyden"` (their line search starts from the
        previous step's values: a `ValueError`). A NumPy integer is accepted.
    - `key`: a PRNG key (`jax.random.key(0)`, or a legacy `jax.random.PRNGKey(0)`). It
        draws the minibatches, and a loss with a `key` keyword (`loss(theta, *args, *,
        key)`) is called with `key=jax.random.fold_in(key, k)` at step `k` (then `tol=` is
        refused as with `batch_size`: each step's loss is another sample). The same key gives
        the same batches and keys on every run and after a resume. One key, not one per
        member: every member of an ensemble sees the same batches and step keys (a batch of
        keys is a `ValueError`; run members separately for separate sequences). A loss that
        requires `key` called without `key=` is a `TypeError`.
    - `state`: the model state of a stateful loss (`fm.init_state()`: an `eqx.nn.State`
        of BatchNorm statistics, Flax Linen `batch_stats`, a Flax NNX state with BatchNorm
        statistics and `nnx.Rngs` streams). Step `k` evaluates `loss(theta_k, state_k,
        *args)` and carries the `new_state` it returns to step `k + 1`, as a hand-written
        Optax loop does (so NNX dropout draws a new mask every step). `res.state` is the
        state `res.theta` was evaluated with, so `loss(res.theta, res.state, *args)[0] ==
        res.loss` (stacked over members for an ensemble): after a run that ends at its last
        point (budget, convergence, `callback`, Ctrl-C), the state the last step returned;
        after one that stops at its last good `theta_k` (non-finite loss, a raise),
        `state_k`. Checkpoints carry it, PRNG streams included, so a resumed run returns the
        same. A member that failed while setting up returns `state` as given.
        Every member starts from the one `state` given: an ensemble's stacked `res.state`
        passed back is a `ValueError` where the loss cannot take it, and a warning where it
        would broadcast (use a checkpoint to go on with each member's state). First-order
        Optax methods only: a line search or trust region evaluates the loss at trial
        points, so `"lbfgs"`, the Optimistix, self-scaled and SciPy methods raise
        `NotImplementedError`.
    - `**options`: passed to the Optax constructor (e.g. `learning_rate=`) or to SciPy as
        `options`; Optimistix methods take `autodiff_mode=`. `chunk_size=` (default 1000)
        sets the steps per dispatch. An option the method does not take is a `TypeError`
        naming the nearest valid keyword.

    **Returns:**

    An `sb.Solution` (`theta`, `loss`, `history`, `steps`, `success`, `message`, `wall_time`,
    `result`; `state` with `state=`). For a 2-D `theta0` (an ensemble: one row per member, e.g.
    `jnp.stack([sb.FlatMLP(sizes, key=k).theta0 for k in keys])`) an `sb.EnsembleSolution`:
    every member trained at once (vmapped; SciPy methods one after another), each member's
    own `Solution` in `res[i]` under the same contract; a member that fails never stops or
    corrupts the others, and `res.best` is the member with the lowest finite loss.

    **Raises:**

    `sb.NonFiniteLossError` / `sb.OptimizationError` (with `.theta`, `.result`; for an
    ensemble when any member failed, `.result` is the `EnsembleSolution`) when
    `throw=True`, and `sb.OptimizationError` whatever `throw=` when `callback` raises;
    `TypeError` for a bad `theta0` (or a complex one with a method other than first-order
    Optax), `args`, `tol`, `method` type, loss output or option (a `learning_rate` that is
    not a real number or a schedule, or `None` where Optax would then skip the step size), or
    a loss JAX cannot differentiate with a method that needs its gradient (every method but
    "scipy:Nelder-Mead", "scipy:Powell", "scipy:COBYLA", "scipy:COBYQA", which the message names);
    `ValueError` for an unknown method name (naming the nearest), a non-finite `theta0` or
    one with no parameters (size 0), `tol=inf`, a `learning_rate` that is not positive and
    finite, `checkpoint_every=` without `checkpoint=`, or a mismatched checkpoint, and for
    `"scipy:COBYLA"`/`"scipy:COBYQA"` a `max_steps` below n + 2 or a `tol` above the initial
    radius (`rhobeg`/`initial_tr_radius`); `TypeError` also for a `key` that is not a PRNG
    key, a `batch_size` that is not an int, a loss that requires `key` without `key=`, or a
    loss (or residual) that raises at float64 `theta` on a SciPy route but runs in
    `theta0`'s dtype; `ValueError` also for a `batch_size` below 1 or above the rows of
    `args`, a batch of keys, or `tol=` with `batch_size=` (or a `key=` the loss
    takes), or `"ssbfgs"`/`"ssbroyden"` with them (their line search carries values from
    one step to the next), or an ensemble's stacked `res.state` the loss cannot take;
    `NotImplementedError` for
    `checkpoint=`, `batch_size=` or `key=` with a SciPy method, `bounds=`/`constraints=` with
    a SciPy method (`sb.minimize` runs them unconstrained; the message shows the same loss
    through `sb.scipy_objective` and `scipy.optimize.minimize`), or `state=` with a method
    other than first-order Optax.
    """
    where = "sb.minimize"
    theta0 = prepare_theta0(theta0, where, complex_ok=True)
    args, tol = prepare_args(args, where), check_tol(tol, where)
    warn_python_numbers(loss, theta0, args, method, where)
    check_run_inputs(theta0, tol, checkpoint, checkpoint_every, where)
    theta0, args = place(theta0, args, mesh, where)
    run = make_run(
        where, method, max_steps=max_steps, progress=progress, callback=callback, throw=throw,
        checkpoint=checkpoint, every=checkpoint_every, chunk=options.pop("chunk_size", 1000),
        resume=resume,
    )  # fmt: skip
    stateful = state is not None
    batch_size, key, pass_key = prepare_batches(loss, args, batch_size, key, tol, where,
                                                stateful=stateful)  # fmt: skip
    check_batches_method(method, batch_size, pass_key, where)
    loss = KeyedLoss(loss) if pass_key else loss
    member = theta0[0] if theta0.ndim == 2 else theta0
    if stateful:
        guard_x64(state, f"`{where}`", "`state`")
        probe = (*args, jax.random.key(0)) if pass_key else tuple(args)
        if theta0.ndim == 2:
            check_not_stacked(loss, member, state, probe, theta0.shape[0], where)
        state = prepare_state(loss, member, state, probe)
    loss = StatefulLoss(loss, where) if stateful else ScalarLoss(loss, where)
    plan = resolve_minimize(loss, member, method, tol, options, where, state, stateful)
    if plan.scipy is not None:
        if batch_size is not None or key is not None:
            raise NotImplementedError(_MSG_SCIPY_BATCHES.format(where=where))
        if run.checkpoint is not None:
            raise NotImplementedError(_MSG_CHECKPOINT.format(where=where, method=method))
        solve = lambda theta, run, flag: scipy_minimize(loss, theta, args, plan.scipy, tol,
                                                        options, run, flag)  # fmt: skip
        value = lambda theta, args: loss(theta, *args)
        return differentiating(lambda: solve_scipy(solve, theta0, run), value, member, args,
                              where, method)  # fmt: skip
    stepper = with_batches(plan.stepper, args, batch_size, key, pass_key, where)
    run.fingerprint = fingerprint(method, {**options, "batch_size": batch_size, "key": key}, tol,
                                  args)
    return differentiating(lambda: drive(stepper, theta0, args, run), stepper.value, member,
                          args, where, method)  # fmt: skip
