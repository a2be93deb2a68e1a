"""`sb.NeuralODE`: trajectories against closed forms, gradients of every adjoint against central
differences, hybrid vector fields, batching, failures, and least squares through the solve."""

import textwrap

import diffrax
import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import central_difference, tree_allclose

import sciml_bridge as sb


TIGHT = diffrax.PIDController(rtol=1e-10, atol=1e-10)
TS = jnp.linspace(0.0, 1.0, 4)
Y0 = jnp.array([1.0, 0.5])
ADJOINTS = {
    "recursive": diffrax.RecursiveCheckpointAdjoint(),
    "backsolve": diffrax.BacksolveAdjoint(),
    "direct": diffrax.DirectAdjoint(),
    "forward": diffrax.ForwardMode(),
}


def _rotation(theta, y):
    return theta.reshape(2, 2) @ y


def _mlp_fm():
    # 2 -> 8 -> 2 tanh: 42 parameters, small enough for 84 finite-difference solves. The general
    # path (`fast=False`) exercises the rebuild-once-outside-the-solve route.
    mlp = eqx.nn.MLP(2, 2, 8, 1, activation=jnp.tanh, key=jax.random.key(0), dtype=jnp.float64)
    return sb.flat(mlp, fast=False)


FM = _mlp_fm()
DATA = jnp.stack([jnp.cos(TS), jnp.sin(TS)], axis=1)


def _loss_for(adjoint):
    node = sb.NeuralODE(FM, adjoint=adjoint, stepsize_controller=TIGHT)
    return lambda theta: jnp.sum((node(theta, Y0, TS) - DATA) ** 2)


@pytest.fixture(scope="module")
def fd_gradient():
    return central_difference(jax.jit(_loss_for(ADJOINTS["recursive"])), FM.theta0, eps=1e-5)


@pytest.fixture(scope="module")
def adjoint_gradients():
    grads = {}
    for name, adjoint in ADJOINTS.items():
        # ForwardMode only supports forward-mode AD (PITFALLS: Diffrax), hence `jacfwd`.
        diff = jax.jacfwd if name == "forward" else jax.grad
        grads[name] = np.asarray(jax.jit(diff(_loss_for(adjoint)))(FM.theta0))
    return grads


def test_linear_ode_matches_closed_form():
    node = sb.NeuralODE(_rotation, stepsize_controller=TIGHT)
    ts = jnp.linspace(0.0, 2.0, 7)
    ys = node(jnp.array([0.0, 1.0, -1.0, 0.0]), jnp.array([1.0, 0.0]), ts)
    assert ys.shape == (7, 2) and ys.dtype == jnp.float64
    assert tree_allclose(ys, jnp.stack([jnp.cos(ts), -jnp.sin(ts)], axis=1), rtol=1e-8, atol=1e-9)


def test_output_shape_follows_state_shape_and_dtype():
    fm = lambda theta, y: -theta[0] * y
    ys = sb.NeuralODE(fm)(
        jnp.array([0.5], jnp.float32),
        jnp.ones((3, 2), jnp.float32),
        jnp.linspace(0.0, 1.0, 5, dtype=jnp.float32),
    )
    assert ys.shape == (5, 3, 2) and ys.dtype == jnp.float32
    assert np.allclose(ys[-1], np.exp(-0.5), rtol=1e-5)


def test_time_dependent_vector_field():
    node = sb.NeuralODE(
        lambda theta, t, y: theta * t, time_dependent=True, stepsize_controller=TIGHT
    )
    ts = jnp.linspace(0.0, 2.0, 5)
    ys = node(jnp.array([3.0]), jnp.array([1.0]), ts)
    assert tree_allclose(ys[:, 0], 1.0 + 1.5 * ts**2, rtol=1e-9, atol=1e-9)


def test_time_dependent_the_wrong_way_round_names_the_flag():
    # Was "could not evaluate ... Fix: pass a `y0` of the shape the network takes".
    with pytest.raises(TypeError, match=r"as `fm\(theta, y\)`.*pass `time_dependent=True`"):
        sb.NeuralODE(lambda theta, t, y: theta * t)(jnp.ones(1), jnp.ones(1), TS)
    with pytest.raises(TypeError, match=r"as `fm\(theta, t, y\)`.*drop `time_dependent=True`"):
        sb.NeuralODE(lambda theta, y: theta * y, time_dependent=True)(Y0, Y0, TS)
    with pytest.raises(TypeError, match=r"`vf\(t, y, theta, args\)`"):
        sb.NeuralODE.hybrid(lambda t, y, theta: theta * y)(jnp.ones(1), jnp.ones(1), TS)


def test_general_and_fast_paths_give_the_plain_call_trajectory():
    # NeuralODE rebuilds a general FlatModel once outside the solve; FlatMLP keeps theta. Both
    # must be the math of `fm(theta, y)` called inside the vector field.
    plain = sb.NeuralODE(lambda theta, y: FM(theta, y))(FM.theta0, Y0, TS)
    fast = sb.FlatMLP((2, 8, 2), activation="tanh", key=jax.random.key(0), dtype=jnp.float64)
    assert not FM.is_fast and fast.is_fast
    for fm in (FM, fast):
        assert tree_allclose(sb.NeuralODE(fm)(FM.theta0, Y0, TS), plain, rtol=1e-14, atol=1e-14)


def test_vmap_over_initial_conditions():
    node = sb.NeuralODE(FM)
    y0s = jnp.array([[1.0, 0.5], [-0.3, 0.2], [0.0, 1.0]])
    batched = jax.vmap(node, in_axes=(None, 0, None))(FM.theta0, y0s, TS)
    assert batched.shape == (3, 4, 2)
    one_by_one = jnp.stack([node(FM.theta0, y0, TS) for y0 in y0s])
    assert tree_allclose(batched, one_by_one, rtol=1e-10, atol=1e-12)


@pytest.mark.slow
@pytest.mark.parametrize("name", list(ADJOINTS))
def test_adjoint_gradient_matches_central_differences(name, fd_gradient, adjoint_gradients):
    grad = adjoint_gradients[name]
    assert grad.dtype == np.float64 and grad.shape == FM.theta0.shape
    assert np.linalg.norm(grad - fd_gradient) / np.linalg.norm(fd_gradient) < 1e-6
    # Every entry, not only the norm (small entries get an absolute floor).
    assert np.allclose(grad, fd_gradient, rtol=1e-6, atol=1e-6 * np.abs(fd_gradient).max())


@pytest.mark.slow
def test_adjoint_gradients_agree_with_each_other(adjoint_gradients):
    reference = adjoint_gradients["recursive"]
    for name, grad in adjoint_gradients.items():
        # Backsolve integrates a continuous adjoint ODE; the others differentiate the steps.
        rtol = 1e-7 if name == "backsolve" else 1e-10
        assert np.allclose(grad, reference, rtol=rtol, atol=rtol * np.abs(reference).max()), name


def _decay(t, y, theta, args):
    rate, scale = args
    return -rate * scale * theta[0] * y


def test_hybrid_vector_field_and_gradient_through_user_args():
    node = sb.NeuralODE.hybrid(_decay, stepsize_controller=TIGHT)
    theta, ts = jnp.array([2.0]), jnp.linspace(0.0, 1.0, 3)
    args = (jnp.array(0.5), jnp.array(1.5))

    def end(theta, args):
        ys = node(theta, jnp.array([1.0]), ts, args)
        return ys[-1, 0], ys

    # Both `theta` and the user's `args` travel as Diffrax `args`: both are differentiable.
    grad = jax.jit(jax.grad(end, argnums=(0, 1), has_aux=True))
    (d_theta, (d_rate, d_scale)), ys = grad(theta, args)
    assert tree_allclose(ys[:, 0], jnp.exp(-1.5 * ts), rtol=1e-9, atol=1e-10)
    assert np.allclose(d_theta, -0.75 * np.exp(-1.5), rtol=1e-7)
    assert np.allclose(d_rate, -3.0 * np.exp(-1.5), rtol=1e-7)
    assert np.allclose(d_scale, -1.0 * np.exp(-1.5), rtol=1e-7)


def test_hybrid_rejects_time_dependent():
    with pytest.raises(ValueError, match="always receives `t`"):
        sb.NeuralODE.hybrid(_decay, time_dependent=True)


def test_args_without_hybrid_is_a_type_error():
    with pytest.raises(TypeError, match="has nowhere to put them"):
        sb.NeuralODE(FM)(FM.theta0, Y0, TS, (1.0,))


def test_dtype_mismatch_names_the_fix():
    with pytest.raises(TypeError, match=r"y0.astype\(theta.dtype\)"):
        sb.NeuralODE(FM)(FM.theta0, Y0.astype(jnp.float32), TS)


@pytest.mark.parametrize("ts", [jnp.array([0.0]), jnp.zeros((2, 2))])
def test_bad_ts_is_a_value_error(ts):
    with pytest.raises(ValueError, match="at least two"):
        sb.NeuralODE(FM)(FM.theta0, Y0, ts)


def _blow_up(theta, y):
    return theta * y**2  # y0 = 1, theta = 1: y = 1 / (1 - t) blows up at t = 1


def test_solver_failure_raises_with_the_fix():
    node = sb.NeuralODE(_blow_up)
    with pytest.raises(eqx.EquinoxRuntimeError, match="reached `max_steps`.*throw=False"):
        node(jnp.array([1.0]), jnp.array([1.0]), jnp.linspace(0.0, 2.0, 5)).block_until_ready()


def test_solver_failure_without_throw_gives_inf_after_failure():
    ys = sb.NeuralODE(_blow_up, throw=False)(
        jnp.array([1.0]), jnp.array([1.0]), jnp.linspace(0.0, 2.0, 5)
    )
    assert np.isfinite(ys[:2]).all() and np.isinf(ys[3:]).all()


def _minimize_up(node):
    # Gradient ascent on y pushes theta up until y = 1 / (1 - theta t) blows up inside [0, 1].
    loss = lambda theta: -jnp.mean(node(theta, jnp.array([1.0]), jnp.linspace(0.0, 1.0, 5)))
    return sb.minimize(
        loss, jnp.array([0.2]), "sgd", max_steps=200, learning_rate=0.1, chunk_size=10,
        progress=False, throw=False,
    )  # fmt: skip


def test_solver_failure_in_training_keeps_last_good_theta():
    res = _minimize_up(sb.NeuralODE(_blow_up, throw=False))
    assert res.result is sb.RESULTS.nonfinite and not res.success
    assert 0.2 < float(res.theta[0]) < 1.0 and np.isfinite(res.loss)
    assert np.isfinite(res.history).all() and res.history[-1] == res.loss


def _lotka_like(theta, y):
    return jnp.stack([theta[0] * y[1], -theta[1] * y[0]])


_LS_TS = jnp.linspace(0.0, 1.0, 5)
_LS_DATA = jnp.stack([jnp.cos(_LS_TS), -jnp.sin(_LS_TS)], axis=1)  # theta = (1, 1)


def _fit_lm(adjoint, jac):
    node = sb.NeuralODE(_lotka_like, adjoint=adjoint, stepsize_controller=TIGHT)
    residual = lambda theta, data: node(theta, jnp.array([1.0, 0.0]), _LS_TS) - data
    return sb.least_squares(
        residual, jnp.array([0.5, 1.5]), "lm", args=(_LS_DATA,), max_steps=50, jac=jac,
        progress=False,
    )  # fmt: skip


@pytest.mark.slow
@pytest.mark.parametrize(
    "adjoint, jac",
    [(diffrax.ForwardMode(), "auto"), (diffrax.RecursiveCheckpointAdjoint(), "auto")],
    ids=["forward-mode", "default-adjoint"],
)
def test_levenberg_marquardt_through_the_solve_converges(adjoint, jac):
    # PITFALLS (Optimistix): LM linearises in forward mode, which a default-adjoint solve
    # refuses; `jac="auto"` must fall back to reverse mode there and keep forward mode for
    # `ForwardMode`.
    res = _fit_lm(adjoint, jac)
    assert res.success and res.theta.dtype == jnp.float64
    assert np.allclose(res.theta, 1.0, rtol=1e-7) and res.loss < 1e-16


def test_hybrid_docstring_example_runs():
    # tests/test_docs.py runs class docstrings; the `hybrid` classmethod's is checked here.
    namespace: dict = {}
    exec(
        textwrap.dedent(sb.NeuralODE.hybrid.__doc__.split("```python")[1].split("```")[0]),
        namespace,
    )
    assert namespace["ys"].shape == (11, 2) and np.isfinite(namespace["ys"]).all()


@pytest.mark.parametrize("theta", [jnp.ones((2, 21)), jnp.ones(42, dtype=jnp.int64)])
def test_theta_must_be_one_floating_vector(theta):
    with pytest.raises(TypeError, match="one 1-D floating vector"):
        sb.NeuralODE(_rotation)(theta, Y0, TS)


def test_ensemble_of_thetas_by_vmap():
    thetas = jnp.stack([FM.theta0, 0.5 * FM.theta0])
    batched = jax.vmap(sb.NeuralODE(FM), in_axes=(0, None, None))(thetas, Y0, TS)
    assert tree_allclose(batched[1], sb.NeuralODE(FM)(thetas[1], Y0, TS), rtol=1e-10, atol=1e-12)


def test_progress_bar_leaves_the_solution_unchanged(capfd):
    theta, y0 = jnp.array([0.0, 1.0, -1.0, 0.0]), jnp.array([1.0, 0.0])
    ys = sb.NeuralODE(_rotation, progress=True)(theta, y0, TS)
    assert "100.00%" in capfd.readouterr().err
    assert tree_allclose(ys, sb.NeuralODE(_rotation)(theta, y0, TS), rtol=0, atol=0)


def _robertson(t, y, theta, args):
    # Robertson's stiff chemistry with log rate constants as `theta` (rates 0.04, 3e7, 1e4).
    k1, k2, k3 = jnp.exp(theta)
    y1, y2, y3 = y
    return jnp.stack([-k1 * y1 + k3 * y2 * y3, k1 * y1 - k2 * y2**2 - k3 * y2 * y3, k2 * y2**2])


_ROB_THETA = jnp.log(jnp.array([0.04, 3e7, 1e4]))
_ROB_Y0, _ROB_TS = jnp.array([1.0, 0.0, 0.0]), jnp.array([0.0, 0.1, 1.0])


def _robertson_loss(throw):
    # The forward solve is implicit and fine; the backward solve of `BacksolveAdjoint` with an
    # explicit solver runs out of steps on the stiff adjoint. Plain Diffrax returns a finite,
    # wrong gradient here (~9e5, where the true one is ~1e-3).
    node = sb.NeuralODE.hybrid(
        _robertson, solver=diffrax.ImplicitEuler(),
        adjoint=diffrax.BacksolveAdjoint(solver=diffrax.Tsit5()),
        stepsize_controller=diffrax.PIDController(rtol=1e-4, atol=1e-8), max_steps=256,
        throw=throw,
    )  # fmt: skip
    return lambda theta: jnp.sum(node(theta, _ROB_Y0, _ROB_TS)[:, 0])


def test_failed_backsolve_is_an_error_under_throw():
    loss = _robertson_loss(throw=True)
    assert np.isfinite(loss(_ROB_THETA))  # the forward solve succeeds
    with pytest.raises(eqx.EquinoxRuntimeError, match=r"backward \(adjoint\) solve.*failed"):
        eqx.filter_jit(jax.grad(loss))(_ROB_THETA)


def test_failed_backsolve_is_nan_and_minimize_keeps_the_last_good_theta():
    loss = _robertson_loss(throw=False)
    value, grad = jax.jit(jax.value_and_grad(loss))(_ROB_THETA)
    assert np.isfinite(value) and np.isnan(grad).all()
    res = sb.minimize(loss, _ROB_THETA, "adam", max_steps=3, learning_rate=1e-2, progress=False,
                      throw=False)  # fmt: skip
    assert not res.success and res.result is sb.RESULTS.nonfinite
    assert np.array_equal(res.theta, _ROB_THETA) and np.isfinite(res.loss)


@pytest.mark.parametrize(("max_steps", "error"),
                         [(0, ValueError), (-1, ValueError), (2.5, TypeError), (True, TypeError)])
def test_max_steps_must_be_a_positive_int(max_steps, error):
    with pytest.raises(error, match=r"positive int.*max_steps=4096"):
        sb.NeuralODE(_rotation, max_steps=max_steps)


def test_vector_field_of_the_wrong_shape_names_both_shapes():
    with pytest.raises(ValueError, match=r"returned float64\[\] for a state float64\[2\]"):
        sb.NeuralODE(lambda theta, y: jnp.sum(theta) * y[0])(jnp.ones(4), Y0, TS)


@pytest.mark.parametrize("where", ["theta", "y0", "ts"])
def test_non_finite_input_is_named_not_blamed_on_max_steps(where):
    inputs = dict(theta=jnp.array([0.0, 1.0, -1.0, 0.0]), y0=Y0, ts=TS)
    inputs[where] = inputs[where].at[-1].set(jnp.nan)
    with pytest.raises(eqx.EquinoxRuntimeError, match="non-finite values") as info:
        sb.NeuralODE(_rotation)(**inputs).block_until_ready()
    assert "probably stiff" not in str(info.value)
    ys = sb.NeuralODE(_rotation, throw=False)(**inputs)
    assert np.isnan(ys).all()  # not `inf` rows that look like a blow-up


def test_non_finite_vector_field_at_y0_is_named():
    node = sb.NeuralODE(lambda theta, y: jnp.log(y - theta))  # log of a negative number
    with pytest.raises(eqx.EquinoxRuntimeError, match="vector field returned non-finite"):
        node(jnp.array([2.0, 2.0]), Y0, TS).block_until_ready()


def _relax(theta, y):
    return theta - y  # steady state y = theta, so d y* / d theta = identity


def test_implicit_adjoint_at_a_steady_state():
    node = sb.NeuralODE(
        _relax, adjoint=diffrax.ImplicitAdjoint(), saveat=diffrax.SaveAt(t1=True),
        event=diffrax.Event(diffrax.steady_state_event()),
    )  # fmt: skip
    theta, ts = jnp.array([0.5, -1.0]), jnp.array([0.0, jnp.inf])
    ys = node(theta, Y0, ts)
    assert ys.shape == (1, 2) and np.allclose(ys[0], theta, atol=1e-5)
    # Diffrax 0.7.2's implicit JVP multiplies `t` by an int64 `direction` (`WrapTerm.vf`),
    # which only the strict promotion of conftest.py refuses; users run "standard".
    with jax.numpy_dtype_promotion("standard"):
        jac = jax.jit(jax.jacrev(lambda theta: node(theta, Y0, ts)[0]))(theta)
    assert np.allclose(jac, np.eye(2), atol=1e-10)  # the implicit function theorem, exactly


def test_implicit_adjoint_away_from_a_steady_state_is_an_error():
    node = sb.NeuralODE(_relax, adjoint=diffrax.ImplicitAdjoint(), saveat=diffrax.SaveAt(t1=True))
    with pytest.raises(eqx.EquinoxRuntimeError, match="not a steady state"):
        node(jnp.array([0.5, -1.0]), Y0, jnp.array([0.0, 0.1])).block_until_ready()
    quiet = sb.NeuralODE(_relax, adjoint=diffrax.ImplicitAdjoint(), throw=False,
                         saveat=diffrax.SaveAt(t1=True))  # fmt: skip
    assert np.isnan(quiet(jnp.array([0.5, -1.0]), Y0, jnp.array([0.0, 0.1]))).all()


def test_dense_output_through_solve():
    node = sb.NeuralODE(_rotation, saveat=diffrax.SaveAt(dense=True), stepsize_controller=TIGHT)
    theta, ts = jnp.array([0.0, 1.0, -1.0, 0.0]), jnp.array([0.0, 2.0])
    sol = node.solve(theta, jnp.array([1.0, 0.0]), ts)
    t = jnp.array(0.7)
    assert np.allclose(sol.evaluate(t), [np.cos(0.7), -np.sin(0.7)], rtol=1e-7, atol=1e-8)
    with pytest.raises(TypeError, match=r"node.solve\(theta, y0, ts\)"):
        node(theta, jnp.array([1.0, 0.0]), ts)


def test_save_at_t1_only():
    node = sb.NeuralODE(_rotation, saveat=diffrax.SaveAt(t1=True), stepsize_controller=TIGHT)
    ys = node(jnp.array([0.0, 1.0, -1.0, 0.0]), jnp.array([1.0, 0.0]), jnp.array([0.0, 1.0]))
    assert ys.shape == (1, 2)
    assert np.allclose(ys[0], [np.cos(1.0), -np.sin(1.0)], rtol=1e-8, atol=1e-9)


_SPAN = jnp.array([0.0, 2.0])  # `_blow_up` from y0 = 1 fails near t = 1 (max_steps=64)


@pytest.mark.parametrize(
    "saveat",
    [diffrax.SaveAt(t1=True), diffrax.SaveAt(t0=True, t1=True), diffrax.SaveAt(steps=True),
     diffrax.SaveAt(ts=jnp.array([0.0, 0.5])), diffrax.SaveAt(ts=jnp.array([0.0, 0.5]), t1=True)],
    ids=["t1", "t0-t1", "steps", "ts-before-failure", "ts-t1"],
)  # fmt: skip
def test_failed_solve_is_non_finite_for_every_saveat(saveat):
    theta, y0 = jnp.array([1.0]), jnp.array([1.0])
    # Plain Diffrax fails here but leaves every saved value finite (the state at the failure).
    raw = diffrax.diffeqsolve(
        diffrax.ODETerm(lambda t, y, args: _blow_up(args, y)), diffrax.Tsit5(), 0.0, 2.0, None,
        y0, args=theta, saveat=saveat, stepsize_controller=diffrax.PIDController(rtol=1e-6,
        atol=1e-6), max_steps=64, throw=False)  # fmt: skip
    assert not diffrax.is_okay(raw.result) and np.isfinite(raw.ys[np.isfinite(raw.ts)]).all()
    node = sb.NeuralODE(_blow_up, saveat=saveat, max_steps=64, throw=False)
    sol = node.solve(theta, y0, _SPAN)
    ys = sol.ys[np.isfinite(sol.ts)]  # as a user of `steps=True` masks the unused rows
    assert np.isinf(ys[-1]).all()
    # What was reached before the failure stays as Diffrax computed it.
    assert tree_allclose(ys[:-1], raw.ys[np.isfinite(raw.ts)][:-1], rtol=1e-12, atol=0)
    loss = lambda theta: jnp.sum(node(theta, y0, _SPAN)[-1])
    value, grad = jax.value_and_grad(loss)(theta)
    assert not np.isfinite(value) and np.isnan(grad).all()


def test_steady_state_that_is_never_reached_is_non_finite():
    oscillator = lambda theta, y: theta[0] * jnp.stack([y[1], -y[0]])  # no steady state
    node = sb.NeuralODE(oscillator, saveat=diffrax.SaveAt(t1=True), max_steps=64, throw=False,
                        event=diffrax.Event(diffrax.steady_state_event()))  # fmt: skip
    assert np.isinf(node(jnp.array([1.0]), Y0, jnp.array([0.0, jnp.inf]))).all()


def test_failed_t1_solve_in_training_keeps_last_good_theta():
    node = sb.NeuralODE(_blow_up, saveat=diffrax.SaveAt(t1=True), max_steps=64, throw=False)
    loss = lambda theta: jnp.sum(node(theta, jnp.array([1.0]), _SPAN))
    res = sb.minimize(loss, jnp.array([1.0]), "adam", max_steps=3, learning_rate=1e-3,
                      progress=False, throw=False)  # fmt: skip
    assert not res.success and res.result is sb.RESULTS.nonfinite


def test_dense_output_without_throw_reports_failures_in_evaluate():
    dense = diffrax.SaveAt(dense=True)
    theta, y0, ts = jnp.array([0.0, 1.0, -1.0, 0.0]), jnp.array([1.0, 0.0]), jnp.array([0.0, 2.0])
    node = sb.NeuralODE(_rotation, saveat=dense, stepsize_controller=TIGHT, throw=False)
    sol = node.solve(theta, y0, ts)
    assert np.allclose(sol.evaluate(0.7), [np.cos(0.7), -np.sin(0.7)], rtol=1e-7, atol=1e-8)
    assert np.isnan(node.solve(theta.at[0].set(jnp.nan), y0, ts).evaluate(0.7)).all()
    blow = sb.NeuralODE(_blow_up, saveat=dense, max_steps=64, throw=False)
    failed = blow.solve(jnp.array([1.0]), jnp.array([1.0]), _SPAN)
    assert np.isclose(failed.evaluate(0.5)[0], 2.0, rtol=1e-5)  # before the failure: exact
    assert not np.isfinite(failed.evaluate(1.5)).any()


@pytest.mark.parametrize("ts", [[-jnp.inf, 1.0], [0.0, jnp.inf], [0.0, jnp.inf, 1.0]])
def test_infinite_times_are_named_not_blamed_on_stiffness(ts):
    node = sb.NeuralODE(_rotation)
    theta, ts = jnp.array([0.0, 1.0, -1.0, 0.0]), jnp.array(ts)
    with pytest.raises(eqx.EquinoxRuntimeError, match="non-finite values in `ts`") as info:
        node(theta, Y0, ts).block_until_ready()
    assert "probably stiff" not in str(info.value)
    assert np.isnan(sb.NeuralODE(_rotation, throw=False)(theta, Y0, ts)).all()


def test_reversible_heun_with_backsolve_is_refused_inside_the_span():
    # Diffrax restarts each backward segment with ReversibleHeun's stale auxiliary state: the
    # gradient is wrong (0.4% on this ODE). Over the span alone it is exact.
    kwargs = dict(solver=diffrax.ReversibleHeun(), adjoint=diffrax.BacksolveAdjoint(), dt0=0.01,
                  stepsize_controller=diffrax.ConstantStepSize())  # fmt: skip
    theta = jnp.array([0.0, 1.0, -1.0, 0.0])
    with pytest.raises(ValueError, match="RecursiveCheckpointAdjoint"):
        sb.NeuralODE(_rotation, **kwargs)(theta, Y0, TS)
    node = sb.NeuralODE(_rotation, saveat=diffrax.SaveAt(t1=True), **kwargs)
    loss = jax.jit(lambda theta: jnp.sum(node(theta, Y0, TS) ** 2))
    fd = central_difference(loss, theta, eps=1e-6)
    assert np.allclose(jax.grad(loss)(theta), fd, rtol=1e-7, atol=1e-8)


def test_steady_state_end_with_the_default_saveat_is_named():
    # The default saves at `t = inf`, never reached: the call returned `[y0, inf]` silently.
    node = sb.NeuralODE(_relax, event=diffrax.Event(diffrax.steady_state_event()))
    with pytest.raises(eqx.EquinoxRuntimeError, match=r"non-finite values in `ts`.*SaveAt\(t1"):
        node(jnp.array([0.5, -1.0]), Y0, jnp.array([0.0, jnp.inf])).block_until_ready()
