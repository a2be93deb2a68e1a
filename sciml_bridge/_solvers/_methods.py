"""The one table of `method=` names: which backend, which options it takes, which verb.

`sb.minimize` and `sb.least_squares` resolve their `method` here and nowhere else. Options a
method does not use are errors (never silently dropped), and a misspelt keyword names the
nearest valid one (`max_step=` -> `max_steps=`).
"""

import dataclasses
import difflib
import inspect
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
import optimistix as optx
import scipy.optimize

from ._gauss_newton import SOLVERS, GaussNewtonStepper
from ._optax import is_alias, optax_stepper, optax_transform
from ._optimistix import (
    SumOfSquares,
    is_optimistix_solver,
    least_squares_solver,
    minimiser,
    optimistix_stepper,
)
from ._option_checks import check_solver
from ._own_jacobian import with_own_jacobian
from ._self_scaled import SelfScaledStepper
from ._setup import check_options, default_tol
from ._stateful import check_first_order
from ._stepper import AbstractStepper


SCIPY_MINIMIZE = ("Nelder-Mead", "Powell", "CG", "BFGS", "Newton-CG", "L-BFGS-B", "TNC",
                  "COBYLA", "COBYQA", "SLSQP", "trust-constr", "dogleg", "trust-ncg",
                  "trust-exact", "trust-krylov")  # fmt: skip
SCIPY_LEAST_SQUARES = ("trf", "dogbox", "lm")
MINIMIZE = ("adam", "lbfgs", "bfgs", "nonlinear-cg")  # plus every Optax alias by name
MINIMIZE += ("ssbfgs", "ssbroyden")
LEAST_SQUARES = ("gauss-newton", "natural-gradient", "lm", "dogleg")

_OPTIMISTIX_OPTIONS = {"bfgs": ("autodiff_mode",), "nonlinear-cg": ("autodiff_mode",),
                       "lm": (), "dogleg": ()}  # fmt: skip
# `scipy.optimize.least_squares` keywords that we set ourselves.
_SCIPY_LS_OURS = {"fun", "x0", "jac", "method", "ftol", "xtol", "gtol", "max_nfev", "args",
                  "kwargs", "callback"}  # fmt: skip

_MSG_SCIPY = """\
`{where}` got method={method!r}, but {got!r} is not a SciPy method of
`scipy.optimize.{fn}`. Fix: use one of {valid}
(e.g. method="scipy:{example}"; names are case-insensitive)."""

_MSG_VERB = """\
`{where}` got method={method!r}, which is a method of `{other}`. Fix: call `{other}`, or use one
of {valid} here."""


_MSG_HALF = """\
`{where}` got a `theta0` of dtype {dtype}, but method={method!r} with solver={solver!r}
factorises the Jacobian with LAPACK, which has no {dtype} kernels (JAX raises "Unsupported
dtype {dtype}" from inside the step). Fix: `theta0.astype(jnp.float32)` (or float64 with x64
on), or `solver="cg"` (matrix-free CGLS, which runs in {dtype}). "lm" and "dogleg" also take
{dtype}."""


_MSG_UNKNOWN = """\
`{where}` got method={name!r}, which is neither a method of sciml_bridge nor an Optax
optimizer{hint}. Fix: use one of {known}, any `optax.<name>` alias (e.g. "sgd", "adamw"),
"scipy:<Method>", or pass an `optax.GradientTransformation` object."""

_MSG_LR_NONE = """\
`{where}` got `learning_rate=None` for method={name!r}. Optax reads None as "no step size"
(`optax.scale_by_learning_rate(None)` is the identity), so the update would be added
unscaled and unnegated: the loss goes up while the run reports success.
Fix: a positive number (e.g. `learning_rate=1e-3`, the default when omitted) or a schedule
(`optax.cosine_decay_schedule(1e-2, 1000)`)."""

_MSG_LR = """\
`{where}` expected `learning_rate` to be a finite real number >= 0 (or a schedule
`step -> number`), but got {got}. {why}
Fix: e.g. `learning_rate=1e-3`, or `optax.exponential_decay(1e-2, 1000, 0.5)` for a schedule."""


_MSG_SOLVER_TOL = """\
`{where}` got `tol={tol!r}` with the Optimistix solver object {solver}, which stops by its own
`rtol`/`atol` ({rtol!r}/{atol!r}); `tol=` would be ignored and the run would say "converged" at
the solver's tolerance. Fix: set them on the object (`{solver}(rtol={tol!r}, atol={tol!r})`)
and drop `tol=`, or pass the method by name (e.g. method="bfgs", "lm") with `tol=`."""


def _refuse_tol_with_solver(solver, tol, where: str) -> None:
    if tol is not None:
        name = type(solver).__name__
        raise ValueError(_MSG_SOLVER_TOL.format(where=where, tol=tol, solver=name,
                                                rtol=getattr(solver, "rtol", None),
                                                atol=getattr(solver, "atol", None)))  # fmt: skip


@dataclasses.dataclass(frozen=True)
class Plan:
    """A resolved method: a stepper for the fused driver, or a SciPy method name."""

    stepper: AbstractStepper | None = None
    scipy: str | None = None


def is_scipy(method: Any) -> bool:
    return isinstance(method, str) and method.lower().startswith("scipy:")


def scipy_name(method: str, where: str, least_squares: bool) -> str:
    got = method[6:]
    valid = SCIPY_LEAST_SQUARES if least_squares else SCIPY_MINIMIZE
    for name in valid:
        if name.lower() == got.lower():
            return name
    fn = "least_squares" if least_squares else "minimize"
    raise ValueError(_MSG_SCIPY.format(where=where, method=method, got=got, fn=fn,
                                       valid=", ".join(valid), example=valid[0]))  # fmt: skip


def _parameters(fn: Callable, skip=()) -> tuple | None:
    """The keyword names `fn` takes, or None if it takes `**kwargs`."""
    params = inspect.signature(fn).parameters.values()
    if any(p.kind is p.VAR_KEYWORD for p in params):
        return None
    return tuple(p.name for p in params if p.kind is not p.VAR_POSITIONAL and p.name not in skip)


def scipy_least_squares_options() -> tuple:
    return _parameters(scipy.optimize.least_squares, skip=_SCIPY_LS_OURS) or ()


def _optax_options(name: str) -> tuple | None:
    factory = getattr(optax, name, None)
    return _parameters(factory) if callable(factory) else ()


def _unknown(name: str, where: str, known: tuple) -> ValueError:
    """The error for a method name nobody knows, naming the nearest one (`"Adam"` -> `"adam"`)."""
    aliases = [n for n in dir(optax) if n.islower() and is_alias(n)]
    near = difflib.get_close_matches(name.lower(), [*known, *aliases], n=1)
    case = "; names are case-sensitive" if near and near[0] == name.lower() else ""
    hint = f' (did you mean "{near[0]}"{case}?)' if near else ""
    shown = ", ".join(f'"{m}"' for m in known)
    return ValueError(_MSG_UNKNOWN.format(where=where, name=name, known=shown, hint=hint))


def _check_learning_rate(name: str, options: dict, where: str) -> None:
    """A learning rate that would run silently wrong (None: gradient ascent; negative: ascent;
    NaN) or fail deep inside Optax (a string) is refused up front. Zero is allowed: it holds
    `theta` on purpose (e.g. to watch a stateful model's statistics move)."""
    if "learning_rate" not in options:
        return
    lr = options["learning_rate"]
    if lr is None:
        params = inspect.signature(getattr(optax, name)).parameters
        if "learning_rate" not in params or params["learning_rate"].default is None:
            return  # "lbfgs": None is its own default (its line search sets the step)
        raise TypeError(_MSG_LR_NONE.format(where=where, name=name))
    if callable(lr):  # a schedule
        return
    got = f"{lr!r} (a {type(lr).__name__})"
    number = isinstance(lr, int | float | np.generic | np.ndarray | jax.Array)
    dtype = np.asarray(lr).dtype if number else None
    if dtype is None or np.ndim(lr) != 0 or not (
        jnp.issubdtype(dtype, jnp.floating) or jnp.issubdtype(dtype, jnp.integer)
    ):  # a string, a complex or a bool (NumPy's kind for bfloat16 is "V": ask JAX)
        raise TypeError(_MSG_LR.format(where=where, got=got, why="It is one real number."))
    if not (np.isfinite(float(lr)) and float(lr) >= 0):
        why = "A negative one climbs the loss, and a NaN or infinite one makes it NaN."
        raise ValueError(_MSG_LR.format(where=where, got=got, why=why))


def resolve_minimize(fn, theta0, method, tol, options: dict, where: str, state0=None,
                     stateful: bool = False) -> Plan:  # fmt: skip
    """`sb.minimize`'s method: Optax (name or object), Optimistix (name or object), SciPy.
    A stateful loss (`state0`) or a complex `theta0` only runs with first-order Optax."""
    plan = _resolve(fn, theta0, method, tol, options, where, state0, stateful)
    check_first_order(plan.stepper, method, where, stateful=stateful,
                      complex_=jnp.iscomplexobj(theta0))  # fmt: skip
    return plan


def _resolve(fn, theta0, method, tol, options, where, state0, stateful) -> Plan:
    if is_scipy(method):
        return Plan(scipy=scipy_name(method, where, least_squares=False))
    if isinstance(method, optax.GradientTransformation):
        check_options(options, (), where, method)
        return Plan(optax_stepper(fn, method, theta0, tol, state0, stateful))
    if is_optimistix_solver(method):
        check_options(options, ("autodiff_mode",), where, method)
        _refuse_tol_with_solver(method, tol, where)
        return Plan(optimistix_stepper(fn, method, least_squares=False, jac=None,
                                       options=options, dtype=theta0.dtype))  # fmt: skip
    if not isinstance(method, str):
        raise TypeError(
            f"`{where}` expected `method` to be a string, an `optax.GradientTransformation` or "
            f"an Optimistix minimiser, but got {type(method).__name__}."
        )
    if method in LEAST_SQUARES and method not in MINIMIZE:
        raise ValueError(_MSG_VERB.format(where=where, method=method, other="sb.least_squares",
                                          valid=", ".join(map(repr, MINIMIZE))))  # fmt: skip
    tol_or_default = default_tol(theta0.dtype) if tol is None else tol
    if method in ("ssbfgs", "ssbroyden"):
        check_options(options, SelfScaledStepper.OPTIONS, where, method)
        return Plan(SelfScaledStepper(fn, method, tol_or_default, **options))
    if method in ("bfgs", "nonlinear-cg"):
        check_options(options, _OPTIMISTIX_OPTIONS[method], where, method)
        solver = minimiser(method, tol_or_default)
        return Plan(optimistix_stepper(fn, solver, least_squares=False, jac=None,
                                       options=options, dtype=theta0.dtype))  # fmt: skip
    if not is_alias(method):
        raise _unknown(method, where, MINIMIZE)
    _check_learning_rate(method, options, where)
    optimizer = optax_transform(method, options, where, _optax_options(method))
    tol = tol_or_default if method == "lbfgs" else tol
    return Plan(optax_stepper(fn, optimizer, theta0, tol, state0, stateful))


def _gauss_newton_options() -> tuple:
    ours = {"fn", "jac", "tol"}
    return tuple(f.name for f in dataclasses.fields(GaussNewtonStepper) if f.name not in ours)


def _check_lapack_dtype(dtype, method: str, solver: Any, where: str) -> None:
    # JAX's LAPACK bindings (jax 0.10, CPU) have no float16/bfloat16 kernels: `eigh`/`svd`
    # raised a bare NotImplementedError mid-trace. Every other fused method runs in half
    # precision (checked: Optax, "lbfgs", Optimistix, "ssbfgs"/"ssbroyden", "lm", "dogleg").
    # `solver` is checked first: a wrong one (`None`, "Kernel") got this dtype message,
    # whose advice (`solver="cg"`) did not name the mistake.
    solver = check_solver(solver, SOLVERS)
    if solver != "cg" and jnp.finfo(dtype).bits < 32:
        raise TypeError(_MSG_HALF.format(where=where, dtype=jnp.dtype(dtype).name,
                                         method=method, solver=solver))  # fmt: skip


def resolve_least_squares(fn, theta0, method, tol, options: dict, jac_mode, where: str) -> Plan:
    """`sb.least_squares`'s method. `jac_mode(by_shape)` resolves `jac="auto"` lazily."""
    if is_scipy(method):
        name = scipy_name(method, where, least_squares=True)
        check_options(options, scipy_least_squares_options(), where, method, extra=("jac",))
        return Plan(scipy=name)
    if is_optimistix_solver(method):
        _refuse_tol_with_solver(method, tol, where)
    tol = default_tol(theta0.dtype) if tol is None else tol
    if method in ("gauss-newton", "natural-gradient"):
        check_options(options, _gauss_newton_options(), where, method, extra=("jac",))
        _check_lapack_dtype(theta0.dtype, method, options.get("solver", "auto"), where)
        return Plan(GaussNewtonStepper(fn, jac_mode(True), tol, **options))
    if isinstance(method, optx.AbstractMinimiser):  # as `optx.least_squares` takes one
        check_options(options, ("autodiff_mode",), where, method, extra=("jac",))
        return Plan(optimistix_stepper(SumOfSquares(fn), method, least_squares=False, jac=None,
                                       options=options, dtype=theta0.dtype))  # fmt: skip
    if is_optimistix_solver(method) or method in ("lm", "dogleg"):
        check_options(options, (), where, method, extra=("jac",))
        solver = least_squares_solver(method, tol) if isinstance(method, str) else method
        return Plan(optimistix_stepper(with_own_jacobian(fn), solver, least_squares=True,
                                       jac=jac_mode(False), options=options,
                                       dtype=theta0.dtype))  # fmt: skip
    if isinstance(method, str) and (method in MINIMIZE or hasattr(optax, method)):
        raise ValueError(_MSG_VERB.format(where=where, method=method, other="sb.minimize",
                                          valid=", ".join(map(repr, LEAST_SQUARES))))  # fmt: skip
    names = LEAST_SQUARES + tuple("scipy:" + m for m in SCIPY_LEAST_SQUARES)
    valid = ", ".join(map(repr, names))
    if not isinstance(method, str):  # the kind is wrong, not the value (STYLE.md 6)
        raise TypeError(f"`{where}` expected `method` to be a string or an Optimistix "
                        f"least-squares solver object, but got {type(method).__name__}. "
                        f"Fix: use one of {valid}.")  # fmt: skip
    near = difflib.get_close_matches(method.lower(), names, n=1)
    case = " (names are case-sensitive)" if near and near[0] == method.lower() else ""
    hint = f' Did you mean "{near[0]}"?{case}' if near else ""
    raise ValueError(f"`{where}` got method={method!r}.{hint} Fix: use one of {valid}, or an "
                     "Optimistix least-squares solver object.")  # fmt: skip
