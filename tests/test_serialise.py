"""`sb.save`/`sb.load`: exact round trip, layout checks, corrupted files, no pickle ever."""

import os
import pickle

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import sciml_bridge as sb


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


def test_x64_off_load_of_float64_is_type_error(tmp_path):
    from helpers import run_python

    fm = _fm()
    sb.save(tmp_path / "net.npz", fm.theta0, fm)
    out = run_python(
        f"""
        import numpy as np, sciml_bridge as sb

        class Layout:  # the float64 layout the file was saved with
            paths = {list(fm.restructure.paths)!r}
            shapes = {list(fm.restructure.shapes)!r}
            dtypes = [np.float64] * {len(fm.restructure.paths)}
            size = {fm.size}

        try:
            sb.load({str(tmp_path / "net.npz")!r}, Layout())
        except TypeError as e:
            print("TYPEERROR", "jax_enable_x64" in str(e))
        """
    )
    assert "TYPEERROR True" in out.stdout, out.stderr
