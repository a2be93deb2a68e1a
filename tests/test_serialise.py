"""`sb.save`/`sb.load`: exact round trip, layout checks, corrupted files, no pickle ever."""

import io
import json
import os
import pickle
import stat
import struct
import subprocess
import sys
import time
import tracemalloc
import zipfile

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import run_python

import sciml_bridge as sb
from sciml_bridge._npz import read_arrays, write_arrays
from sciml_bridge._serialise import check_layout, layout_of


def _fm(width=4, key=0):
    net = eqx.nn.MLP(2, 1, width, 1, activation=jnp.tanh, key=jax.random.key(key))
    return sb.flat(net, dtype=jnp.float64)


def test_round_trip_is_exact(tmp_path):
    fm = _fm()
    theta = fm.theta0 + 1e-13 * jnp.arange(fm.size, dtype=jnp.float64)
    path = tmp_path / "net.npz"
    sb.save(path, theta, fm, metadata={"epoch": 3, "note": "ok"})
    loaded, meta = sb.load(path, fm, return_metadata=True)
    assert loaded.dtype == jnp.float64
    np.testing.assert_array_equal(np.asarray(loaded), np.asarray(theta))
    assert meta == {"epoch": 3, "note": "ok"}
    assert [p.name for p in tmp_path.iterdir()] == ["net.npz"]  # no temp file left behind


def test_accepts_a_restructure(tmp_path):
    theta, re = sb.destructure({"w": jnp.ones((2, 3)), "b": jnp.zeros(3)})
    sb.save(tmp_path / "t.npz", theta, re)
    np.testing.assert_array_equal(np.asarray(sb.load(tmp_path / "t.npz", re)), np.asarray(theta))


def test_mismatched_layout_shows_both_and_first_differing_leaf(tmp_path):
    small, big = _fm(4), _fm(5)
    sb.save(tmp_path / "net.npz", small.theta0, small)
    with pytest.raises(ValueError) as info:
        sb.load(tmp_path / "net.npz", big)
    msg = str(info.value)
    assert "saved:    size=17" in msg and f"expected: size={big.size}" in msg
    assert "first differing leaf (#0)" in msg and "shape=(4, 2)" in msg and "shape=(5, 2)" in msg


def test_wrong_theta_size_on_save(tmp_path):
    fm = _fm()
    with pytest.raises(ValueError, match="expected a 1-D `theta` of length 17"):
        sb.save(tmp_path / "x.npz", jnp.zeros(16), fm)


def test_truncated_file_is_clear_error(tmp_path):
    fm = _fm()
    path = tmp_path / "net.npz"
    sb.save(path, fm.theta0, fm)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match="truncated, corrupted"):
        sb.load(path, fm)


def test_failed_save_keeps_the_previous_checkpoint(tmp_path):
    fm = _fm()
    path = tmp_path / "net.npz"
    sb.save(path, fm.theta0, fm)
    before = path.read_bytes()
    with pytest.raises(TypeError):
        sb.save(path, fm.theta0 + 1.0, fm, metadata={"bad": object()})
    assert path.read_bytes() == before and len(list(tmp_path.iterdir())) == 1


@pytest.mark.parametrize(
    ("metadata", "where", "why"),
    [
        ({"sizes": (2, 3)}, "metadata['sizes']", "would come back as a list"),
        ({3: "x"}, "metadata", "would come back as '3'"),
        ({"a": [1, {"lr": np.float64(0.1)}]}, "metadata['a'][1]['lr']", "JSON cannot hold"),
    ],
)
def test_metadata_json_would_change_is_refused_and_the_rest_comes_back_equal(
    tmp_path, metadata, where, why
):
    fm = _fm()
    path = tmp_path / "net.npz"
    with pytest.raises(TypeError, match=r"(?s)`sb\.save` expected `metadata`.*Fix:") as e:
        sb.save(path, fm.theta0, fm, metadata=metadata)
    assert f"`{where}`" in str(e.value) and why in " ".join(str(e.value).split())
    assert not path.exists()
    kept = {"sizes": [2, 3], "nested": {"lr": 0.1, "ok": True, "none": None}, "n": 2**70}
    sb.save(path, fm.theta0, fm, metadata=kept)
    assert sb.load(path, fm, return_metadata=True)[1] == kept


class _Planted:
    """Unpickling this would create the marker file: it must never happen."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


@pytest.mark.parametrize("kind", ["raw-pickle", "npz-object-array"])
def test_planted_pickle_is_rejected_never_executed(tmp_path, kind):
    fm = _fm()
    marker = tmp_path / "pwned"
    path = tmp_path / "net.npz"
    if kind == "raw-pickle":
        path.write_bytes(pickle.dumps(_Planted(str(marker))))
    else:
        arr = np.empty(1, dtype=object)
        arr[0] = _Planted(str(marker))
        with open(path, "wb") as f:
            np.savez(f, __layout__=np.frombuffer(b"{}", dtype=np.uint8), theta=arr)
    with pytest.raises(ValueError, match="refused on purpose|truncated, corrupted"):
        sb.load(path, fm)
    assert not os.path.exists(marker)


# --- Files are untrusted input (issue 12, finding 1) -------------------------------------------


def _npy(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.lib.format.write_array(buf, array, allow_pickle=False)
    return buf.getvalue()


def _forge(path, fm, members: dict, layout_update: dict | None = None):
    """A zip in `sb.save`'s format whose members the test chooses."""
    layout = dict(layout_of(fm), format="sciml_bridge.theta/1", dtype="float64", metadata=None)
    layout.update(layout_update or {})
    blob = np.frombuffer(json.dumps(layout).encode(), dtype=np.uint8)
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("__layout__.npy", _npy(blob))
        for name, data in members.items():
            zf.writestr(f"{name}.npy", data if isinstance(data, bytes) else _npy(data))


def _bomb(count: int) -> bytes:
    """A `.npy` member whose header declares `count` float64 entries, with 1 MB behind it."""
    header = io.BytesIO()
    np.lib.format.write_array_header_1_0(
        header, {"descr": "<f8", "fortran_order": False, "shape": (count,)})
    return header.getvalue() + bytes(2**20)


def _declare_size(path, name: str, declared: int):
    """Patch the uncompressed size of member `name` in the local header (offset 22) and the
    central directory (offset 24), as a "zip bomb" declares gigabytes it never stores."""
    raw = path.read_bytes()
    with zipfile.ZipFile(io.BytesIO(raw)) as zf:
        offset = zf.getinfo(f"{name}.npy").header_offset
    out = bytearray(raw)
    struct.pack_into("<I", out, offset + 22, declared)
    central = out.rfind(b"PK\x01\x02")
    while struct.unpack_from("<I", out, central + 42)[0] != offset:
        central = out.rfind(b"PK\x01\x02", 0, central)
    struct.pack_into("<I", out, central + 24, declared)
    path.write_bytes(bytes(out))


def test_forged_theta_length_is_refused(tmp_path):
    fm = _fm()
    path = tmp_path / "forged.npz"
    _forge(path, fm, {"theta": np.zeros(fm.size + 4)})
    with pytest.raises(ValueError, match=r"declares shape \(21,\), expected \(17,\)"):
        sb.load(path, fm)


@pytest.mark.parametrize("case", ["unknown member", "object array", "wrong dtype", "2-D",
                                  "integer dtype in layout", "missing theta", "bad json"])
def test_forged_members_are_refused(tmp_path, case):
    fm = _fm()
    path = tmp_path / "forged.npz"
    theta = np.asarray(fm.theta0)
    members, update = {"theta": theta}, None
    if case == "unknown member":
        members["extra"] = np.zeros(3)
    elif case == "object array":
        members["theta"] = (b"\x93NUMPY\x01\x00" + b"v\x00{'descr': '|O', 'fortran_order': "
                            b"False, 'shape': (17,), }".ljust(117) + b"\n")
    elif case == "wrong dtype":
        members["theta"] = theta.astype(np.float32)
    elif case == "2-D":
        members["theta"] = theta.reshape(1, -1)
    elif case == "integer dtype in layout":
        update = {"dtype": "int64"}
        members["theta"] = theta.astype(np.int64)
    elif case == "missing theta":
        members = {}
    _forge(path, fm, members, update)
    if case == "bad json":
        with zipfile.ZipFile(path, "w") as zf:
            zf.writestr("__layout__.npy", _npy(np.frombuffer(b"{not json", dtype=np.uint8)))
            zf.writestr("theta.npy", _npy(theta))
    with pytest.raises(ValueError, match="truncated, corrupted, forged|not floating"):
        sb.load(path, fm)


def test_zip_bomb_is_refused_fast_without_allocating(tmp_path):
    fm = _fm()
    path = tmp_path / "bomb.npz"
    _forge(path, fm, {"theta": _bomb(500_000_000)})
    _declare_size(path, "theta", 128 + 8 * 500_000_000)  # 4 GB, consistent with the header
    with zipfile.ZipFile(path) as zf:  # the directory really declares the 4 GB
        assert zf.getinfo("theta.npy").file_size > 4 * 10**9 - 1
    tracemalloc.start()
    start = time.perf_counter()
    with pytest.raises(ValueError, match="declares shape"):
        sb.load(path, fm)
    elapsed = time.perf_counter() - start
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert elapsed < 1.0 and peak < 10 * 2**20
    # The engine's reader (no exact expectation) refuses it by the default size cap.
    with pytest.raises(ValueError, match="more than the"):
        read_arrays(path, "resume")


def test_member_larger_than_its_header_declares_is_refused(tmp_path):
    fm = _fm()
    path = tmp_path / "lying.npz"
    # The header says 17 entries; 32 more bytes follow (the directory counts them).
    _forge(path, fm, {"theta": _npy(np.zeros(fm.size)) + bytes(32)})
    with pytest.raises(ValueError, match="declares 136 data bytes but the archive says 168"):
        sb.load(path, fm)


def test_engine_checkpoint_helpers_keep_their_signatures(tmp_path):
    layout = {"size": 2, "paths": ["[0]"], "shapes": [[2]], "dtypes": ["float64"], "method": "x"}
    arrays = {"state_0": np.arange(2.0), "history": np.linspace(0, 1, 5)}
    write_arrays(tmp_path / "ck.npz", arrays, layout)
    back, saved = read_arrays(tmp_path / "ck.npz", "resume")
    assert saved == layout and back.keys() == arrays.keys()
    np.testing.assert_array_equal(back["history"], arrays["history"])
    check_layout(saved, layout, "resume")
    with pytest.raises(ValueError, match="not a file written by `sb.save`"):
        sb.load(tmp_path / "ck.npz", sb.destructure(jnp.zeros(2))[1])


# --- sb.save refuses what it cannot write faithfully (issue 12, finding 4) ----------------------


@pytest.mark.parametrize("bad", [np.arange(17), np.ones(17, bool), np.empty(17, object)])
def test_save_refuses_non_floating_theta(tmp_path, bad):
    with pytest.raises(TypeError, match="expected a floating or complex `theta`"):
        sb.save(tmp_path / "x.npz", bad, _fm())
    assert list(tmp_path.iterdir()) == []


def test_save_keeps_the_mode_of_a_replaced_file_and_new_files_follow_the_umask(tmp_path):
    fm = _fm()
    path = tmp_path / "net.npz"
    old = os.umask(0o022)
    try:
        sb.save(path, fm.theta0, fm)
        assert stat.S_IMODE(path.stat().st_mode) == 0o644
        path.chmod(0o640)
        sb.save(path, fm.theta0 + 1, fm)
        assert stat.S_IMODE(path.stat().st_mode) == 0o640
    finally:
        os.umask(old)


def test_save_through_a_symlink_replaces_its_target_and_keeps_the_link(tmp_path):
    fm = _fm()
    (tmp_path / "real").mkdir()
    target = tmp_path / "real" / "net.npz"
    link = tmp_path / "latest.npz"
    sb.save(target, fm.theta0, fm)
    link.symlink_to(target)
    sb.save(link, fm.theta0 + 2, fm)
    assert link.is_symlink() and os.readlink(link) == str(target)
    np.testing.assert_array_equal(sb.load(target, fm), fm.theta0 + 2)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["latest.npz", "real"]


def test_bfloat16_theta_round_trips(tmp_path):
    lin = eqx.nn.Linear(3, 2, key=jax.random.key(0), dtype=jnp.bfloat16)
    fm = sb.flat(lin)
    sb.save(tmp_path / "b.npz", fm.theta0, fm)
    back = sb.load(tmp_path / "b.npz", fm)
    assert back.dtype == jnp.bfloat16
    np.testing.assert_array_equal(np.asarray(back, np.float32), np.asarray(fm.theta0, np.float32))


def test_stale_temp_files_of_dead_writers_are_removed_by_the_next_save(tmp_path):
    fm = _fm()
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    stale = tmp_path / f".net.npz.sb-tmp-{dead.pid}-0123abcd"
    live = tmp_path / f".net.npz.sb-tmp-{os.getpid()}-89abcdef"  # a writer still running
    other = tmp_path / f".other.npz.sb-tmp-{dead.pid}-0123abcd"  # another file's temp
    for p in (stale, live, other):
        p.write_bytes(b"partial")
    sb.save(tmp_path / "net.npz", fm.theta0, fm)
    assert not stale.exists() and live.exists() and other.exists()


_KILL_CHILD = """
import os, random, signal, sys, time, warnings
import numpy as np, jax.numpy as jnp
import sciml_bridge as sb

warnings.simplefilter("ignore")  # JAX warns about os.fork; the writer only uses NumPy
path, n, kills = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
_, re = sb.destructure({"w": jnp.zeros(n)})
sb.save(path, np.full(n, -1.0), re)
seen, mid_write = {-1.0}, 0
for k in range(kills):
    first = 1000.0 * k
    pid = os.fork()
    if pid == 0:  # the writer: save, save, save, ... until killed
        i = 0
        while True:
            sb.save(path, np.full(n, first + i), re)
            i += 1
    seen.update(first + i for i in range(1000))
    # Kill while a temp file is being written (a random delay alone can miss every write).
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and not any(
            ".sb-tmp-" in p for p in os.listdir(os.path.dirname(path))):
        time.sleep(0.001)
    time.sleep(random.uniform(0.0, 0.02))
    os.kill(pid, signal.SIGKILL)
    os.waitpid(pid, 0)
    theta = np.asarray(sb.load(path, re))
    assert np.all(theta == theta[0]) and float(theta[0]) in seen, theta[:3]
    mid_write += any(".sb-tmp-" in p for p in os.listdir(os.path.dirname(path)))
sb.save(path, np.full(n, 7.0), re)
left = [p for p in os.listdir(os.path.dirname(path)) if ".sb-tmp-" in p]
print("MID_WRITE", mid_write, "LEFT", len(left))
"""


def test_sigkill_mid_save_leaves_old_or_new_file_and_the_next_save_cleans_up(tmp_path):
    path = tmp_path / "big.npz"
    n = 2_000_000  # 16 MB of float64: each save takes long enough to be killed mid-write
    proc = run_python(_KILL_CHILD.replace("sys.argv[1], int(sys.argv[2]), int(sys.argv[3])",
                                          f"{str(path)!r}, {n}, 3"),
                      env={"JAX_ENABLE_X64": "1"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    mid_write, left = (int(v) for v in proc.stdout.split()[1::2])
    assert mid_write >= 1 and left == 0  # some kills hit a write; none left a trace
    assert [p.name for p in tmp_path.iterdir()] == ["big.npz"]


@pytest.mark.parametrize("dtype", [">f8", ">c16"])
def test_big_endian_theta_round_trips_in_native_order(tmp_path, dtype):
    fm = _fm()
    theta = (np.asarray(fm.theta0) + 1e-13).astype(dtype)
    sb.save(tmp_path / "be.npz", theta, fm)
    loaded = sb.load(tmp_path / "be.npz", fm)
    assert loaded.dtype == np.dtype(dtype).newbyteorder("=")
    np.testing.assert_array_equal(np.asarray(loaded), theta)  # NumPy compares values


def test_forged_non_native_byte_order_is_a_clear_error(tmp_path):
    fm = _fm()
    sb.save(tmp_path / "ok.npz", fm.theta0, fm)
    _, layout = read_arrays(tmp_path / "ok.npz", "test")
    write_arrays(tmp_path / "be.npz", {"theta": np.asarray(fm.theta0).astype(">f8")},
                 {**layout, "dtype": ">f8"})  # fmt: skip
    with pytest.raises(ValueError, match="not native byte order"):
        sb.load(tmp_path / "be.npz", fm)


# --- a checkpoint's bookkeeping is untrusted input too ------------------------------------------

_Q = lambda t: jnp.sum((t - 1.0) ** 2)


@pytest.fixture(scope="module")
def adam_checkpoint(tmp_path_factory):
    path = tmp_path_factory.mktemp("ck") / "run.npz"
    sb.minimize(_Q, jnp.zeros(3), "adam", max_steps=10, checkpoint=path, checkpoint_every=5,
                progress=False)  # fmt: skip
    return path, *read_arrays(path, "test")


@pytest.mark.parametrize(("name", "value", "why"), [
    ("book_results", np.array([7]), "holds 7, which is no `sb.RESULTS` code"),
    ("book_lengths", None, "no `book_lengths`"),
    ("book_steps", np.array([1, 2, 3]), r"`book_steps` of shape \(3,\)"),
    ("book_steps", np.array([-4]), "disagree"),
    ("book_lengths", np.array([12]), "disagree"),  # 12 losses for 10 steps
    ("book_done", np.array([1]), "dtype int64"),
    ("book_history", np.zeros(3), r"`book_history` of shape \(3,\)"),
    ("good_theta", np.zeros((1, 3), np.complex128), "dtype complex128 where"),
    ("state_0", np.zeros((1, 3), np.float32), "dtype float32 where"),
])  # fmt: skip
def test_damaged_checkpoint_books_are_refused(tmp_path, adam_checkpoint, name, value, why):
    _, arrays, layout = adam_checkpoint
    arrays = dict(arrays)
    assert name in arrays and arrays["book_steps"].tolist() == [10]
    if value is None:
        del arrays[name]
    else:
        arrays[name] = value
    path = tmp_path / "damaged.npz"
    write_arrays(path, arrays, layout)
    with pytest.raises(ValueError, match=f"damaged checkpoint .*{why}"):
        sb.minimize(_Q, jnp.zeros(3), "adam", max_steps=20, checkpoint=path,
                    checkpoint_every=5, progress=False)  # fmt: skip


def test_intact_checkpoint_resumes_where_it_stopped(tmp_path, adam_checkpoint):
    _, arrays, layout = adam_checkpoint
    write_arrays(tmp_path / "ok.npz", arrays, layout)
    res = sb.minimize(_Q, jnp.zeros(3), "adam", max_steps=20, checkpoint=tmp_path / "ok.npz",
                      checkpoint_every=5, progress=False)  # fmt: skip
    fresh = sb.minimize(_Q, jnp.zeros(3), "adam", max_steps=20, progress=False)
    assert res.steps == 20 and len(res.history) == 21
    np.testing.assert_allclose(np.asarray(res.theta), np.asarray(fresh.theta), rtol=1e-12)


def test_resuming_past_max_steps_says_no_step_was_taken(tmp_path, adam_checkpoint):
    # It said "ran its full budget of `max_steps=4`" with steps=10.
    _, arrays, layout = adam_checkpoint
    write_arrays(tmp_path / "ok.npz", arrays, layout)
    res = sb.minimize(_Q, jnp.zeros(3), "adam", max_steps=4, checkpoint=tmp_path / "ok.npz",
                      progress=False)  # fmt: skip
    assert res.steps == 10 and len(res.history) == 11
    assert "already at step 10, past `max_steps=4`: no step was taken" in res.message


@pytest.mark.skipif(np.finfo(np.longdouble).nmant <= 52, reason="np.longdouble is float64 here")
def test_float128_theta_is_refused_on_save_and_in_a_forged_file(tmp_path):
    fm = _fm()
    with pytest.raises(TypeError, match=r"`sb.save` got `theta` of dtype float128"):
        sb.save(tmp_path / "x.npz", np.asarray(fm.theta0, np.longdouble), fm)
    assert list(tmp_path.iterdir()) == []
    # A forged file declaring float128 (JAX would fail on it) is damage, like any other.
    layout = dict(layout_of(fm), format="sciml_bridge.theta/1", dtype="float128", metadata=None)
    write_arrays(tmp_path / "f.npz", {"theta": np.ones(fm.size, np.longdouble)}, layout)
    with pytest.raises(ValueError, match="not a file written by `sb.save` .*float128"):
        sb.load(tmp_path / "f.npz", fm)


def test_a_directory_is_named_as_one_on_save_and_load(tmp_path):
    # Was: `sb.load` called a directory "truncated, corrupted, forged" (a ValueError), and
    # `sb.save` failed renaming its temporary file onto it, naming only that temporary file.
    fm = _fm()
    (tmp_path / "runs").mkdir()
    with pytest.raises(IsADirectoryError, match=r"`sb.load`: .*runs' is a directory, but a"):
        sb.load(tmp_path / "runs", fm)
    with pytest.raises(IsADirectoryError, match=r"`sb.save`: .*runs' is a directory, but a"):
        sb.save(tmp_path / "runs", fm.theta0, fm)
    assert [p.name for p in tmp_path.iterdir()] == ["runs"]
    assert not any((tmp_path / "runs").iterdir())


def test_an_unreadable_file_is_a_permission_error_not_damage(tmp_path, monkeypatch):
    # Was: any `OSError` of `open` (not found aside) became "truncated, corrupted, forged".
    fm = _fm()
    sb.save(tmp_path / "x.npz", fm.theta0, fm)

    def refuse(path, *args, **kwargs):
        raise PermissionError(13, "Permission denied", str(path))

    monkeypatch.setattr(sb._npz, "open", refuse, raising=False)  # as `chmod 000` (root reads on)
    with pytest.raises(PermissionError, match="Permission denied"):
        sb.load(tmp_path / "x.npz", fm)
