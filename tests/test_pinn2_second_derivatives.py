"""Second input derivatives beyond `sb.laplacian`: `u.hessian`, `u.second_derivative`, and the
product rule of `sb.HardConstraint` for complex, integer and scalar-input pieces, checked in
float64 against JAX's own derivatives of the composed function."""

import functools

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import run_python

import sciml_bridge as sb


_RELU = sb.FlatMLP((2, 6, "scalar"), activation="relu", key=jax.random.key(0), dtype=jnp.float64)
_TANH = sb.FlatMLP((2, 6, 2), activation="tanh", key=jax.random.key(1), dtype=jnp.float64)
_X = jnp.array([0.3, -0.2])


def _box(x):
    return jnp.prod(1 - x**2)


@pytest.mark.parametrize("kind", ["fast", "general", "hard-constraint"])
def test_hessian_and_second_derivative_refuse_relu_as_laplacian_does(kind):
    # They returned zeros (relu'' = 0 almost everywhere) where `u.laplacian` raised; around a
    # hard constraint the network's term `g * Hess N` was dropped without a word.
    model = {"fast": _RELU, "general": sb.flat(_RELU.restructure(_RELU.theta0), fast=False),
             "hard-constraint": sb.HardConstraint(_RELU, _box)}[kind]
    u = sb.Field(model, _RELU.theta0)
    for second in (u.hessian, lambda x: u.second_derivative(x, 0), u.laplacian):
        with pytest.raises(ValueError, match="`relu` is not twice"):
            second(_X)


def test_hessian_at_a_complex_point_is_the_holomorphic_one():
    # `jax.jacfwd` refused the complex point ("jacfwd requires real-valued inputs"), while
    # `u.grad` and `u.laplacian` take it along the real axis of each entry.
    x = jnp.array([0.3 + 0.1j, -0.2 + 0.05j])
    f = lambda y: _TANH(_TANH.theta0, y)
    want = jax.jacfwd(jax.jacfwd(f, holomorphic=True), holomorphic=True)(x)
    got = sb.Field(_TANH, _TANH.theta0).hessian(x)
    assert got.shape == (2, 2, 2)
    np.testing.assert_allclose(got, want, rtol=1e-13, atol=1e-15)


@pytest.mark.parametrize("piece", ["complex lift", "integer lift", "complex distance"])
def test_hard_constraint_takes_complex_and_integer_distance_and_lift(piece):
    # `jax.hessian` (reverse mode inside) raised "jacrev requires real-valued outputs" for a
    # complex boundary value and for `lift = lambda x: 3`.
    lift, distance = {"complex lift": (lambda x: jax.lax.complex(jnp.cos(x[0]), x[1] ** 2), _box),
                      "integer lift": (lambda x: 3, _box),
                      "complex distance": (None, lambda x: jax.lax.complex(_box(x), x[0]))}[piece]
    u = sb.HardConstraint(_TANH, distance, lift)
    theta = _TANH.theta0
    f = lambda y: u(theta, y)
    want = (jax.jacfwd(f)(_X), jnp.trace(jax.jacfwd(jax.jacfwd(f))(_X), axis1=-2, axis2=-1))
    got = (sb.grad_x(u)(theta, _X), sb.laplacian(u)(theta, _X))
    for a, b in zip(got, want):
        assert a.shape == b.shape
        np.testing.assert_allclose(a, b, rtol=1e-13, atol=1e-14)


@pytest.mark.parametrize("fast", [True, False])
def test_hard_constraint_around_a_scalar_input_network(fast):
    # A point of shape () was refused and the network refuses shape (1,): no way to constrain
    # an `sb.FlatMLP(("scalar", ...))` at all.
    net = sb.FlatMLP(("scalar", 6, 2), activation="tanh", key=jax.random.key(2),
                     dtype=jnp.float64)
    model = net if fast else sb.flat(net.restructure(net.theta0), fast=False)
    u = sb.HardConstraint(model, lambda x: x * (1 - x), lambda x: jnp.sin(x) * jnp.ones(2))
    f = lambda y: u(net.theta0, y)
    x = jnp.array(0.3)
    field = sb.Field(u, net.theta0)
    want = jax.jacfwd(f)(x), jax.hessian(f)(x)
    for got, ref in [(field.grad(x), want[0]), (field.laplacian(x), want[1]),
                     (field.hessian(x), want[1])]:
        assert got.shape == ref.shape == (2,)
        np.testing.assert_allclose(got, ref, rtol=1e-13, atol=1e-15)
    np.testing.assert_array_equal(f(jnp.array(1.0)), jnp.sin(1.0) * jnp.ones(2))


def test_hessian_refuses_a_float64_numpy_point_with_x64_off():
    # `u.grad` and `u.laplacian` refused it; `u.hessian` and `u.second_derivative` truncated it.
    result = run_python("""
        import jax, numpy as np
        import sciml_bridge as sb
        fm = sb.FlatMLP((2, 4, "scalar"), key=jax.random.key(0))
        u = sb.Field(fm, fm.theta0)
        for call in (u.hessian, lambda x: u.second_derivative(x, 0)):
            try:
                call(np.array([0.1, 0.2]))
            except TypeError as e:
                assert "64-bit mode off" in str(e), e
            else:
                raise SystemExit("accepted")
        assert u.hessian(np.array([0.1, 0.2], np.float32)).shape == (2, 2)
    """)
    assert result.returncode == 0, result.stderr



@pytest.mark.parametrize("activation", [jax.nn.leaky_relu, jax.nn.relu6, jax.nn.hard_tanh,
                                        jnp.abs, functools.partial(jax.nn.leaky_relu,
                                                                   negative_slope=0.1),
                                        functools.partial(jax.nn.relu), jax.nn.selu])
def test_laplacian_refuses_other_kinked_activations_as_it_refuses_relu(activation):
    # A piecewise-linear network's Laplacian was 0 (fast and general path) where relu raised.
    fm = sb.FlatMLP((2, 4, "scalar"), activation=activation, key=jax.random.key(0),
                    dtype=jnp.float64)
    general = sb.flat(eqx.nn.MLP(2, "scalar", 4, 1, activation=activation,
                                 key=jax.random.key(0), dtype=jnp.float64), fast=False)
    for model in (fm, general):
        with pytest.raises(ValueError, match="is not twice"):
            sb.laplacian(model)(model.theta0, _X)
        assert sb.grad_x(model)(model.theta0, _X).shape == (2,)  # first derivatives are fine
    # A smooth callable that is not in the table still goes through (nested autodiff).
    smooth = sb.FlatMLP((2, 4, "scalar"), activation=jax.nn.elu, key=jax.random.key(0),
                        dtype=jnp.float64)
    want = jnp.trace(jax.hessian(lambda y: smooth(smooth.theta0, y))(_X))
    np.testing.assert_allclose(sb.laplacian(smooth)(smooth.theta0, _X), want, rtol=1e-13)
