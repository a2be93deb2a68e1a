"""`sb.save(..., state=)` / `sb.load(..., state=)`: a model's state travels exactly, or not at all
with a clear error; a stateful model saved without its state warns."""

import warnings

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from helpers import run_python

import sciml_bridge as sb
from sciml_bridge._npz import read_arrays, write_arrays


class _Net(eqx.Module):
    lin: eqx.nn.Linear
    bn: eqx.nn.BatchNorm

    def __init__(self, key):
        self.lin = eqx.nn.Linear(3, 4, key=key)
        self.bn = eqx.nn.BatchNorm(4, "batch", mode="batch")

    def __call__(self, x, state):
        return self.bn(self.lin(x), state)


@pytest.fixture(scope="module")
def fm():
    model, state = eqx.nn.make_with_state(_Net)(jax.random.key(0))
    return sb.flat(model, state=state, dtype=jnp.float64)


def _trained(state):
    """A state unlike the initial one, in every floating leaf."""
    def change(a):
        if not jnp.issubdtype(a.dtype, jnp.floating):
            return a
        return a + 0.1 * jnp.arange(a.size, dtype=a.dtype).reshape(a.shape) + 1e-13

    return jax.tree.map(change, state)


def _same(a, b):
    la, lb = jax.tree.leaves(a), jax.tree.leaves(b)
    assert jax.tree.structure(a) == jax.tree.structure(b) and len(la) == len(lb)
    for x, y in zip(la, lb):
        assert np.asarray(x).dtype == np.asarray(y).dtype
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def test_equinox_state_round_trip_is_exact(fm, tmp_path):
    state = _trained(fm.init_state())
    assert any(jnp.issubdtype(x.dtype, jnp.floating) for x in jax.tree.leaves(state))
    sb.save(tmp_path / "bn.npz", fm.theta0, fm, metadata={"epoch": 2}, state=state)
    theta, loaded, meta = sb.load(tmp_path / "bn.npz", fm, state=fm.init_state(),
                                  return_metadata=True)  # fmt: skip
    np.testing.assert_array_equal(np.asarray(theta), np.asarray(fm.theta0))
    _same(loaded, state)
    assert meta == {"epoch": 2}
    # Without `state=` the same file gives parameters only, as before.
    only = sb.load(tmp_path / "bn.npz", fm)
    assert isinstance(only, jax.Array) and only.shape == (fm.size,)


def test_nnx_rng_keys_and_counts_round_trip(tmp_path):
    model = nnx.Sequential(nnx.Linear(2, 3, rngs=nnx.Rngs(0)),
                           nnx.Dropout(0.5, rngs=nnx.Rngs(dropout=1)))  # fmt: skip
    fm = sb.flat(model)
    state = fm.init_state()
    keys = [x for x in jax.tree.leaves(state) if jnp.issubdtype(x.dtype, jax.dtypes.prng_key)]
    assert keys, "the NNX state should hold a typed PRNG key"
    sb.save(tmp_path / "nnx.npz", fm.theta0, fm, state=state)
    _, loaded = sb.load(tmp_path / "nnx.npz", fm, state=state)
    for a, b in zip(jax.tree.leaves(loaded), jax.tree.leaves(state)):
        assert a.dtype == b.dtype
        data = jax.random.key_data if jnp.issubdtype(a.dtype, jax.dtypes.prng_key) else np.asarray
        np.testing.assert_array_equal(np.asarray(data(a)), np.asarray(data(b)))


def test_numbers_and_bfloat16_keep_their_kind(fm, tmp_path):
    state = {"n": 3, "f": 0.1, "b": jnp.asarray([1.5, -2.0], jnp.bfloat16)}
    sb.save(tmp_path / "s.npz", fm.theta0, fm, state=state)
    _, loaded = sb.load(tmp_path / "s.npz", fm,
                        state={"n": 0, "f": 0.0, "b": jnp.zeros(2, jnp.bfloat16)})  # fmt: skip
    assert loaded["n"] == 3 and type(loaded["n"]) is int
    assert loaded["f"] == 0.1 and type(loaded["f"]) is float
    assert loaded["b"].dtype == jnp.bfloat16
    np.testing.assert_array_equal(np.asarray(loaded["b"], np.float32), [1.5, -2.0])


def test_a_stateful_model_saved_without_state_warns(fm, tmp_path):
    with pytest.warns(UserWarning, match="state=state"):
        sb.save(tmp_path / "a.npz", fm.theta0, fm)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        sb.save(tmp_path / "b.npz", fm.theta0, fm, state=False)  # parameters only, on purpose
        plain = sb.flat(eqx.nn.Linear(2, 2, key=jax.random.key(0)))
        sb.save(tmp_path / "c.npz", plain.theta0, plain)  # no state to lose: no warning


def test_state_asked_of_a_parameters_only_file(fm, tmp_path):
    sb.save(tmp_path / "p.npz", fm.theta0, fm, state=False)
    with pytest.raises(ValueError, match="holds parameters only"):
        sb.load(tmp_path / "p.npz", fm, state=fm.init_state())


def test_a_state_of_another_model_shows_the_first_differing_leaf(fm, tmp_path):
    sb.save(tmp_path / "s.npz", fm.theta0, fm, state={"count": jnp.zeros(3)})
    with pytest.raises(ValueError) as info:
        sb.load(tmp_path / "s.npz", fm, state={"count": jnp.zeros(4)})
    msg = str(info.value)
    assert "first differing leaf (#0)" in msg and "shape=(3,)" in msg and "shape=(4,)" in msg


def test_non_numeric_state_is_refused(fm, tmp_path):
    with pytest.raises(TypeError, match=r"\['name'\] is of type str"):
        sb.save(tmp_path / "s.npz", fm.theta0, fm, state={"name": "bn"})


def test_forged_state_member_is_refused_before_reading(fm, tmp_path):
    path = tmp_path / "s.npz"
    sb.save(path, fm.theta0, fm, state={"count": jnp.zeros(3)})
    arrays, layout = read_arrays(path, "test")
    arrays["state_0"] = np.zeros(10**6)  # the layout still says (3,)
    write_arrays(path, arrays, layout)
    with pytest.raises(ValueError, match="declares shape"):
        sb.load(path, fm, state={"count": jnp.zeros(3)})
    # Not asked for, the state member is checked for pickle but never decompressed.
    np.testing.assert_array_equal(np.asarray(sb.load(path, fm)), np.asarray(fm.theta0))


def test_a_layout_declaring_millions_of_state_leaves_is_refused_at_once(fm, tmp_path):
    # An 8 KB file declaring 4,000,000 state rows took 13.6 s and 1.3 GB to refuse.
    path = tmp_path / "s.npz"
    sb.save(path, fm.theta0, fm, state={"count": jnp.zeros(3)})
    arrays, layout = read_arrays(path, "test")
    layout["state"] = [0] * 1_000_000
    write_arrays(path, arrays, layout)
    for kw in ({}, {"state": {"count": jnp.zeros(3)}}):
        with pytest.raises(ValueError, match="declares 1000000 state leaves, the archive holds 1"):
            sb.load(path, fm, **kw)


def test_a_stateless_nnx_model_saves_without_a_warning(tmp_path):
    fm = sb.flat(nnx.Linear(2, 3, rngs=nnx.Rngs(0)))  # its state is an empty `nnx.State`
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        sb.save(tmp_path / "n.npz", fm.theta0, fm)


def test_numpy_scalars_come_back_as_numpy_scalars(fm, tmp_path):
    state = {"s": np.float32(1.5), "i": np.int16(-3)}
    sb.save(tmp_path / "s.npz", fm.theta0, fm, state=state)
    _, loaded = sb.load(tmp_path / "s.npz", fm, state={"s": np.float32(0), "i": np.int16(0)})
    assert type(loaded["s"]) is np.float32 and loaded["s"] == np.float32(1.5)
    assert type(loaded["i"]) is np.int16 and loaded["i"] == -3


def test_a_64_bit_state_loaded_with_x64_off_is_the_x64_error(tmp_path):
    path = tmp_path / "s.npz"
    theta, re = sb.destructure({"w": jnp.ones(2, jnp.float32)})
    sb.save(path, theta, re, state={"count": jnp.zeros((), jnp.int64)})
    proc = run_python(f"""
        import jax.numpy as jnp, sciml_bridge as sb
        theta, re = sb.destructure({{"w": jnp.ones(2, jnp.float32)}})
        try:
            sb.load({str(path)!r}, re, state={{"count": jnp.zeros((), jnp.int32)}})
        except TypeError as e:
            print("TypeError:", e)
    """, env={"JAX_ENABLE_X64": "0"})
    assert "TypeError: `sb.load` found a saved model state with int64 leaves" in proc.stdout, \
        proc.stdout + proc.stderr


def test_python_number_state_saved_and_loaded_with_x64_off(tmp_path):
    # A Python int/float state leaf is stored as int64/float64 (NumPy's view of it) but comes
    # back as a Python number, never as a JAX array: nothing can truncate, so no x64 error.
    proc = run_python(f"""
        import jax.numpy as jnp, sciml_bridge as sb
        theta, re = sb.destructure({{"w": jnp.ones(2)}})
        path = {str(tmp_path / "s.npz")!r}
        sb.save(path, theta, re, state={{"step": 3, "lr": 0.1, "on": True}})
        _, state = sb.load(path, re, state={{"step": 0, "lr": 0.0, "on": False}})
        print(state)
    """, env={"JAX_ENABLE_X64": "0"})
    assert "{'lr': 0.1, 'on': True, 'step': 3}" in proc.stdout, proc.stdout + proc.stderr
