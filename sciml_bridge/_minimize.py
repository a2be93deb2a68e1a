"""`sb.minimize`: one front door to Optax, Optimistix and SciPy for `loss(theta, *args)`.

The method is an argument (STYLE.md 1): switching from `"adam"` to `"lbfgs"` or
`"scipy:trust-ncg"` is a one-word edit, and every method returns the same `sb.Solution`.
"""

import os
from collections.abc import Callable
from typing import Any

from jax.sharding import Mesh

from ._custom_types import ThetaLike
from ._result import EnsembleSolution, Solution
from ._sharding import place
from ._solvers._checkpoint import fingerprint
from ._solvers._methods import resolve_minimize
from ._solvers._outputs import ScalarLoss
from ._solvers._run import drive
from ._solvers._scipy_backend import scipy_minimize, solve_scipy
from ._solvers._setup import check_tol, make_run, prepare_args, prepare_theta0


_MSG_CHECKPOINT = """\
`{where}` cannot checkpoint method={method!r}: SciPy runs its own loop, so there is no state
between chunks to save. Fix: checkpoint a method of ours (an Optax method such as "adam" or
"lbfgs", "bfgs", or "gauss-newton"/"lm" in `sb.least_squares`), or save `res.theta` yourself
with `sb.save` and chain runs."""


def minimize(
    loss: Callable[..., Any],
    theta0: ThetaLike,
    method: Any = "adam",
    *,
    args: tuple = (),
    max_steps: int = 1000,
    tol: float | None = None,
    progress: bool = True,
    callback: Callable | None = None,
    throw: bool = True,
    checkpoint: str | os.PathLike | None = None,
    checkpoint_every: int | None = None,
    resume: str = "check",
    mesh: Mesh | None = None,
    **options: Any,
) -> Solution | EnsembleSolution:
    """Minimise `loss(theta, *args)` over the flat vector `theta`, with any backend.

    First-order methods run fused: `chunk_size` steps per dispatch inside one `jit` (the loss
    curve is the same as a step-by-step loop's), with a progress bar between chunks. A
    non-finite loss stops the run and keeps the last finite `theta`; Ctrl-C between chunks
    returns the partial result. Chaining is natural:

    ```python
    fm = sb.flat(eqx.nn.MLP(1, 1, 10, 2, activation=jnp.tanh, key=jax.random.key(0)))
    x = jnp.linspace(-1, 1, 64)[:, None]
    loss = lambda th, x: jnp.mean((jax.vmap(fm, (None, 0))(th, x) - jnp.sin(3 * x)) ** 2)
    res = sb.minimize(loss, fm.theta0, "adam", args=(x,), max_steps=2000, learning_rate=1e-2)
    res = sb.minimize(loss, res.theta, "lbfgs", args=(x,), max_steps=500, throw=False)
    ```

    **Arguments:**

    - `loss`: `loss(theta, *args) -> scalar`, JAX-traceable.
    - `theta0`: 1-D real floating start (float64 stays float64; float64 NumPy data with x64
        off is a `TypeError`).
    - `method`: `"adam"` (default) or any `optax` alias by name (`"sgd"`, `"adamw"`, ...;
        `learning_rate` defaults to 1e-3), `"lbfgs"` (Optax L-BFGS with zoom line search),
        `"bfgs"`/`"nonlinear-cg"` (Optimistix), `"scipy:<Method>"` (any
        `scipy.optimize.minimize` method; trust-region methods get `hessp`), an
        `optax.GradientTransformation` or an Optimistix minimiser object.
    - `args`: extra arguments passed to `loss` (default `()`).
    - `max_steps`: step budget (default 1000).
    - `tol`: gradient-norm tolerance (Optax; default `None` runs the whole budget, except
        `"lbfgs"`), `rtol=atol` (Optimistix), or SciPy's `tol`. `None` means 1e-8 in float64,
        1e-4 in float32 where a default is needed.
    - `progress`: tqdm bar with the loss between chunks (off when stderr is not a terminal).
    - `callback`: `callback(step, theta, loss)` between chunks (SciPy: every iteration);
        returning `True` stops the run successfully.
    - `throw`: raise `sb.OptimizationError` on failure (default) or return it in the result.
    - `checkpoint`, `checkpoint_every`: a path to save the full optimizer state to every
        `checkpoint_every` steps (fused methods only); an existing file there is resumed from,
        and `max_steps` counts the steps before the resume.
    - `mesh`: a `jax.sharding.Mesh` for data parallelism: `theta` is replicated, the data in
        `args` is split along its leading axis across the devices (see `sb.shard`), and XLA
        reduces the gradients. The results equal a single-device run's.
    - `**options`: passed to the Optax constructor (e.g. `learning_rate=`), to Optimistix as
        `options`, or to SciPy as `options`; `chunk_size=` (default 1000) sets the steps per
        dispatch of fused methods.

    **Returns:**

    An `sb.Solution` (`theta`, `loss`, `history`, `steps`, `success`, `message`, `wall_time`,
    `result`). For a 2-D `theta0` (an ensemble: one row per member, e.g.
    `jnp.stack([sb.FlatMLP(sizes, key=k).theta0 for k in keys])`) an `sb.EnsembleSolution`:
    every member trained at once (vmapped; SciPy methods one after another), each member's
    own `Solution` in `res[i]`; a member that fails never stops or corrupts the others.

    **Raises:**

    `sb.NonFiniteLossError` / `sb.OptimizationError` (with `.theta`, `.result`) on failure when
    `throw=True`; `TypeError` for a bad `theta0` or `method` type; `ValueError` for an unknown
    method name; `NotImplementedError` for `checkpoint=` with a non-fused method.
    """
    where = "sb.minimize"
    theta0 = prepare_theta0(theta0, where)
    args, tol = prepare_args(args, where), check_tol(tol, where)
    theta0, args = place(theta0, args, mesh, where)
    run = make_run(
        where, method, max_steps=max_steps, progress=progress, callback=callback, throw=throw,
        checkpoint=checkpoint, every=checkpoint_every, chunk=options.pop("chunk_size", 1000),
        resume=resume,
    )  # fmt: skip
    loss = ScalarLoss(loss, where)
    member = theta0[0] if theta0.ndim == 2 else theta0
    plan = resolve_minimize(loss, member, method, tol, options, where)
    if plan.scipy is not None:
        if run.checkpoint is not None:
            raise NotImplementedError(_MSG_CHECKPOINT.format(where=where, method=method))
        solve = lambda theta, run, flag: scipy_minimize(loss, theta, args, plan.scipy, tol,
                                                        options, run, flag)  # fmt: skip
        return solve_scipy(solve, theta0, run)
    run.fingerprint = fingerprint(method, options, tol)
    return drive(plan.stepper, theta0, args, run)
