"""What every run needs before the first step: the checked `theta0`, `args`, `tol`, and `Run`.

One validator per input, one message set, used by `sb.minimize` and `sb.least_squares` alike
(STYLE.md 5: each message says what was expected, what was got, and the fix).
"""

import dataclasses
import difflib
import math
import os
import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from .._distributed import host
from .._precision import guard_x64
from ._option_checks import count, flag, real


_MSG_THETA = """\
`{where}` expected `theta0` to be a 1-D real floating array (the flat parameter vector, e.g.
`fm.theta0` from `sb.flat`; or a 2-D `(members, n)` ensemble), but got {what}.
Fix: pass `jnp.ravel(theta0)` for the shape, or `theta0.astype(jnp.float64)` (x64 on) /
`.astype(jnp.float32)` for the dtype."""

_MSG_NONFINITE_THETA = """\
`{where}` got a `theta0` with non-finite entries ({count} NaN/inf, the first at index
{first}). No method can start from there. Fix: start from finite parameters (e.g.
`fm.theta0`), or find where the NaN came from (`jnp.isnan(theta0)`)."""

_MSG_ARGS = """\
`{where}` expected `args` to be a tuple of extra arguments for the loss
(`loss(theta, *args)`), but got {got}. An array would be unpacked row by row.
Fix: `args=(x,)` (note the comma) or `args=(x, y)`."""

_MSG_TOL = """\
`{where}` expected `tol` to be None or a positive real number, but got {got!r}.
Fix: {fix}, or `tol=None` for the method's own rule."""


_MSG_DIRECTORY = """\
`{where}` got checkpoint={path!r}, which is a directory. `checkpoint=` is the path of one
file: the run writes its state there, and resumes from it when it exists.
Fix: name a file in that directory, e.g. `checkpoint=os.path.join({path!r}, "run.npz")`."""

# The keywords of the verbs themselves: a misspelt one must be reported as such.
VERB_KEYWORDS = ("args", "max_steps", "tol", "progress", "callback", "throw", "checkpoint",
                 "checkpoint_every", "resume", "mesh", "chunk_size", "batch_size",
                 "key", "state")  # fmt: skip

_MSG_OPTION = """\
`{where}` got the keyword `{key}=`, which neither `{where}` nor method={method!r} takes{hint}.
Options that method={method!r} takes: {valid}."""


@dataclasses.dataclass
class Run:
    """Options of one run that are not the method's own."""

    where: str
    method: Any
    max_steps: int
    chunk: int
    progress: bool
    callback: Any
    throw: bool
    checkpoint: str | None
    checkpoint_every: int | None
    resume: str = "check"
    fingerprint: dict = dataclasses.field(default_factory=dict)
    start: float = dataclasses.field(default_factory=time.perf_counter)


def _verbosity(progress, verb: str) -> bool:
    # An int is a verbosity level (`progress=verbose`, 0/1), as before; `progress="no"` (truthy)
    # is a mistake.
    if isinstance(progress, int | np.integer) and not isinstance(progress, bool | np.bool_):
        return bool(progress)
    return flag(progress, "progress", verb)


def make_run(where, method, *, max_steps, progress, callback, throw, checkpoint, every, chunk,
             resume="check") -> Run:  # fmt: skip
    verb = where.removeprefix("sb.")
    max_steps = count(max_steps, "max_steps", verb, 1)
    chunk = count(chunk, "chunk_size", verb, 1)
    if every is not None:
        every = count(every, "checkpoint_every", verb, 1)
    if resume not in ("check", "force"):
        raise ValueError(f'`{where}` expected `resume` to be "check" or "force", got {resume!r}.')
    if checkpoint is not None:
        checkpoint = os.fspath(checkpoint)
        if os.path.isdir(checkpoint):
            raise ValueError(_MSG_DIRECTORY.format(where=where, path=checkpoint))
        every = chunk if every is None else every
        chunk = every
    if callback is not None and not callable(callback):
        raise TypeError(f"`{where}` expected `callback` to be callable or None, got "
                        f"{type(callback).__name__}.")  # fmt: skip
    # `chunk` is the length of the loss buffer each compiled chunk fills (static; the number
    # of steps a chunk runs is traced, `_fused.py`). Capped by `max_steps` rounded up to a
    # power of two: a new `max_steps` mostly reuses the compiled chunk (it recompiled for
    # every `max_steps` below `chunk_size`), and a short run of many members does not carry
    # a buffer of `chunk_size` losses each (20,000 members: 160 MB per chunk at 5 steps).
    chunk = min(chunk, 1 << (max_steps - 1).bit_length())
    return Run(where=where, method=method, max_steps=max_steps, chunk=chunk,
               progress=_verbosity(progress, verb), callback=callback,
               throw=flag(throw, "throw", verb),
               checkpoint=checkpoint, checkpoint_every=every, resume=resume)  # fmt: skip


def prepare_theta0(theta0, where: str, complex_ok: bool = False) -> jax.Array:
    """The one `theta0` validator: x64 guard, 1-D or 2-D real floating (or complex, with
    `complex_ok`), finite, non-empty."""
    guard_x64(theta0, f"`{where}`", "`theta0`")
    dtype = np.dtype(theta0.dtype) if hasattr(theta0, "dtype") else np.asarray(theta0).dtype
    kinds = jnp.inexact if complex_ok else jnp.floating
    if np.ndim(theta0) not in (1, 2) or not jnp.issubdtype(dtype, kinds):
        what = f"shape {np.shape(theta0)} and dtype {dtype}"
        raise TypeError(_MSG_THETA.format(where=where, what=what))
    if np.ndim(theta0) == 2 and np.shape(theta0)[0] == 0:
        raise ValueError(f"`{where}` got an ensemble `theta0` with zero members (shape "
                         f"{np.shape(theta0)}). Fix: stack at least one `theta` row.")  # fmt: skip
    theta0 = jnp.asarray(theta0)
    bad = ~np.isfinite(np.asarray(host(theta0)))  # a global theta0 is read across processes
    if bad.any():
        first = tuple(int(i) for i in np.argwhere(bad)[0])
        first = first[0] if len(first) == 1 else first
        raise ValueError(_MSG_NONFINITE_THETA.format(where=where, count=int(bad.sum()),
                                                     first=first))  # fmt: skip
    return theta0


def prepare_args(args, where: str) -> tuple:
    if not isinstance(args, tuple | list):
        got = f"a {type(args).__name__}"
        if hasattr(args, "shape"):
            got += f" of shape {tuple(args.shape)}"
        raise TypeError(_MSG_ARGS.format(where=where, got=got))
    guard_x64(args, f"`{where}`", "`args`")
    return tuple(args)


def check_tol(tol, where: str):
    """`tol` as a Python float (a real number, also a 0-d NumPy/JAX array), or None."""
    if tol is None:
        return None
    try:
        value = real(tol, "tol", where.removeprefix("sb."))
    except TypeError:
        raise TypeError(_MSG_TOL.format(where=where, got=tol, fix="`tol=1e-6` (a number, not "
                                        f"a {type(tol).__name__})")) from None  # fmt: skip
    if not value > 0:
        raise ValueError(_MSG_TOL.format(where=where, got=tol, fix="a positive tolerance, e.g. "
                                         "`tol=1e-6`"))  # fmt: skip
    return value


def default_tol(dtype) -> float:
    """1e-8 in float64, 1e-4 in float32: reachable tolerances for either precision."""
    return 1e-8 if np.dtype(dtype).itemsize >= 8 else 1e-4


def check_options(options: dict, valid, where: str, method: Any, extra=()) -> None:
    """Every key of `options` must be in `valid`; else name the nearest valid keyword."""
    for key in options:
        if key in valid:
            continue
        near = difflib.get_close_matches(key, [*valid, *VERB_KEYWORDS, *extra], n=1)
        hint = f". Did you mean `{near[0]}=`?" if near else ""
        shown = ", ".join(f"`{v}`" for v in valid) or "none"
        label = method if isinstance(method, str) else type(method).__name__
        raise TypeError(_MSG_OPTION.format(where=where, key=key, method=label, hint=hint,
                                           valid=shown))  # fmt: skip


_MSG_EMPTY = """\
`{where}` got a `theta0` of shape {shape}: no parameters to optimise, yet every method would
report success. Fix: pass the flat parameter vector (e.g. `fm.theta0`
from `sb.flat`, whose length `fm.size` is at least 1); check that `params=` selected any."""

_MSG_TOL_INF = """\
`{where}` expected `tol` to be None or a positive finite number, but got {tol!r}. Every point
meets an infinite tolerance, so the run would report convergence where it started. Fix: e.g.
`tol=1e-6`, or `tol=None` for the method's default."""


_MSG_EVERY = """\
`{where}` got `checkpoint_every={every!r}` without `checkpoint=`: nothing would be saved.
Fix: name the file too (`checkpoint="run.npz"`), or drop `checkpoint_every=`."""


def check_run_inputs(theta0, tol: float | None, checkpoint, every, where: str) -> None:
    """What the shared validators let through, each of which ran silently "successful" or
    silently did nothing: a `theta0` without parameters (Adam reported 5 steps on none),
    `tol=inf` (Adam converged at `theta0`, Optimistix's BFGS ran out its budget there
    instead), `checkpoint_every=` without a file to write."""
    if theta0.shape[-1] == 0:
        raise ValueError(_MSG_EMPTY.format(where=where, shape=tuple(theta0.shape)))
    if tol is not None and not math.isfinite(tol):
        raise ValueError(_MSG_TOL_INF.format(where=where, tol=tol))
    if every is not None and checkpoint is None:
        raise ValueError(_MSG_EVERY.format(where=where, every=every))
