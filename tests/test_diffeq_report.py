"""`_diffeq_report.py` (shared by `sb.NeuralODE`, `NeuralSDE` and `NeuralCDE`): a failed solve
gives no finite gradient for a non-finite value, with every adjoint and per member of a batch,
and a solution that blows up under constant steps is a failure although Diffrax reports
success."""

import diffrax
import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import sciml_bridge as sb


TS = jnp.linspace(0.0, 2.0, 5)


def _blow_up(theta, y):
    return theta * y**2  # y0 = 1: y = 1 / (1 - theta t), blows up at t = 1 / theta


def _scaled_blow_up(t, y, theta, args):
    return theta * args[0].astype(y.dtype) * y**2  # float32 `args`: the gradient mixes dtypes


@pytest.mark.parametrize(
    "adjoint", [diffrax.RecursiveCheckpointAdjoint(), diffrax.DirectAdjoint()],
    ids=["recursive", "direct"],
)  # fmt: skip
def test_failed_solve_gives_nan_gradient_per_member(adjoint):
    # The rows a failed solve never reached are Diffrax's constant `inf` fill: the NaN
    # derivative put there never reached `theta`, and an `inf` loss came with the finite
    # gradient 2.0 (the derivative of the one row reached after `y0`).
    node = sb.NeuralODE.hybrid(_scaled_blow_up, adjoint=adjoint, max_steps=64, throw=False)
    loss = lambda theta, args: jnp.sum(node(theta, jnp.array([1.0]), TS, args))
    thetas = jnp.array([[0.1], [1.0]])  # the second member blows up at t = 1 < 2
    args = (jnp.array(1.0, jnp.float32),)
    grad = jax.vmap(jax.value_and_grad(loss, argnums=(0, 1)), in_axes=(0, None))
    values, (d_theta, (d_scale,)) = jax.jit(grad)(thetas, args)
    assert np.isfinite(values[0]) and np.isinf(values[1])
    assert np.isnan(d_theta[1]).all() and np.isnan(d_scale[1]) and d_scale.dtype == jnp.float32
    t = np.asarray(TS)
    assert np.allclose(d_theta[0], np.sum(t / (1 - 0.1 * t) ** 2), rtol=1e-5)  # d/dθ 1/(1-θt)


def test_sde_that_overflows_is_an_error_not_nan():
    # Euler steps of dy = 10 y^2 dt from y0 = 1 overflow: nothing rejects a constant step, and
    # Diffrax reports success (the call returned `[1, nan, nan]` under `throw=True`).
    sde = sb.NeuralSDE(lambda theta, y: theta[0] * y**2, lambda theta, y: theta[1] * y)
    theta, ts, key = jnp.array([10.0, 0.3]), jnp.linspace(0.0, 1.0, 3), jax.random.key(0)
    with pytest.raises(eqx.EquinoxRuntimeError, match="turned non-finite.*smaller `dt0`"):
        sde(theta, jnp.ones(1), ts, key).block_until_ready()


def test_constant_step_ode_that_overflows_is_an_error_or_nan_gradient():
    kwargs = dict(dt0=0.1, stepsize_controller=diffrax.ConstantStepSize())
    with pytest.raises(eqx.EquinoxRuntimeError, match="turned non-finite") as info:
        sb.NeuralODE(_blow_up, **kwargs)(jnp.array([10.0]), jnp.array([1.0]),
                                         TS).block_until_ready()  # fmt: skip
    assert "max_steps" not in str(info.value).split("Fix:")[0]
    dense = sb.NeuralODE(_blow_up, saveat=diffrax.SaveAt(dense=True), **kwargs)
    with pytest.raises(eqx.EquinoxRuntimeError, match="turned non-finite"):
        dense.solve(jnp.array([10.0]), jnp.array([1.0]), TS).evaluate(1.9).block_until_ready()
    node = sb.NeuralODE(_blow_up, throw=False, **kwargs)
    loss = lambda theta: jnp.sum(node(theta, jnp.array([1.0]), TS))
    value, grad = jax.value_and_grad(loss)(jnp.array([10.0]))
    assert not np.isfinite(value) and np.isnan(grad).all()


def test_rows_after_an_event_are_not_a_blow_up():
    # Unreached rows (`inf` in `sol.ts`) are Diffrax's fill, not non-finite results.
    node = sb.NeuralODE(lambda theta, y: theta - y, saveat=diffrax.SaveAt(steps=True),
                        event=diffrax.Event(diffrax.steady_state_event()))  # fmt: skip
    sol = node.solve(jnp.array([0.5, -1.0]), jnp.array([1.0, 0.5]), jnp.array([0.0, jnp.inf]))
    reached = np.isfinite(sol.ts)
    assert 0 < reached.sum() < reached.size and np.isfinite(sol.ys[reached]).all()


def test_under_vmap_the_error_names_the_failing_members_cause():
    # Equinox shows the message of the largest index across a batch: the member that did not
    # fail had the default index, and the error named `ImplicitAdjoint` (never used) for the
    # other member's `max_steps`. Among failures the most basic cause wins (NaN `theta`).
    solve = jax.vmap(sb.NeuralODE(_blow_up, max_steps=8), in_axes=(0, None, None))
    thetas = jnp.array([[1.0], [jnp.nan], [0.1]])  # max_steps, NaN, no failure
    with pytest.raises(eqx.EquinoxRuntimeError, match="non-finite values .NaN or inf. in `theta`"):
        solve(thetas, jnp.array([1.0]), TS).block_until_ready()
