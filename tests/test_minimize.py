"""The contract table (STYLE.md 17): every method of `sb.minimize` and `sb.least_squares`
converges on a small zoo, keeps float64, never retraces, and keeps the last good theta on NaN.
Plus the fused loop against a step-by-step Optax loop, chunks, callbacks, Ctrl-C, checkpoints.
"""

import functools

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax
import optimistix as optx
import pytest
from helpers import TraceCounter

import sciml_bridge as sb
from sciml_bridge._solvers import _fused


# --- the zoo: residual form, so both verbs share it (loss = 0.5 * sum(r**2)) --------------

_A = jnp.array([[3.0, 1.0, 0.0], [1.0, 2.0, 0.5], [0.0, 0.5, 1.0], [1.0, 0.0, 1.0]])
_B = jnp.array([1.0, -2.0, 0.5, 3.0])


def quadratic(theta):
    return _A @ theta - _B


def rosenbrock(theta):
    return jnp.concatenate([10.0 * (theta[1:] - theta[:-1] ** 2), 1.0 - theta[:-1]])


_NET = eqx.nn.MLP(1, 1, 6, 1, activation=jnp.tanh, key=jax.random.key(0))
_MLP = sb.flat(_NET, dtype=jnp.float64)
_X = jnp.linspace(-1.0, 1.0, 24)[:, None]
_Y = jnp.sin(2.0 * _X[:, 0])


def mlp_fit(theta):
    return jax.vmap(_MLP, (None, 0))(theta, _X)[:, 0] - _Y


ZOO = {
    "quadratic": (quadratic, jnp.zeros(3)),
    "rosenbrock": (rosenbrock, jnp.array([-1.2, 1.0, 0.5])),
    "mlp": (mlp_fit, _MLP.theta0),
}


@functools.cache
def as_loss(residual):
    def loss(theta):
        r = residual(theta)
        return 0.5 * jnp.sum(r * r)

    return loss


# (verb, method, options, kind): kind "first" is judged by relative decrease, "second" by
# reaching ~machine precision on the zero-residual problems.
METHODS = (
    ("minimize", "adam", dict(learning_rate=3e-2), "first"),
    ("minimize", optax.sgd(2e-3, momentum=0.9), {}, "first"),
    ("minimize", "lbfgs", {}, "second"),
    ("minimize", "bfgs", {}, "second"),
    # rtol = atol = 1e-8 (the default) can stop nonlinear CG at ~6e-10 on Rosenbrock; at 1e-9 it
    # zigzags near the minimum and needs more than the 1000 steps of the others.
    ("minimize", "nonlinear-cg", dict(tol=1e-9), "second"),
    ("minimize", "ssbfgs", {}, "second"),
    ("minimize", "ssbroyden", {}, "second"),
    ("minimize", "scipy:BFGS", dict(tol=1e-12), "second"),
    ("minimize", "scipy:L-BFGS-B", dict(tol=1e-14), "second"),
    ("minimize", "scipy:trust-ncg", dict(tol=1e-12), "second"),
    ("least_squares", "gauss-newton", {}, "second"),
    ("least_squares", "natural-gradient", {}, "second"),
    ("least_squares", "lm", {}, "second"),
    ("least_squares", "dogleg", {}, "second"),
    ("least_squares", "scipy:trf", {}, "second"),
    ("least_squares", "scipy:lm", {}, "second"),
)
IDS = [m if isinstance(m, str) else "optax-object" for _, m, _, _ in METHODS]


def solve(entry, residual, theta0, **kwargs):
    verb, method, options, _ = entry
    kwargs = {"progress": False, **options, **kwargs}
    if verb == "minimize":
        return sb.minimize(as_loss(residual), theta0, method, **kwargs)
    return sb.least_squares(residual, theta0, method, **kwargs)


@functools.cache
def converged_run(index, problem):
    residual, theta0 = ZOO[problem]
    steps = 3000 if METHODS[index][3] == "first" or METHODS[index][1] == "nonlinear-cg" else 1000
    if problem == "mlp":  # judged by a 10x decrease only: a short budget is enough
        steps = 150
    return solve(METHODS[index], residual, theta0, max_steps=steps, throw=False)


@pytest.mark.parametrize("index", range(len(METHODS)), ids=IDS)
@pytest.mark.parametrize("problem", ["quadratic", "rosenbrock", "mlp"])
def test_converges(index, problem):
    residual, theta0 = ZOO[problem]
    res = converged_run(index, problem)
    loss0 = float(as_loss(residual)(theta0))
    assert res.loss == pytest.approx(float(as_loss(residual)(res.theta)), rel=1e-9, abs=1e-14)
    assert res.history[0] == pytest.approx(loss0, rel=1e-12)
    if problem == "mlp":
        assert res.loss < 0.1 * loss0
    elif METHODS[index][3] == "second":
        floor = 0.5 * float(jnp.sum(quadratic(jnp.linalg.lstsq(_A, _B)[0]) ** 2))
        target = floor if problem == "quadratic" else 0.0
        assert res.success, res.message
        assert res.loss - target < 1e-10
    else:
        assert res.loss < 1e-2 * loss0


@pytest.mark.parametrize("index", range(len(METHODS)), ids=IDS)
def test_keeps_float64(index):
    res = converged_run(index, "quadratic")
    assert res.theta.dtype == jnp.float64 and res.theta.shape == (3,)
    assert isinstance(res.loss, float) and res.history.dtype == np.float64


@pytest.mark.parametrize("index", range(len(METHODS)), ids=IDS)
def test_never_retraces(index):
    # 12 steps in chunks of 3: a retrace per chunk (or per step) would trace the loss again
    # and add entries to the compiled-function caches of the driver.
    caches = (_fused.run_chunk._cached, _fused.init_members._cached,
              _fused.final_members._cached)  # fmt: skip
    before = [c._cache_size() for c in caches]
    counter = TraceCounter(quadratic)
    res = solve(METHODS[index], counter, jnp.zeros(3), max_steps=12, chunk_size=3, throw=False)
    if METHODS[index][0] == "minimize" and METHODS[index][3] == "first":
        assert res.steps == 12 and len(res.history) == 13
    assert all(c._cache_size() - b <= 1 for c, b in zip(caches, before))
    traced = counter.count
    assert traced <= 8
    if not str(METHODS[index][1]).startswith("scipy:"):
        # Same loss, same method: the second call reuses every compiled function.
        solve(METHODS[index], counter, jnp.ones(3), max_steps=12, chunk_size=3, throw=False)
        assert counter.count == traced


def nan_beyond_one(theta):
    # Minimum at theta = 3, but NaN as soon as theta[0] passes 1: every method must stop there.
    r = theta - 3.0
    return jnp.where(theta[0] > 1.0, jnp.nan, 1.0) * r


# Optimistix (and Optax's zoom line search) treat a non-finite trial point as a rejected
# step and back off, as `optx.minimise` does: the run ends on its budget or its own
# criterion, never on the NaN.
_BACKS_OFF = ("lbfgs", "bfgs", "nonlinear-cg", "lm", "dogleg")
# So do the grid line search of truncated Gauss-Newton (a non-finite trial never wins) and the
# strong-Wolfe search of the self-scaled methods (a non-finite trial shrinks the bracket).
_BACKS_OFF += ("gauss-newton", "natural-gradient", "ssbfgs", "ssbroyden")


@pytest.mark.parametrize("index", range(len(METHODS)), ids=IDS)
def test_keeps_last_good_theta_on_nan(index):
    kw = dict(max_steps=200)
    if METHODS[index][1] == "adam":
        kw["learning_rate"] = 0.2
    res = solve(METHODS[index], nan_beyond_one, jnp.zeros(2), throw=False, **kw)
    assert bool(jnp.all(jnp.isfinite(res.theta))) and float(res.theta[0]) <= 1.0
    assert np.isfinite(res.loss)
    assert res.loss == pytest.approx(float(as_loss(nan_beyond_one)(res.theta)), rel=1e-12)
    assert np.all(np.isfinite(res.history))
    if METHODS[index][1] in _BACKS_OFF:
        assert res.result is not sb.RESULTS.nonfinite and float(res.theta[0]) > 0.5
        again = solve(METHODS[index], nan_beyond_one, jnp.zeros(2), throw=True, **kw)
        np.testing.assert_array_equal(np.asarray(again.theta), np.asarray(res.theta))
        return
    assert not res.success
    assert res.result in (sb.RESULTS.nonfinite, sb.RESULTS.max_steps_reached)
    with pytest.raises(sb.OptimizationError) as info:
        solve(METHODS[index], nan_beyond_one, jnp.zeros(2), throw=True, **kw)
    assert np.array_equal(np.asarray(info.value.theta), np.asarray(res.theta))
    assert info.value.result.result is res.result


# --- the fused loop itself ---------------------------------------------------------------


def mlp_loss(theta, x, y):
    return jnp.mean((jax.vmap(_MLP, (None, 0))(theta, x)[:, 0] - y) ** 2)


def test_fused_curve_equals_step_by_step_loop():
    opt = optax.adam(1e-2)
    res = sb.minimize(mlp_loss, _MLP.theta0, opt, args=(_X, _Y), max_steps=25, chunk_size=7,
                      progress=False)  # fmt: skip
    theta, state, losses = _MLP.theta0, opt.init(_MLP.theta0), []
    step = jax.jit(jax.value_and_grad(mlp_loss))
    for _ in range(25):
        loss, grad = step(theta, _X, _Y)
        with jax.numpy_dtype_promotion("standard"):
            updates, state = opt.update(grad, state, theta)
        theta = optax.apply_updates(theta, updates)
        losses.append(float(loss))
    losses.append(float(mlp_loss(theta, _X, _Y)))
    np.testing.assert_allclose(res.history, losses, rtol=1e-12, atol=0)
    np.testing.assert_allclose(np.asarray(res.theta), np.asarray(theta), rtol=1e-12, atol=1e-14)
    assert res.steps == 25 and res.loss == res.history[-1]


@pytest.mark.parametrize("method", ["adam", "lbfgs", "bfgs", "nonlinear-cg", "ssbfgs",
                                    "ssbroyden", "gauss-newton", "lm", "dogleg"])  # fmt: skip
def test_float32_stays_float32_with_x64_on_for_every_fused_method(method):
    # Optimistix's step sizes start as default-dtype (here float64) scalars: "bfgs",
    # "nonlinear-cg", "lm" and "dogleg" raised a raw TypeError/ValueError on a float32 theta0.
    theta0 = jnp.zeros(3, dtype=jnp.float32)
    expected = np.linalg.lstsq(np.asarray(_A), np.asarray(_B), rcond=None)[0]
    kw = dict(progress=False, max_steps=300)
    if method in ("gauss-newton", "lm", "dogleg"):
        res = sb.least_squares(quadratic_f32, theta0, method, **kw)
    else:
        kw.update(learning_rate=0.05, tol=1e-4) if method == "adam" else None
        res = sb.minimize(lambda th: 0.5 * jnp.sum(quadratic_f32(th) ** 2), theta0, method, **kw)
    assert res.theta.dtype == jnp.float32 and res.success, res.message
    np.testing.assert_allclose(np.asarray(res.theta, np.float64), expected, rtol=2e-3, atol=2e-3)
    # The loop's loss and an eager evaluation are two compiled programs: a few float32 ulps.
    want = float(0.5 * jnp.sum(quadratic_f32(res.theta) ** 2))
    np.testing.assert_allclose(res.loss, want, rtol=4 * float(jnp.finfo(jnp.float32).eps))


def quadratic_f32(theta):
    return _A.astype(jnp.float32) @ theta - _B.astype(jnp.float32)


def test_does_not_consume_theta0():
    theta0 = jnp.ones(3)
    sb.minimize(as_loss(quadratic), theta0, "adam", max_steps=4, progress=False)
    assert float(theta0.sum()) == 3.0  # still alive: only copies are donated


def test_bad_theta0_and_method():
    with pytest.raises(TypeError, match="1-D real floating"):
        sb.minimize(as_loss(quadratic), jnp.zeros((2, 3, 1)), progress=False)
    with pytest.raises(TypeError, match="1-D real floating"):
        sb.minimize(as_loss(quadratic), jnp.zeros(3, dtype=jnp.int32), progress=False)
    with pytest.raises(ValueError, match="neither a method"):
        sb.minimize(as_loss(quadratic), jnp.zeros(3), "no-such-method", progress=False)
    with pytest.raises(ValueError, match="max_steps"):
        sb.minimize(as_loss(quadratic), jnp.zeros(3), max_steps=0, progress=False)


def test_callback_sees_chunks_and_can_stop():
    seen = []

    def callback(step, theta, loss):
        seen.append((step, loss))
        return step >= 5

    res = sb.minimize(as_loss(quadratic), jnp.zeros(3), "adam", max_steps=30, chunk_size=3,
                      callback=callback, progress=False)  # fmt: skip
    # After each chunk: the last point whose loss is known, reached in 2, then 5 steps.
    assert [s for s, _ in seen] == [2, 5]
    assert [lo for _, lo in seen] == [res.history[2], res.history[5]]
    assert res.success and res.steps == 6 and "callback" in res.message


def test_ctrl_c_between_chunks_returns_partial_result():
    def callback(step, theta, loss):
        if step >= 5:
            raise KeyboardInterrupt

    res = sb.minimize(as_loss(quadratic), jnp.zeros(3), "adam", max_steps=30, chunk_size=3,
                      callback=callback, progress=False)  # fmt: skip
    assert res.result is sb.RESULTS.interrupted and not res.success
    assert res.steps == 6 and len(res.history) == 7
    assert res.loss == pytest.approx(float(as_loss(quadratic)(res.theta)), rel=1e-12)


def test_nonfinite_message_names_step_and_remedy():
    match = r"at step \d+; the returned .*lower learning rate"
    with pytest.raises(sb.NonFiniteLossError, match=match):
        sb.minimize(as_loss(nan_beyond_one), jnp.zeros(2), "adam", learning_rate=0.2,
                    progress=False)  # fmt: skip


def test_checkpoint_resume_matches_uninterrupted(tmp_path):
    kw = dict(args=(_X, _Y), learning_rate=1e-2, progress=False, checkpoint_every=5)
    full = sb.minimize(mlp_loss, _MLP.theta0, "adam", max_steps=20,
                       checkpoint=tmp_path / "full.npz", **kw)  # fmt: skip
    path = tmp_path / "partial.npz"
    first = sb.minimize(mlp_loss, _MLP.theta0, "adam", max_steps=10, checkpoint=path, **kw)
    assert first.steps == 10 and path.exists()
    resumed = sb.minimize(mlp_loss, _MLP.theta0, "adam", max_steps=20, checkpoint=path, **kw)
    np.testing.assert_array_equal(np.asarray(resumed.theta), np.asarray(full.theta))
    np.testing.assert_array_equal(resumed.history, full.history)
    with pytest.raises(ValueError, match="different optimiser(.|\n)*method: adam"):
        sb.minimize(mlp_loss, _MLP.theta0, "sgd", max_steps=20, checkpoint=path, **kw)
    with pytest.raises(NotImplementedError, match="cannot checkpoint"):
        sb.minimize(mlp_loss, _MLP.theta0, "scipy:BFGS", max_steps=20, checkpoint=path, **kw)


def test_chaining_adam_then_lbfgs():
    loss = as_loss(rosenbrock)
    first = sb.minimize(loss, jnp.array([-1.2, 1.0, 0.5]), "adam", learning_rate=1e-2,
                        max_steps=200, progress=False)  # fmt: skip
    second = sb.minimize(loss, first.theta, "lbfgs", max_steps=200, progress=False)
    assert second.loss < 1e-12 < first.loss


def _erroring_loss(theta):
    # Stands in for a Diffrax solve under `throw=True` failing at run time (max_steps reached).
    loss = jnp.sum((theta - 3.0) ** 2)
    return eqx.error_if(loss, theta[0] > 1.5, "solver gave up: max_steps reached")


def test_runtime_error_inside_a_chunk_keeps_the_last_good_theta():
    kw = dict(max_steps=400, progress=False, chunk_size=10, learning_rate=0.05)
    res = sb.minimize(_erroring_loss, jnp.zeros(2), "adam", throw=False, **kw)
    assert res.result == sb.RESULTS.solver_failed and "max_steps reached" in res.message
    assert float(res.theta[0]) <= 1.5 and np.isfinite(res.loss)
    # The chunk that raised is run again up to the raising step: every step before it is
    # kept (it used to fall back to the last finished chunk, a multiple of 10 steps).
    assert res.steps > 0 and (res.steps + 1) % 10 != 0
    upto = sb.minimize(_erroring_loss, jnp.zeros(2), "adam", throw=False,
                       **(kw | dict(max_steps=res.steps)))  # fmt: skip
    assert upto.success and upto.loss == res.loss
    np.testing.assert_allclose(np.asarray(upto.theta), np.asarray(res.theta), rtol=1e-12)
    with pytest.raises(sb.OptimizationError, match="max_steps reached") as info:
        sb.minimize(_erroring_loss, jnp.zeros(2), "adam", throw=True, **kw)
    np.testing.assert_array_equal(info.value.theta, res.theta)


# --- bad input: each is a clear error saying what was expected, what was got, the fix -----
# (issue 12 #8; one test per finding)

_SQ = lambda t: jnp.sum((t - 1.0) ** 2)  # noqa: E731


def test_misspelt_keyword_names_the_nearest_valid_one():
    with pytest.raises(TypeError, match="`max_step=`.*Did you mean `max_steps=`"):
        sb.minimize(_SQ, jnp.zeros(2), "adam", max_step=10, progress=False)


def test_options_a_method_does_not_use_are_errors():
    with pytest.raises(TypeError, match="`learning_rate=`.*method='bfgs'"):
        sb.minimize(_SQ, jnp.zeros(2), "bfgs", learning_rate=0.1, progress=False)
    with pytest.raises(TypeError, match="`damping=`.*method='lm'"):
        sb.least_squares(lambda t: t - 1.0, jnp.zeros(2), "lm", damping=1.0, progress=False)
    with pytest.raises(TypeError, match="does not take"):
        sb.minimize(_SQ, jnp.zeros(2), "scipy:BFGS", maxfun=3, progress=False)


@pytest.mark.parametrize("method", ["scipy:", "scipy:lbfgs"])
def test_unknown_scipy_method_lists_the_valid_ones(method):
    with pytest.raises(ValueError, match="L-BFGS-B, TNC"):
        sb.minimize(_SQ, jnp.zeros(2), method, progress=False)


def test_tol_as_a_string_is_a_type_error():
    with pytest.raises(TypeError, match="`tol` to be None or a positive real number"):
        sb.minimize(_SQ, jnp.zeros(2), "lbfgs", tol="1e-6", progress=False)


@pytest.mark.parametrize(
    "bad,said",
    [(lambda t: (_SQ(t), t), "tuple of 2"), (lambda t: t ** 2, r"shape \(2,\)"),
     (lambda t: _SQ(t).astype(jnp.complex128), "complex")],
)  # fmt: skip
def test_loss_of_the_wrong_kind_says_what_it_returned(bad, said):
    with pytest.raises(TypeError, match=f"(?s)real scalar.*returned.*{said}"):
        sb.minimize(bad, jnp.zeros(2), "adam", max_steps=2, progress=False)


@pytest.mark.parametrize(
    "bad,said",
    [(lambda t: (t - 1.0).astype(jnp.complex128), "complex128"),
     (lambda t: jnp.round(t).astype(jnp.int64), "int64"),
     (lambda t: {"a": t - 1.0}, "dict of 1")],
)  # fmt: skip
def test_residual_of_the_wrong_kind_says_what_it_returned(bad, said):
    with pytest.raises(TypeError, match=f"(?s)real floating array.*returned.*{said}"):
        sb.least_squares(bad, jnp.zeros(2), max_steps=2, progress=False)


def test_args_must_be_a_tuple():
    with pytest.raises(TypeError, match=r"args=\(x,\)"):
        sb.minimize(lambda t, x: jnp.sum((t - x) ** 2), jnp.zeros(2), args=jnp.ones(2),
                    progress=False)  # fmt: skip


def test_nan_theta0_is_a_clear_error():
    match = r"non-finite entries \(1 NaN/inf, the first at index\s+1\)"
    with pytest.raises(ValueError, match=match):
        sb.minimize(_SQ, jnp.array([0.0, jnp.nan]), progress=False)


def test_mesh_must_be_a_mesh():
    with pytest.raises(TypeError, match="jax.make_mesh"):
        sb.minimize(_SQ, jnp.zeros(2), mesh=jax.devices(), progress=False)


def test_ensemble_of_zero_members_is_a_value_error():
    with pytest.raises(ValueError, match="zero members"):
        sb.minimize(_SQ, jnp.zeros((0, 2)), progress=False)


def test_checkpoint_with_other_hyperparameters_is_refused_unless_forced(tmp_path):
    path = tmp_path / "c.npz"
    kw = dict(max_steps=4, checkpoint=path, checkpoint_every=2, progress=False)
    sb.minimize(_SQ, jnp.zeros(2), "adam", learning_rate=0.1, **kw)
    with pytest.raises(ValueError, match=r"option learning_rate: 0.1 in the checkpoint, 0.2"):
        sb.minimize(_SQ, jnp.zeros(2), "adam", learning_rate=0.2, **kw)
    kw["max_steps"] = 6
    res = sb.minimize(_SQ, jnp.zeros(2), "adam", learning_rate=0.2, resume="force", **kw)
    assert res.steps == 6
    sb.minimize(_SQ, jnp.zeros(2), optax.adam(0.1), **{**kw, "checkpoint": tmp_path / "o.npz"})
    with pytest.raises(ValueError, match="optimizer: "):
        sb.minimize(_SQ, jnp.zeros(2), optax.adam(0.3), **{**kw, "checkpoint": tmp_path / "o.npz"})


def test_a_theta_file_is_not_a_checkpoint(tmp_path):
    fm = sb.flat({"w": jnp.zeros(2)})
    sb.save(tmp_path / "theta.npz", fm.theta0, fm)
    with pytest.raises(ValueError, match="saved by `sb.save`"):
        sb.minimize(_SQ, jnp.zeros(2), checkpoint=tmp_path / "theta.npz", progress=False)


def test_ensemble_best_is_the_lowest_finite_loss():
    loss = lambda t: jnp.sum((t - 1.0) ** 2) + jnp.where(t[0] > 5, jnp.nan, 0.0)  # noqa: E731
    thetas = jnp.array([[0.0, 0.0], [9.0, 0.0], [1.0, 1.5]])
    res = sb.minimize(loss, thetas, "adam", max_steps=1, progress=False, throw=False)
    assert res[1].result is sb.RESULTS.nonfinite
    assert res.best is res[2] and res.best.loss == min(res[0].loss, res[2].loss)


# --- Optimistix in chunks: evaluations and memory as `optx.minimise` ----------------------


def test_optimistix_evaluates_the_loss_no_more_often_than_optx_minimise():
    calls = []

    def loss(theta, args):
        jax.debug.callback(lambda: calls.append(1))
        return as_loss(rosenbrock)(theta)

    theta0 = jnp.array([-1.2, 1.0, 0.5])
    sol = optx.minimise(loss, optx.BFGS(rtol=1e-8, atol=1e-8), theta0, max_steps=200)
    jax.block_until_ready(sol.value)
    reference, calls[:] = len(calls), []
    res = sb.minimize(lambda t: loss(t, None), theta0, "bfgs", max_steps=200, chunk_size=7,
                      progress=False)  # fmt: skip
    np.testing.assert_allclose(np.asarray(res.theta), np.asarray(sol.value), rtol=1e-10)
    # One evaluation per step, plus the final loss at `res.theta`.
    assert len(calls) <= reference + 1, (len(calls), reference)


def test_a_huge_budget_allocates_nothing_per_step():
    # The loss history lives per chunk: `max_steps=10**9` costs what `max_steps=100` does.
    res = sb.minimize(as_loss(quadratic), jnp.zeros(3), "bfgs", max_steps=10**9, progress=False)
    assert res.success and res.steps < 100


# --- minibatches and per-step keys inside the compiled loop (issue 15 item 3) -------------


def test_minibatches_visit_every_row_once_per_epoch_without_retracing():
    rows, batch, seen = 12, 4, []

    def loss(theta, x):
        jax.debug.callback(lambda b: seen.append(np.asarray(b)), x)
        return jnp.mean((theta[0] - x) ** 2)

    counter = TraceCounter(loss)
    x = jnp.arange(rows, dtype=jnp.float64)
    kw = dict(args=(x,), batch_size=batch, key=jax.random.key(1), learning_rate=0.1,
              chunk_size=4, progress=False)  # fmt: skip
    res = sb.minimize(counter, jnp.zeros(1), "adam", max_steps=9, **kw)  # 3 epochs, 3 chunks
    batches = [b for b in seen if b.shape == (batch,)]
    assert len(batches) == 9 and res.steps == 9
    epochs = [np.concatenate(batches[i : i + 3]) for i in (0, 3, 6)]
    for epoch in epochs:
        np.testing.assert_array_equal(np.sort(epoch), np.arange(rows))
    assert not np.array_equal(epochs[0], epochs[1])  # reshuffled
    traced = counter.count
    sb.minimize(counter, jnp.ones(1), "adam", max_steps=9, **kw)
    assert counter.count == traced  # no retrace across epochs, chunks or calls


def test_step_keys_differ_and_are_reproducible():
    seen = []

    def loss(theta, x, *, key):
        jax.debug.callback(lambda k: seen.append(np.asarray(k)), jax.random.key_data(key))
        return jnp.sum((theta - x[0]) ** 2) + 0.0 * jax.random.normal(key)

    key = jax.random.key(7)
    kw = dict(args=(jnp.ones(4),), key=key, max_steps=5, chunk_size=2, progress=False)
    sb.minimize(loss, jnp.zeros(1), "adam", **kw)
    first, seen[:] = list(seen), []
    sb.minimize(loss, jnp.zeros(1), "adam", **kw)
    assert len(first) == len(seen) and all(np.array_equal(a, b) for a, b in zip(first, seen))
    steps = first[:5]
    want = [np.asarray(jax.random.key_data(jax.random.fold_in(key, k))) for k in range(5)]
    assert all(np.array_equal(a, b) for a, b in zip(steps, want))
    assert len({a.tobytes() for a in steps}) == 5


def test_minibatches_need_one_leading_axis():
    with pytest.raises(ValueError, match="close over constants"):
        sb.minimize(lambda t, x, c: jnp.sum((t - x) ** 2) * c, jnp.zeros(1), "adam",
                    args=(jnp.ones(8), jnp.ones(3)), batch_size=4, progress=False)  # fmt: skip


def test_an_optax_run_that_converges_stays_where_its_gradient_met_tol():
    # The gradient was measured before the update and the update applied anyway: Adam
    # started within `tol` of a minimum said "converged" at a point 14 orders worse.
    loss = lambda t: jnp.sum((t - 1.0) ** 2)
    start = jnp.full(3, 1.0 + 1e-10)
    res = sb.minimize(loss, start, "adam", learning_rate=1e-2, tol=1e-6, max_steps=50,
                      progress=False)  # fmt: skip
    assert res.success and "converged" in res.message
    assert float(jnp.linalg.norm(jax.grad(loss)(res.theta))) <= 1e-6
    assert res.loss == pytest.approx(float(loss(res.theta)), rel=1e-12, abs=1e-300)
    assert res.loss <= float(loss(start)) * (1 + 1e-12)


@pytest.mark.parametrize("method", ["lbfgs", "adam", "bfgs", "nonlinear-cg"])
def test_a_nan_gradient_at_a_finite_loss_never_returns_nan_theta(method):
    # Optax's L-BFGS took a NaN step from a NaN gradient and kept its line search's finite
    # value beside it: 999 "good" steps, then res.theta = [nan, nan] with res.loss = 4.
    # Optimistix's BFGS/NonlinearCG never accepted a trial point and ran the whole budget,
    # ending "max_steps_reached" (advice: a larger `max_steps`).
    loss = lambda t: jnp.sum(jnp.sqrt(t**2)) + jnp.sum((t - 1.0) ** 2)  # NaN gradient at 0
    res = sb.minimize(loss, jnp.array([0.0, 2.0]), method, throw=False, max_steps=20,
                      progress=False)  # fmt: skip
    assert not res.success and res.result == sb.RESULTS.nonfinite and res.steps < 20
    assert np.all(np.isfinite(np.asarray(res.theta)))
    assert res.loss == pytest.approx(float(loss(res.theta)), rel=1e-12)
