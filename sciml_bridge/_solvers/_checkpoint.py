"""Checkpoints: the full solver state of every member, saved between chunks and resumed.

A checkpoint records, next to the state, a fingerprint of what determines the optimiser (the
method, its options, `tol`, and for an optimiser object the hyperparameters captured in its
closures or fields) and the structure, shapes and dtypes of `args` (not their values: that
would read all the data, from every process, at every start). Resuming with different ones
would silently continue with the old state, so it is an error naming what changed, unless
`resume="force"` is passed.
Files are untrusted input: `_serialise.read_arrays` refuses pickle and damage, and the state
layout (paths, shapes, dtypes) must match before anything is used.
"""

import dataclasses
import hashlib
import os
from typing import Any, cast

import jax
import jax.numpy as jnp
import jax.tree_util as jtu
import numpy as np

from .._distributed import agree, barrier, host, is_main
from .._serialise import read_arrays, write_arrays
from ._checkpoint_books import encode_details as encode_details, read_books


KIND = "sciml_bridge.checkpoint/2"

_MSG_NOT_CHECKPOINT = """\
`{where}` got checkpoint={path!r}, but that file was not written by a checkpointed run
(it holds {what}). Resuming from it would start from a state it does not have.
Fix: pass a new path as `checkpoint=` (it is created), and to start from a `theta` saved with
`sb.save`, load it (`sb.load(path, fm)`) and pass it as `theta0`."""

_MSG_STATE = """\
`{where}` found a checkpoint at {path!r} whose saved state does not match this run's:
  saved:    {saved}
  expected: {want}
  first differing leaf (#{index}):
    saved:    {saved_leaf}
    expected: {want_leaf}
It holds the solver and model state of another run: another model or `theta0` size, another
number of members, method or options, or a checkpoint of another sciml_bridge version.
Fix: remove the file to start afresh, or pass another `checkpoint=` path."""

_MSG_CHANGED = """\
`{where}` found a checkpoint at {path!r} written with a different optimiser or with
`args` of other shapes:
{changes}
Resuming would continue with the old optimiser state under the new settings (the optimiser's
state, e.g. Adam's moments or an L-BFGS history, was built on the old data).
Fix: use the same method, options and `args` shapes to resume, a new `checkpoint=` path to
start afresh, or `resume="force"` to resume the saved state anyway."""

# Fingerprint entries that earlier checkpoints do not record: not compared when absent there.
_ADDED_LATER = ("args",)


def _describe(x: Any, depth: int = 0) -> str:
    """A process-independent description of an optimiser: reprs of numbers and strings,
    digests of arrays, and the closures/fields of functions and modules, recursively."""
    if depth > 12:  # functions and modules nested this deep: enough to tell optimisers apart
        return "..."
    if x is None or isinstance(x, bool | int | float | complex | str):
        return repr(x)
    if isinstance(x, np.ndarray | jax.Array | np.generic):
        if jnp.issubdtype(x.dtype, jax.dtypes.prng_key):
            x = jax.random.key_data(cast(jax.Array, x))  # only JAX arrays hold keys
        data = np.asarray(x)
        digest = hashlib.sha1(data.tobytes()).hexdigest()[:12]
        return f"array{data.shape}{data.dtype}:{digest}"
    if isinstance(x, tuple | list):
        return "(" + ",".join(_describe(v, depth) for v in x) + ")"
    if isinstance(x, dict):
        items = sorted(x.items(), key=str)
        return "{" + ",".join(f"{k}:{_describe(v, depth)}" for k, v in items) + "}"
    if dataclasses.is_dataclass(x):
        fields = [getattr(x, f.name, None) for f in dataclasses.fields(x)]
        return type(x).__qualname__ + _describe(fields, depth + 1)
    code = getattr(x, "__code__", None)
    if code is not None:
        cells = [c.cell_contents for c in (getattr(x, "__closure__", None) or ())
                 if not _empty(c)]  # fmt: skip
        return f"{x.__qualname__}[{_describe(cells, depth + 1)}]"
    return type(x).__qualname__


def _empty(cell) -> bool:
    try:
        cell.cell_contents
    except ValueError:
        return True
    return False


def fingerprint(method: Any, options: dict, tol, args: tuple | None = None) -> dict:
    """What a resumed run must share with the checkpoint: `{what: description}`."""
    out = {"method": method if isinstance(method, str) else type(method).__name__,
           "tol": repr(tol)}  # fmt: skip
    if not isinstance(method, str):
        out["optimizer"] = hashlib.sha1(_describe(method).encode()).hexdigest()
    for key, value in options.items():
        out[f"option {key}"] = _describe(value)
    if args is not None:
        out["args"] = describe_args(args)
    return out


def describe_args(args: tuple) -> str:
    """`args` as structure, shapes and dtypes (global shapes: the same on every process),
    e.g. `[0]: float64[64,1], [1]: float64[64]`; anything else by its type."""
    leaves = jtu.tree_leaves_with_path(args)
    kind = lambda x: f"{x.dtype}{list(np.shape(x))}".replace(" ", "") \
        if hasattr(x, "dtype") else type(x).__name__  # fmt: skip
    return ", ".join(f"{jtu.keystr(p)}: {kind(x)}" for p, x in leaves) or "()"


def _is_key(x) -> bool:
    return jnp.issubdtype(x.dtype, jax.dtypes.prng_key)


def _data(x) -> jax.Array:
    """A state leaf as plain numbers: a typed PRNG key (an NNX `Rngs` stream) as its key data."""
    return jax.random.key_data(x) if _is_key(x) else x


def _device(saved: np.ndarray, fresh) -> jax.Array:
    if _is_key(fresh):
        return jax.random.wrap_key_data(jnp.asarray(saved), impl=jax.random.key_impl(fresh))
    return jnp.asarray(saved, dtype=fresh.dtype)


def _layout(dynamic, good_theta) -> dict:
    leaves = jtu.tree_leaves_with_path(dynamic)
    return {
        "size": int(good_theta.shape[-1]),
        "paths": [f"members{good_theta.shape[0]}" + jtu.keystr(p) for p, _ in leaves],
        "shapes": [list(np.shape(x)) for _, x in leaves],
        "dtypes": [str(x.dtype) if _is_key(x) else np.dtype(x.dtype).name for _, x in leaves],
    }


def save(path: str, fp: dict, dynamic, good_theta, good_loss, books: dict) -> None:
    """Write one checkpoint atomically; `books` holds per-member host records (NumPy).

    Across processes every process gathers the state (a collective), process 0 alone
    writes, and all wait for that write, so a resume right after reads the same file."""
    leaves = [_data(x) for x in jtu.tree_leaves(dynamic)]
    state, good_theta, good_loss = host((leaves, good_theta, good_loss))
    arrays = {f"state_{i}": np.asarray(x) for i, x in enumerate(state)}
    arrays.update(good_theta=np.asarray(good_theta), good_loss=np.asarray(good_loss))
    arrays.update({f"book_{k}": np.asarray(v) for k, v in books.items()})
    layout = _layout(dynamic, good_theta)
    layout.update(kind=KIND, fingerprint=fp)
    try:
        if is_main():
            write_arrays(path, arrays, layout)
    finally:
        barrier(f"sciml_bridge checkpoint {path}")


def _check_fingerprint(saved: dict, fp: dict, where: str, path: str) -> None:
    keys = sorted((set(saved) | set(fp)) - {k for k in _ADDED_LATER if k not in saved})
    changes = [f"  {k}: {saved.get(k, '(not set)')} in the checkpoint, {fp.get(k, '(not set)')}"
               " now" for k in keys if saved.get(k) != fp.get(k)]  # fmt: skip
    if changes:
        raise ValueError(_MSG_CHANGED.format(where=where, path=path, changes="\n".join(changes)))


def resume(path: str, fp: dict, force: bool, dynamic, good_theta, good_loss, where: str):
    """`(dynamic, good_theta, good_loss, books)` read back, checked against the fresh run."""
    arrays, layout = read_arrays(path, where)
    if layout.get("kind") != KIND:
        what = "a `theta` saved by `sb.save`" if "theta" in arrays else "something else"
        raise ValueError(_MSG_NOT_CHECKPOINT.format(where=where, path=path, what=what))
    if not force:
        _check_fingerprint(layout.get("fingerprint", {}), fp, where, path)
    _check_state(layout, _layout(dynamic, good_theta), where, path)
    try:
        books = read_books(arrays, int(np.shape(good_theta)[0]))
        return (*_restore(arrays, dynamic, good_theta, good_loss), books)
    except (KeyError, ValueError, TypeError) as e:
        raise ValueError(f"`{where}` found a damaged checkpoint at {path!r} ({e}). Fix: "
                         "remove it, or pass another `checkpoint=` path.") from e


def _rows(layout: dict) -> list[tuple]:
    """`(path, shape, dtype)` per state leaf; a malformed (forged) layout gives what it can."""
    columns = [layout.get(k) for k in ("paths", "shapes", "dtypes")]
    if not all(isinstance(c, list) for c in columns):
        return []
    return [(p, tuple(s) if isinstance(s, list) else s, d) for p, s, d in zip(*columns)]


def _check_state(saved: dict, want: dict, where: str, path: str) -> None:
    """The saved state's layout must be the fresh run's: else both, and the first leaf that
    differs (STYLE.md 8)."""
    rows_saved, rows_want = _rows(saved), _rows(want)
    if saved.get("size") == want["size"] and rows_saved == rows_want:
        return
    pairs = zip(rows_saved, rows_want)
    index = next((i for i, (a, b) in enumerate(pairs) if a != b),
                 min(len(rows_saved), len(rows_want)))  # fmt: skip
    leaf = lambda rows: "(none)" if index >= len(rows) else \
        "{} shape={} dtype={}".format(*rows[index])  # fmt: skip
    summary = lambda size, rows: f"`theta` size {size}, {len(rows)} state leaves"
    raise ValueError(_MSG_STATE.format(
        where=where, path=path, saved=summary(saved.get("size"), rows_saved),
        want=summary(want["size"], rows_want), index=index, saved_leaf=leaf(rows_saved),
        want_leaf=leaf(rows_want)))  # fmt: skip


def _restore(arrays: dict, dynamic, good_theta, good_loss):
    leaves, treedef = jtu.tree_flatten(dynamic)
    pairs = [(arrays[f"state_{i}"], x) for i, x in enumerate(leaves)]
    pairs += [(arrays["good_theta"], good_theta), (arrays["good_loss"], good_loss)]
    pairs = [(_same_kind(saved, _data(fresh)), fresh) for saved, fresh in pairs]
    # Back where the fresh state lives: replicated or split over a (multi-process) mesh.
    new = [jax.device_put(_device(saved, fresh), fresh.sharding) for saved, fresh in pairs]
    *new, good_theta, good_loss = new
    return jtu.tree_unflatten(treedef, new), good_theta, good_loss


def _same_kind(saved: np.ndarray, fresh) -> np.ndarray:
    """`saved`, refused unless it has `fresh`'s shape and dtype: a cast would hide damage
    (a complex `good_theta` becoming real)."""
    want = np.dtype(fresh.dtype)
    if saved.dtype.kind == "V" and saved.dtype.itemsize == want.itemsize:
        saved = saved.view(want)  # bfloat16 and other ml_dtypes are stored as bits
    if saved.shape != fresh.shape or saved.dtype != want:
        raise ValueError(f"an array of shape {saved.shape} and dtype {saved.dtype} where "
                         f"{fresh.shape} {want} belongs")  # fmt: skip
    return saved


def exists(path: str | None, where: str) -> bool:
    """Whether to resume: the same answer on every process, or an error."""
    if path is None:
        return False
    return agree(os.path.exists(path), f"whether the checkpoint {path!r} exists", where)
