"""`sb.least_squares`: the same front door for residual-form losses `0.5 * sum(r**2)`.

Same signature and result as `sb.minimize` (STYLE.md 2), plus `jac=`: how the residual is
linearised. PITFALLS.md: Optimistix least-squares solvers linearise in forward mode, which fails
through a default-adjoint Diffrax solve ("can't apply forward-mode autodiff (jvp) to a
custom_vjp function"); `jac="auto"` detects that at trace time and switches to reverse mode.
"""

import collections
import os
from collections.abc import Callable
from typing import Any, Literal

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.tree_util as jtu
import numpy as np
from jax.sharding import Mesh

from ._custom_types import ThetaBatchLike, ThetaLike, Validated
from ._result import EnsembleSolution, Solution
from ._sharding import place
from ._solvers._batches import KeyedLoss, prepare_batches, with_batches
from ._solvers._checkpoint import fingerprint
from ._solvers._methods import resolve_least_squares
from ._solvers._outputs import Residual
from ._solvers._own_jacobian import own_jacobian
from ._solvers._recompile import warn_python_numbers
from ._solvers._run import drive
from ._solvers._run_gradient import differentiating
from ._solvers._scipy_backend import scipy_least_squares, solve_scipy
from ._solvers._setup import check_run_inputs, check_tol, make_run, prepare_args, prepare_theta0


_JVP_OF_CUSTOM_VJP = "can't apply forward-mode autodiff (jvp) to a custom_vjp function"

_MSG_SCIPY_BATCHES = """\
`{where}` cannot draw minibatches or keys for a SciPy method: SciPy expects a deterministic
objective. Fix: use an Optax method (e.g. "adam") with `batch_size=`/`key=`, or drop them."""

_MSG_CHECKPOINT = """\
`{where}` cannot checkpoint method={method!r}: SciPy runs its own loop, so there is no state
between chunks to save. Fix: use "natural-gradient", "gauss-newton", "lm" or "dogleg" to
checkpoint, or save `res.theta` yourself with `sb.save` and chain runs."""


class _LRU:
    """A bounded cache: the answers of abstract traces, keyed on what they depend on (the
    function, shapes, dtypes, static leaves), so repeated runs trace nothing and the cache
    never grows without bound."""

    def __init__(self, size: int = 128):
        self.size, self.data = size, collections.OrderedDict()

    def get(self, key, compute):
        if key is None:
            return compute()
        if key in self.data:
            self.data.move_to_end(key)
            return self.data[key]
        value = self.data[key] = compute()
        if len(self.data) > self.size:
            self.data.popitem(last=False)
        return value


_FORWARD_OK = _LRU()
_SIZES = _LRU()


def _signature(residual, theta0, args):
    """What `jax.eval_shape` depends on, or None when it cannot be a cache key."""
    leaves, treedef = jtu.tree_flatten(args)
    avals = tuple((x.shape, x.dtype) if eqx.is_array(x) else x for x in leaves)
    key = (residual, theta0.shape, theta0.dtype, treedef, avals)
    try:
        hash(key)
    except TypeError:
        return None
    return key


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


def _residual_size(residual, theta0, args) -> int:
    out = eqx.filter_eval_shape(lambda t, a: residual(t, *a), theta0, args)
    return int(np.prod(out.shape))


_MSG_EMPTY_RESIDUAL = """\
`{where}` expected `residual(theta, *args)` to return at least one residual, but it returned
an array of shape {shape} (size 0): the loss `0.5 * sum(r**2)` would be 0 whatever `theta`.
Fix: return the residuals to fit (e.g. `model(theta, x) - y` with `x`, `y` not empty)."""


_MSG_MINPACK_WIDE = """\
`{where}` got method="scipy:lm" with {m} residual(s) for {n} parameters, but MINPACK's
Levenberg-Marquardt needs at least as many residuals as parameters (SciPy raised "Method 'lm'
doesn't work when the number of residuals is less than the number of variables" from inside
the run). Fix: method="scipy:trf" or "lm" (Optimistix), or "gauss-newton" (its kernel form is
meant for wide Jacobians)."""


def _check_residual_size(residual, theta0, args, where: str, scipy: str | None) -> None:
    """An empty residual failed deep in every backend ("zero-size array to reduction
    operation max"), and a wide one inside "scipy:lm" (reported as a solver failure).
    Checked on the abstract output, once per signature (`_SIZES`)."""
    key = _signature(residual, theta0, args)
    size = _SIZES.get(key, lambda: _residual_size(residual, theta0, args))
    if size == 0:
        shape = eqx.filter_eval_shape(lambda t, a: residual(t, *a), theta0, args).shape
        raise ValueError(_MSG_EMPTY_RESIDUAL.format(where=where, shape=tuple(shape)))
    if scipy == "lm" and size < theta0.size:
        raise ValueError(_MSG_MINPACK_WIDE.format(where=where, m=size, n=theta0.size))


def resolve_jac(jac: str, residual, theta0, args, *, by_shape: bool, where: str) -> str:
    """`"fwd"` or `"bwd"`. With `by_shape`, a dense Jacobian picks the cheaper mode: forward
    for tall `J` (residuals >= parameters), reverse for wide."""
    if jac not in ("auto", "fwd", "bwd"):
        raise ValueError(f'`{where}` expected `jac` to be "auto", "fwd" or "bwd", got {jac!r}.')
    if jac != "auto":
        return jac
    if own_jacobian(residual) is not None:  # never differentiated: its Jacobian is its own
        return "fwd"
    key = _signature(residual, theta0, args)
    if not _FORWARD_OK.get(key, lambda: _check_forward(residual, theta0, args)):
        return "bwd"
    if by_shape:
        size = _SIZES.get(key, lambda: _residual_size(residual, theta0, args))
        return "fwd" if theta0.size <= size else "bwd"
    return "fwd"


def least_squares(
    residual: Callable[..., Any],
    theta0: ThetaLike | ThetaBatchLike,
    method: Any = "gauss-newton",
    *,
    args: Validated[tuple] = (),
    max_steps: Validated[int] = 1000,
    tol: Validated[float | None] = None,
    jac: str = "auto",
    progress: Validated[bool] = True,
    callback: Validated[Callable | None] = None,
    throw: Validated[bool] = True,
    checkpoint: str | os.PathLike | None = None,
    checkpoint_every: Validated[int | None] = None,
    resume: Validated[Literal["check", "force"]] = "check",
    mesh: Validated[Mesh | None] = None,
    batch_size: Validated[int | None] = None,
    key: Any = None,
    **options: Any,
) -> Solution | EnsembleSolution:
    """Minimise `0.5 * sum(residual(theta, *args) ** 2)` over the flat vector `theta`.

    `"gauss-newton"` (default) and `"natural-gradient"` run one truncated Gauss-Newton step,
    which for this loss equals energy natural gradient (Mueller & Zeinhofer, ICML 2023): the
    direction `-pinv(J) r` with singular values below `rcond * sigma_max` cut off, the best of
    the step sizes `2^-k`, k = 0..30, evaluated in one `vmap`, no damping. It is what takes
    PINNs to 1e-7. When no step size lowers the loss, coarser cutoffs are tried
    (`fallback_rcond`); when those cannot either before `tol` is met, the run stops with
    `success=False` and `result=sb.RESULTS.stalled` (the Gauss-Newton model is wrong there;
    the run is not at a minimum), returning the last point reached.

    !!! example

        ```python
        x = jnp.linspace(0, 1, 32)
        res = sb.least_squares(lambda th, x: th[0] * jnp.exp(th[1] * x) - 2 * jnp.exp(-x),
                               jnp.array([1.0, 0.0]), args=(x,))
        res.theta  # ~ [2, -1]
        ```

    **Arguments:**

    Those of `sb.minimize` (same meaning: `batch_size=`/`key=` switch off the stopping rule
    and refuse `tol=`, every ensemble member shares one `key`; a `callback` that raises
    stops the run with `sb.OptimizationError`; SciPy's `res.loss` is the loss at the
    returned `theta`, in `theta0`'s dtype), and:

    - `residual`: `residual(theta, *args) -> array` of any shape (flattened).
    - `method`: `"gauss-newton"` (default) or `"natural-gradient"` (the same step),
        `"lm"`/`"dogleg"` (Optimistix), `"scipy:trf"`,
        `"scipy:lm"`, `"scipy:dogbox"` (`scipy.optimize.least_squares` with a jitted
        Jacobian), or an Optimistix least-squares solver object (or minimiser, e.g.
        `optx.BFGS`, run on `0.5 * sum(r**2)` as `optx.least_squares` does).
    - `jac`: `"auto"` (default: forward mode, or reverse when the residual holds a
        `jax.custom_vjp` such as a default-adjoint Diffrax solve; for dense Jacobians the
        cheaper mode by shape), `"fwd"` or `"bwd"`. A residual with its own
        `residual_and_jacobian(theta, *args) -> (r, J)` (an `sb.pinn` residual: per point,
        in reverse mode) is linearised by it in every method, SciPy's and Optimistix's too.
    - `tol`: stopping tolerance (Gauss-Newton: gradient max-norm, or the relative loss
        decrease its model predicts, `0.5 |U_k^T r|^2 / loss`; Optimistix: `rtol=atol`;
        SciPy: `xtol=ftol=gtol`). Default 1e-8 in float64, 1e-4 in float32.
    - `**options`: Gauss-Newton / natural gradient `rcond=` (cutoffs relative to the largest
        singular value, default `(1e-7, 1e-8)`, all tried in the line search),
        `fallback_rcond=` (coarser cutoffs, default `(1e-4, 1e-2)`, tried only when no step
        along the `rcond` directions lowers the loss; `()` to stall there instead; not used
        by `solver="cg"`), `solver=`
        (`"auto"`: the Gramian `J^T J` for tall `J`, the kernel `J J^T` for wide, matrix-free
        CGLS above 2e7 Jacobian entries; or `"gramian"`, `"kernel"`, `"svd"` (thin SVD of
        `J`), `"cg"` with `cg_steps=200`, `cg_tol=1e-10` (never below the dtype's `eps`);
        CGLS also stops before a direction whose curvature `|J p|/|p|` is below `min(rcond)`
        (at least `eps`) times the largest seen, and once `J^T (J d + r)` is at the rounding
        level of its products, so at a least-squares solution its step is 0),
        `line_search_steps=` (30),
        `geodesic=False` (also try curved steps `alpha d + alpha^2/2 a`, Transtrum & Sethna),
        `line_search_batch=0` (trial steps evaluated this many at a time; 0: one at a time
        on CPU, all at once on accelerators); Optimistix `options`; extra
        `scipy.optimize.least_squares` keywords; `chunk_size=` for the fused methods. Options
        of the wrong kind raise `TypeError`, out of range `ValueError`; `rcond`/
        `fallback_rcond` take a number or a sequence (tuple, list, 1-D array) in [0, 1).

    **Returns:**

    An `sb.Solution`; its `loss` is `0.5 * sum(r**2)`. For a 2-D `theta0`, an
    `sb.EnsembleSolution` (see `sb.minimize`).

    **Raises:**

    As `sb.minimize`; `ValueError` for an unknown `method` (naming the nearest) or `jac`, or
    a residual of size 0; `TypeError` for a `method` that is neither a string nor a solver, or a
    float16/bfloat16 `theta0` with `"gauss-newton"`/`"natural-gradient"` (their LAPACK
    factorisations have no half-precision kernels) unless `solver="cg"`.
    """
    where = "sb.least_squares"
    theta0 = prepare_theta0(theta0, where)
    args, tol = prepare_args(args, where), check_tol(tol, where)
    warn_python_numbers(residual, theta0, args, method, where)
    check_run_inputs(theta0, tol, checkpoint, checkpoint_every, where)
    theta0, args = place(theta0, args, mesh, where)
    run = make_run(
        where, method, max_steps=max_steps, progress=progress, callback=callback, throw=throw,
        checkpoint=checkpoint, every=checkpoint_every, chunk=options.pop("chunk_size", 1000),
        resume=resume,
    )  # fmt: skip
    # The sum of squares, to tell a residual JAX cannot differentiate from other failures.
    value = lambda theta, a: 0.5 * jnp.sum(jnp.abs(jnp.ravel(residual(theta, *a))) ** 2)
    member = theta0[0] if theta0.ndim == 2 else theta0
    solve = lambda: _solve(residual, theta0, method, args, tol, run, jac, batch_size, key,
                           options, where)  # fmt: skip
    return differentiating(solve, value, member, args, where, method)


def _solve(residual, theta0, method, args, tol, run, jac, batch_size, key, options, where):
    batch_size, key, pass_key = prepare_batches(residual, args, batch_size, key, tol, where)
    residual = Residual(KeyedLoss(residual) if pass_key else residual, where)
    member = theta0[0] if theta0.ndim == 2 else theta0
    probe = (*args, jax.random.key(0)) if pass_key else args  # what the residual is called with
    mode = lambda by_shape: resolve_jac(jac, residual, member, probe, by_shape=by_shape,
                                        where=where)  # fmt: skip
    plan = resolve_least_squares(residual, member, method, tol, options, mode, where)
    _check_residual_size(residual, member, probe, where, plan.scipy)  # after the plan's refusals
    if plan.scipy is not None:
        if batch_size is not None or key is not None:
            raise NotImplementedError(_MSG_SCIPY_BATCHES.format(where=where))
        if run.checkpoint is not None:
            raise NotImplementedError(_MSG_CHECKPOINT.format(where=where, method=method))
        jac_mode = mode(True)
        solve = lambda theta, run, flag: scipy_least_squares(
            residual, theta, args, plan.scipy, tol, jac_mode, options, run, flag
        )
        return solve_scipy(solve, theta0, run)
    stepper = with_batches(plan.stepper, args, batch_size, key, pass_key, where)
    run.fingerprint = fingerprint(method, {**options, "batch_size": batch_size, "key": key}, tol,
                                  args)
    return drive(stepper, theta0, args, run)
