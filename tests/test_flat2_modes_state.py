"""`sb.flat` edges: unset modes under `eqx.nn.inference_mode`, non-array state leaves, the
name in `theta` errors, weakly typed parameters (which do not decide dtypes) and unhashable
non-array leaves (static data)."""

import pickle

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import TraceCounter

import sciml_bridge as sb


nn = pytest.importorskip("flax.linen")
K1, K2 = jax.random.split(jax.random.key(0))
X = jnp.array([0.5, -0.25])


class _TwoDropouts(eqx.Module):
    on: eqx.nn.Dropout
    off: eqx.nn.Dropout
    lin: eqx.nn.Linear

    def __call__(self, x, *, key=None):
        return self.lin(self.off(self.on(x, key=key), key=key))


def test_inference_mode_sets_a_flat_model_whose_flags_disagree():
    # `fm.inference` was `None`, which `eqx.tree_at` cannot single out: inference_mode crashed.
    model = _TwoDropouts(eqx.nn.Dropout(0.9, inference=True), eqx.nn.Dropout(0.9),
                         eqx.nn.Linear(2, 3, key=K1))  # fmt: skip
    fm = sb.flat(model)
    assert fm.inference == None and not fm.inference  # noqa: E711 (unset: runs as flattened)
    key = jax.random.key(3)
    np.testing.assert_array_equal(fm(fm.theta0, X, key=key), model(X, key=key))
    fi = eqx.nn.inference_mode(fm)
    assert fi.inference == True and fi.inference is not None  # noqa: E712
    np.testing.assert_array_equal(fi(fi.theta0, X), eqx.nn.inference_mode(model)(X))
    ft = eqx.nn.inference_mode(fi, False)
    want = eqx.nn.inference_mode(model, False)(X, key=key)
    np.testing.assert_array_equal(ft(ft.theta0, X, key=key), want)
    # Unset is part of the tree structure too: jitted as an argument, it is never traced.
    counted = TraceCounter(lambda fm, theta, x: fm(theta, x, key=key))
    run = jax.jit(counted)
    np.testing.assert_array_equal(run(fm, fm.theta0, X), model(X, key=key))
    run(fm, 2.0 * fm.theta0, X)
    assert counted.count == 1 and hash(fm) == hash(sb.flat(model))
    again = pickle.loads(pickle.dumps(fm))
    assert again.inference == None and eqx.nn.inference_mode(again).inference  # noqa: E711


def test_a_wrong_theta_is_named_as_the_call_written():
    # The general path reported a wrong `theta` as `re(theta)`, a call the user never made.
    dense = nn.Dense(3, param_dtype=jnp.float64)
    fl = sb.flat(dense.apply, dense.init(K2, X))
    fe = sb.flat(eqx.nn.Linear(2, 3, key=K1))
    for fm in (fl, fe):
        with pytest.raises(ValueError, match=r"^`fm\(theta, x\)` expected a 1-D `theta` of "
                           r"length 9 \(`fm.size`.*\n.*Fix: pass `fm.theta0`"):  # fmt: skip
            fm(jnp.ones(8), X)
        with pytest.raises(TypeError, match=r"^`fm\(theta, x\)` expected a 1-D `theta`"):
            fm(jnp.ones((2, 9)), X)
    # ... and so were dtype errors, and `sb.flat`'s own arguments as `sb.destructure(...)`'s.
    strict = sb.flat(eqx.nn.Linear(2, 3, key=K1), precision="strict", fast=False)
    with pytest.raises(TypeError, match=r"^`fm\(theta, x\)` with `precision=\"strict\"`"):
        strict(strict.theta0.astype(jnp.float32), X)
    with pytest.raises(TypeError, match=r"^`sb.flat\(..., dtype=int32\)` would make theta"):
        sb.flat(dense.apply, dense.init(K2, X), dtype=jnp.int32)
    plain = sb.FlatModel(*sb.destructure({"w": X}), lambda p, x: p["w"] * x)
    with pytest.raises(TypeError, match=r"^`fm\(theta, ...\)` needs to know how the model "
                       r"keeps its modes"):  # fmt: skip
        eqx.nn.inference_mode(plain)(X, X)


class _Counter(nn.Module):
    @nn.compact
    def __call__(self, x):
        tag = self.variable("meta", "tag", lambda: "run-1")
        return nn.Dense(1, param_dtype=jnp.float64)(x) if tag.value else x


def test_a_state_leaf_jax_cannot_carry_is_refused_by_name():
    # A string in the state passed `sb.flat` and failed later at a jit boundary, in JAX's words.
    model, state = eqx.nn.make_with_state(eqx.nn.BatchNorm)(2, "batch", mode="batch",
                                                          dtype=jnp.float64)
    want = r"^`sb.flat\(model, state=state\)` expected a model state of arrays.*\n.*leaf at "
    with pytest.raises(TypeError, match=want + r"`\['note'\]` is a str \('hello'\)"):
        sb.flat(model, state={"note": "hello", "stats": state})
    fm = sb.flat(model, state=state)
    with pytest.raises(TypeError, match=r"^`fm\(theta, x, state=state\)`.*\n.*is a function"):
        fm(fm.theta0, X, state=lambda: 0)
    # Another model's state failed inside BatchNorm ("incompatible shapes for broadcasting").
    _, other = eqx.nn.make_with_state(eqx.nn.BatchNorm)(3, "batch", mode="batch",
                                                        dtype=jnp.float64)  # fmt: skip
    with pytest.raises(ValueError, match=r"^`fm\(theta, x, state=state\)` expected a state like "
                       r"`fm.init_state\(\)`, but its leaf at .* has shape \(3,\), expected "
                       r"\(2,\)"):  # fmt: skip
        fm(fm.theta0, X, state=other)
    variables = _Counter().init(K2, X)
    fl = sb.flat(_Counter().apply, variables)
    np.testing.assert_array_equal(fl(fl.theta0, X), _Counter().apply(variables, X))
    with pytest.raises(TypeError, match=r"^`fm.init_state\(\)` .*\n.*`\['meta'\]\['tag'\]`"):
        fl.init_state()


class _PReLUNet(eqx.Module):
    lin: eqx.nn.Linear
    act: eqx.nn.PReLU

    def __call__(self, x):
        return self.act(self.lin(x))


def test_a_weakly_typed_parameter_does_not_decide_theta_dtype():
    # `jnp.array(0.5)` and Equinox's PReLU slope are weak float64: they made a float32 model's
    # theta, and with it its output, float64 (JAX: weak types follow the strong ones).
    params = {"w": jnp.array([1.5, -2.0], jnp.float32), "s": jnp.array(0.5)}
    apply = lambda p, x: p["w"] * p["s"] * x
    x = X.astype(jnp.float32)
    for precision in ("vector", "model", "strict"):
        fm = sb.flat(apply, params, precision=precision)
        assert fm.theta0.dtype == jnp.float32 and fm.restructure.dtypes == (jnp.float32,) * 2
        np.testing.assert_array_equal(fm(fm.theta0, x), apply(params, x))
    wide = sb.flat(apply, params, dtype=jnp.float64)
    np.testing.assert_allclose(wide(wide.theta0, X), params["w"].astype(jnp.float64) * 0.5 * X,
                               rtol=1e-15)
    net = _PReLUNet(eqx.nn.Linear(2, 3, key=K1, dtype=jnp.float32), eqx.nn.PReLU())
    fm = sb.flat(net)
    assert fm.theta0.dtype == jnp.float32
    np.testing.assert_array_equal(fm(fm.theta0, x), net(x))
    # Only weak parameters: their own dtype stands.
    assert sb.destructure({"s": jnp.array(0.5)})[0].dtype == jnp.float64
    # A weak value float32 cannot hold (0.1) keeps its dtype: theta holds it exactly.
    theta, re = sb.destructure({"w": jnp.ones(3, jnp.float32), "c": jnp.array(0.1)})
    assert theta.dtype == jnp.float64 and float(re(theta)["c"]) == 0.1


class _Config:
    """A setting that defines `__eq__` only, so it is unhashable (as is a `set`)."""

    def __init__(self, scale):
        self.scale = scale

    def __eq__(self, other):
        return isinstance(other, _Config) and other.scale == self.scale

    __hash__ = None  # pyright: ignore[reportAssignmentType]


def test_an_unhashable_non_array_leaf_is_static_data():
    # It was kept as data: `hash(fm)` and `jax.jit(fm)` raised "has no attribute 'shape'",
    # and `fm` as a jit argument "not a valid JAX type".
    model = {"w": jnp.array([1.5, -2.0]), "cfg": _Config(3.0), "tags": {"a", "b"}}
    apply = lambda p, x: p["w"] * x * p["cfg"].scale
    fm = sb.flat(apply, model)
    want = apply(model, X)
    np.testing.assert_array_equal(jax.jit(fm)(fm.theta0, X), want)
    counted = TraceCounter(lambda fm, theta, x: fm(theta, x))
    run = jax.jit(counted)
    np.testing.assert_array_equal(run(fm, fm.theta0, X), want)
    run(sb.flat(apply, {**model, "cfg": _Config(3.0)}), fm.theta0, X)  # equal: no retrace
    np.testing.assert_array_equal(run(sb.flat(apply, {**model, "cfg": _Config(1.0)}),
                                      fm.theta0, X), want / 3.0)  # fmt: skip
    assert counted.count == 2 and fm.restructure(fm.theta0)["tags"] is model["tags"]
