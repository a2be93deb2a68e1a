"""`.npz` files as untrusted input, and atomic, crash-safe writes.

Reading: the zip directory and every member's `.npy` header are checked against what the
caller expects (names, shapes, dtypes, sizes) *before* a single data byte is decompressed, so a
forged or "bomb" file (a few MB of deflated zeros declaring gigabytes) is refused in
milliseconds without allocating what it declares. Object arrays (pickle) are never read.

Writing: a temporary file with a recognisable name (`.<name>.sb-tmp-<pid>-<rand>`) in the
target's directory, fsynced, then `os.replace` (atomic on POSIX and Windows) and an fsync of
the directory. A save killed mid-write (SIGKILL) leaves its temporary file behind; the next
save of the same path removes those whose writing process is gone.
"""

import json
import os
import secrets
import zipfile
from collections.abc import Callable, Mapping
from typing import NamedTuple, cast

import numpy as np


LAYOUT_KEY = "__layout__"
MAX_LAYOUT_BYTES = 64 * 2**20
# Without an exact expectation, a member may hold at most this many bytes (history, losses).
DEFAULT_MEMBER_BYTES = 64 * 2**20
_TMP = ".sb-tmp-"

_MSG_CORRUPT = """\
`{where}` could not read {path!r}: the file is truncated, corrupted, forged, or not a
sciml_bridge checkpoint ({err}). Checkpoints are written atomically, so a complete earlier one is
intact if it exists; a file that needs pickle to load is refused on purpose and never unpickled."""


_MSG_DIRECTORY = """\
{who}: {path!r} is a directory, but a file was expected ({verb}).
Fix: name a file inside it, e.g. {example!r}."""


def _refuse_directory(path: str, where: str | None, verb: str) -> None:
    """`IsADirectoryError` naming the call (an `OSError`, as `open` would raise), before a
    directory is taken for a damaged file or a temporary file is made next to it."""
    if os.path.isdir(path):
        who = f"`{where}`" if where else "Writing a checkpoint"  # the engine's own writes
        example = os.path.join(path, "checkpoint.npz")
        raise IsADirectoryError(_MSG_DIRECTORY.format(who=who, verb=verb, path=path,
                                                      example=example))


class Expect(NamedTuple):
    """What one member must be: an exact shape (or None) and dtype (or None), or a byte cap;
    `skip`: its header is checked, its data never read (a member the caller did not ask for)."""

    shape: tuple[int, ...] | None = None
    dtype: np.dtype | None = None
    max_bytes: int = DEFAULT_MEMBER_BYTES
    skip: bool = False


class Corrupt(ValueError):
    """A file that is not what it claims to be (the reason goes into `_MSG_CORRUPT`)."""


class _Refused(Exception):
    """The caller's `expect` refused the layout: its own error reaches the user unchanged."""


def storable(dtype: np.dtype) -> np.dtype:
    """The dtype `.npy` can name for `dtype`: bfloat16 and other ml_dtypes travel as bits."""
    # Never a list for a plain (non-structured) dtype, whatever the stub says.
    if cast(str, np.lib.format.dtype_to_descr(dtype)).lstrip("<>|=").startswith("V"):
        return np.dtype(f"<u{dtype.itemsize}")
    return dtype


def _member_name(info: zipfile.ZipInfo) -> str:
    name = info.filename
    if not name.endswith(".npy") or "/" in name or info.flag_bits & 0x1:
        raise Corrupt(f"unexpected archive member {name!r}")
    if info.compress_type not in (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED):
        raise Corrupt(f"member {name!r} uses an unsupported compression")
    return name[: -len(".npy")]


def _header(stream) -> tuple[tuple[int, ...], bool, np.dtype]:
    version = np.lib.format.read_magic(stream)
    if version == (1, 0):
        return np.lib.format.read_array_header_1_0(stream)
    if version in ((2, 0), (3, 0)):
        return np.lib.format.read_array_header_2_0(stream)
    raise Corrupt(f"unknown .npy format version {version}")


def _check_header(name: str, info: zipfile.ZipInfo, header, header_len: int,
                  expect: Expect) -> int:
    """The member's data size in bytes, after every declared fact was checked."""
    shape, _, dtype = header
    if dtype.hasobject:
        raise Corrupt(f"member {name!r} holds Python objects (would need pickle)")
    if expect.shape is not None and tuple(shape) != tuple(expect.shape):
        raise Corrupt(f"member {name!r} declares shape {tuple(shape)}, expected {expect.shape}")
    if expect.dtype is not None and dtype != expect.dtype:
        raise Corrupt(f"member {name!r} declares dtype {dtype}, expected {expect.dtype}")
    nbytes = int(np.prod(shape, dtype=object)) * dtype.itemsize
    if expect.shape is None and nbytes > expect.max_bytes and not expect.skip:
        raise Corrupt(f"member {name!r} declares {nbytes} bytes, more than the "
                      f"{expect.max_bytes} allowed")
    if header_len + nbytes != info.file_size:
        raise Corrupt(f"member {name!r} declares {nbytes} data bytes but the archive says "
                      f"{info.file_size - header_len}")
    return nbytes


def _read_member(zf: zipfile.ZipFile, info: zipfile.ZipInfo, expect: Expect) -> np.ndarray:
    name = _member_name(info)
    with zf.open(info) as stream:
        header = _header(stream)
        nbytes = _check_header(name, info, header, stream.tell(), expect)
        data = stream.read(nbytes)
        if len(data) != nbytes or stream.read(1):
            raise Corrupt(f"member {name!r} is shorter or longer than declared")
    shape, fortran, dtype = header
    array = np.frombuffer(data, dtype=dtype)
    return array.reshape(shape, order="F" if fortran else "C").copy()


def _read_layout(zf: zipfile.ZipFile, infos: dict) -> dict:
    if LAYOUT_KEY not in infos:
        raise Corrupt("no layout")
    blob = _read_member(zf, infos[LAYOUT_KEY], Expect(None, np.dtype(np.uint8), MAX_LAYOUT_BYTES))
    if blob.ndim != 1:
        raise Corrupt("malformed layout")
    layout = json.loads(blob.tobytes().decode("utf-8"))
    if not isinstance(layout, dict):
        raise Corrupt("malformed layout")
    return layout


# `expect(layout, names)`: `names` are the members the archive holds (its directory, read).
Expectations = Callable[[dict, frozenset[str]], Mapping[str, Expect]]


def _default_expect(layout: dict, names: frozenset[str]) -> Mapping[str, Expect]:
    return {}


def _some(names: list[str]) -> str:
    """At most five names and how many more: a forged file may declare millions."""
    more = f" and {len(names) - 5} more" if len(names) > 5 else ""
    return f"{names[:5]}{more}"


def _read(zf: zipfile.ZipFile, expect: Expectations, strict: bool):
    infos: dict[str, zipfile.ZipInfo] = {}
    for info in zf.infolist():
        name = _member_name(info)
        if name in infos:
            raise Corrupt(f"member {name!r} appears twice")
        infos[name] = info
    layout = _read_layout(zf, infos)
    try:
        wanted = dict(expect(layout, frozenset(infos) - {LAYOUT_KEY}))
    except Corrupt:
        raise
    except (ValueError, TypeError) as e:
        raise _Refused(e) from e
    unknown = sorted(set(infos) - set(wanted) - {LAYOUT_KEY})
    if strict and unknown:
        raise Corrupt(f"unknown member(s) {_some(unknown)}")
    missing = sorted(set(wanted) - set(infos))
    if strict and missing:
        raise Corrupt(f"missing member(s) {_some(missing)}")
    # Every header is checked before any member's data is read.
    with_headers = [(n, i, wanted.get(n, Expect())) for n, i in infos.items() if n != LAYOUT_KEY]
    for name, info, want in with_headers:
        with zf.open(info) as stream:
            _check_header(name, info, _header(stream), stream.tell(), want)
    return {n: _read_member(zf, i, w) for n, i, w in with_headers if not w.skip}, layout


def read_arrays(path: str | os.PathLike, where: str, expect: Expectations | None = None,
                *, strict: bool = False) -> tuple[dict[str, np.ndarray], dict]:
    """Read what `write_arrays` wrote as `(arrays, layout)`; damage is a clear `ValueError`.

    `expect(layout, names)` maps member names to an `Expect`; it is called on the JSON layout
    (read first, at most `MAX_LAYOUT_BYTES`) and the names of the archive's members before any
    other member is decompressed. Members it does
    not name may hold at most `DEFAULT_MEMBER_BYTES`; with `strict=True` they are refused, and
    every named member must be present.
    """
    path = os.fspath(path)
    _refuse_directory(path, where, "to read from")
    # Opening is outside the `try`: a missing or unreadable file is not a damaged one, and
    # `open`'s own error (FileNotFoundError, PermissionError) says so. Open the file ourselves:
    # a damaged zip must not leak a handle.
    with open(path, "rb") as f:
        try:
            with zipfile.ZipFile(f) as zf:
                return _read(zf, expect or _default_expect, strict)
        except _Refused as e:
            raise e.args[0] from None
        except (ValueError, KeyError, OSError, EOFError, zipfile.BadZipFile, UnicodeError,
                TypeError, OverflowError, RuntimeError, NotImplementedError) as e:
            raise ValueError(_MSG_CORRUPT.format(where=where, path=path, err=e)) from e


def _writer_alive(name: str, prefix: str) -> bool:
    pid = name[len(prefix):].split("-", 1)[0]
    if not pid.isdigit():
        return True  # not ours to judge
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except OSError:
        return True  # alive, owned by someone else
    return True


def _remove_stale(directory: str, base: str) -> None:
    """Delete temporary files of earlier saves of `base` whose writer process is dead."""
    prefix = f".{base}{_TMP}"
    for name in os.listdir(directory):
        if name.startswith(prefix) and not _writer_alive(name, prefix):
            try:
                os.remove(os.path.join(directory, name))
            except FileNotFoundError:
                pass  # another saver removed it first


def _fsync_directory(directory: str) -> None:
    if os.name != "posix":
        return  # Windows cannot open a directory; its rename is already durable.
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _open_temp(directory: str, base: str, target: str) -> tuple[int, str]:
    tmp = os.path.join(directory, f".{base}{_TMP}{os.getpid()}-{secrets.token_hex(4)}")
    # Mode 0o666 minus the umask, as for any new file; a replaced file keeps its own mode.
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o666)
    try:
        mode = os.stat(target).st_mode & 0o7777
    except FileNotFoundError:
        return fd, tmp
    if hasattr(os, "fchmod"):
        os.fchmod(fd, mode)
    return fd, tmp


def write_arrays(path: str | os.PathLike, arrays: dict[str, np.ndarray], layout: dict, *,
                 where: str | None = None) -> None:
    """Write `arrays` plus a JSON `layout` to `path` atomically (through a symlink to its
    target; a replaced file keeps its mode, a new one follows the umask). `where` names the
    call in the error for a `path` that is a directory."""
    target = os.path.realpath(os.fspath(path))
    _refuse_directory(target, where, "to write to")
    directory, base = os.path.split(target)
    blob = np.frombuffer(json.dumps(layout).encode("utf-8"), dtype=np.uint8)
    _remove_stale(directory, base)
    fd, tmp = _open_temp(directory, base, target)
    try:
        with os.fdopen(fd, "wb") as f:
            # numpy's stub lets `**arrays` match `allow_pickle`; our keys never use that name.
            np.savez(f, **{LAYOUT_KEY: blob}, **arrays)  # pyright: ignore[reportArgumentType]
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, target)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise
    _fsync_directory(directory)

