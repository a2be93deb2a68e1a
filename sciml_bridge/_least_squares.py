"""`sb.least_squares`: the same front door for residual-form losses `0.5 * sum(r**2)`.

Same signature and result as `sb.minimize` (STYLE.md 2), plus `jac=`: how the residual is
linearised. PITFALLS.md: Optimistix least-squares solvers linearise in forward mode, which fails
through a default-adjoint Diffrax solve ("can't apply forward-mode autodiff (jvp) to a
custom_vjp function"); `jac="auto"` detects that at trace time and switches to reverse mode.
"""

import os
from collections.abc import Callable
from typing import Any

import equinox as eqx
import jax
import jax.tree_util as jtu
import numpy as np
from jax.sharding import Mesh

from ._custom_types import ThetaLike
from ._ensemble import EnsembleSolution, drive_members, each_member, first_member
from ._minimize import default_tol, is_scipy, make_run, prepare_theta0, refuse_checkpoint
from ._result import Solution
from ._sharding import place
from ._solvers._gauss_newton import GaussNewtonStepper, check_options
from ._solvers._optimistix import is_optimistix_solver, least_squares_solver, optimistix_stepper
from ._solvers._scipy_backend import scipy_least_squares


_JVP_OF_CUSTOM_VJP = "can't apply forward-mode autodiff (jvp) to a custom_vjp function"


def _signature(residual, theta0, args):
    """What `jax.eval_shape` depends on: the functions, shapes, dtypes and static leaves."""
    leaves, treedef = jtu.tree_flatten(args)
    avals = tuple((x.shape, x.dtype) if eqx.is_array(x) else x for x in leaves)
    key = (residual, theta0.shape, theta0.dtype, treedef, avals)
    hash(key)
    return key


_FORWARD_OK: dict = {}


def _forward_ok(residual, theta0, args) -> bool:
    # Cached by abstract signature: repeated calls (chained runs, benchmarks) trace nothing.
    try:
        key = _signature(residual, theta0, args)
    except TypeError:
        return _check_forward(residual, theta0, args)
    if key not in _FORWARD_OK:
        _FORWARD_OK[key] = _check_forward(residual, theta0, args)
    return _FORWARD_OK[key]


def _check_forward(residual, theta0, args) -> bool:
    # `jax.jacfwd` (a vmapped jvp), not a bare `jax.jvp`: in jax 0.10 the bare jvp of a
    # custom_vjp traces fine and the refusal only comes under `vmap`, which is what lineax
    # and our dense Jacobian do.
    def jac(theta, args):
        return jax.jacfwd(lambda t: residual(t, *args))(theta)

    try:
        eqx.filter_eval_shape(jac, theta0, args)
    except Exception as e:  # re-raised unless it is the custom_vjp refusal
        if _JVP_OF_CUSTOM_VJP in str(e):
            return False
        raise
    return True


def resolve_jac(jac: str, residual, theta0, args, *, by_shape: bool, where: str) -> str:
    """`"fwd"` or `"bwd"`. With `by_shape`, a dense Jacobian picks the cheaper mode: forward
    for tall `J` (residuals >= parameters), reverse for wide."""
    if jac not in ("auto", "fwd", "bwd"):
        raise ValueError(f'`{where}` expected `jac` to be "auto", "fwd" or "bwd", got {jac!r}.')
    if jac != "auto":
        return jac
    if not _forward_ok(residual, theta0, args):
        return "bwd"
    if by_shape:
        return "fwd" if theta0.size <= _residual_size(residual, theta0, args) else "bwd"
    return "fwd"


_SIZES: dict = {}


def _residual_size(residual, theta0, args) -> int:
    def size():
        out = eqx.filter_eval_shape(lambda t, a: residual(t, *a), theta0, args)
        return int(np.prod(out.shape))

    try:
        key = _signature(residual, theta0, args)
    except TypeError:
        return size()
    if key not in _SIZES:
        _SIZES[key] = size()
    return _SIZES[key]


def _stepper(residual, theta0, method, tol, jac, options, args, where):
    tol = default_tol(theta0.dtype) if tol is None else tol
    if method in ("gauss-newton", "natural-gradient"):
        check_options(method, options)
        mode = resolve_jac(jac, residual, theta0, args, by_shape=True, where=where)
        return GaussNewtonStepper(residual, mode, tol, **options)
    mode = resolve_jac(jac, residual, theta0, args, by_shape=False, where=where)
    if is_optimistix_solver(method):
        return optimistix_stepper(residual, method, least_squares=True, jac=mode, options=options)
    if method in ("lm", "dogleg"):
        solver = least_squares_solver(method, tol)
        return optimistix_stepper(residual, solver, least_squares=True, jac=mode, options=options)
    raise ValueError(
        f"`{where}` got method={method!r}. Fix: use one of \"gauss-newton\", \"lm\", "
        '"dogleg", "scipy:trf", "scipy:lm", "scipy:dogbox", or an Optimistix least-squares '
        "solver object."
    )


def least_squares(
    residual: Callable[..., Any],
    theta0: ThetaLike,
    method: Any = "gauss-newton",
    *,
    args: tuple = (),
    max_steps: int = 1000,
    tol: float | None = None,
    jac: str = "auto",
    progress: bool = True,
    callback: Callable | None = None,
    throw: bool = True,
    checkpoint: str | os.PathLike | None = None,
    checkpoint_every: int | None = None,
    mesh: Mesh | None = None,
    **options: Any,
) -> Solution | EnsembleSolution:
    """Minimise `0.5 * sum(residual(theta, *args) ** 2)` over the flat vector `theta`.

    `"gauss-newton"` (default) is a dense damped Gauss-Newton for small models: the full
    Jacobian, the damped normal equations solved by Cholesky, adaptive damping and a
    backtracking line search, fused in one `jit`. It is what takes PINNs to 1e-6..1e-7.

    ```python
    x = jnp.linspace(0, 1, 32)
    res = sb.least_squares(lambda th, x: th[0] * jnp.exp(th[1] * x) - 2 * jnp.exp(-x),
                           jnp.array([1.0, 0.0]), args=(x,))
    res.theta  # ~ [2, -1]
    ```

    **Arguments:**

    Those of `sb.minimize` (same meaning), and:

    - `residual`: `residual(theta, *args) -> array` of any shape (flattened).
    - `method`: `"gauss-newton"` (default), `"lm"`/`"dogleg"` (Optimistix), `"scipy:trf"`,
        `"scipy:lm"`, `"scipy:dogbox"` (`scipy.optimize.least_squares` with a jitted
        Jacobian), or an Optimistix least-squares solver object.
    - `jac`: `"auto"` (default: forward mode, or reverse when the residual holds a
        `jax.custom_vjp` such as a default-adjoint Diffrax solve; for dense Jacobians the
        cheaper mode by shape), `"fwd"` or `"bwd"`.
    - `tol`: stopping tolerance (Gauss-Newton: gradient max-norm, relative loss decrease and
        relative step; Optimistix: `rtol=atol`; SciPy: `xtol=ftol=gtol`). Default 1e-8 in
        float64, 1e-4 in float32.
    - `**options`: Gauss-Newton `damping=` (1e-3, relative to `trace(J^T J)/n`),
        `max_backtracks=` (12); Optimistix `options`; extra `scipy.optimize.least_squares`
        keywords; `chunk_size=` for the fused Gauss-Newton.

    **Returns:**

    An `sb.Solution`; its `loss` is `0.5 * sum(r**2)`. For a 2-D `theta0`, an
    `sb.EnsembleSolution` (see `sb.minimize`).

    **Raises:**

    As `sb.minimize`; `ValueError` for an unknown `method` or `jac`.
    """
    where = "sb.least_squares"
    theta0 = prepare_theta0(theta0, where)
    theta0, args = place(theta0, args, mesh, where)
    member = first_member(theta0)
    chunk = options.pop("chunk_size", 1000)
    run = make_run(
        where, method, max_steps=max_steps, progress=progress, callback=callback,
        throw=throw, checkpoint=checkpoint, every=checkpoint_every, chunk=chunk,
    )  # fmt: skip
    if is_scipy(method):
        refuse_checkpoint(run, None)
        mode = resolve_jac(jac, residual, member, args, by_shape=True, where=where)
        solve = lambda theta, run: scipy_least_squares(
            residual, theta, args, method[6:], tol, mode, options, run
        )
        return each_member(solve, theta0, run)
    stepper = _stepper(residual, member, method, tol, jac, options, args, where)
    refuse_checkpoint(run, stepper)
    return drive_members(stepper, theta0, args, run)
