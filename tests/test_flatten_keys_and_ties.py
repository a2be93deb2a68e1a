"""Probes of `sb.destructure` by a demanding user: PRNG keys riding along as leaves, ties."""

import warnings

import equinox as eqx
import jax
import jax.numpy as jnp
from helpers import TraceCounter

import sciml_bridge as sb


def _model(seed: int) -> dict:
    return {"w": jnp.ones(2), "key": jax.random.key(seed), "impl": jax.random.key(seed, impl="rbg")}


def test_models_holding_equal_prng_keys_share_one_compilation():
    theta, re = sb.destructure(_model(0))
    _, same = sb.destructure(_model(0))
    assert re == same and hash(re) == hash(same)
    g = jax.jit(TraceCounter(lambda r, th: r(th)["w"].sum()), static_argnums=0)
    g(re, theta)
    g(same, theta + 1.0)
    assert g.__wrapped__.count == 1
    # A different key is a different model: it must never reuse the first one's constants.
    assert re != sb.destructure(_model(1))[1]


def _calls(mlp):
    """Each route to `cast_leaf`, on a fresh layout (each layout warns once per leaf)."""
    x = jnp.ones(2, jnp.float32)
    yield lambda t: sb.destructure(mlp, precision="model")[1](t)
    for fast in (True, False):
        fm = sb.flat(mlp, precision="model", fast=fast)
        yield lambda t, fm=fm: fm(t, x)
    fm = sb.flat(mlp, precision="model")
    yield jax.jit(lambda t: fm(t, x))


def test_a_precision_loss_warning_points_at_the_users_line():
    mlp = eqx.nn.MLP(2, 1, 3, 1, key=jax.random.key(0), dtype=jnp.float32)
    theta = sb.destructure(mlp)[0].astype(jnp.float64)
    for call in _calls(mlp):
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            call(theta)
        assert caught, "no PrecisionLossWarning"
        assert all(w.filename == __file__ for w in caught), [w.filename for w in caught]


def test_an_empty_leaf_does_not_decide_thetas_dtype():
    # `jnp.array([])` is float64 under x64: a placeholder must not turn a float32 model into a
    # float64 (or complex) one, nor count as a second dtype under strict mode.
    model = {"w": jnp.ones(2, jnp.float32), "e": jnp.array([]),
             "c": jnp.zeros((0, 2), jnp.complex128)}
    for precision in ("vector", "model", "strict"):
        theta, re = sb.destructure(model, precision=precision)
        assert theta.dtype == jnp.float32 and re(theta)["w"].dtype == jnp.float32
        assert re(theta)["c"].shape == (0, 2) and jnp.iscomplexobj(re(theta)["c"])
    assert sb.destructure({"e": jnp.array([])})[0].dtype == jnp.float64  # nothing else to go by
