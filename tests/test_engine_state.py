"""The model state a stateful run returns (`sb.minimize(..., state=)`), on every outcome.

`res.theta`, `res.state` and `res.loss` describe one evaluation: `loss(res.theta, res.state)`
gives `res.loss`. A run that stops at its last good point (a non-finite loss, a raise) used to
return the state its loss returned there, one step ahead. The losses here count their calls
(`n`) and read the count, so a state one step off changes the loss.
"""

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import sciml_bridge as sb
from sciml_bridge._solvers import _run
from sciml_bridge._solvers._interrupt import Interrupt


STATE0 = {"n": jnp.array(0.0)}
LIMIT = (jnp.asarray(5.0),)
# sgd at 0.1 towards 10: theta_k[0] = 10 - (10 - theta_0[0]) 0.9^k passes 5 at step 7 from 0
# and at step 18 from -20.
KW = dict(learning_rate=0.1, chunk_size=4, throw=False, progress=False)


def _value(theta, state):
    return 0.5 * jnp.sum((theta - 10.0) ** 2) + 0.01 * state["n"]


def nan_past(theta, state, limit):
    value = jnp.where(theta[0] > limit, jnp.nan, _value(theta, state))
    return value, {"n": state["n"] + 1.0}


def raise_past(theta, state, limit):
    theta = eqx.error_if(theta, theta[0] > limit, "boom: past the limit")
    return _value(theta, state), {"n": state["n"] + 1.0}


def _check(sol, loss, args=LIMIT, evaluations=None):
    """`sol` describes one evaluation, after `evaluations` calls (default `sol.steps`)."""
    value, _ = loss(sol.theta, sol.state, *args)
    np.testing.assert_allclose(float(value), sol.loss, rtol=1e-13)
    assert float(sol.state["n"]) == (sol.steps if evaluations is None else evaluations)


@pytest.mark.parametrize("loss", [nan_past, raise_past])
def test_a_failed_run_returns_the_state_its_last_good_loss_was_evaluated_with(loss):
    res = sb.minimize(loss, jnp.zeros(2), "sgd", args=LIMIT, state=STATE0, max_steps=30, **KW)
    assert not res.success and res.steps == 6
    _check(res, loss)
    with pytest.raises(sb.OptimizationError) as info:
        sb.minimize(loss, jnp.zeros(2), "sgd", args=LIMIT, state=STATE0, max_steps=30,
                    **{**KW, "throw": True})  # fmt: skip
    np.testing.assert_array_equal(np.asarray(info.value.theta), np.asarray(res.theta))


@pytest.mark.parametrize("loss", [nan_past, raise_past])
def test_each_member_returns_the_state_of_its_own_last_good_point(loss):
    # Member 0 fails at step 7, member 1 uses up its budget; each is as a single run.
    theta0 = jnp.array([[0.0, 0.0], [-20.0, 0.0]])
    res = sb.minimize(loss, theta0, "sgd", args=LIMIT, state=STATE0, max_steps=12, **KW)
    assert [m.steps for m in res] == [6, 12] and [m.success for m in res] == [False, True]
    for row, sol in zip(theta0, res.members):
        _check(sol, loss)
        alone = sb.minimize(loss, row, "sgd", args=LIMIT, state=STATE0, max_steps=12, **KW)
        assert float(alone.state["n"]) == float(sol.state["n"])
    np.testing.assert_array_equal(np.asarray(res.state["n"]), [6.0, 12.0])


def test_budget_convergence_callback_and_interrupt_end_at_the_last_point(monkeypatch):
    # These ends keep the last point, evaluated with the state the last step returned.
    res = sb.minimize(nan_past, jnp.zeros(2), "sgd", args=(jnp.asarray(1e3),), state=STATE0,
                      max_steps=5, **KW)  # fmt: skip
    assert res.success and res.steps == 5
    _check(res, nan_past, (jnp.asarray(1e3),))
    # A converged step is not applied, state included, nor counted: `n` equals `res.steps`.
    res = sb.minimize(nan_past, jnp.full(2, 9.99), "sgd", args=(jnp.asarray(1e3),), tol=0.1,
                      state=STATE0, max_steps=50, **KW)  # fmt: skip
    assert res.success and "converged" in res.message
    _check(res, nan_past, (jnp.asarray(1e3),))
    stop = lambda step, theta, value: True
    res = sb.minimize(nan_past, jnp.zeros(2), "sgd", args=LIMIT, state=STATE0, max_steps=30,
                      callback=stop, **KW)  # fmt: skip
    assert res.success and res.steps == 4
    _check(res, nan_past)
    flag = Interrupt()
    monkeypatch.setattr(_run, "catch_sigint", lambda spans=False: _Flag(flag))
    res = sb.minimize(nan_past, jnp.zeros(2), "sgd", args=LIMIT, state=STATE0, max_steps=30,
                      callback=lambda *_: setattr(flag, "set", True), **KW)  # fmt: skip
    assert res.result is sb.RESULTS.interrupted and res.steps == 4
    _check(res, nan_past)


class _Flag:
    """`catch_sigint()` as a context manager yielding a flag the test sets (a Ctrl-C)."""

    def __init__(self, flag):
        self.flag = flag

    def __enter__(self):
        return self.flag

    def __exit__(self, *exc):
        return False


@pytest.mark.parametrize("loss", [nan_past, raise_past])
def test_a_resumed_run_returns_the_same_state_as_one_run(tmp_path, loss):
    # The state at the last good point goes through the checkpoint: resumed mid-run, and
    # resumed after the run ended (nothing left to run: the checkpoint alone answers).
    theta0 = jnp.array([[0.0, 0.0], [-20.0, 0.0]])
    kw = dict(args=LIMIT, state=STATE0, max_steps=30, **KW)
    whole = sb.minimize(loss, theta0, "sgd", **kw)
    for first, name in ((4, "mid.npz"), (30, "end.npz")):
        path = tmp_path / name
        sb.minimize(loss, theta0, "sgd", **{**kw, "max_steps": first}, checkpoint=path)
        resumed = sb.minimize(loss, theta0, "sgd", **kw, checkpoint=path)
        for a, b in zip(whole, resumed):
            assert a.steps == b.steps and a.result is b.result
            _check(b, loss)
            assert float(a.state["n"]) == float(b.state["n"])
    single = sb.minimize(loss, theta0[0], "sgd", **kw, checkpoint=tmp_path / "one.npz")
    resumed = sb.minimize(loss, theta0[0], "sgd", **kw, checkpoint=tmp_path / "one.npz")
    assert resumed.steps == single.steps == 6
    _check(resumed, loss)


def _checked_init(params):
    return eqx.error_if(jnp.zeros(()), params[0] > 100.0, "boom: a bad start")


# sgd at 0.1 whose setup raises for a member that starts past 100.
_SGD = optax.GradientTransformation(_checked_init,
                                    lambda g, s, p=None: (jax.tree.map(lambda x: -0.1 * x, g), s))


def test_a_member_that_failed_while_setting_up_returns_state0_before_and_after_a_resume(
    tmp_path,
):
    # It reported no state (so `res.state` could not stack the members) until a resume, then
    # a running member's.
    theta0 = jnp.array([[0.0, 0.0], [200.0, 0.0]])
    kw = dict(args=(jnp.asarray(1e3),), state=STATE0, max_steps=8, chunk_size=4,
              throw=False, progress=False)  # fmt: skip
    res = sb.minimize(nan_past, theta0, _SGD, **kw)
    assert res[1].result is sb.RESULTS.solver_failed and "bad start" in res[1].message
    np.testing.assert_array_equal(np.asarray(res.state["n"]), [8.0, 0.0])
    for sol in res.members:
        _check(sol, nan_past, (jnp.asarray(1e3),))
    path = tmp_path / "c.npz"
    sb.minimize(nan_past, theta0, _SGD, **{**kw, "max_steps": 4}, checkpoint=path)
    resumed = sb.minimize(nan_past, theta0, _SGD, **kw, checkpoint=path)
    np.testing.assert_array_equal(np.asarray(resumed.state["n"]), [8.0, 0.0])
    assert resumed[1].loss == res[1].loss and resumed[0].loss == res[0].loss


def nan_past_on_rows(theta, state, x):
    value = 0.5 * jnp.sum((theta - jnp.mean(x)) ** 2) + 0.01 * state["n"]
    return jnp.where(theta[0] > 5.0, jnp.nan, value), {"n": state["n"] + 1.0}


def raise_past_on_rows(theta, state, x):
    theta = eqx.error_if(theta, theta[0] > 5.0, "boom: past the limit")
    return 0.5 * jnp.sum((theta - jnp.mean(x)) ** 2) + 0.01 * state["n"], {"n": state["n"] + 1}


@pytest.mark.parametrize("loss", [nan_past_on_rows, raise_past_on_rows])
@pytest.mark.parametrize("theta0", [jnp.zeros(2), jnp.array([[0.0, 0.0], [-20.0, 0.0]])])
def test_a_minibatch_run_stopped_at_its_last_good_point_reports_the_loss_with_its_state(
    loss, theta0
):
    # `res.loss` (on all the data) was evaluated with the state given at the start, not the
    # one `res.state` holds: `loss(res.theta, res.state, x)[0] != res.loss`.
    x = jnp.full(4, 10.0)
    res = sb.minimize(loss, theta0, "sgd", args=(x,), state=STATE0, batch_size=2,
                      max_steps=30, **KW)  # fmt: skip
    for sol in res.members if isinstance(res, sb.EnsembleSolution) else (res,):
        assert not sol.success and float(sol.state["n"]) == sol.steps > 0
        value, _ = loss(sol.theta, sol.state, x)
        np.testing.assert_allclose(float(value), sol.loss, rtol=1e-13)
        assert sol.history[-1] == sol.loss


@pytest.mark.parametrize("stateful", [True, False])
def test_a_run_whose_setup_raises_reports_the_loss_at_theta0_as_a_member_does(stateful):
    # A single run reported NaN, a member of an ensemble the loss at `theta0`.
    limit = (jnp.asarray(1e3),)
    theta0 = jnp.array([[0.0, 0.0], [200.0, 0.0]])
    fn = nan_past if stateful else (lambda theta, limit: nan_past(theta, STATE0, limit)[0])
    kw = dict(args=limit, max_steps=8, chunk_size=4, throw=False, progress=False)
    kw |= dict(state=STATE0) if stateful else {}
    ens = sb.minimize(fn, theta0, _SGD, **kw)
    alone = sb.minimize(fn, theta0[1], _SGD, **kw)
    for sol in (ens[1], alone):
        assert sol.result is sb.RESULTS.solver_failed and sol.steps == 0
        # Evaluated by the library (compiled) and here (eager): to rounding.
        assert sol.loss == pytest.approx(float(nan_past(theta0[1], STATE0, *limit)[0]), rel=1e-14)
        assert sol.history.tolist() == [sol.loss]
