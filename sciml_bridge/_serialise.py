"""Checkpoints without pickle: one `.npz` holding the arrays and a JSON layout.

`np.load(..., allow_pickle=False)` never runs code from the file, the write goes to a temporary
file in the same directory followed by `os.replace` (atomic on POSIX and Windows), and the
layout (leaf paths, shapes, dtypes) makes loading into the wrong model an error that shows both.
"""

import json
import os
import tempfile
import zipfile
from typing import Any

import jax.numpy as jnp
import numpy as np

from ._custom_types import Theta, ThetaLike
from ._precision import check_x64


_LAYOUT_KEY = "__layout__"
_FORMAT = "sciml_bridge.theta/1"

_MSG_CORRUPT = """\
`{where}` could not read {path!r}: the file is truncated, corrupted, or not a sciml_bridge
checkpoint ({err}). Checkpoints are written atomically, so a complete earlier one is intact if it
exists; a file that needs pickle to load is refused on purpose and never unpickled."""

_MSG_MISMATCH = """\
`{where}` found a checkpoint whose parameter layout does not match the model.
  saved:    size={saved_size}, {saved_n} leaves
  expected: size={want_size}, {want_n} leaves
  first differing leaf (#{index}):
    saved:    {saved_leaf}
    expected: {want_leaf}
Fix: load into the model the checkpoint was saved from (same architecture, same `params=`
filter), or rebuild that model first and convert its parameters explicitly."""


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


def _leaf(layout: dict, i: int) -> str:
    if i >= len(layout["paths"]):
        return "(none)"
    return f"{layout['paths'][i]} shape={tuple(layout['shapes'][i])} dtype={layout['dtypes'][i]}"


def check_layout(saved: dict, want: dict, where: str) -> None:
    """ValueError printing saved vs expected layout and the first differing leaf."""
    keys = ("paths", "shapes", "dtypes")
    rows_saved = list(zip(*(saved.get(k, []) for k in keys)))
    rows_want = list(zip(*(want[k] for k in keys)))
    if saved.get("size") == want["size"] and rows_saved == rows_want:
        return
    index = next(
        (i for i, (a, b) in enumerate(zip(rows_saved, rows_want)) if a != b),
        min(len(rows_saved), len(rows_want)),
    )
    raise ValueError(
        _MSG_MISMATCH.format(
            where=where,
            saved_size=saved.get("size"),
            saved_n=len(rows_saved),
            want_size=want["size"],
            want_n=len(rows_want),
            index=index,
            saved_leaf=_leaf(saved, index),
            want_leaf=_leaf(want, index),
        )
    )


def write_arrays(path: str | os.PathLike, arrays: dict[str, np.ndarray], layout: dict) -> None:
    """Write `arrays` plus a JSON `layout` to `path` atomically."""
    path = os.fspath(path)
    blob = np.frombuffer(json.dumps(layout).encode("utf-8"), dtype=np.uint8)
    directory = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=".npz", dir=directory)
    try:
        with os.fdopen(fd, "wb") as f:
            np.savez(f, **{_LAYOUT_KEY: blob}, **arrays)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def read_arrays(path: str | os.PathLike, where: str) -> tuple[dict[str, np.ndarray], dict]:
    """Read what `write_arrays` wrote; any damage or pickle is a clear `ValueError`."""
    path = os.fspath(path)
    try:
        # Open the file ourselves: `np.load(path)` leaks its handle when the zip is damaged.
        with open(path, "rb") as f, np.load(f, allow_pickle=False) as npz:
            if not isinstance(npz, np.lib.npyio.NpzFile):
                raise ValueError("not an .npz archive")
            arrays = {k: npz[k] for k in npz.files}
        layout = json.loads(arrays.pop(_LAYOUT_KEY).tobytes().decode("utf-8"))
    except FileNotFoundError:
        raise
    except (ValueError, KeyError, OSError, EOFError, zipfile.BadZipFile, UnicodeError) as e:
        raise ValueError(_MSG_CORRUPT.format(where=where, path=path, err=e)) from e
    if not isinstance(layout, dict):
        raise ValueError(_MSG_CORRUPT.format(where=where, path=path, err="bad layout"))
    return arrays, layout


def save(path: str | os.PathLike, theta: ThetaLike, fm: Any, metadata: dict | None = None) -> None:
    """Save a flat parameter vector with the layout of the model it belongs to.

    The file is an ordinary `.npz` (no pickle) written atomically: a crash mid-write leaves
    any earlier checkpoint at `path` intact.

    ```python
    fm = sb.flat(eqx.nn.MLP(2, 1, 8, 2, key=jax.random.key(0)))
    sb.save("net.npz", fm.theta0, fm, metadata={"epoch": 3})
    theta = sb.load("net.npz", fm)
    ```

    **Arguments:**

    - `path`: where to write (written exactly there; no suffix is added).
    - `theta`: the 1-D parameter vector, of length `fm.size`.
    - `fm`: the flat model (from `sb.flat`) or `Restructure` (from `sb.destructure`) whose
        layout `theta` follows.
    - `metadata`: optional JSON-serialisable dict stored alongside (default `None`).

    **Raises:**

    `ValueError` if `theta` does not have `fm.size` entries; `TypeError` if `metadata` is not
    JSON-serialisable or `fm` has no layout.
    """
    layout = layout_of(fm)
    theta = np.asarray(theta)
    if theta.ndim != 1 or theta.size != layout["size"]:
        raise ValueError(
            f"`sb.save` expected a 1-D `theta` of length {layout['size']} (the size of `fm`), "
            f"but got shape {theta.shape}. Fix: save the `theta` that belongs to this `fm`."
        )
    layout.update(format=_FORMAT, dtype=theta.dtype.name, metadata=metadata)
    write_arrays(path, {"theta": theta}, layout)


def load(path: str | os.PathLike, fm: Any, *, return_metadata: bool = False) -> Theta:
    """Load a vector saved by `sb.save`, checking it fits `fm`.

    ```python
    fm = sb.flat(eqx.nn.MLP(2, 1, 8, 2, key=jax.random.key(0)))
    sb.save("net.npz", fm.theta0 + 1.0, fm)
    theta = sb.load("net.npz", fm)
    model = fm.restructure(theta)
    ```

    **Arguments:**

    - `path`: the file written by `sb.save`.
    - `fm`: the flat model or `Restructure` to load into.
    - `return_metadata`: if `True`, return `(theta, metadata)` (default `False`).

    **Returns:**

    `theta`, a 1-D JAX array of the saved dtype.

    **Raises:**

    `ValueError` if the layout differs from `fm`'s (showing saved vs expected and the first
    differing leaf), or the file is truncated, corrupted or needs pickle; `TypeError` if the
    file holds float64 data while JAX runs with x64 off.
    """
    arrays, layout = read_arrays(path, "sb.load")
    if layout.get("format") != _FORMAT or "theta" not in arrays:
        raise ValueError(
            _MSG_CORRUPT.format(where="sb.load", path=os.fspath(path), err="not a saved theta")
        )
    check_layout(layout, layout_of(fm), "sb.load")
    check_x64(arrays["theta"].dtype, "`sb.load`", "a saved theta")
    theta = jnp.asarray(arrays["theta"])
    return (theta, layout.get("metadata")) if return_metadata else theta
