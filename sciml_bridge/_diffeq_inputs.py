"""Inputs of a neural differential equation, checked before Diffrax sees them.

Shapes, dtypes and option values are static, so they are checked once, at trace time, with
errors that name the fix; values (NaN, infinite times) are only known inside `jit` and are
reported with the solve's other failures (`_diffeq_report.py`).
"""

from collections.abc import Callable
from typing import Any

import diffrax
import equinox as eqx
import jax
import jax.core
import jax.numpy as jnp
import jax.tree_util as jtu
import numpy as np
from jaxtyping import Array

from ._precision import guard_x64


_MSG_DTYPE = (
    "`{where}` expected `{state}` and `ts` of the dtype of `theta` "
    "({theta}), but got `{state}` {y0} and `ts` {ts}. Mixing precisions inside the vector field "
    "would promote (or fail under strict promotion). Fix: cast them, e.g. "
    "`{state}.astype(theta.dtype)`, or build `theta` in the precision you want "
    "(`sb.flat(model, dtype=...)`)."
)
_MSG_COMPLEX = (
    "`{where}` got complex values (`theta` {theta}, `{state}` {y0}), but solves only real "
    "equations: Diffrax warns that its complex support \"may not yet produce correct "
    "results\", and times are real while `theta`, `{state}` and `ts` share one dtype. Fix: "
    "split the state into real and imaginary parts, e.g. "
    "`jnp.concatenate([{state}.real, {state}.imag])`, and write the vector field for them "
    "(the same for complex parameters)."
)
_MSG_DT0 = (
    "`{where}` expected `dt0` to be {want}, but got {got!r}. A zero or NaN first step never "
    "advances (Diffrax runs out of steps, or returns `inf` without a word). Fix: pass e.g. "
    "`dt0=0.01`{none}."
)
ORDERS = {
    "monotone": "each time must follow the one before it in one direction, increasing (or "
                "decreasing, to solve backwards in time; repeats are allowed)",
    "increasing": "a sample path runs forwards, so `ts` must be non-decreasing with "
                  "`ts[-1] > ts[0]` (Diffrax's Brownian motion needs `t0 < t1`)",
    "strict": "the knots of the control's interpolation must be strictly increasing, without "
              "repeats (Diffrax's `CubicInterpolation` needs it)",
}  # fmt: skip
_MSG_HALF = (
    "`{where}` got 16-bit floats (`theta` {theta}, `{state}` {y0}, `ts` {ts}), which a "
    "solve cannot step in: with 8 (bfloat16) or 11 (float16) bits of mantissa `t + dt` "
    "rounds back to `t` and the error estimates are noise, so the solve stalled and was "
    "blamed on `max_steps` (measured on a smooth 2-state ODE over [0, 1]). Fix: solve in "
    "float32 or float64, e.g. `theta.astype(jnp.float32)`, `{state}.astype(jnp.float32)` and "
    "`ts.astype(jnp.float32)`, and cast the result back if you must."
)
_MSG_THETA = (
    "`{where}` expected `theta` to be one 1-D floating vector (e.g. "
    "`fm.theta0`), but got shape {shape} and dtype {dtype}. Fix: pass the flat vector; for an "
    "ensemble of vectors use `jax.vmap` over `theta` (`in_axes=0` for `theta` only)."
)
_MSG_TS = (
    "`{where}` expected `ts` to be a 1-D array of at least two "
    "increasing times (the first is the time of `{state}`), but got shape {shape}. Fix: pass e.g. "
    "`ts = jnp.linspace(0.0, 1.5, 30)`."
)
_MSG_NOT_ARRAY = (
    "`{where}` expected `{name}` to be one array, but got {got}, which is not one ({error}). "
    "Fix: pass an array (`jnp.asarray(...)`); a nested state (a dict or tuple of arrays) goes "
    "in as one vector, e.g. `y0, unravel = jax.flatten_util.ravel_pytree(state)`, with the "
    "vector field written for that vector."
)
_MSG_FIELD_CALL = (
    "`{where}` could not evaluate the {which} at the state `{state}` {want}: {error}. Fix: "
    "pass a `{state}` of the shape the network takes (e.g. `sb.FlatMLP((2, ...))` takes 2 "
    "entries), or fix the {which}."
)
_MSG_MAX_STEPS_ARG = (
    "`{where}` expected `max_steps` to be a positive int (the most solver steps per solve), but "
    "got {got!r}. Fix: pass e.g. `max_steps=4096`."
)


def check_max_steps(max_steps: Any, where: str) -> int:
    """`max_steps` as a positive int; Diffrax itself fails obscurely on 0 and -1."""
    if isinstance(max_steps, bool | np.bool_) or not isinstance(max_steps, int | np.integer):
        raise TypeError(_MSG_MAX_STEPS_ARG.format(where=where, got=max_steps))
    if max_steps < 1:
        raise ValueError(_MSG_MAX_STEPS_ARG.format(where=where, got=max_steps))
    return int(max_steps)


def as_arrays(where: str, **named: Any) -> tuple[Array, ...]:
    """The one x64 guard, then `jnp.asarray`, for each named input, in order."""
    for name, value in named.items():
        guard_x64(value, f"`{where}`", f"`{name}`")
    return tuple(_as_array(where, name, value) for name, value in named.items())


def _as_array(where: str, name: str, value: Any) -> Array:
    try:
        return jnp.asarray(value)
    except (TypeError, ValueError) as e:
        got = type(value).__name__
        raise TypeError(_MSG_NOT_ARRAY.format(where=where, name=name, got=got, error=e)) from e


def check_inputs(theta: Array, y0: Array, ts: Array, where: str, state: str = "y0") -> None:
    """Trace-time checks: shapes and dtypes are static, so this costs nothing per call."""
    if theta.ndim != 1 or not jnp.issubdtype(theta.dtype, jnp.inexact):
        raise TypeError(_MSG_THETA.format(where=where, shape=theta.shape, dtype=theta.dtype))
    if ts.ndim != 1 or ts.shape[0] < 2:
        raise ValueError(_MSG_TS.format(where=where, state=state, shape=ts.shape))
    if jnp.iscomplexobj(theta) or jnp.iscomplexobj(y0):
        # Else the dtype rule below asked for a complex `ts`, which no solve can use.
        raise TypeError(_MSG_COMPLEX.format(where=where, state=state, theta=theta.dtype,
                                            y0=y0.dtype))
    if any(jnp.finfo(x.dtype).bits == 16 for x in (theta, y0, ts) if _is_float(x)):
        raise TypeError(_MSG_HALF.format(where=where, state=state, theta=theta.dtype,
                                         y0=y0.dtype, ts=ts.dtype))
    if not (y0.dtype == theta.dtype == ts.dtype):
        raise TypeError(_MSG_DTYPE.format(where=where, state=state, theta=theta.dtype,
                                          y0=y0.dtype, ts=ts.dtype))


def _is_float(x: Array) -> bool:
    return jnp.issubdtype(x.dtype, jnp.floating)


def check_dt0(dt0: Any, where: str, *, positive: bool = False) -> Any:
    """`dt0` as given, if it is `None` (not for an SDE), a finite non-zero number, or positive.

    Negative steps are how Diffrax solves backwards in time (`ts` decreasing), so an ODE or a
    CDE allows them; an SDE (`positive=True`) does not. A traced `dt0` is not checked.
    """
    want = ("a positive finite number" if positive else
            "`None` (adaptive step size controllers pick it) or a finite non-zero number")
    none = "" if positive else ", or `dt0=None` with an adaptive step size controller"
    if dt0 is None and not positive:
        return dt0
    if isinstance(dt0, jax.core.Tracer):
        return dt0
    msg = _MSG_DT0.format(where=where, want=want, got=dt0, none=none)
    number = isinstance(dt0, int | float | np.number | np.ndarray | jax.Array)
    if isinstance(dt0, bool) or not number or np.ndim(dt0) != 0 or not jnp.isrealobj(dt0):
        raise TypeError(msg)
    value = float(dt0)
    if not np.isfinite(value) or value == 0 or (positive and value < 0):
        raise ValueError(msg)
    return dt0


def bad_times(ts: Array, steady_end: bool) -> Array:
    """`ts` not all finite; `ts[-1] = +inf` is allowed when the solve stops at an `event`."""
    finite = jnp.isfinite(ts)
    if steady_end:
        finite = finite.at[-1].set(finite[-1] | (ts[-1] == jnp.inf))
    return ~jnp.all(finite)


def out_of_order(ts: Array, order: str) -> Array:
    """`ts` break the `ORDERS[order]` rule (Diffrax checks it with its own runtime error, which
    `throw=False` cannot turn into values)."""
    step = jnp.diff(ts)
    if order == "monotone":
        return ~(jnp.all(step >= 0) | jnp.all(step <= 0))
    if order == "increasing":
        return ~(jnp.all(step >= 0) & (ts[-1] > ts[0]))
    return ~jnp.all(step > 0)


def placeholder_times(ts: Array, bad: Array) -> Array:
    """Diffrax rejects a NaN `ts` (and runs out of steps from `-inf`), and `ts` out of order,
    even under `throw=False`: solve on placeholder times instead and report the bad `ts` as
    ours."""
    return jnp.where(bad, jnp.arange(ts.shape[0], dtype=ts.dtype), ts)


def progress_meter(progress: bool) -> diffrax.AbstractProgressMeter:
    return diffrax.TqdmProgressMeter() if progress else diffrax.NoProgressMeter()


def field_shape(where: str, which: str, state: str, field: Callable, t0: Array, y0: Array,
                args: Any) -> Any:
    """The shape of `field(t0, y0, args)`; a field that cannot take `y0` (a state of another
    size than the network's input) is our error naming the state, not XLA's `dot_general`."""
    try:
        return eqx.filter_eval_shape(field, t0, y0, args)
    except (TypeError, ValueError) as e:
        # The error's own fix (e.g. FlatMLP's "batch with jax.vmap") is not this one's.
        error = " ".join(str(e).split()).split(" Fix: ")[0].rstrip(".") or type(e).__name__
        raise ValueError(_MSG_FIELD_CALL.format(where=where, which=which, state=state,
                                                want=shapes(y0), error=error)) from e


def shapes(tree: Any) -> str:
    return str(jtu.tree_map(lambda x: f"{x.dtype}{list(x.shape)}", tree))
