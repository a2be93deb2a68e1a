"""A model's state holds arrays and numbers only, and (for Equinox and NNX, whose state the
model fixes) the structure and shapes of `fm.init_state()`: checked where it enters.

`fm.init_state()` and `y, state = fm(theta, x, state=state)` hand the state to `jax.jit`,
`jax.grad` and the training loops of `sb.minimize`, which carry it as data. A string, a
function or any other non-array object there is refused by JAX at the jit boundary ("Error
interpreting argument ... as an abstract array"), far from the call that put it there, or
fails inside the model. Constant settings belong in the model, where they are static.
"""

from typing import Any

import jax
import jax.tree_util as jtu
import numpy as np

from ._precision import is_inexact


_MSG_STATE_LEAF = """\
`{where}` expected a model state of arrays and numbers (batch statistics, counters, RNG keys),
but the state's leaf at `{path}` is {what}, which JAX cannot carry through `jax.jit`,
`jax.grad` or `sb.minimize`.
Fix: keep only arrays in the state (e.g. `jnp.asarray(...)` for a number); move constant
settings such as strings or functions into the model, where they are static."""


def _is_data(leaf: Any) -> bool:
    """A leaf `jax.jit` can take as an argument: an array or a Python number."""
    if isinstance(leaf, jax.Array):
        return True
    if isinstance(leaf, bool | int | float | complex):
        return True
    if isinstance(leaf, np.ndarray | np.generic):
        dtype = leaf.dtype
        return dtype.kind in "biufc" or is_inexact(dtype)
    return False


def _describe(leaf: Any) -> str:
    dtype = getattr(leaf, "dtype", None)
    if dtype is not None:
        return f"a {type(leaf).__name__} of dtype {dtype}"
    text = repr(leaf)
    text = text if len(text) <= 40 else text[:37] + "..."
    return f"a {type(leaf).__name__} ({text})"


def check_state(state: Any, where: str) -> None:
    """Raise `TypeError` naming the first leaf of `state` that is not an array or a number.

    `where` is the call the user wrote, e.g. "fm(theta, x, state=state)". Runs at trace time
    only (the leaves of a traced state are tracers, which pass).
    """
    if state is None:
        return
    for path, leaf in jtu.tree_flatten_with_path(state)[0]:
        if not _is_data(leaf):
            raise TypeError(_MSG_STATE_LEAF.format(where=where, path=jtu.keystr(path) or "state",
                                                   what=_describe(leaf)))


_MSG_STATE_LIKE = """\
`fm(theta, x, state=state)` expected a state like `fm.init_state()`, but {diff}.
Fix: pass `fm.init_state()` or the state a call `fm(theta, x, state=...)` of this model
returned (of an ensemble's stacked `res.state`, one member's:
`jax.tree.map(lambda a: a[i], res.state)`)."""


def _short(x: Any) -> str:
    text = str(x)
    return text if len(text) <= 300 else text[:297] + "..."


def check_state_like(state: Any, state0: Any) -> None:
    """Raise `ValueError` if `state` differs from `state0` in structure or in a leaf's shape.

    For models whose state the model itself fixes (an `eqx.nn.State`, an NNX module's
    state); a wrong one failed deep inside the model ("incompatible shapes for
    broadcasting", "Incorrect number of leaves"). Shapes only: dtypes may widen with
    `theta`, and under `jax.vmap` the leaves are per-member tracers of the same shapes.
    """
    got, want = jtu.tree_flatten_with_path(state), jtu.tree_flatten_with_path(state0)
    if got[1] != want[1]:
        diff = f"its structure differs:\n  got      {_short(got[1])}\n  expected {_short(want[1])}"
        raise ValueError(_MSG_STATE_LIKE.format(diff=diff))
    for (path, a), (_, b) in zip(got[0], want[0]):
        if np.shape(a) != np.shape(b):
            diff = (f"its leaf at `{jtu.keystr(path)}` has shape {np.shape(a)}, expected "
                    f"{np.shape(b)}")
            raise ValueError(_MSG_STATE_LIKE.format(diff=diff))
