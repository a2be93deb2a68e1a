"""`sb.flat(model, fast=...)`: the fast path changes no number, or says why it cannot run."""

import warnings

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import assert_ulp_close, tree_allclose

import sciml_bridge as sb


def _identity(x):
    return x


# (in, out, width, depth, activation, final_activation): input dims 1..8 and "scalar".
CASES = [
    (1, 1, 10, 3, jnp.tanh, _identity),
    (2, 1, 8, 2, jnp.sin, _identity),
    (3, 2, 6, 1, jax.nn.softplus, _identity),
    (4, "scalar", 5, 2, jax.nn.sigmoid, jnp.tanh),
    (5, 3, 7, 2, jax.nn.silu, _identity),
    (6, 1, 4, 0, jnp.tanh, _identity),
    (7, 2, 9, 2, jax.nn.gelu, jax.nn.softplus),
    (8, 1, 6, 2, jax.nn.relu, _identity),
    ("scalar", 2, 5, 2, jnp.cos, _identity),
]


def _random(build, dtype=jnp.float64, seed=0):
    """The model `build()` makes, with random weights: skips the per-shape compiles of
    Equinox's initialisers (values do not matter here, only that both paths see the same)."""
    shapes = eqx.filter_eval_shape(build)
    rng = np.random.default_rng(seed)
    fill = lambda s: jnp.asarray(rng.uniform(-0.9, 0.9, s.shape), dtype)
    return jax.tree.map(lambda s: fill(s) if isinstance(s, jax.ShapeDtypeStruct) else s, shapes)


def _mlp(*args, dtype=jnp.float64, **kwargs):
    return _random(lambda: eqx.nn.MLP(*args, key=jax.random.key(0), **kwargs), dtype)


def _points(in_size, n=6, seed=0):
    shape = (n,) if in_size == "scalar" else (n, in_size)
    return jax.random.normal(jax.random.key(seed), shape, jnp.float64)


def _assert_same_numbers(model, xs, theta_noise=0.05):
    """Fast and general paths: identical theta0, outputs and theta-gradients to 1e-12."""
    fast, general = sb.flat(model), sb.flat(model, fast=False)
    assert fast.is_fast and not general.is_fast
    np.testing.assert_array_equal(fast.theta0, general.theta0)
    assert fast.restructure == general.restructure
    noise = jax.random.normal(jax.random.key(1), fast.theta0.shape, fast.theta0.dtype)
    theta = fast.theta0 + theta_noise * noise

    @jax.jit
    def both(theta):
        out = []
        for fm in (fast, general):
            ys = lambda t: jax.vmap(fm, in_axes=(None, 0))(t, xs)
            loss = lambda t: jnp.sum(jnp.sin(ys(t)))
            out.append((ys(theta), jax.grad(loss)(theta)))
        return out

    (y_fast, g_fast), (y_gen, g_gen) = both(theta)
    assert y_fast.dtype == y_gen.dtype and y_fast.shape == y_gen.shape
    # Fast vs general path: two compiled programs, equal up to ulps (tests/README.md).
    assert_ulp_close(y_fast, y_gen)
    assert_ulp_close(g_fast, g_gen, ulps=32)  # a backward pass sums in another order
    return fast


@pytest.mark.parametrize("case", CASES, ids=lambda c: f"in{c[0]}-depth{c[3]}-{c[4].__name__}")
def test_fast_and_general_paths_agree(case):
    in_size, out_size, width, depth, act, final = case
    mlp = _mlp(in_size, out_size, width, depth, activation=act, final_activation=final)
    fast = _assert_same_numbers(mlp, _points(in_size))
    assert isinstance(fast, sb.FlatMLP)
    assert tree_allclose(fast.restructure(fast.theta0), mlp, rtol=0, atol=0)


def test_scan_mlp_and_float32_model_promoted():
    mlp = _mlp(3, 2, 6, 3, activation=jnp.tanh, scan=True, dtype=jnp.float32)
    assert mlp.layers[0].weight.dtype == jnp.float32
    fast = sb.flat(mlp, dtype=jnp.float64)
    assert fast.theta0.dtype == jnp.float64
    fast_y = fast(fast.theta0, jnp.ones(3))
    general_y = sb.flat(mlp, dtype=jnp.float64, fast=False)(fast.theta0, jnp.ones(3))
    assert fast_y.dtype == jnp.float64
    assert_ulp_close(fast_y, general_y)  # fast vs general path


def _sequential(fn=jnp.tanh):
    k1, k2, k3 = jax.random.split(jax.random.key(4), 3)
    return _random(lambda: eqx.nn.Sequential([
        eqx.nn.Linear(3, 7, key=k1), eqx.nn.Lambda(fn),
        eqx.nn.Linear(7, 4, key=k2), eqx.nn.Lambda(jax.nn.softplus),
        eqx.nn.Linear(4, "scalar", use_bias=False, key=k3),
    ]))


def test_sequential_of_linear_and_lambda():
    _assert_same_numbers(_sequential(), _points(3))


def test_tied_weights_share_one_slot():
    keys = jax.random.split(jax.random.key(5), 3)
    seq = _random(lambda: eqx.nn.Sequential([
        eqx.nn.Linear(4, 4, key=keys[0]), eqx.nn.Lambda(jnp.sin),
        eqx.nn.Linear(4, 4, key=keys[1]), eqx.nn.Lambda(jnp.sin),
        eqx.nn.Linear(4, 1, key=keys[2]),
    ]))
    seq = eqx.tree_at(lambda s: s.layers[2].weight, seq, seq.layers[0].weight)
    fast = _assert_same_numbers(seq, _points(4))
    assert fast.size == 16 + 4 + 4 + 4 + 1


def test_auto_falls_back_and_fast_true_names_the_problem():
    unknown = _sequential(fn=lambda x: x * jnp.tanh(x))
    assert not sb.flat(unknown).is_fast
    with pytest.raises(TypeError, match=r"(?s)`Sequential`: `layers\[1\]` is a `Lambda`.*fast="):
        sb.flat(unknown, fast=True)
    conv = _random(lambda: eqx.nn.Conv1d(1, 2, 3, key=jax.random.key(0)))
    assert not sb.flat(conv).is_fast
    with pytest.raises(TypeError, match="`Conv1d`: only `eqx.nn.MLP`"):
        sb.flat(conv, fast=True)
    mlp = _mlp(2, 1, 4, 1, activation=eqx.nn.PReLU())
    with pytest.raises(TypeError, match="learnable activation"):
        sb.flat(mlp, fast=True)


def test_frozen_parameters_keep_the_general_path():
    mlp = _mlp(2, 1, 4, 1, activation=jnp.tanh)
    spec = jax.tree.map(eqx.is_inexact_array, mlp)
    spec = eqx.tree_at(lambda m: m.layers[1].bias, spec, False)
    assert not sb.flat(mlp, params=spec).is_fast
    with pytest.raises(TypeError, match=r"bias of `layers\[1\]` is not in `theta`"):
        sb.flat(mlp, params=spec, fast=True)
    assert not sb.flat(mlp, fast=False).is_fast


def test_precision_policies_match_the_general_path():
    mlp = _mlp(2, 1, 4, 1, activation=jnp.tanh, dtype=jnp.float32)
    x = jnp.ones(2, jnp.float32)
    theta64 = sb.flat(mlp).theta0.astype(jnp.float64)
    for precision in ("model", "strict"):
        fast, general = (sb.flat(mlp, precision=precision, fast=f) for f in (True, False))
        assert fast.is_fast
        if precision == "strict":
            for fm in (fast, general):
                with pytest.raises(TypeError, match="precision=\"strict\""):
                    fm(theta64, x)
            continue
        with pytest.warns(sb.PrecisionLossWarning):
            y_fast = fast(theta64, x)
        with pytest.warns(sb.PrecisionLossWarning):
            y_gen = general(theta64, x)
        assert y_fast.dtype == y_gen.dtype == jnp.float32
        assert_ulp_close(y_fast, y_gen)  # fast vs general path: two programs (tests/README.md)


def test_depth_zero_ignores_final_activation_as_equinox_does():
    # `eqx.nn.MLP.__call__` at depth 0 is `layers[0](x)`: its `final_activation` never runs.
    mlp = eqx.nn.MLP(2, 3, 4, 0, final_activation=jnp.tanh, key=jax.random.key(0))
    fast, general = sb.flat(mlp), sb.flat(mlp, fast=False)
    x = jnp.array([0.5, -0.3])
    assert fast.is_fast and fast.activations == (None,)
    assert_ulp_close(fast(fast.theta0, x), mlp(x))
    assert_ulp_close(fast(fast.theta0, x), general(general.theta0, x))


def test_python_float_input_keeps_a_float32_network_in_float32():
    # A Python float is weakly typed: `eqx.nn.MLP` stays float32 even with x64 on.
    mlp = eqx.nn.MLP("scalar", "scalar", 4, 2, activation=jnp.tanh, key=jax.random.key(0),
                     dtype=jnp.float32)
    fast, general = sb.flat(mlp), sb.flat(mlp, fast=False)
    want = mlp(0.5)
    assert want.dtype == jnp.float32
    for y in (fast(fast.theta0, 0.5), jax.jit(fast)(fast.theta0, 0.5),
              general(general.theta0, 0.5)):
        assert_ulp_close(y, want)
    assert sb.laplacian(fast)(fast.theta0, 0.5).dtype == jnp.float32
    # A float64 array still widens the computation (never truncated).
    assert fast(fast.theta0, jnp.float64(0.5)).dtype == jnp.float64


def test_a_wider_later_layer_is_never_narrowed_to_the_first_layers_dtype():
    # `precision="model"` keeps mixed stored dtypes: a float32 first layer, a float64 last one.
    # A complex64 `x` made the fast path cast every layer to complex64 (rounding the float64
    # layer) where the nested model computes that layer in complex128.
    mlp = _mlp(2, 2, 3, 1, activation=jnp.tanh)
    first = lambda m: (m.layers[0].weight, m.layers[0].bias)
    mlp = eqx.tree_at(first, mlp, replace_fn=lambda a: a.astype(jnp.float32))
    x = jnp.array([0.1, -0.2], jnp.complex64)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", sb.PrecisionLossWarning)  # float64 theta0 -> float32
        fast, general = (sb.flat(mlp, precision="model", fast=f) for f in (True, False))
        with jax.numpy_dtype_promotion("standard"):  # the nested model mixes dtypes
            want, y_gen = mlp(x), general(general.theta0, x)
        y = fast(fast.theta0, x)
        y1 = fast.forward_derivatives(fast.theta0, x, order=1)[0]
    assert fast.is_fast and want.dtype == y_gen.dtype == jnp.complex128
    assert y.dtype == y1.dtype == jnp.complex128
    assert_ulp_close(y, want)  # fast path vs the nested module: two programs
    assert_ulp_close(y1, want)
