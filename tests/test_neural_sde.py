"""`sb.NeuralSDE`: Brownian paths from the key, Itô statistics against the Ornstein-Uhlenbeck
closed form, gradients through the sampled paths, shape and key checks."""

import diffrax
import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import sciml_bridge as sb


def _ou_drift(theta, y):
    return theta[0] * (theta[1] - y)


def _ou_diffusion(theta, y):
    return theta[2] * jnp.ones_like(y)


THETA = jnp.array([1.0, 1.0, 0.3])
TS = jnp.linspace(0.0, 1.0, 6)
Y0 = jnp.zeros(1)
SDE = sb.NeuralSDE(_ou_drift, _ou_diffusion, dt0=0.01)
PATHS = jax.jit(jax.vmap(SDE, in_axes=(None, None, None, 0)))


def test_path_is_reproducible_from_the_key_and_changes_with_it(getkey):
    k1, k2 = getkey(), getkey()
    a, b, c = PATHS(THETA, Y0, TS, jnp.stack([k1, k1, k2]))
    assert np.array_equal(a, b)  # same compiled program, same key: the same path
    assert not np.allclose(a[1:], c[1:])
    assert np.array_equal(a[0], Y0) and np.array_equal(c[0], Y0)


def test_ito_statistics_match_the_ornstein_uhlenbeck_closed_form():
    # Mean 1 - exp(-t), variance 0.3**2 / 2 * (1 - exp(-2 t)) for theta = (1, 1, 0.3).
    ys = PATHS(THETA, Y0, TS, jax.random.split(jax.random.key(1), 4000))[..., 0]
    t = np.asarray(TS)
    mean, var = 1 - np.exp(-t), 0.045 * (1 - np.exp(-2 * t))
    assert np.allclose(ys.mean(0), mean, atol=4 * np.sqrt(var.max() / 4000) + 0.01)
    assert np.allclose(ys.var(0)[1:], var[1:], rtol=0.1)


def test_gradient_of_path_statistics_matches_central_differences():
    keys = jax.random.split(jax.random.key(2), 64)
    loss = jax.jit(lambda theta: jnp.mean(PATHS(theta, Y0, TS, keys) ** 2))
    grad = jax.grad(loss)(THETA)
    eps = 1e-6
    fd = [(loss(THETA.at[i].add(eps)) - loss(THETA.at[i].add(-eps))) / (2 * eps) for i in range(3)]
    assert np.allclose(grad, fd, rtol=1e-6, atol=1e-9)


def test_flat_models_split_theta():
    drift = sb.FlatMLP((1, 4, 1), key=jax.random.key(0), dtype=jnp.float64)
    diffusion = sb.flat(lambda p, y: jnp.exp(p["log_sigma"]) * jnp.ones_like(y),
                        {"log_sigma": jnp.array([-1.0])})  # fmt: skip
    sde = sb.NeuralSDE(drift, diffusion, solver=diffrax.Heun(), dt0=0.05)
    assert sde.theta0.shape == (drift.size + 1,)
    key = jax.random.key(3)
    ys = sde(sde.theta0, Y0, TS, key)
    # Zero diffusion (log sigma = -inf would be non-finite, so a tiny one) leaves the ODE.
    quiet = sde.theta0.at[-1].set(-60.0)
    ode = sb.NeuralODE(drift, solver=diffrax.Heun(), dt0=0.05,
                       stepsize_controller=diffrax.ConstantStepSize())  # fmt: skip
    assert np.allclose(sde(quiet, Y0, TS, key), ode(drift.theta0, Y0, TS), atol=1e-12)
    assert ys.shape == (6, 1) and not np.allclose(ys, ode(drift.theta0, Y0, TS))


def test_wrong_diffusion_shape_and_bad_key_are_clear_errors():
    bad = sb.NeuralSDE(_ou_drift, lambda theta, y: theta[2], dt0=0.01)
    with pytest.raises(ValueError, match=r"diffusion must return.*float64\[1\].*float64\[\]"):
        bad(THETA, Y0, TS, jax.random.key(0))
    with pytest.raises(TypeError, match="one PRNG key"):
        SDE(THETA, Y0, TS, jax.random.split(jax.random.key(0), 2))
    with pytest.raises(ValueError, match="brownian_shape"):
        sb.NeuralSDE(_ou_drift, _ou_diffusion, diagonal=False)


def test_non_finite_theta_is_named():
    with pytest.raises(eqx.EquinoxRuntimeError, match="non-finite values"):
        SDE(THETA.at[0].set(jnp.nan), Y0, TS, jax.random.key(0)).block_until_ready()


def _multiplicative(theta, y):
    return theta[2] * (1.0 + 0.1 * y)


def test_reversible_heun_with_backsolve_is_exact_on_the_span_and_refused_inside_it():
    # Diffrax restarts each backward segment with ReversibleHeun's stale auxiliary state: with
    # 6 save times the gradient was 31% off central differences. Over [t0, t1] it is exact.
    sde = sb.NeuralSDE(_ou_drift, _multiplicative, dt0=0.001, solver=diffrax.ReversibleHeun(),
                       adjoint=diffrax.BacksolveAdjoint())  # fmt: skip
    theta, y0, key = jnp.array([1.0, 0.5, 0.3]), jnp.array([0.2, -0.1]), jax.random.key(3)
    with pytest.raises(ValueError, match=r"RecursiveCheckpointAdjoint.*\[t0, t1\]"):
        sde(theta, y0, TS, key)
    loss = jax.jit(lambda theta: jnp.sum(sde(theta, y0, jnp.array([0.0, 1.0]), key) ** 2))
    eps = 1e-6
    fd = [(loss(theta.at[i].add(eps)) - loss(theta.at[i].add(-eps))) / (2 * eps) for i in range(3)]
    assert np.allclose(jax.grad(loss)(theta), fd, rtol=1e-6, atol=1e-9)


def test_implicit_adjoint_is_refused_with_a_message_that_fits_an_sde():
    with pytest.raises(ValueError, match="no steady state|has none") as info:
        sb.NeuralSDE(_ou_drift, _ou_diffusion, adjoint=diffrax.ImplicitAdjoint())
    assert "stepsize_controller" not in str(info.value)  # NeuralSDE has no such argument


def test_euler_heun_with_backsolve_is_refused_with_what_works():
    # Diffrax raised its raw `TermAndSolverIncompatible` at the first gradient.
    with pytest.raises(ValueError, match=r"EulerHeun.*Heun\(\)"):
        sb.NeuralSDE(_ou_drift, _ou_diffusion, solver=diffrax.EulerHeun(),
                     adjoint=diffrax.BacksolveAdjoint())  # fmt: skip


def test_infinite_time_is_named():
    with pytest.raises(eqx.EquinoxRuntimeError, match="non-finite values in `ts`"):
        SDE(THETA, Y0, TS.at[0].set(-jnp.inf), jax.random.key(0)).block_until_ready()
