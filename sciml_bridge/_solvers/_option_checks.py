"""Checks and conversions of option values: the verbs' own (`max_steps=`, `chunk_size=`,
`throw=`, `progress=`, `tol=`; `_setup.py`) and the second-order methods' (`rcond=`,
`cg_tol=`, `line_search_steps=`, `c1=`, ...), run before anything is traced.

The methods' options are static fields of the steppers (part of the compiled program, keys of
the `jit` cache), so each is turned into a plain Python value here. A JAX array left in a
static field broke every later run of the process, not just its own: `jit`'s cache compares
static fields with `==`, and two arrays compared that way raise ("static arguments should be
comparable using __eq__"). A value of the wrong kind (a string, a bool where a count is
meant) is a `TypeError`; one of the right kind out of range a `ValueError` (STYLE.md 6).
"""

import difflib
import math
import operator
from typing import Any

import jax.numpy as jnp
import numpy as np


def _where(verb: str) -> str:
    return f"`sb.{verb}`"


def real(value: Any, name: str, verb: str) -> float:
    """`value` as a Python float: a real number (Python, NumPy or a 0-d JAX array, not a
    bool, string or complex), else a `TypeError` naming `name`."""
    number = isinstance(value, int | float) or (
        hasattr(value, "dtype") and np.ndim(value) == 0
        and (jnp.issubdtype(value.dtype, jnp.floating) or jnp.issubdtype(value.dtype, jnp.integer))
    )  # fmt: skip
    if isinstance(value, bool | np.bool_) or not number:
        raise TypeError(f"{_where(verb)} expected `{name}` to be a real number, got {value!r} "
                        f"({type(value).__name__}). Fix: pass a float, e.g. `{name}=1e-7`.")
    return float(value)


def count(value: Any, name: str, verb: str, least: int) -> int:
    """`value` as a Python int `>= least` (an int or NumPy integer, not a bool or float)."""
    if isinstance(value, bool | np.bool_) or not isinstance(value, int | np.integer):
        raise TypeError(f"{_where(verb)} expected `{name}` to be an int >= {least}, got "
                        f"{value!r} ({type(value).__name__}). Fix: pass an int, e.g. "
                        f"`{name}={max(least, 1) * 10}`.")
    if value < least:
        raise ValueError(f"{_where(verb)} expected `{name}` to be an int >= {least}, got "
                         f"{value!r}. Fix: e.g. `{name}={max(least, 1) * 10}`.")
    return operator.index(value)


def flag(value: Any, name: str, verb: str) -> bool:
    """`value` as a Python bool (`True`/`False` or a NumPy bool, not a string or number)."""
    if not isinstance(value, bool | np.bool_):
        raise TypeError(f"{_where(verb)} expected `{name}` to be True or False, got {value!r} "
                        f"({type(value).__name__}). Fix: `{name}=True` or `{name}=False`.")
    return bool(value)


def cutoffs(value: Any, name: str, least: int) -> tuple[float, ...]:
    """`rcond=` / `fallback_rcond=`: one cutoff or a sequence of them (tuple, list, 1-D
    array), each a real number in `[0, 1)`, as a tuple of Python floats; at least `least`."""
    many = isinstance(value, tuple | list) or (hasattr(value, "ndim") and np.ndim(value) == 1)
    out = tuple(real(c, name, "least_squares") for c in (value if many else (value,)))
    if len(out) < least or not all(0 <= c < 1 for c in out):
        raise ValueError(
            f"`sb.least_squares` expected `{name}` in [0, 1) (or a tuple of such "
            f"cutoffs{'' if least else ', possibly empty'}), got {out!r}. Fix: e.g. "
            f"`{name}={'1e-7' if least else '(1e-4, 1e-2)'}` (relative to the largest "
            "singular value of the Jacobian)."
        )
    return out


def unit_interval(value: Any, name: str, verb: str, example: str, *,
                  closed_low: bool = False) -> float:
    """A real number in `(0, 1)` (`[0, 1)` with `closed_low`), as a Python float."""
    x = real(value, name, verb)
    low_ok = x >= 0 if closed_low else x > 0
    if not (math.isfinite(x) and low_ok and x < 1):
        interval = "[0, 1)" if closed_low else "(0, 1)"
        raise ValueError(f"{_where(verb)} expected `{name}` in {interval}, got {value!r}. "
                         f"Fix: e.g. `{name}={example}` (the default).")
    return x


def check_solver(solver: Any, valid: tuple[str, ...]) -> str:
    """`solver=`, checked to be one of `valid` (a misspelt one names the nearest)."""
    shown = ", ".join(f'"{v}"' for v in valid)
    if not isinstance(solver, str):
        raise TypeError(f"`sb.least_squares` expected `solver` to be a string, one of {shown}; "
                        f"got {solver!r} ({type(solver).__name__}). Fix: e.g. "
                        "`solver=\"auto\"`.")
    if solver not in valid:
        near = difflib.get_close_matches(solver.lower(), valid, n=1)
        hint = f' Did you mean "{near[0]}"?' if near else ""
        raise ValueError(f"`sb.least_squares` expected `solver` to be one of {shown}, got "
                         f"{solver!r}.{hint} Fix: e.g. `solver=\"auto\"` (the Gramian for tall "
                         "Jacobians, the kernel form for wide ones).")
    return solver
