"""`sb.FlatMLP`: same numbers as `eqx.nn.MLP`, static slices only, clear errors."""

import textwrap

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import TraceCounter, assert_ulp_close, tree_allclose

import sciml_bridge as sb


ACTIVATIONS = {
    "tanh": jnp.tanh,
    "sin": jnp.sin,
    "cos": jnp.cos,
    "softplus": jax.nn.softplus,
    "sigmoid": jax.nn.sigmoid,
    "silu": jax.nn.silu,
    "gelu": jax.nn.gelu,
    "relu": jax.nn.relu,
}


def _cube(z):
    return z**3 / 3 + z


@pytest.mark.parametrize(
    "sizes, mlp_args, dtype",
    [
        ((1, 10, 10, 10, 1), (1, 1, 10, 3), jnp.float32),
        ((3, 7, 2), (3, 2, 7, 1), jnp.float64),
        ((4, 2), (4, 2, 1, 0), jnp.float64),
        (("scalar", 5, 5, "scalar"), ("scalar", "scalar", 5, 2), jnp.float64),
    ],
)
def test_theta0_is_destructure_of_the_same_mlp(sizes, mlp_args, dtype):
    key = jax.random.key(3)
    fm = sb.FlatMLP(sizes, "tanh", key=key, dtype=dtype)
    mlp = eqx.nn.MLP(*mlp_args, activation=jnp.tanh, dtype=dtype, key=key)
    theta, re = sb.destructure(mlp)
    assert fm.theta0.dtype == theta.dtype == dtype
    np.testing.assert_array_equal(fm.theta0, theta)
    assert fm.restructure == re
    assert tree_allclose(fm.restructure(fm.theta0), mlp, rtol=0, atol=0)
    assert fm.is_fast and fm.size == re.size


def test_uneven_widths_mirror_a_sequential():
    key = jax.random.key(1)
    fm = sb.FlatMLP((2, 6, 4, 3), "sin", final_activation="sigmoid", key=key, use_bias=False)
    keys = jax.random.split(key, 3)
    linear = lambda i, o, k: eqx.nn.Linear(i, o, use_bias=False, key=k)
    seq = eqx.nn.Sequential([
        linear(2, 6, keys[0]), eqx.nn.Lambda(jnp.sin),
        linear(6, 4, keys[1]), eqx.nn.Lambda(jnp.sin),
        linear(4, 3, keys[2]), eqx.nn.Lambda(jax.nn.sigmoid),
    ])
    np.testing.assert_array_equal(fm.theta0, sb.destructure(seq)[0])
    x = jnp.array([0.4, -1.2])
    assert_ulp_close(fm(fm.theta0, x), seq(x))  # fast path vs the module: two programs
    assert isinstance(fm.restructure(fm.theta0), eqx.nn.Sequential)


@pytest.mark.parametrize("name", list(ACTIVATIONS))
def test_every_activation_matches_the_rebuilt_mlp(name, getkey):
    fm = sb.FlatMLP((3, 8, 8, 2), name, final_activation="softplus", key=getkey())
    theta = fm.theta0 + 0.01
    x = jnp.array([0.3, -0.5, 1.1])
    expect = fm.restructure(theta)(x)
    assert_ulp_close(fm(theta, x), expect)  # fast path vs the rebuilt module: two programs
    assert isinstance(fm.restructure(theta), eqx.nn.MLP)
    assert fm.restructure(theta).activation is ACTIVATIONS[name]


@pytest.mark.parametrize("activation", [_cube, (_cube, lambda z: z**2 + 1, lambda z: 2 * z)])
def test_callable_and_user_derivative_activations(activation, getkey):
    fm = sb.FlatMLP((2, 5, 1), activation, key=getkey())
    x = jnp.array([0.7, 0.1])
    mlp = fm.restructure(fm.theta0)
    assert mlp.activation is _cube
    assert_ulp_close(fm(fm.theta0, x), mlp(x))  # fast path vs the module: two programs


def test_compute_follows_theta_dtype(getkey):
    fm = sb.FlatMLP((2, 4, 1), key=getkey(), dtype=jnp.float32)
    x32 = jnp.ones(2, jnp.float32)
    assert fm(fm.theta0, x32).dtype == jnp.float32
    theta64 = fm.theta0.astype(jnp.float64)
    y64 = fm(theta64, x32)
    assert y64.dtype == jnp.float64
    assert_ulp_close(y64, fm.restructure(theta64)(jnp.ones(2)))  # fast vs general path


def test_wider_input_widens_the_computation_instead_of_being_truncated(getkey):
    fm = sb.FlatMLP((2, 4, 1), key=getkey(), dtype=jnp.float32)
    x64 = jnp.array([0.1 + 1e-12, -0.3])
    y = fm(fm.theta0, x64)
    assert y.dtype == jnp.float64
    mlp = fm.restructure(fm.theta0)
    with jax.numpy_dtype_promotion("standard"):  # the general path promotes the same way
        assert_ulp_close(y, mlp(x64))  # fast vs general path
    _, jac, lap = fm.forward_derivatives(fm.theta0, x64)
    assert jac.dtype == lap.dtype == jnp.float64


def test_batched_call_is_matrix_products_and_static_slices(getkey):
    fm = sb.FlatMLP((2, 8, 8, "scalar"), key=getkey())
    jaxpr = jax.make_jaxpr(jax.vmap(fm, in_axes=(None, 0)))(fm.theta0, jnp.ones((5, 2)))
    prims = [e.primitive.name for e in jaxpr.jaxpr.eqns]
    dots = [e for e in jaxpr.jaxpr.eqns if e.primitive.name == "dot_general"]
    assert len(dots) == 3 and all(5 in e.outvars[0].aval.shape for e in dots)
    # Nothing but slices, reshapes and the arithmetic: no loop, gather or pytree call.
    allowed = {"slice", "reshape", "dot_general", "transpose", "broadcast_in_dim", "add",
               "tanh", "squeeze"}
    assert set(prims) <= allowed, set(prims) - allowed


def test_jit_never_retraces_for_a_new_theta(getkey):
    fm = sb.FlatMLP((2, 6, 6, 1), key=getkey())
    counter = TraceCounter(fm)
    f = jax.jit(counter)
    x = jnp.ones(2)
    f(fm.theta0, x)
    y = f(fm.theta0 * 2, x)
    assert counter.count == 1
    assert_ulp_close(y, fm.restructure(fm.theta0 * 2)(x))  # jitted fast path vs eager module
    assert hash(fm) == hash(sb.FlatMLP((2, 6, 6, 1), key=jax.random.key(5)))


def test_theta_and_x_errors(getkey):
    fm = sb.FlatMLP((2, 3, 1), key=getkey())
    x = jnp.ones(2)
    with pytest.raises(ValueError, match=r"(?s)length 13 .* got shape \(12,\)"):
        fm(fm.theta0[:-1], x)
    with pytest.raises(TypeError, match="expected a 1-D `theta`"):
        fm(fm.theta0[None], x)
    with pytest.raises(TypeError, match="floating or complex `theta`"):
        fm(jnp.arange(13), x)
    with pytest.raises(ValueError, match=r"(?s)shape\s\(2,\), but got shape \(4, 2\).*jax.vmap"):
        fm(fm.theta0, jnp.ones((4, 2)))


def test_constructor_errors(getkey):
    assert sb.FlatMLP((np.int64(2), 3, 1), key=getkey()).in_size == 2
    with pytest.raises(TypeError, match="`sb.FlatMLP\\(sizes"):  # the wrong kind
        sb.FlatMLP((2, True, 1), key=getkey())
    with pytest.raises(TypeError, match="`sb.FlatMLP\\(sizes"):
        sb.FlatMLP((2.0, 3, 1), key=getkey())
    with pytest.raises(ValueError, match="`sb.FlatMLP\\(sizes"):
        sb.FlatMLP((2, 0, 1), key=getkey())
    with pytest.raises(ValueError, match="`sb.FlatMLP\\(sizes"):
        sb.FlatMLP((3,), key=getkey())
    with pytest.raises(TypeError, match="`sb.FlatMLP\\(sizes"):
        sb.FlatMLP((2, "scalar", 1), key=getkey())
    with pytest.raises(ValueError, match="does not know this activation name"):
        sb.FlatMLP((2, 3, 1), "swishy", key=getkey())
    with pytest.raises(TypeError, match="`\\(f, df, d2f\\)`"):
        sb.FlatMLP((2, 3, 1), 3.0, key=getkey())


def test_docstring_example_runs():
    code = sb.FlatMLP.__doc__.split("```python")[1].split("```")[0]
    namespace: dict = {}
    exec(textwrap.dedent(code), namespace)
    assert namespace["ys"].shape == (128, 1)


# --- issue 12 #8 and issue 13 #4: errors that say what is wrong; bfloat16 -----------------------


@pytest.mark.parametrize("kwargs, match", [
    ({"key": 0}, r"expected a JAX PRNG key.*got\nint 0.*jax.random.key\(0\)"),
    ({"key": None}, "expected a JAX PRNG key"),
    ({"key": jnp.zeros(3)}, "expected a JAX PRNG key"),
    ({"key": jax.random.key(0), "dtype": jnp.int32}, "expected a floating or complex"),
    ({"key": jax.random.key(0), "dtype": "not-a-dtype"}, "expected a floating or complex"),
])
def test_constructor_errors_say_what_is_wrong(kwargs, match):
    with pytest.raises(TypeError, match=match):
        sb.FlatMLP((1, 4, 1), **kwargs)


def test_legacy_raw_keys_are_accepted():
    fm = sb.FlatMLP((1, 4, 1), key=jax.random.PRNGKey(0))
    new = sb.FlatMLP((1, 4, 1), key=jax.random.wrap_key_data(jax.random.PRNGKey(0)))
    np.testing.assert_array_equal(fm.theta0, new.theta0)


def test_bfloat16_flat_mlp_matches_the_equinox_mlp():
    key = jax.random.key(3)
    fm = sb.FlatMLP((2, 4, 1), key=key, dtype=jnp.bfloat16)
    mlp = eqx.nn.MLP(2, 1, 4, 1, activation=jnp.tanh, key=key, dtype=jnp.bfloat16)
    x = jnp.array([0.5, -0.25], jnp.bfloat16)
    y = fm(fm.theta0, x)
    assert fm.theta0.dtype == y.dtype == jnp.bfloat16
    # One bfloat16 ulp (2**-8 relative): the fast path multiplies in a different order.
    np.testing.assert_allclose(np.asarray(y, np.float32), np.asarray(mlp(x), np.float32),
                               rtol=2**-7, atol=2**-7)


def test_key_keyword_is_accepted_and_ignored_as_by_eqx_mlp():
    fm = sb.FlatMLP((2, 4, 1), key=jax.random.key(0))
    x = jnp.ones(2)
    np.testing.assert_array_equal(fm(fm.theta0, x, key=jax.random.key(5)), fm(fm.theta0, x))
    with pytest.raises(TypeError):
        fm(fm.theta0, x, train=True)  # like `eqx.nn.MLP`, nothing else is accepted


@pytest.mark.parametrize("final", ["tanh", lambda z: z**3])
def test_one_layer_with_final_activation_restructures_to_the_same_network(final):
    # `eqx.nn.MLP` ignores `final_activation` at depth 0, so `restructure` builds a
    # `Sequential([Linear, Lambda])` that does apply it, with the very same weights.
    key = jax.random.key(0)
    net = sb.FlatMLP((2, "scalar"), final_activation=final, key=key)
    lin = eqx.nn.Linear(2, "scalar", key=jax.random.split(key, 1)[0])
    f = jnp.tanh if final == "tanh" else final
    x = jnp.array([0.5, -0.3])
    assert net.theta0.dtype == jnp.float64
    assert_ulp_close(net(net.theta0, x), f(lin(x)))
    assert_ulp_close(net.restructure(net.theta0)(x), f(lin(x)))
    assert sb.flat(net.restructure(net.theta0)).is_fast


@pytest.mark.skipif(np.finfo(np.longdouble).nmant <= 52, reason="np.longdouble is float64 here")
def test_float128_dtype_or_input_is_a_type_error_naming_it():
    with pytest.raises(TypeError, match=r"(?s)`sb.FlatMLP\(..., dtype=...\)` got .*float128"):
        sb.FlatMLP((2, 3, 1), key=jax.random.key(0), dtype=np.longdouble)
    fm = sb.FlatMLP((2, 3, 1), key=jax.random.key(0))
    with pytest.raises(TypeError, match=r"`fm\(theta, x\)` got a NumPy `x` of dtype float128"):
        fm(fm.theta0, np.ones(2, np.longdouble))


def test_a_batch_of_keys_is_a_value_error_naming_the_constructor():
    # Was JAX's "split accepts a single key", from inside the Equinox constructor.
    keys = jax.random.split(jax.random.key(0), 3)
    with pytest.raises(ValueError, match=r"(?s)`sb.FlatMLP\(..., key=...\)` expected one.*\(3,\)"):
        sb.FlatMLP((1, 4, 1), key=keys)
