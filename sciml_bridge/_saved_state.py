"""A model's state (batch statistics, RNG streams) in an `sb.save` file, beside `theta`.

Each state leaf is one archive member `state_<i>`, and the JSON layout lists every leaf's
path, shape and dtype. Loading needs a template state of the same structure (usually
`fm.init_state()`): the saved layout is compared with the template's before any data is
read, so a file made for another model is an error that shows the first differing leaf.
Typed PRNG keys (Flax NNX `Rngs` streams) travel as their key data.
"""

from typing import Any

import jax
import jax.numpy as jnp
import jax.tree_util as jtu
import numpy as np

from ._npz import Corrupt, Expect, storable
from ._precision import check_x64


_MSG_MISMATCH = """\
`sb.load` found a saved model state whose layout does not match the template `state=`.
  saved:    {saved_n} leaves
  expected: {want_n} leaves
  first differing leaf (#{index}):
    saved:    {saved_leaf}
    expected: {want_leaf}
Fix: pass the state of the model the file was saved from (e.g. `fm.init_state()` of the same
architecture) as `state=`."""

_MSG_X64_INT = """\
`sb.load` found a saved model state with {dtype} leaves, but JAX is running with 64-bit mode
off, so the state it would make holds 32-bit integers: the file was saved with x64 on.
Fix: turn on 64-bit mode before creating any arrays (`jax.config.update("jax_enable_x64",
True)`), as when the file was saved."""

_MSG_KIND = """\
`sb.save` expected a model state of arrays and numbers (batch statistics, counters, PRNG
keys), but the leaf {path} is {what}.
Fix: keep only arrays in the state, or save the rest yourself (e.g. in `metadata=`)."""

_MSG_NO_STATE = """\
`sb.load` was asked for a model state (`state=`), but {path!r} holds parameters only.
Fix: load without `state=` and start from `fm.init_state()`, or save with
`sb.save(path, theta, fm, state=state)`."""


def _is_key(x: Any) -> bool:
    return isinstance(x, jax.Array) and jnp.issubdtype(x.dtype, jax.dtypes.prng_key)


def _numbers(path: str, x: Any) -> np.ndarray:
    """A state leaf as a NumPy array (a typed key as its key data)."""
    array = np.asarray(jax.random.key_data(x) if _is_key(x) else x)
    if array.dtype.kind not in "biufcV" or array.dtype.hasobject or array.dtype.names:
        raise TypeError(_MSG_KIND.format(path=path, what=f"of type {type(x).__name__}"))
    return array


def _dtype_name(x: Any) -> str:
    return str(x.dtype) if _is_key(x) else np.asarray(x).dtype.name


def layout(state: Any) -> list[list]:
    """`[path, shape, dtype]` per leaf: what a saved state must match."""
    return [[jtu.keystr(p), list(np.shape(x)), _dtype_name(x)]
            for p, x in jtu.tree_leaves_with_path(state)]  # fmt: skip


def arrays(state: Any) -> dict[str, np.ndarray]:
    """The archive members that hold `state`."""
    leaves = jtu.tree_leaves_with_path(state)
    out = {}
    for i, (p, x) in enumerate(leaves):
        array = _numbers(jtu.keystr(p), x)
        out[f"state_{i}"] = array.view(storable(array.dtype))  # bfloat16 travels as bits
    return out


def _describe(row: Any) -> str:
    if not (isinstance(row, list) and len(row) == 3):
        return "(none)" if row is None else repr(row)
    path, shape, dtype = row
    return f"{path} shape={tuple(shape) if isinstance(shape, list) else shape} dtype={dtype}"


def _held(saved: Any, names: frozenset[str]) -> list[str]:
    """The archive's state members, refused unless the layout declares exactly as many: a
    forged layout may declare millions of leaves in a few kilobytes."""
    if not isinstance(saved, list):
        raise Corrupt(f"malformed state layout {type(saved).__name__}")
    held = sorted(n for n in names if n.startswith("state_"))
    if len(saved) != len(held):
        raise Corrupt(f"the layout declares {len(saved)} state leaves, the archive holds "
                      f"{len(held)}")  # fmt: skip
    return held


def _check_x64(saved: list, template: list) -> None:
    """64-bit saved leaves while JAX runs with x64 off: the x64 error, not a layout one.

    A Python number in the template comes back as a Python number (`_restore`), which JAX
    never truncates: NumPy stores it as int64/float64 whatever the x64 mode, so it passes."""
    if jax.config.read("jax_enable_x64"):
        return
    for i, row in enumerate(saved):
        if i < len(template) and isinstance(template[i], (bool, int, float, complex)):
            continue
        name = row[2] if isinstance(row, list) and len(row) == 3 else None
        if name in ("int64", "uint64"):
            raise TypeError(_MSG_X64_INT.format(dtype=name))
        if name in ("float64", "complex128"):
            check_x64(np.dtype(name), "`sb.load`", "a saved state")


def expect(saved: Any, template: Any, path: str, names: frozenset[str]) -> dict[str, Expect]:
    """The members a file must hold for `template`, checked from the layout alone."""
    if saved is None:
        raise ValueError(_MSG_NO_STATE.format(path=path))
    _held(saved, names)
    _check_x64(saved, jtu.tree_leaves(template))
    want = layout(template)
    if saved != want:
        index = next((i for i, (a, b) in enumerate(zip(saved, want)) if a != b),
                     min(len(saved), len(want)))  # fmt: skip
        row = lambda rows: _describe(rows[index] if index < len(rows) else None)  # noqa: E731
        raise ValueError(_MSG_MISMATCH.format(saved_n=len(saved), want_n=len(want),
                                              index=index, saved_leaf=row(saved),
                                              want_leaf=row(want)))  # fmt: skip
    # A template's dtypes are the ones JAX runs with: nothing is narrowed on the way in.
    numbers = [_numbers("", x) for x in jtu.tree_leaves(template)]
    return {f"state_{i}": Expect(a.shape, storable(a.dtype)) for i, a in enumerate(numbers)}


def unread(saved: Any, names: frozenset[str]) -> dict[str, Expect]:
    """The state members of a file whose state was not asked for: checked, never read."""
    if saved is None:
        return {}
    return {name: Expect(skip=True) for name in _held(saved, names)}


def _restore(saved: np.ndarray, like: Any) -> Any:
    saved = saved.view(_numbers("", like).dtype)
    if _is_key(like):
        return jax.random.wrap_key_data(jnp.asarray(saved), impl=jax.random.key_impl(like))
    if isinstance(like, (bool, int, float, complex)):
        return type(like)(saved.item())
    if isinstance(like, np.generic):
        return saved[()]
    if isinstance(like, jax.Array):
        return jnp.asarray(saved, dtype=like.dtype)
    return saved


def restore(members: dict[str, np.ndarray], template: Any) -> Any:
    """The saved state, in `template`'s structure, array kinds and dtypes."""
    leaves, treedef = jtu.tree_flatten(template)
    return jtu.tree_unflatten(
        treedef, [_restore(members[f"state_{i}"], x) for i, x in enumerate(leaves)]
    )
