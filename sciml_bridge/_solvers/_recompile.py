"""A warning when a Python number in `args` makes a run compile again.

The driver's kernels are `eqx.filter_jit`s: as in Equinox, a Python number among the `args` is
static, part of what is compiled, so each new value compiles the whole run again (measured: a
10-step Adam run took 0.4 s per new `lam` in `args=(lam,)`, 2 ms with `jnp.asarray(lam)`).
That is right for a number the loss needs as a Python value (a shape, a loop count, a branch)
and silent waste for a coefficient swept in a loop. We cannot tell the two apart, so we keep
Equinox's rule and say so once: the second time the same loss is run with the same `args`
except for the values of its Python numbers, a warning names the argument and the fix.
"""

import warnings
import weakref
from typing import Any

import jax.tree_util as jtu
import numpy as np


_MSG = """\
`{where}` compiles the run again because the Python number {at} changed ({old!r} -> {new!r}):
Python numbers in `args` are static, as in `eqx.filter_jit`, so every new value costs a new
compilation. Fix: pass it as an array, e.g. `args=(jnp.asarray(lam), ...)` (one compilation
for every value), unless the loss needs it as a Python number (a shape, a loop count, an
`if`): then this warning is expected and can be filtered."""

_NUMBERS = (bool, int, float, complex)
# (where, loss, method, structure) -> the numbers of its first run; None once warned
_SEEN: dict[Any, tuple | None] = {}


def warn_python_numbers(loss: Any, theta0: Any, args: tuple, method: Any, where: str) -> None:
    """Warn (once per loss, method and structure) when only Python numbers in `args` changed
    since an earlier run of the same loss from a `theta0` of the same shape and dtype: the run
    compiles again for nothing. The loss is held weakly (nothing it closes over is kept)."""
    leaves = jtu.tree_flatten_with_path(args)[0]
    numbers = tuple((path, leaf) for path, leaf in leaves if type(leaf) in _NUMBERS)
    if not numbers:
        return
    rest = tuple(
        (jtu.keystr(path), type(leaf), np.shape(leaf), str(getattr(leaf, "dtype", "")))
        for path, leaf in leaves
    )
    try:
        ref = weakref.ref(loss)
        key = (where, ref, method, np.shape(theta0), str(theta0.dtype), rest)
        first = _SEEN.setdefault(key, tuple(v for _, v in numbers))
    except TypeError:  # a loss (or method) that cannot be hashed or referenced weakly
        return
    if first is None or first == tuple(v for _, v in numbers):
        return
    path, old, new = next((p, o, n) for (p, n), o in zip(numbers, first) if o != n)
    at = f"`args{jtu.keystr(tuple(path))}`"
    warnings.warn(_MSG.format(where=where, at=at, old=old, new=new), UserWarning, stacklevel=3)
    _SEEN[key] = None  # once per loss, method and structure
    if len(_SEEN) > 256:  # bounded
        _SEEN.clear()
