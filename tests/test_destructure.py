import re as re_module
from typing import NamedTuple

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import TraceCounter, assert_ulp_close, central_difference, tree_allclose

import sciml_bridge as sb


@pytest.fixture(scope="module")
def mlp():
    return eqx.nn.MLP(1, 1, 10, 3, activation=jnp.tanh, key=jax.random.key(0))


def test_flux_1826_shared_weights_one_slot_gradients_summed():
    s = jnp.array([7.0, 7.0])
    tree = {"x": s, "y": jnp.array([3.0, 4.0]), "z": s}
    theta, re = sb.destructure(tree)
    np.testing.assert_array_equal(theta, [7.0, 7.0, 3.0, 4.0])
    rebuilt = re(theta)
    assert rebuilt["x"] is rebuilt["z"]

    def loss(th):
        t = re(th)
        return jnp.sum(t["x"]) + 2 * jnp.sum(t["z"]) + jnp.sum(t["y"] ** 2)

    np.testing.assert_allclose(jax.grad(loss)(theta), [3.0, 3.0, 6.0, 8.0])
    np.testing.assert_allclose(jax.grad(loss)(theta), central_difference(loss, theta), rtol=1e-8)


def test_equinox_shared_ties_embedding():
    class Tied(eqx.Module):
        shared: eqx.nn.Shared

        def __init__(self, key):
            emb = eqx.nn.Linear(3, 4, use_bias=False, key=key)
            out = eqx.nn.Linear(4, 3, use_bias=False, key=key)
            self.shared = eqx.nn.Shared((emb, out), lambda p: p[1].weight,
                                        lambda p: p[0].weight.T)

        def __call__(self, x):
            emb, out = self.shared()
            return out(emb(x))

    model = Tied(jax.random.key(1))
    theta, re = sb.destructure(model)
    assert theta.shape == (12,)
    x = jnp.arange(3.0)
    # Module vs rebuilt module: separately dispatched programs, equal up to ulps (tests/README.md).
    assert_ulp_close(re(theta)(x), model(x))
    loss = lambda th: jnp.sum(re(th)(x) ** 2)
    np.testing.assert_allclose(jax.grad(loss)(theta), central_difference(loss, theta), rtol=1e-7)


def test_mlp_251_parameters_and_exact_call(mlp):
    theta, re = sb.destructure(mlp)
    assert theta.shape == (251,) and re.size == 251
    x = jnp.array([0.3])
    assert_ulp_close(re(theta)(x), mlp(x))  # module vs rebuilt module: not one program
    assert re.paths[:2] == (".layers[0].weight", ".layers[0].bias")
    assert re.offsets[:3] == (0, 10, 20) and re.shapes[2] == (10, 10)


def test_batchnorm_buffers_are_not_parameters():
    bn = eqx.nn.BatchNorm(3, "batch", mode="ema")
    theta, re = sb.destructure(bn)
    assert theta.shape == (6,)
    assert re(theta).ema_state_index is bn.ema_state_index


def test_empty_and_parameterless_trees():
    theta, re = sb.destructure({})
    assert theta.shape == (0,) and re(theta) == {}
    tree = {"n": 3, "f": jnp.sin, "i": jnp.arange(3), "s": "name", "none": None}
    theta, re = sb.destructure(tree)
    assert theta.shape == (0,)
    out = re(theta)
    assert all(out[k] is tree[k] for k in tree)


def test_non_parameters_pass_through_as_same_objects():
    class Pair(NamedTuple):
        w: jax.Array
        steps: jax.Array

    tree = [Pair(jnp.ones((2, 2)), jnp.array(5)), (1.5, "tag", np.arange(2)), None]
    theta, re = sb.destructure(tree)
    assert theta.shape == (4,)
    out = re(theta + 1)
    assert isinstance(out[0], Pair) and out[0].steps is tree[0].steps
    assert out[1][0] == 1.5 and out[1][1] == "tag" and out[1][2] is tree[1][2]
    np.testing.assert_array_equal(out[0].w, 2 * np.ones((2, 2)))


def test_params_callable_and_filter_spec_freeze_leaves():
    tree = {"a": jnp.ones(2), "b": jnp.full(3, 2.0)}
    theta, re = sb.destructure(tree, params=lambda leaf: leaf.shape == (2,))
    assert theta.shape == (2,) and re(theta)["b"] is tree["b"]
    theta, re = sb.destructure(tree, params={"a": False, "b": True})
    np.testing.assert_array_equal(theta, [2.0, 2.0, 2.0])
    assert re(theta)["a"] is tree["a"]
    with pytest.raises(ValueError, match="pytree prefix of the\nmodel"):
        sb.destructure(tree, params=[True, False, True])


def test_complex_parameters_keep_imaginary_parts():
    tree = {"c": jnp.array([1 + 2j, 3 - 1j]), "r": jnp.array([0.5, 1.5])}
    theta, re = sb.destructure(tree)
    assert theta.dtype == jnp.complex128
    out = re(theta)
    assert out["c"].dtype == jnp.complex128 and out["r"].dtype == jnp.float64
    assert tree_allclose(out, tree, rtol=0, atol=0)
    bad = theta.at[2].set(0.5 + 1e-3j)
    with pytest.raises(ValueError, match=r"real leaf `\['r'\]` have a non-zero\simaginary"):
        re(bad)
    with pytest.raises(Exception, match="(?s)non-zero.imaginary"):
        jax.block_until_ready(jax.jit(re)(bad)["r"])


def test_vector_precision_wins(mlp):
    mlp32 = eqx.nn.MLP(1, 1, 10, 3, activation=jnp.tanh, key=jax.random.key(0),
                       dtype=jnp.float32)
    theta32, re = sb.destructure(mlp32)
    assert theta32.dtype == jnp.float32
    theta64 = theta32.astype(jnp.float64) + 1e-12
    out = re(theta64)(jnp.array([0.3]))
    assert out.dtype == jnp.float64
    np.testing.assert_allclose(out, mlp32(jnp.array([0.3], jnp.float32)), rtol=1e-5)
    assert re(theta64).layers[0].weight[0, 0] == theta64[0]  # the 1e-12 survived
    promoted, _ = sb.destructure(mlp32, dtype=jnp.float64)
    assert promoted.dtype == jnp.float64
    mixed = {"a": jnp.ones(2, jnp.float32), "b": jnp.ones(2, jnp.float64)}
    theta, re = sb.destructure(mixed)
    assert theta.dtype == jnp.float64 and re(theta)["a"].dtype == jnp.float64
    assert re(theta.astype(jnp.float32))["b"].dtype == jnp.float32


def test_model_precision_casts_back_and_warns_once_per_leaf():
    tree = {"a": jnp.ones(2, jnp.float32), "b": jnp.ones(1, jnp.float32)}
    _, re = sb.destructure(tree, precision="model")
    with pytest.warns(sb.PrecisionLossWarning, match="losing precision") as record:
        out = re(jnp.full(3, 1 / 3, jnp.float64))
    leaves = [re_module.search(r"leaf `(.*?)`", str(r.message)).group(1) for r in record]
    assert leaves == ["['a']", "['b']"]
    assert out["a"].dtype == jnp.float32
    with jax.numpy_dtype_promotion("standard"):
        out = re(jnp.zeros(3, jnp.float64))  # already warned: must stay silent
    assert out["b"].dtype == jnp.float32


def test_strict_precision_refuses_any_cast():
    tree = {"a": jnp.ones(2, jnp.float32)}
    theta, re = sb.destructure(tree, precision="strict")
    assert re(theta)["a"].dtype == jnp.float32
    with pytest.raises(TypeError, match="Strict mode allows no cast"):
        re(theta.astype(jnp.float64))
    with pytest.raises(TypeError, match="precision=\"strict\""):
        sb.destructure(tree, precision="strict", dtype=jnp.float64)


def test_errors_say_expected_got_and_fix(mlp):
    theta, re = sb.destructure(mlp)
    with pytest.raises(ValueError, match=r"(?s)length 251 .* got shape \(250,\)"):
        re(theta[:-1])
    with pytest.raises(TypeError, match=r"expected a 1-D `theta`, but got shape \(1, 251\)"):
        re(theta[None])
    with pytest.raises(TypeError, match="floating or complex `theta`, but got dtype int"):
        re(jnp.zeros(251, jnp.int32))
    with pytest.raises(ValueError, match="precision"):
        sb.destructure(mlp, precision="fast")
    with pytest.raises(TypeError, match="non-floating"):
        sb.destructure(mlp, dtype=jnp.int32)
    with pytest.raises(TypeError, match="imaginary parts"):
        sb.destructure({"c": jnp.ones(2, jnp.complex128)}, dtype=jnp.float64)


def test_transforms_jit_grad_jvp_vmap_hessian(mlp):
    theta, re = sb.destructure(mlp)
    x = jnp.array([0.7])
    f = lambda th: re(th)(x)[0]
    assert_ulp_close(jax.jit(f)(theta), f(theta))  # jit vs eager: differently compiled
    # The transforms under `jit` (eager op-by-op dispatch of a Hessian costs seconds).
    grad = jax.jit(jax.grad(f))(theta)
    np.testing.assert_allclose(grad, jax.jit(jax.jacfwd(f))(theta), rtol=1e-12)
    tangent = jnp.ones_like(theta)
    _, jvp = jax.jit(lambda t: jax.jvp(f, (t,), (tangent,)))(theta)
    np.testing.assert_allclose(jvp, grad @ tangent, rtol=1e-12)
    batch = jnp.stack([theta, 2 * theta, -theta])
    out = jax.jit(jax.vmap(f))(batch)
    np.testing.assert_allclose(out, [f(t) for t in batch], rtol=1e-12)
    hess = jax.jit(jax.hessian(f))(theta)
    np.testing.assert_allclose(hess, hess.T, atol=1e-12)
    np.testing.assert_allclose(hess[0], jax.jit(jax.jacfwd(jax.grad(f)))(theta)[0], rtol=1e-12)


def test_hessian_through_destructure_itself():
    def g(w):
        theta, re = sb.destructure({"w": w, "k": 3})
        return jnp.sum(re(theta)["w"] ** 3)

    w = jnp.array([1.0, -2.0, 0.5])
    np.testing.assert_allclose(jax.hessian(g)(w), np.diag(6 * np.asarray(w)), rtol=1e-12)


def test_restructure_is_hashable_equal_and_never_retraces(mlp):
    theta, re = sb.destructure(mlp)
    _, re2 = sb.destructure(mlp)
    assert re == re2 and hash(re) == hash(re2)
    counted = TraceCounter(lambda r, th: r(th)(jnp.array([0.1]))[0])
    f = jax.jit(counted)
    f(re, theta)
    f(re2, theta + 1.0)
    f(re, 2.0 * theta)
    assert counted.count == 1
    g = jax.jit(TraceCounter(lambda r, th: r(th)(jnp.array([0.1]))[0]), static_argnums=0)
    g(re, theta)
    g(re2, theta - 1.0)
    assert g.__wrapped__.count == 1
    other = eqx.nn.MLP(1, 1, 10, 2, key=jax.random.key(0))
    assert re != sb.destructure(other)[1]


# --- issue 12: lossy dtypes, ties under filters; issue 13: ties="none", bfloat16 --------------


@pytest.mark.parametrize("stored, dtype", [(jnp.float64, jnp.float32), (jnp.float64, jnp.float16),
                                           (jnp.float32, jnp.bfloat16),
                                           (jnp.complex128, jnp.complex64)])
def test_a_lossy_dtype_is_a_type_error_naming_the_leaf_unless_opted_in(stored, dtype):
    tree = {"a": jnp.ones(2, dtype), "b": jnp.full(3, 1 / 3, stored)}
    with pytest.raises(TypeError, match=r"(?s)round the parameter `\['b'\]`.*lossy=True"):
        sb.destructure(tree, dtype=dtype)
    with pytest.raises(TypeError, match="lossy=True"):
        sb.flat(lambda v, x: v["b"] * x, tree, dtype=dtype)
    theta, re = sb.destructure(tree, dtype=dtype, lossy=True)
    assert theta.dtype == dtype
    want = np.asarray(jnp.full(3, 1 / 3, stored).astype(dtype))
    np.testing.assert_array_equal(np.asarray(re(theta)["b"]), want)


def test_a_lossless_dtype_needs_no_opt_in():
    tree = {"a": jnp.ones(2, jnp.float16), "b": jnp.ones(3, jnp.bfloat16)}
    theta, _ = sb.destructure(tree, dtype=jnp.float32)
    assert theta.dtype == jnp.float32
    assert sb.destructure(tree)[0].dtype == jnp.float32  # the smallest exact holder


def test_a_filter_that_freezes_one_place_of_a_tie_is_refused():
    shared = jnp.ones(3)
    tree = {"enc": shared, "dec": shared, "other": jnp.zeros(2)}
    spec = {"enc": True, "dec": False, "other": True}
    with pytest.raises(ValueError, match=r"froze the array at `\['dec'\]` but trains"):
        sb.destructure(tree, params=spec)
    # Freezing both places, or untying on purpose, is fine.
    assert sb.destructure(tree, params={"enc": False, "dec": False, "other": True})[1].size == 2
    assert sb.destructure(tree, params=spec, ties="none")[1].size == 5


def test_ties_none_matches_equinox_copy_semantics(getkey):
    lin = eqx.nn.Linear(3, 3, key=getkey())
    model = eqx.nn.Sequential([lin, eqx.nn.Lambda(jnp.tanh), lin])
    x = jnp.linspace(-1.0, 1.0, 3)
    loss = lambda m: jnp.sum(m(x) ** 2)
    tied_theta, tied = sb.destructure(model)
    copy_theta, copies = sb.destructure(model, ties="none")
    assert (tied.size, copies.size) == (12, 24)
    # eqx.filter_grad treats the two places as two copies: one gradient per place.
    want = eqx.filter_grad(loss)(model)
    got = jax.grad(lambda t: loss(copies(t)))(copy_theta)
    np.testing.assert_allclose(got, sb.destructure(want, ties="none")[0], rtol=1e-14)
    # Identity ties sum the two places' gradients into one slot.
    summed = jax.grad(lambda t: loss(tied(t)))(tied_theta)
    np.testing.assert_allclose(summed, got[:12] + got[12:], rtol=1e-13, atol=1e-15)
    with pytest.raises(ValueError, match='"identity"'):
        sb.destructure(model, ties="copy")


def test_bfloat16_parameters_flatten_and_rebuild(getkey):
    lin = eqx.nn.Linear(3, 2, key=getkey(), dtype=jnp.bfloat16)
    theta, re = sb.destructure(lin)
    assert theta.dtype == jnp.bfloat16 and re(theta).weight.dtype == jnp.bfloat16
    x = jnp.ones(3, jnp.bfloat16)
    y = sb.flat(lin)(theta, x)
    np.testing.assert_array_equal(np.asarray(y, np.float32), np.asarray(lin(x), np.float32))
    assert sb.destructure(lin, dtype=jnp.float32)[0].dtype == jnp.float32  # lossless widening


def test_warn_once_registry_is_per_layout_not_per_address():
    tree = {"a": jnp.ones(2, jnp.float32)}
    theta = jnp.full(2, 1 / 3, jnp.float64)
    for _ in range(2):  # a fresh `re` warns again, even if Python reuses the old one's address
        _, re = sb.destructure(tree, precision="model")
        with pytest.warns(sb.PrecisionLossWarning):
            re(theta)
        del re


def test_params_callable_is_asked_only_about_array_leaves():
    # An MLP holds activation functions too: `leaf.ndim` must never be asked of them.
    mlp = eqx.nn.MLP(2, 1, 4, 1, key=jax.random.key(0))
    theta, re = sb.destructure(mlp, params=lambda leaf: leaf.ndim == 2)
    assert re.paths == (".layers[0].weight", ".layers[1].weight")
    want = jnp.concatenate([mlp.layers[0].weight.ravel(), mlp.layers[1].weight.ravel()])
    np.testing.assert_array_equal(theta, want)
    rebuilt = re(2.0 * theta)
    np.testing.assert_array_equal(rebuilt.layers[1].weight, 2.0 * mlp.layers[1].weight)
    np.testing.assert_array_equal(rebuilt.layers[1].bias, mlp.layers[1].bias)


def test_strict_with_mixed_dtypes_is_refused_up_front():
    model = {"a": jnp.ones(2, jnp.float32), "b": jnp.ones(2, jnp.float64)}
    with pytest.raises(TypeError, match=r"several dtypes \(float32 at `\['a'\]`, float64"):
        sb.destructure(model, precision="strict")
    # One dtype: strict works and its theta0 rebuilds the model.
    theta, re = sb.destructure({"b": jnp.ones(2)}, precision="strict")
    np.testing.assert_array_equal(re(theta)["b"], jnp.ones(2))


@pytest.mark.parametrize("other, want", [
    (jnp.float32, jnp.float32),   # float32 holds every float8_e4m3fn exactly
    (jnp.bfloat16, jnp.bfloat16),  # so does bfloat16 (8 exponent, 7 mantissa bits)
    (jnp.float8_e5m2, jnp.float16),  # neither holds the other: float16 holds both
    (jnp.float64, jnp.float64),
])
def test_float8_mixed_with_other_floats_is_flattened_exactly(other, want):
    q = jnp.array([0.5, -3.0, 448.0, 2.0**-9], jnp.float8_e4m3fn)
    w = jnp.array([1.5, -0.25], other)
    theta, re = sb.destructure({"q": q, "w": w})
    assert theta.dtype == want
    # Independent reference: float64 values of the leaves.
    ref = np.concatenate([np.asarray(q, np.float64), np.asarray(w, np.float64)])
    np.testing.assert_array_equal(np.asarray(theta, np.float64), ref)
    with pytest.warns(sb.PrecisionLossWarning) as caught:  # theta is wider than float8
        back = sb.destructure({"q": q, "w": w}, precision="model")[1](theta)
    assert any("float8_e4m3fn" in str(c.message) for c in caught)
    assert back["q"].dtype == q.dtype and back["w"].dtype == w.dtype
    np.testing.assert_array_equal(np.asarray(back["q"], np.float64), np.asarray(q, np.float64))


def test_float8_model_with_a_wider_dtype_and_precision_model():
    q = jnp.array([0.5, -3.0], jnp.float8_e4m3fn)
    theta, re = sb.destructure({"q": q}, dtype=jnp.float32)
    assert theta.dtype == jnp.float32
    np.testing.assert_array_equal(theta, [0.5, -3.0])
    assert re(theta)["q"].dtype == jnp.float32  # "vector": theta's precision wins
    _, re_model = sb.destructure({"q": q}, precision="model")
    with pytest.warns(sb.PrecisionLossWarning, match="float8_e4m3fn"):
        back = re_model(jnp.array([0.5, 0.1], jnp.float32))
    assert back["q"].dtype == jnp.float8_e4m3fn


# NumPy's float128 is the 80-bit x87 type on x86 Linux; elsewhere it may be float64 itself.
_LONGDOUBLE = np.finfo(np.longdouble).nmant > np.finfo(np.float64).nmant
_needs_longdouble = pytest.mark.skipif(not _LONGDOUBLE, reason="np.longdouble is float64 here")


@_needs_longdouble
@pytest.mark.parametrize("dtype", [np.longdouble, np.clongdouble])
def test_a_dtype_jax_cannot_hold_is_a_type_error_naming_it(dtype):
    # JAX has nothing wider than float64/complex128: these failed deep inside JAX instead.
    name = np.dtype(dtype).name
    with pytest.raises(TypeError, match=rf"(?s)the parameter `\['w'\]` of dtype {name}.*JAX"):
        sb.destructure({"w": np.ones(2, dtype), "v": jnp.ones(2)})
    tree = {"w": jnp.ones(2, jnp.complex128)}
    with pytest.raises(TypeError, match=rf"`sb.destructure\(..., dtype=...\)` got .*{name}"):
        sb.destructure(tree, dtype=dtype)
    theta, re = sb.destructure(tree)
    with pytest.raises(TypeError, match=rf"`re\(theta\)` got a NumPy `theta` of dtype {name}"):
        re(np.ones(2, dtype))
    # Frozen, such a leaf is not JAX's business: it rides along untouched.
    frozen = np.ones(2, dtype)
    _, re = sb.destructure({"w": frozen, "v": jnp.ones(2)}, params={"w": False, "v": True})
    assert re(jnp.zeros(2))["w"] is frozen


def test_a_params_callable_must_answer_one_bool_per_leaf():
    # Was: the array's ambiguous truth value surfaced as "does not match the model's structure".
    tree = {"a": jnp.ones(2), "b": jnp.ones(3)}
    with pytest.raises(TypeError, match=r"(?s)True or False.*array of shape \(2,\) for a leaf"):
        sb.destructure(tree, params=lambda leaf: leaf > 0)
    assert sb.destructure(tree, params=lambda leaf: (leaf > 0).all())[1].size == 5


def test_models_differing_only_in_a_python_numbers_type_never_share_a_compilation():
    # Python's 1 == 1.0 == True made these `re`s equal, so a function jitted for one served the
    # others and rebuilt their number as the first one's (an int where the model held a float).
    # JAX's own static arguments compare types too.
    res = [sb.destructure({"w": jnp.ones(2), "f": v})[1] for v in (1, 1.0, True)]
    assert res[0] != res[1] and res[0] != res[2] and res[1] != res[2]
    assert res[1] == sb.destructure({"w": jnp.ones(2), "f": 1.0})[1]
    as_static = jax.jit(lambda re, t: jnp.asarray(re(t)["f"]), static_argnums=0)
    as_pytree = jax.jit(lambda re, t: jnp.asarray(re(t)["f"]))
    for f in (as_static, as_pytree):
        assert [f(re, jnp.ones(2)).dtype for re in res] == [jnp.int64, jnp.float64, jnp.bool_]
    assert [type(re(jnp.ones(2))["f"]) for re in res] == [int, float, bool]


def test_a_weakly_typed_float64_theta_still_decides_the_precision():
    # `jnp.full(n, 0.1)` is weakly typed: its float64 leaves followed a float32 input down to
    # float32 on the general path (the fast path stayed float64), against `precision="vector"`.
    mlp = eqx.nn.MLP(3, 1, 4, 1, key=jax.random.key(0), dtype=jnp.float32)
    fast, general = sb.flat(mlp), sb.flat(mlp, fast=False)
    weak = jnp.full(fast.size, 0.1)
    assert weak.weak_type and weak.dtype == jnp.float64
    assert not fast.restructure(weak).layers[0].weight.weak_type
    x = jnp.ones(3, jnp.float32)
    with jax.numpy_dtype_promotion("standard"):  # the nested model mixes float64 and float32
        ys = [fm(weak, x) for fm in (fast, general)] + [jax.jit(general)(weak, x)]
    assert [y.dtype for y in ys] == [jnp.float64] * 3
    assert_ulp_close(ys[0], ys[1])  # fast vs general path: two programs
