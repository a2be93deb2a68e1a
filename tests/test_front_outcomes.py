"""Outcome details of `sb.minimize` that every method shares: what `steps` and `history` count.

A method whose converged step keeps `theta` (Optax with `tol`, "ssbfgs") counted that step:
started at the minimum it said "converged after 1 steps" with `history == [0, 0]`, where
SciPy says 0 steps; a converging run ended with its last loss twice.
"""

import jax
import jax.numpy as jnp
import numpy as np

import sciml_bridge as sb


def _loss(theta):
    return jnp.sum((theta - 1.0) ** 2)


def _sgd_steps_to(tol: float, theta, lr: float = 0.25) -> int:
    """The steps plain gradient descent takes until the gradient norm is within `tol`."""
    steps = 0
    while np.linalg.norm(2 * (theta - 1.0)) > tol:
        theta, steps = theta - lr * 2 * (theta - 1.0), steps + 1
    return steps


def test_a_converged_run_counts_only_the_steps_that_moved_it():
    theta0 = jnp.stack([jnp.zeros(2), jnp.ones(2)])  # the second member starts at the minimum
    kw = dict(learning_rate=0.25, tol=1e-3, max_steps=100, progress=False)
    ens = sb.minimize(_loss, theta0, "sgd", **kw)
    expected = _sgd_steps_to(1e-3, np.zeros(2))
    for i, steps in enumerate([expected, 0]):
        single = sb.minimize(_loss, theta0[i], "sgd", **kw)
        for res in (single, ens[i]):
            assert res.success and res.steps == steps == len(res.history) - 1
            assert f"converged after {steps} steps" in res.message
            assert res.history[-1] == res.loss == float(_loss(res.theta))
        np.testing.assert_array_equal(single.history, ens[i].history)
    assert np.all(np.diff(ens[0].history) < 0)  # no repeated last loss
    res = sb.minimize(_loss, jnp.ones(2), "ssbfgs", max_steps=10, progress=False)
    assert res.success and res.steps == 0 and list(res.history) == [0.0]
    assert "converged after 0 steps" in res.message


def _member(loss: float, result) -> sb.Solution:
    return sb.Solution(theta=jnp.zeros(1), loss=loss, history=np.array([loss]), steps=0,
                       success=result is sb.RESULTS.successful, message="", wall_time=0.0,
                       result=result)  # fmt: skip


def test_best_prefers_a_successful_member_among_ties():
    ok, bad = sb.RESULTS.successful, sb.RESULTS.nonfinite
    members = (_member(float("nan"), bad), _member(0.0, bad), _member(0.0, ok), _member(0.0, ok))
    ens = sb.EnsembleSolution(members, 0.0)
    assert ens.best is members[2]
    ens = sb.EnsembleSolution((_member(1.0, ok), _member(0.5, bad), _member(0.5, bad)), 0.0)
    assert ens.best is ens[1]  # the lowest loss wins, failed or not


@jax.custom_jvp
def _nan_gradient_past_half(theta):
    return jnp.sum((theta - 1.0) ** 2)


@_nan_gradient_past_half.defjvp
def _(primals, tangents):
    (theta,), (dtheta,) = primals, tangents
    grad = jnp.where(theta[0] > 0.5, jnp.nan, 2 * (theta - 1.0))
    return _nan_gradient_past_half(theta), grad @ dtheta


def test_a_non_finite_gradient_at_a_finite_loss_is_not_called_a_non_finite_loss():
    # BFGS's line search accepts a point of finite loss and NaN gradient: the message said
    # "the loss became non-finite" although no loss ever was.
    res = sb.minimize(_nan_gradient_past_half, jnp.array([-3.0, 0.0]), "bfgs", max_steps=20,
                      throw=False, progress=False)  # fmt: skip
    assert res.result is sb.RESULTS.nonfinite and np.all(np.isfinite(res.history))
    assert "the loss (or its gradient) became non-finite" in res.message
    assert "the loss became non-finite" not in res.message
    assert "the last with a finite loss. The loss (or its gradient)" in res.message  # sentences
    assert res.loss == float(_nan_gradient_past_half(res.theta)) == res.history[-1]
