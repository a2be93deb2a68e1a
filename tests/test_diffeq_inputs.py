"""`_diffeq_inputs.py`: `ts` out of order, `dt0`, complex states and Brownian shapes give our
errors (with `throw=False`: NaN values), not Diffrax's runtime errors or silent `inf`."""

import diffrax
import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import sciml_bridge as sb


def _rotation(theta, y):
    return theta.reshape(2, 2) @ y


THETA, Y0 = jnp.array([0.0, 1.0, -1.0, 0.0]), jnp.array([1.0, 0.0])


def test_ode_ts_out_of_order_is_ours_and_nan_without_throw():
    # Diffrax raised "saveat.ts must be increasing or decreasing." even under `throw=False`.
    ts = jnp.array([0.0, 1.0, 0.5])
    with pytest.raises(eqx.EquinoxRuntimeError, match=r"NeuralODE.*`ts` out of order"):
        sb.NeuralODE(_rotation)(THETA, Y0, ts).block_until_ready()
    assert np.isnan(sb.NeuralODE(_rotation, throw=False)(THETA, Y0, ts)).all()


def test_ode_ts_may_decrease_or_repeat():
    node = sb.NeuralODE(_rotation, stepsize_controller=diffrax.PIDController(rtol=1e-10,
                                                                             atol=1e-10))
    ts = jnp.array([1.0, 0.5, 0.5, 0.0])  # backwards in time from y(1) = Y0
    ys = node(THETA, Y0, ts)
    s = np.asarray(ts) - 1.0
    assert np.allclose(ys, np.stack([np.cos(s), -np.sin(s)], axis=1), rtol=1e-8, atol=1e-9)


@pytest.mark.parametrize("ts", [[1.0, 0.0], [0.0, 0.0]], ids=["decreasing", "empty-span"])
def test_sde_ts_must_run_forwards(ts):
    # Diffrax's Brownian tree raised "t0 must be strictly less than t1" even with throw=False.
    sde = sb.NeuralSDE(lambda theta, y: -theta[0] * y, lambda theta, y: theta[1] * y)
    theta, key = jnp.array([1.0, 0.3]), jax.random.key(0)
    with pytest.raises(eqx.EquinoxRuntimeError, match=r"`ts` out of order.*t0 < t1"):
        sde(theta, jnp.ones(1), jnp.array(ts), key).block_until_ready()


def test_cde_knots_must_increase_strictly():
    ts = jnp.linspace(0.0, 1.0, 4)
    coeffs = diffrax.backward_hermite_coefficients(ts, jnp.stack([ts, 2.0 * ts], axis=1))
    field = lambda theta, z: z[:, None] * theta[None, :]
    repeated = jnp.array([0.0, 0.5, 0.5, 1.0])
    with pytest.raises(eqx.EquinoxRuntimeError, match=r"`ts` out of order.*strictly"):
        sb.NeuralCDE(field)(jnp.ones(2), jnp.ones(2), repeated, coeffs).block_until_ready()
    zs = sb.NeuralCDE(field, throw=False)(jnp.ones(2), jnp.ones(2), repeated, coeffs)
    assert np.isnan(zs).all()


@pytest.mark.parametrize("dt0, error", [(0.0, ValueError), (float("nan"), ValueError),
                                        ("0.1", TypeError)])
def test_ode_and_cde_dt0_must_be_finite_and_non_zero(dt0, error):
    # A NaN `dt0` gave `inf` everywhere (even `ys[0]`) without an error; 0 was blamed on
    # `max_steps` ("probably stiff").
    with pytest.raises(error, match=r"`sb.NeuralODE\(dt0=...\)`.*finite non-zero"):
        sb.NeuralODE(_rotation, dt0=dt0)
    with pytest.raises(error, match=r"`sb.NeuralCDE\(dt0=...\)`"):
        sb.NeuralCDE(_rotation, dt0=dt0)


@pytest.mark.parametrize("dt0, error", [(0.0, ValueError), (-0.01, ValueError),
                                        (float("nan"), ValueError), (None, TypeError)])
def test_sde_dt0_must_be_positive(dt0, error):
    with pytest.raises(error, match=r"`sb.NeuralSDE\(dt0=...\)`.*positive"):
        sb.NeuralSDE(lambda theta, y: y, lambda theta, y: y, dt0=dt0)


def test_complex_state_is_refused_with_the_split_fix():
    # The dtype rule asked for `ts` of the complex dtype of `theta`, which no solve can use.
    fm = lambda theta, y: 1j * theta * y
    with pytest.raises(TypeError, match=r"complex.*y0.real, y0.imag"):
        sb.NeuralODE(fm)(jnp.ones(1, jnp.complex128), jnp.ones(1, jnp.complex128),
                         jnp.array([0.0, 1.0]))  # fmt: skip


@pytest.mark.parametrize("dtype", [jnp.bfloat16, jnp.float16])
def test_half_precision_is_refused_not_blamed_on_max_steps(dtype):
    # `t + dt` rounds back to `t`: the solve stalled and was reported as `max_steps` reached.
    one = lambda n: jnp.ones(n, dtype)
    with pytest.raises(TypeError, match=r"16-bit floats.*Fix: solve in float32"):
        sb.NeuralODE(lambda theta, y: -theta * y)(one(1), one(1), jnp.linspace(0, 1, 3, dtype))
    with pytest.raises(TypeError, match=r"16-bit floats"):
        sb.NeuralSDE(lambda th, y: -th * y, lambda th, y: th * y)(
            one(1), one(1), jnp.linspace(0, 1, 3, dtype), jax.random.key(0))  # fmt: skip


@pytest.mark.parametrize("shape, error", [(3, TypeError), ((0,), ValueError)])
def test_brownian_shape_must_be_a_tuple_of_positive_ints(shape, error):
    # `brownian_shape=3` failed with "'int' object is not iterable".
    with pytest.raises(error, match=r"brownian_shape=\(3,\)"):
        sb.NeuralSDE(lambda theta, y: y, lambda theta, y: y, diagonal=False, brownian_shape=shape)


def _state_cases():
    fm = sb.FlatMLP((2, 4, 2), activation="tanh", key=jax.random.key(0), dtype=jnp.float64)
    cde_fm = sb.FlatMLP((2, 4, 4), activation="tanh", key=jax.random.key(1), dtype=jnp.float64)
    ts = jnp.linspace(0.0, 1.0, 4)
    coeffs = diffrax.backward_hermite_coefficients(ts, jnp.stack([ts, 2.0 * ts], axis=1))
    ode = lambda y0: sb.NeuralODE(fm)(fm.theta0, y0, ts)
    theta2 = jnp.concatenate([fm.theta0, fm.theta0])
    sde = lambda y0: sb.NeuralSDE(fm, fm, dt0=0.25)(theta2, y0, ts, jax.random.key(0))
    cde = lambda z0: sb.NeuralCDE(lambda th, z: cde_fm(th, z).reshape(2, 2))(
        cde_fm.theta0, z0, ts, coeffs)  # fmt: skip
    return [("NeuralODE", "vector field", "y0", ode), ("NeuralSDE", "drift", "y0", sde),
            ("NeuralCDE", "vector field", "z0", cde)]


@pytest.mark.parametrize("where, which, state, solve", _state_cases(), ids=["ode", "sde", "cde"])
def test_a_state_the_network_cannot_take_is_our_error(where, which, state, solve):
    # Was XLA's "dot_general requires contracting dimensions to have the same shape".
    with pytest.raises(ValueError, match=rf"{where}.*could not evaluate the {which} at the "
                                         rf"state `{state}` float64\[3\]: .*2.*Fix"):
        solve(jnp.ones(3))
    # A nested state: was jnp.asarray's "entry not a 2- or 3- tuple".
    with pytest.raises(TypeError, match=rf"expected `{state}` to be one array, but got dict"
                                        r".*ravel_pytree"):
        solve({"a": jnp.ones(2)})


def test_backsolve_derivative_with_respect_to_ts_is_our_error():
    # Was Diffrax's raw "Unexpected tangent. `*args` and `**kwargs` to `filter_custom_vjp`".
    ts, one = jnp.linspace(0.0, 1.0, 3), jnp.ones(1)
    node = sb.NeuralODE(lambda th, y: -th * y, adjoint=diffrax.BacksolveAdjoint())
    loss = lambda th, ts: jnp.sum(node(th, one, ts))
    with pytest.raises(TypeError, match=r"BacksolveAdjoint\(\)` cannot differentiate.*`ts`"):
        jax.grad(loss, argnums=1)(one, ts)


def test_forward_mode_through_a_reverse_mode_adjoint_names_forward_mode():
    # Was JAX's raw "can't apply forward-mode autodiff (jvp) to a custom_vjp function".
    ts, one = jnp.linspace(0.0, 1.0, 3), jnp.ones(1)
    node = sb.NeuralODE(lambda th, y: -th * y)
    with pytest.raises(TypeError, match=r"RecursiveCheckpointAdjoint\(\)` differentiates in "
                                        r"reverse mode only.*Fix: `adjoint=diffrax.ForwardMode"):
        jax.jacfwd(lambda th: node(th, one, ts))(one)
    # Under `ForwardMode()` a `custom_vjp` inside the field is the user's: JAX's words stand
    # (ours said "Fix: `adjoint=diffrax.ForwardMode()`" to a user already passing it).
    act = jax.custom_vjp(jnp.tanh)
    act.defvjp(lambda x: (jnp.tanh(x), x), lambda x, g: (g * (1 - jnp.tanh(x) ** 2),))
    node = sb.NeuralODE(lambda th, y: act(th * y), adjoint=diffrax.ForwardMode())
    with pytest.raises(TypeError, match="can't apply forward-mode") as err:
        jax.jacfwd(lambda th: node(th, one, ts))(one)
    assert "ForwardMode" not in str(err.value)
