"""Checkpoints without pickle: one `.npz` holding `theta` and a JSON layout.

A checkpoint file is untrusted input: `sb.load` reads the layout first, compares it with the
model, then checks `theta`'s declared shape and dtype from the archive directory and the `.npy`
header before decompressing anything (`_npz.read_arrays`). Writes are atomic and crash-safe
(`_npz.write_arrays`). The layout (leaf paths, shapes, dtypes) makes loading into the wrong
model an error that shows both.
"""

import os
import warnings
from typing import Any

import jax.numpy as jnp
import jax.tree_util as jtu
import numpy as np

from . import _saved_state
from ._custom_types import Theta, ThetaLike
from ._npz import Corrupt, Expect, read_arrays, storable, write_arrays
from ._precision import check_jax_dtype, check_x64, guard_x64, is_inexact, is_jax_dtype


_FORMAT = "sciml_bridge.theta/1"

_MSG_MISMATCH = """\
`{where}` found a checkpoint whose parameter layout does not match the model.
  saved:    size={saved_size}, {saved_n} leaves
  expected: size={want_size}, {want_n} leaves
  first differing leaf (#{index}):
    saved:    {saved_leaf}
    expected: {want_leaf}
Fix: load into the model the checkpoint was saved from (same architecture, same `params=`
filter), or rebuild that model first and convert its parameters explicitly."""

_MSG_SAVE_KIND = """\
`sb.save` expected a floating or complex `theta` (the parameter vector of `fm`), but got dtype
{dtype}. Integer, boolean and object arrays are not parameter vectors (an object array would
need pickle, which sciml_bridge never writes).
Fix: save the `theta` that belongs to this `fm`, e.g. `theta.astype(fm.theta0.dtype)`."""

_MSG_SAVE_SIZE = """\
`sb.save` expected a 1-D `theta` of length {size} (the size of `fm`), but got shape {shape}.
Fix: save the `theta` that belongs to this `fm`."""

_MSG_STATE_LEFT = """\
`sb.save` is writing parameters only, but `fm` has a model state (`fm.init_state()`: batch
statistics or RNG streams) that a model loaded from this file would start without.
Fix: pass the current state, `sb.save(path, theta, fm, state=state)`, and load it with
`sb.load(path, fm, state=fm.init_state())`; or `state=False` to save parameters only."""

_MSG_NOT_THETA = "not a file written by `sb.save` ({why})"

_MSG_METADATA = """\
`sb.save` expected `metadata` made of JSON values that load back as they were saved (dicts
with string keys, lists, str, int, float, bool, None), but `metadata{at}` is {what}, which
{why}.
Fix: convert it before saving, e.g. {fix}."""

_JSON_SCALARS = (str, int, float, bool, type(None))


def _restructure(fm: Any):
    re = getattr(fm, "restructure", fm)
    if not all(hasattr(re, a) for a in ("paths", "shapes", "dtypes", "size")):
        raise TypeError(
            "`sb.save`/`sb.load` expected a flat model (from `sb.flat`) or a `Restructure` "
            f"(from `sb.destructure`), but got {type(fm).__name__}. "
            "Fix: pass the `fm` (or `re`) that `theta` belongs to."
        )
    return re


def layout_of(fm: Any) -> dict:
    """The JSON-able layout of a flat model: what a checkpoint must match."""
    re = _restructure(fm)
    return {
        "size": int(re.size),
        "paths": [str(p) for p in re.paths],
        "shapes": [[int(d) for d in s] for s in re.shapes],
        "dtypes": [np.dtype(d).name for d in re.dtypes],
    }


def _rows(layout: dict) -> list[tuple]:
    """`(path, shape, dtype)` per leaf; a malformed (forged) layout gives what it can."""
    columns = [layout.get(k) for k in ("paths", "shapes", "dtypes")]
    if not all(isinstance(c, list) for c in columns):
        return []
    return list(zip(*columns))


def _leaf(rows: list[tuple], i: int) -> str:
    if i >= len(rows):
        return "(none)"
    path, shape, dtype = rows[i]
    shape = tuple(shape) if isinstance(shape, list) else shape
    return f"{path} shape={shape} dtype={dtype}"


def check_layout(saved: dict, want: dict, where: str) -> None:
    """ValueError printing saved vs expected layout and the first differing leaf."""
    rows_saved, rows_want = _rows(saved), _rows(want)
    if saved.get("size") == want["size"] and rows_saved == rows_want:
        return
    index = next(
        (i for i, (a, b) in enumerate(zip(rows_saved, rows_want)) if a != b),
        min(len(rows_saved), len(rows_want)),
    )
    raise ValueError(_MSG_MISMATCH.format(
        where=where, saved_size=saved.get("size"), saved_n=len(rows_saved),
        want_size=want["size"], want_n=len(rows_want), index=index,
        saved_leaf=_leaf(rows_saved, index), want_leaf=_leaf(rows_want, index),
    ))  # fmt: skip


def _saved_dtype(layout: dict) -> np.dtype:
    try:
        dtype = np.dtype(str(layout.get("dtype")))
    except TypeError as e:
        raise Corrupt(_MSG_NOT_THETA.format(why=f"unknown dtype {layout.get('dtype')!r}")) from e
    if not is_inexact(dtype):
        raise Corrupt(_MSG_NOT_THETA.format(why=f"theta dtype {dtype} is not floating"))
    if not is_jax_dtype(dtype):
        raise Corrupt(_MSG_NOT_THETA.format(why=f"theta dtype {dtype} is not one JAX has"))
    if dtype.byteorder not in "=|":  # `sb.save` writes native order; JAX takes no other
        raise Corrupt(_MSG_NOT_THETA.format(why=f"theta dtype {dtype.str} is not native byte "
                                            "order"))  # fmt: skip
    return dtype


def _check_metadata(value: Any, at: str = "") -> None:
    """Refuse what JSON would change on the way back: tuples, non-string keys, NumPy scalars."""
    what = why = fix = ""
    items = value.items() if isinstance(value, dict) else enumerate(value) \
        if type(value) is list else ()  # fmt: skip
    for key, item in items:
        if isinstance(value, dict) and type(key) is not str:
            what, why = f"a dict with the key {key!r}", f"would come back as {str(key)!r}"
            fix = "`{str(k): v for k, v in metadata.items()}`"
            break
        _check_metadata(item, f"{at}[{key!r}]")
    if type(value) is tuple:
        what, why, fix = f"the tuple {value!r}", "would come back as a list", "`list(t)`"
    elif not isinstance(value, dict) and type(value) not in (*_JSON_SCALARS, list):
        what, why = f"of type {type(value).__name__}", "JSON cannot hold as it is"
        fix = "`float(x)`, `int(x)` or `x.tolist()` for NumPy/JAX numbers and arrays"
    if what:
        raise TypeError(_MSG_METADATA.format(at=at, what=what, why=why, fix=fix))


def save(path: str | os.PathLike, theta: ThetaLike, fm: Any, metadata: dict | None = None,
         *, state: Any = None) -> None:
    """Save a flat parameter vector with the layout of the model it belongs to (and its state).

    The file is an ordinary `.npz` (no pickle) written atomically and crash-safely: the
    data goes to a temporary file `.<name>.sb-tmp-<pid>-<random>` next to the target, is
    fsynced, renamed over the target, and the directory is fsynced. A save killed mid-write
    leaves any earlier checkpoint at `path` intact; its temporary file is removed by the next
    save of the same path once the killed process is gone. A replaced file keeps its
    permission bits (a new one follows the umask). If `path` is a symbolic link, the file it
    points to is replaced and the link is kept.

    !!! example

        ```python
        fm = sb.flat(eqx.nn.MLP(2, 1, 8, 2, key=jax.random.key(0)))
        sb.save("net.npz", fm.theta0, fm, metadata={"epoch": 3})
        theta = sb.load("net.npz", fm)

        model, state = eqx.nn.make_with_state(eqx.nn.BatchNorm)(3, "batch", mode="batch")
        fm = sb.flat(model, state=state)
        sb.save("bn.npz", fm.theta0, fm, state=state)
        theta, state = sb.load("bn.npz", fm, state=fm.init_state())
        ```

    **Arguments:**

    - `path`: where to write (written exactly there; no suffix is added).
    - `theta`: the 1-D floating or complex parameter vector, of length `fm.size`.
    - `fm`: the flat model (from `sb.flat`) or `Restructure` (from `sb.destructure`) whose
        layout `theta` follows.
    - `metadata`: optional JSON data stored alongside (default `None`): dicts with string
        keys, lists, str, int, float, bool and None, given back by `sb.load` as they were.
    - `state`: the model's state to store beside `theta` (an `eqx.nn.State`, Flax
        `batch_stats`, an NNX state: any pytree of arrays, numbers and PRNG keys). `None`
        (the default) saves parameters only and warns if `fm` has a state that would be lost
        (`fm.init_state()`); `False` saves parameters only without the warning.

    **Raises:**

    `ValueError` if `theta` is not 1-D with `fm.size` entries; `TypeError` if `theta` is not
    floating or complex (or of a dtype JAX cannot hold, NumPy's float128), `metadata` holds
    anything JSON would not give back as it was (a tuple, a non-string key, a NumPy
    number), `fm` has no layout or `state` holds something other than arrays,
    numbers and keys; `IsADirectoryError` if `path` is a directory.
    """
    layout = layout_of(fm)
    _check_metadata(metadata)
    guard_x64(theta, "`sb.save`", "`theta`")
    # A list of Python numbers is weakly typed, as everywhere in JAX: it takes the default
    # float (float32 with x64 off, which `sb.load` can then give back).
    theta = np.asarray(theta if hasattr(theta, "dtype") else jnp.asarray(theta))
    if not is_inexact(theta.dtype):
        raise TypeError(_MSG_SAVE_KIND.format(dtype=theta.dtype))
    check_jax_dtype(theta.dtype, "`sb.save`", "`theta`")  # `sb.load` could not give it back
    # Big-endian data (FITS, HDF5, network buffers) is stored in native order: the layout
    # names the dtype only (`float64`), and JAX refuses non-native arrays.
    theta = theta.astype(theta.dtype.newbyteorder("="), copy=False)
    if theta.ndim != 1 or theta.size != layout["size"]:
        raise ValueError(_MSG_SAVE_SIZE.format(size=layout["size"], shape=theta.shape))
    members = {"theta": theta.view(storable(theta.dtype))}
    if state is None and jtu.tree_leaves(getattr(fm, "state0", None)):
        warnings.warn(_MSG_STATE_LEFT, UserWarning, stacklevel=2)
    if state is not None and state is not False:
        guard_x64(state, "`sb.save`", "`state`")
        members.update(_saved_state.arrays(state))
        layout.update(state=_saved_state.layout(state))
    layout.update(format=_FORMAT, dtype=theta.dtype.name, metadata=metadata)
    write_arrays(path, members, layout, where="sb.save")


def _expect(fm: Any, state: Any, path: str):
    """What `sb.load` accepts, decided from the layout before any data is decompressed."""
    want = layout_of(fm)

    def expect(layout: dict, names: frozenset[str]) -> dict[str, Expect]:
        if layout.get("format") != _FORMAT:
            raise Corrupt(_MSG_NOT_THETA.format(why=f"format {layout.get('format')!r}"))
        check_layout(layout, want, "sb.load")
        dtype = _saved_dtype(layout)
        check_x64(dtype, "`sb.load`", "a saved theta")
        members = {"theta": Expect((want["size"],), storable(dtype))}
        if state is not None:
            members.update(_saved_state.expect(layout.get("state"), state, path, names))
        else:  # a state not asked for is left unread
            members.update(_saved_state.unread(layout.get("state"), names))
        return members

    return expect


def load(path: str | os.PathLike, fm: Any, *, state: Any = None,
         return_metadata: bool = False) -> Theta | tuple[Any, ...]:
    """Load a vector saved by `sb.save` (and the model state saved with it), checking it
    fits `fm`.

    The file is treated as untrusted: its layout is compared with `fm`'s, and `theta`'s
    declared shape and dtype are checked against that layout (1-D, `fm.size` entries, a
    floating or complex dtype) from the archive directory and the `.npy` header before
    anything is decompressed. Unknown members, object arrays (pickle) and sizes that
    disagree with the archive directory are refused, so a forged or "zip bomb" file costs
    milliseconds, not memory.

    !!! example

        ```python
        fm = sb.flat(eqx.nn.MLP(2, 1, 8, 2, key=jax.random.key(0)))
        sb.save("net.npz", fm.theta0 + 1.0, fm)
        theta = sb.load("net.npz", fm)
        model = fm.restructure(theta)
        ```

    **Arguments:**

    - `path`: the file written by `sb.save`.
    - `fm`: the flat model or `Restructure` to load into.
    - `state`: a template of the model state saved with `sb.save(..., state=)`, usually
        `fm.init_state()`: the saved state is checked against its structure, shapes and
        dtypes and returned in its form. `None` (the default) loads parameters only (a saved
        state is then not read).
    - `return_metadata`: if `True`, also return the saved `metadata` (default `False`).

    **Returns:**

    `theta`, a 1-D JAX array of the saved dtype; `(theta, state)` with `state=`; with
    `return_metadata=True`, `metadata` is appended: `(theta, metadata)` or
    `(theta, state, metadata)`.

    **Raises:**

    `ValueError` if the layout differs from `fm`'s or the saved state from `state`'s
    (showing saved vs expected and the first differing leaf), `state=` is given for a file
    without a state, or the file is truncated, corrupted, forged or needs pickle; `TypeError`
    if the file holds float64 data while JAX runs with x64 off; `IsADirectoryError` if
    `path` is a directory.
    """
    arrays, layout = read_arrays(path, "sb.load", _expect(fm, state, os.fspath(path)),
                                 strict=True)
    theta = jnp.asarray(arrays["theta"].view(_saved_dtype(layout)))
    out: tuple[Any, ...] = (theta,)
    if state is not None:
        out += (_saved_state.restore(arrays, state),)
    if return_metadata:
        out += (layout.get("metadata"),)
    return theta if len(out) == 1 else out
