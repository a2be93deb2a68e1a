"""The one table of `method=` names: which backend, which options it takes, which verb.

`sb.minimize` and `sb.least_squares` resolve their `method` here and nowhere else. Options a
method does not use are errors (never silently dropped), and a misspelt keyword names the
nearest valid one (`max_step=` -> `max_steps=`).
"""

import dataclasses
import inspect
from collections.abc import Callable
from typing import Any

import jax.numpy as jnp
import optax
import scipy.optimize

from ._gauss_newton import GaussNewtonStepper
from ._optax import optax_stepper, optax_transform
from ._optimistix import (
    is_optimistix_solver,
    least_squares_solver,
    minimiser,
    optimistix_stepper,
)
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
    if solver != "cg" and jnp.finfo(dtype).bits < 32:
        raise TypeError(_MSG_HALF.format(where=where, dtype=jnp.dtype(dtype).name,
                                         method=method, solver=solver))  # fmt: skip


def resolve_least_squares(fn, theta0, method, tol, options: dict, jac_mode, where: str) -> Plan:
    """`sb.least_squares`'s method. `jac_mode(by_shape)` resolves `jac="auto"` lazily."""
    if is_scipy(method):
        name = scipy_name(method, where, least_squares=True)
        check_options(options, scipy_least_squares_options(), where, method, extra=("jac",))
        return Plan(scipy=name)
    tol = default_tol(theta0.dtype) if tol is None else tol
    if method in ("gauss-newton", "natural-gradient"):
        check_options(options, _gauss_newton_options(), where, method, extra=("jac",))
        _check_lapack_dtype(theta0.dtype, method, options.get("solver", "auto"), where)
        return Plan(GaussNewtonStepper(fn, jac_mode(True), tol, **options))
    if is_optimistix_solver(method) or method in ("lm", "dogleg"):
        check_options(options, (), where, method, extra=("jac",))
        solver = least_squares_solver(method, tol) if isinstance(method, str) else method
        return Plan(optimistix_stepper(with_own_jacobian(fn), solver, least_squares=True,
                                       jac=jac_mode(False), options=options,
                                       dtype=theta0.dtype))  # fmt: skip
    if isinstance(method, str) and (method in MINIMIZE or hasattr(optax, method)):
        raise ValueError(_MSG_VERB.format(where=where, method=method, other="sb.minimize",
                                          valid=", ".join(map(repr, LEAST_SQUARES))))  # fmt: skip
    valid = ", ".join(map(repr, LEAST_SQUARES + tuple("scipy:" + m for m in SCIPY_LEAST_SQUARES)))
    raise ValueError(f"`{where}` got method={method!r}. Fix: use one of {valid}, or an "
                     "Optimistix least-squares solver object.")  # fmt: skip
