"""`sb.minimize`: one front door to Optax, Optimistix and SciPy for `loss(theta, *args)`.

The method is an argument (STYLE.md 1): switching from `"adam"` to `"lbfgs"` or
`"scipy:trust-ncg"` is a one-word edit, and every method returns the same `sb.Solution`.
"""

import os
from collections.abc import Callable
from typing import Any

import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import Mesh

from ._custom_types import ThetaLike
from ._ensemble import EnsembleSolution, drive_members, each_member, first_member
from ._precision import check_x64
from ._result import Solution
from ._sharding import place
from ._solvers._driver import Run
from ._solvers._optax import optax_stepper, optax_transform
from ._solvers._optimistix import is_optimistix_solver, minimiser, optimistix_stepper
from ._solvers._scipy_backend import scipy_minimize
from ._solvers._self_scaled import SelfScaledStepper


_MSG_THETA = """\
`{where}` expected `theta0` to be a 1-D real floating array (the flat parameter vector, e.g.
`fm.theta0` from `sb.flat`; or a 2-D `(members, n)` ensemble), but got {what}.
Fix: pass `jnp.ravel(theta0)` for the shape, or `theta0.astype(jnp.float64)` (x64 on) /
`.astype(jnp.float32)` for the dtype."""

_MSG_CHECKPOINT = """\
`{where}` cannot checkpoint method={method!r}: it runs in one dispatch (Optimistix) or inside
SciPy's own loop, so there is no state between chunks to save. Fix: checkpoint a fused method
(an Optax method such as "adam" or "lbfgs", or "gauss-newton" in `sb.least_squares`), or save
`res.theta` yourself with `sb.save` and chain runs."""


def prepare_theta0(theta0: ThetaLike, where: str) -> jnp.ndarray:
    """Refuse what would be silently wrong: float64 under x64 off, ints, complex, not 1-D
    (or 2-D: a `(members, n)` ensemble)."""
    dtype = np.dtype(theta0.dtype) if hasattr(theta0, "dtype") else np.asarray(theta0).dtype
    check_x64(dtype, f"`{where}`", "`theta0`")
    if np.ndim(theta0) not in (1, 2) or dtype.kind != "f":
        what = f"shape {np.shape(theta0)} and dtype {dtype}"
        raise TypeError(_MSG_THETA.format(where=where, what=what))
    return jnp.asarray(theta0)


def default_tol(dtype) -> float:
    """1e-8 in float64, 1e-4 in float32: reachable tolerances for either precision."""
    return 1e-8 if np.dtype(dtype).itemsize >= 8 else 1e-4


def make_run(where, method, *, max_steps, progress, callback, throw, checkpoint, every, chunk):
    if not isinstance(max_steps, int | np.integer) or max_steps < 1:
        raise ValueError(f"`{where}` expected `max_steps` to be a positive int, got {max_steps!r}.")
    if every is not None and (not isinstance(every, int | np.integer) or every < 1):
        raise ValueError(
            f"`{where}` expected `checkpoint_every` to be a positive int, got {every!r}."
        )
    if checkpoint is not None:
        checkpoint = os.fspath(checkpoint)
        every = chunk if every is None else every
        chunk = every
    return Run(
        where=where,
        method=method,
        max_steps=int(max_steps),
        chunk=int(max(1, min(chunk, max_steps))),
        progress=bool(progress),
        callback=callback,
        throw=bool(throw),
        checkpoint=checkpoint,
        checkpoint_every=every,
        stops_on_budget=True,
    )


def is_scipy(method: Any) -> bool:
    return isinstance(method, str) and method.lower().startswith("scipy:")


def refuse_checkpoint(run: Run, stepper) -> None:
    if run.checkpoint is not None and (stepper is None or not stepper.chunkable):
        raise NotImplementedError(_MSG_CHECKPOINT.format(where=run.where, method=run.method))


def _stepper(loss, theta0, method, tol, options, where):
    if isinstance(method, optax.GradientTransformation):
        return optax_stepper(loss, method, theta0, tol)
    if is_optimistix_solver(method):
        return optimistix_stepper(loss, method, least_squares=False, jac=None, options=options)
    if not isinstance(method, str):
        raise TypeError(
            f"`{where}` expected `method` to be a string, an `optax.GradientTransformation` or "
            f"an Optimistix minimiser, but got {type(method).__name__}."
        )
    tol_or_default = default_tol(theta0.dtype) if tol is None else tol
    if method in ("ssbfgs", "ssbroyden"):
        return SelfScaledStepper(loss, method, tol_or_default, **options)
    if method in ("bfgs", "nonlinear-cg"):
        solver = minimiser(method, tol_or_default)
        return optimistix_stepper(loss, solver, least_squares=False, jac=None, options=options)
    optimizer = optax_transform(method, options, where)
    return optax_stepper(loss, optimizer, theta0, tol_or_default if method == "lbfgs" else tol)


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
    theta0 = prepare_theta0(theta0, "sb.minimize")
    theta0, args = place(theta0, args, mesh, "sb.minimize")
    chunk = options.pop("chunk_size", 1000)
    run = make_run(
        "sb.minimize", method, max_steps=max_steps, progress=progress, callback=callback,
        throw=throw, checkpoint=checkpoint, every=checkpoint_every, chunk=chunk,
    )  # fmt: skip
    if is_scipy(method):
        refuse_checkpoint(run, None)
        solve = lambda theta, run: scipy_minimize(loss, theta, args, method[6:], tol, options, run)
        return each_member(solve, theta0, run)
    stepper = _stepper(loss, first_member(theta0), method, tol, options, "sb.minimize")
    refuse_checkpoint(run, stepper)
    run.stops_on_budget = getattr(stepper, "tol", 0.0) is not None
    return drive_members(stepper, theta0, args, run)
