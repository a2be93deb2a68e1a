"""PINN building blocks at their edges: activation derivatives, input derivatives of complex
models and of scalar-only activations, and collocation points in a dtype too coarse for the box.
"""

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import sciml_bridge as sb
from sciml_bridge._activations import NAMES, make_activation


def _hessian_trace(model, x):
    """Reference: forward-over-forward AD (real or complex outputs), trace over input entries."""
    flat_x = jnp.reshape(x, -1)
    hess = jax.jacfwd(jax.jacfwd(lambda v: model(v.reshape(jnp.shape(x)))))(flat_x)
    return jnp.trace(hess, axis1=-2, axis2=-1)


# ---- activation derivatives vs `jax.grad` -----------------------------------------------------

# 0 (and -0) is where softplus, gelu and silu change curvature; +-20..700 where `1 - s` cancels.
SPECIAL = jnp.array([0.0, -0.0, 1e-8, -1e-8, 0.5, -0.5, 3.0, -3.0, 20.0, -20.0, 700.0, -700.0])


def _softsign(z):  # not in the table: its derivatives come from nested AD
    return z / (1 + jnp.abs(z) + z * z)


def _scalar_only(z):  # `lax.cond` needs a scalar predicate: valid in `eqx.nn.MLP` (per entry)
    return jax.lax.cond(z > 0, jnp.tanh, jnp.sin, z)


ACTIVATIONS = [n for n in NAMES if n != "identity"] + [_softsign, _scalar_only,
                                                        (jnp.sin, jnp.cos, lambda z: -jnp.sin(z))]


def _name(spec):
    return spec if isinstance(spec, str) else getattr(spec, "__name__", "user-tuple")


@pytest.mark.parametrize("spec", ACTIVATIONS, ids=_name)
def test_activation_derivatives_match_autodiff_at_special_points(spec):
    activation = make_activation(spec)
    assert activation is not None
    order = 1 if spec == "relu" else 2
    fns = [activation.fn, jax.grad(activation.fn), jax.grad(jax.grad(activation.fn))]
    # Per point the pre-activation is `(width,)`; in the batched Laplacian `(width, points)`.
    for z in (SPECIAL, jnp.stack([SPECIAL, -SPECIAL, 0.5 * SPECIAL], axis=1)):
        got = jax.jit(lambda z: activation.derivatives(z, order))(z)
        assert len(got) == order + 1
        for a, fn in zip(got, fns):
            want = jax.vmap(jax.vmap(fn))(z) if z.ndim == 2 else jax.vmap(fn)(z)
            assert a.shape == want.shape and a.dtype == jnp.float64
            # atol: `1 - s` (sigmoid, softplus) and `1 - t^2` (tanh) lose relative accuracy
            # where the derivative is ~1e-9 or smaller, as in `jax.grad`'s own rules.
            np.testing.assert_allclose(a, want, rtol=1e-13, atol=1e-15)


@pytest.mark.parametrize("name", ["tanh", "sin", "sigmoid", "softplus", "silu"])
def test_built_in_activations_keep_their_closed_forms(name):
    # One transcendental evaluation serves f, f' and f'' (no AD, no per-entry vmap).
    primitive = {"tanh": "tanh", "sin": "sin", "sigmoid": "logistic", "softplus": "logistic",
                 "silu": "logistic"}[name]
    activation = make_activation(name)
    assert activation is not None and activation.kind == "table"
    jaxpr = jax.make_jaxpr(lambda z: activation.derivatives(z, 2))(jnp.ones((4, 3)))
    names = [str(e.primitive) for e in jaxpr.jaxpr.eqns]
    assert names.count(primitive) == 1 and "pjit" not in names and "cond" not in names


# ---- the batched Laplacian with an activation that takes only scalars -------------------------

def _d_scalar_only(z):
    return jax.lax.cond(z > 0, lambda: 1 - jnp.tanh(z) ** 2, lambda: jnp.cos(z))


def _d2_scalar_only(z):
    return jax.lax.cond(z > 0, lambda: -2 * jnp.tanh(z) * _d_scalar_only(z), lambda: -jnp.sin(z))


def _scalar_only_models():
    mlp = eqx.nn.MLP(2, "scalar", 5, 2, activation=_scalar_only, key=jax.random.key(0),
                     dtype=jnp.float64)  # fmt: skip
    user = sb.FlatMLP((2, 4, 4, 2), (_scalar_only, _d_scalar_only, _d2_scalar_only),
                      key=jax.random.key(1), dtype=jnp.float64)  # fmt: skip
    return [(sb.flat(mlp), mlp), (user, user.restructure(user.theta0))]


def test_batched_laplacian_of_a_scalar_only_activation():
    # Was "TypeError: Pred must be a scalar": the batched kernel hands the activation
    # `(width, points)` arrays, and nested AD vmapped only their first axis.
    xs = jax.random.normal(jax.random.key(3), (7, 2), jnp.float64)
    for fm, model in _scalar_only_models():
        assert fm.is_fast

        @jax.jit
        def run(theta):
            return (sb.laplacian(fm, batched=True)(theta, xs),
                    jax.vmap(sb.laplacian(fm), in_axes=(None, 0))(theta, xs),
                    jax.vmap(lambda x: _hessian_trace(model, x))(xs),
                    jax.vmap(sb.grad_x(fm), in_axes=(None, 0))(theta, xs),
                    jax.vmap(jax.jacfwd(model))(xs))

        batched, per_point, expect, grad, expect_grad = run(fm.theta0)
        assert batched.shape == per_point.shape == expect.shape
        np.testing.assert_allclose(batched, expect, rtol=1e-12, atol=1e-13)
        np.testing.assert_allclose(per_point, expect, rtol=1e-12, atol=1e-13)
        np.testing.assert_allclose(grad, expect_grad, rtol=1e-12, atol=1e-13)


# ---- complex models on the general path -------------------------------------------------------

def _complex_mlp():
    return eqx.nn.MLP(2, 2, 5, 2, activation=jnp.tanh, key=jax.random.key(0),
                      dtype=jnp.complex128)  # fmt: skip


def test_general_path_laplacian_of_a_complex_model_matches_the_fast_path():
    # Was "jacrev requires real-valued outputs" on the general path only.
    mlp = _complex_mlp()
    fast, general = sb.flat(mlp), sb.flat(mlp, fast=False)
    theta, xs = fast.theta0, jax.random.normal(jax.random.key(2), (3, 2), jnp.float64)

    @jax.jit
    def run(theta):
        # `eqx.nn.Linear` multiplies complex weights by a real `x`: not allowed under strict
        # promotion, in `eqx.nn.MLP` itself (the fast path casts `x` first).
        with jax.numpy_dtype_promotion("standard"):
            expect = jax.vmap(lambda x: _hessian_trace(mlp, x))(xs)
            got = {name: jax.vmap(sb.laplacian(fm), in_axes=(None, 0))(theta, xs)
                   for name, fm in (("fast", fast), ("general", general))}
            got["general batched"] = sb.laplacian(general, batched=True)(theta, xs)
            jacs = [jax.vmap(sb.grad_x(fm), in_axes=(None, 0))(theta, xs)
                    for fm in (fast, general)]
            loss = lambda fm: lambda t: jnp.sum(jnp.abs(sb.laplacian(fm)(t, xs[0])) ** 2)
            grads = [jax.grad(loss(fm))(theta) for fm in (fast, general)]
        return expect, got, jacs, grads

    expect, got, (jac_fast, jac_general), grads = run(theta)
    for value in got.values():
        assert value.dtype == jnp.complex128
        np.testing.assert_allclose(value, expect, rtol=1e-12, atol=1e-13)
    assert jac_general.dtype == jnp.complex128
    np.testing.assert_allclose(jac_general, jac_fast, rtol=1e-12, atol=1e-13)
    np.testing.assert_allclose(grads[1], grads[0], rtol=1e-12, atol=1e-13)


def test_general_path_takes_complex_and_integer_points_as_the_fast_path_does():
    # The fast path differentiates a complex `x` along the real axis of each entry, and casts
    # an integer `x` to the weights' dtype; the general path refused both (jacfwd/jacrev).
    mlp = eqx.nn.MLP(2, 2, 5, 2, activation=jnp.sin, key=jax.random.key(0), dtype=jnp.float64)
    fast, general = sb.flat(mlp), sb.flat(mlp, fast=False)
    theta = fast.theta0
    xc, xi = jnp.array([0.3 + 0.2j, -0.4 - 0.1j]), jnp.array([1, -2])
    along_real = lambda v: mlp(jax.lax.complex(v, jnp.imag(xc)))
    derivatives = lambda fm, x: (sb.grad_x(fm)(theta, x), sb.laplacian(fm)(theta, x))

    @jax.jit
    def run(theta):
        with jax.numpy_dtype_promotion("standard"):  # real weights times a complex `x`
            complex_want = (jax.jacfwd(along_real)(jnp.real(xc)),
                            _hessian_trace(along_real, jnp.real(xc)))
            complex_got = [derivatives(fm, xc) for fm in (fast, general)]
        x64 = xi.astype(jnp.float64)
        int_want = (jax.jacfwd(mlp)(x64), _hessian_trace(mlp, x64))
        return complex_want, complex_got, int_want, [derivatives(fm, xi) for fm in (fast, general)]

    complex_want, complex_got, int_want, int_got = run(theta)
    for want, gots in ((complex_want, complex_got), (int_want, int_got)):
        for got in gots:
            for a, b in zip(got, want):
                assert a.dtype == b.dtype
                np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-13)


# ---- random collocation points strictly inside a box the dtype barely resolves ----------------

def test_random_interior_points_never_round_onto_the_boundary():
    # float32 resolves 6.1e-5 near 1000: `lo + u (hi - lo)` put 5416 of these points on the
    # upper bound and 2999 on the lower one.
    lower, upper = np.float32(1000.0), np.float32(1000.001)
    x = np.asarray(sb.collocation_points((1000.0,), (1000.001,), 100_000, sampling="random",
                                         key=jax.random.key(1), dtype=jnp.float32))
    assert x.dtype == np.float32 and x.shape == (100_000, 1)
    assert np.all((x > lower) & (x < upper))
    # Still uniform over what float32 holds inside: each of its 15 values about equally often.
    values, counts = np.unique(x, return_counts=True)
    assert len(values) == 15 and counts.min() > 0.9 * 100_000 / 15


def test_random_interior_points_redraw_only_what_rounded_onto_the_boundary():
    # bfloat16 draws `u == 0` once in 128: those coordinates sat on the lower bound. The
    # others are exactly `lo + u (hi - lo)` as before, for the same key.
    key = jax.random.key(5)
    x = np.asarray(sb.collocation_points((0.0, -1.0), (1.0, 1.0), 4000, sampling="random",
                                         key=key, dtype=jnp.bfloat16)).astype(np.float64)
    lo, width = jnp.array([0.0, -1.0], jnp.bfloat16), jnp.array([1.0, 2.0], jnp.bfloat16)
    plain = np.asarray(lo + jax.random.uniform(key, (4000, 2), jnp.bfloat16) * width)
    plain = plain.astype(np.float64)
    on_bound = (plain <= [0.0, -1.0]) | (plain >= [1.0, 1.0])
    assert on_bound.sum() > 10
    assert np.all((x > [0.0, -1.0]) & (x < [1.0, 1.0]))
    np.testing.assert_array_equal(x[~on_bound], plain[~on_bound])
    x64 = sb.collocation_points((0.1, 2.0), (0.3, 7.0), 1000, sampling="random", key=key)
    lo64, hi64 = jnp.array([0.1, 2.0]), jnp.array([0.3, 7.0])
    plain64 = lo64 + jax.random.uniform(key, (1000, 2)) * (hi64 - lo64)
    np.testing.assert_array_equal(x64, plain64)


def test_random_interior_points_in_a_box_with_no_room_is_a_clear_error():
    with pytest.raises(ValueError, match=r"(?s)sampling=\"random\"\)` in float32: along axis 1.*"
                                         r"no normal float32 value strictly between.*"
                                         r"dtype=jnp.float64"):
        sb.collocation_points((0.0, 1000.0), (1.0, 1000.00001), 10, sampling="random",
                              key=jax.random.key(0), dtype=jnp.float32)  # fmt: skip
    # The boundary of the same box is still fine (its points may touch the edges).
    x = sb.collocation_points((0.0, 1000.0), (1.0, 1000.00001), 10, where="boundary",
                              sampling="random", key=jax.random.key(0), dtype=jnp.float32)
    assert x.shape == (10, 2)


def test_random_boundary_points_stay_in_the_box_as_the_dtype_holds_it():
    lower, upper = np.float32([0.0, 1000.0]), np.float32([1.0, 1000.001])
    x = np.asarray(sb.collocation_points((0.0, 1000.0), (1.0, 1000.001), 20_000,
                                         where="boundary", sampling="random",
                                         key=jax.random.key(2), dtype=jnp.float32))
    assert np.all((x >= lower) & (x <= upper))
    assert np.all(np.any((x == lower) | (x == upper), axis=1))


# ---- collocation boxes at the edges of what float64 (or `dtype`) holds ------------------------

@pytest.mark.parametrize("sampling", ["grid", "random"])
def test_a_box_wider_than_float64_holds_is_refused(sampling):
    # [-1e308, 1e308] is 2e308 wide (inf): the grid raised "cannot convert float infinity to
    # integer", random interior points all came back 0.0.
    with pytest.raises(ValueError, match=r"(?s)widths `upper - lower` float64 can hold.*axis 1"):
        sb.collocation_points((0.0, -1e308), (1.0, 1e308), 3, sampling=sampling,
                              key=jax.random.key(0))  # fmt: skip


@pytest.mark.parametrize("where, sampling", [("interior", "grid"), ("boundary", "grid"),
                                             ("boundary", "random"), ("interior", "random")])
def test_bounds_beyond_the_dtype_are_refused(where, sampling):
    # float32 holds up to 3.4e38: the grid raised "cannot convert float NaN to integer", random
    # boundary points came back at inf without a word.
    kwargs = dict(where=where, sampling=sampling, key=jax.random.key(0))
    with pytest.raises(ValueError, match=r"(?s)in float32: along axis 0.*bounds would round"):
        sb.collocation_points((0.0, 0.0), (1e39, 1.0), 3, dtype=jnp.float32, **kwargs)
    with pytest.raises(ValueError, match=r"(?s)in float32: along axis 0.*width would round"):
        sb.collocation_points((-3e38, 0.0), (3e38, 1.0), 3, dtype=jnp.float32, **kwargs)
    with pytest.raises(ValueError, match="in float16"):
        sb.collocation_points(0.0, 1e5, 3, dtype=jnp.float16, **kwargs)


def test_random_boundary_faces_weigh_by_area_even_when_the_product_overflows():
    # Widths (1e200, 1e200, 1): the z faces have area 1e400 (inf), the others 1e200. The
    # probabilities were inf / inf = NaN and every point landed on the first face (x = 0).
    x = np.asarray(sb.collocation_points((0.0, 0.0, 0.0), (1e200, 1e200, 1.0), 200,
                                         where="boundary", sampling="random",
                                         key=jax.random.key(0)))  # fmt: skip
    assert np.all((x[:, 2] == 0.0) | (x[:, 2] == 1.0))
    assert 0.3 < np.mean(x[:, 2] == 0.0) < 0.7


@pytest.mark.parametrize("axis", [0.7, True, "1", np.bool_(True), jnp.array(True), jnp.array(1.0)])
def test_a_face_axis_that_is_not_an_int_is_refused(axis):
    # `int(axis)` took 0.7 as axis 0, True and "1" as axis 1.
    with pytest.raises(ValueError, match="expected `faces` to be a sequence"):
        sb.collocation_points((0.0, 0.0), (1.0, 1.0), 3, where="boundary", faces=[(axis, "lower")])
    for ok in (np.int64(1), jnp.int32(1), jnp.array(1)):  # 0-d integer arrays: as before
        x = sb.collocation_points((0.0, 0.0), (1.0, 1.0), 3, where="boundary",
                                  faces=[(ok, "lower")])  # fmt: skip
        np.testing.assert_array_equal(np.asarray(x)[:, 1], 0.0)


def test_n_as_a_float_is_a_clear_error_and_as_a_0d_int_array_is_taken():
    # A float raised "'float' object is not iterable", a 0-d array "iteration over a 0-d array".
    for n in (3.0, "3", None, True):
        with pytest.raises(ValueError, match="expected `n` to be a positive int"):
            sb.collocation_points(0.0, 1.0, n)  # type: ignore[arg-type]
    for n in (jnp.array(3), np.int32(3)):
        np.testing.assert_array_equal(sb.collocation_points(0.0, 1.0, n),
                                      sb.collocation_points(0.0, 1.0, 3))  # fmt: skip
    assert sb.collocation_points(0.0, 1.0, jnp.array(4), sampling="random",
                                 key=jax.random.key(0)).shape == (4, 1)  # fmt: skip
