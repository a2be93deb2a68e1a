"""The outcome contract (DESIGN.md; issue 11) as one table, the same for every method:

method x {single run, ensemble of 3} x {converges, budget used up, NaN on the way, runtime
error (`eqx.error_if`) inside the loss, SIGINT (in a subprocess), checkpoint directory removed
mid-run} -> the documented outcome, a finite last good `theta`, and `loss == loss(theta)`.

One loss serves every scenario (`mode` is an array argument), and `chunk_size` is fixed, so
each (method, single/ensemble) pair compiles its programs once for all scenarios.
"""

import json
import os
import pathlib
import shutil
import signal

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import scipy.optimize
from helpers import run_python

import sciml_bridge as sb
from sciml_bridge._solvers import _run
from sciml_bridge._solvers._interrupt import catch_sigint


_A = jnp.array([[1.0, 0.0], [-1.5, 3.0]])
_B = jnp.array([2.0, 0.0])
CONVERGE, NAN, ERROR = 0, 1, 2


def residual(theta, mode):
    # Minimum at (2, 1); in modes NAN/ERROR, stepping past theta[0] = 1 gives a NaN or trips
    # a runtime error (as a Diffrax solve under `throw=True` would).
    r = _A @ theta - _B
    beyond = theta[0] > 1.0
    r = jnp.where((mode == NAN) & beyond, jnp.nan, r)
    return eqx.error_if(r, (mode == ERROR) & beyond, "boom: the solve inside the loss failed")


def loss(theta, mode):
    r = residual(theta, mode)
    return 0.5 * jnp.sum(r * r)


SGD = optax.sgd(0.1)
METHODS = ("adam", "optax-object", "lbfgs", "bfgs", "nonlinear-cg", "gauss-newton", "lm",
           "dogleg", "scipy:L-BFGS-B", "scipy:trf")  # fmt: skip
FUSED = tuple(m for m in METHODS if not m.startswith("scipy:"))
LEAST_SQUARES = ("gauss-newton", "lm", "dogleg", "scipy:trf")
NO_STOPPING_RULE = ("adam", "optax-object")  # without `tol`
# A non-finite trial point is a rejected step for these (their line search / trust region
# backs off, as `optx.minimise` does); the others stop with `nonfinite`.
BACKS_OFF = ("lbfgs", "bfgs", "nonlinear-cg", "gauss-newton", "lm", "dogleg")
STARTS = {1: jnp.zeros(2), 3: jnp.array([[0.0, 0.0], [0.5, -0.5], [-1.0, 0.5]])}


def run(method, members, mode, **kw):
    kw = dict(progress=False, chunk_size=2, args=(jnp.asarray(mode),), **kw)
    theta0 = STARTS[members]
    if method in LEAST_SQUARES:
        return sb.least_squares(residual, theta0, method, **kw)
    if method == "adam":
        kw["learning_rate"] = 0.1
    return sb.minimize(loss, theta0, SGD if method == "optax-object" else method, **kw)


def each(res):
    return list(res.members) if isinstance(res, sb.EnsembleSolution) else [res]


def check_member(sol, mode=CONVERGE):
    assert sol.theta.shape == (2,) and bool(jnp.all(jnp.isfinite(sol.theta)))
    want = float(loss(sol.theta, jnp.asarray(CONVERGE if mode == ERROR else mode)))
    np.testing.assert_allclose(sol.loss, want, rtol=1e-10, atol=1e-300)
    assert sol.history[-1] == sol.loss and len(sol.history) == sol.steps + 1
    if mode != CONVERGE:
        assert float(sol.theta[0]) <= 1.0


def converges(method, members):
    tol = dict(tol=0.05) if method in NO_STOPPING_RULE else {}
    res = run(method, members, CONVERGE, max_steps=300, **tol)
    for sol in each(res):
        check_member(sol)
        assert sol.success and sol.result is sb.RESULTS.successful
        assert "converged" in sol.message, sol.message
        if not method.startswith("scipy:"):
            assert "after" in sol.message and ("tol" in sol.message or "rule" in sol.message)


# Gauss-Newton solves this linear problem in one step and says so at the next: one step is
# its "budget used up".
BUDGET = {"gauss-newton": 1}


def budget_used_up_never_raises(method, members):
    res = run(method, members, CONVERGE, max_steps=BUDGET.get(method, 2), throw=True)
    for sol in each(res):
        check_member(sol)
        if method in NO_STOPPING_RULE:
            assert sol.success and "budget" in sol.message and "converged" not in sol.message
        else:
            assert sol.result is sb.RESULTS.max_steps_reached and not sol.success
            assert "max_steps" in sol.message


def nan_on_the_way(method, members):
    res = run(method, members, NAN, max_steps=60, throw=False)
    for sol in each(res):
        check_member(sol, NAN)
        backed_off = sol.result is not sb.RESULTS.nonfinite
        assert backed_off == (method in BACKS_OFF), sol.message
    if method in BACKS_OFF:
        again = run(method, members, NAN, max_steps=60, throw=True)
        np.testing.assert_array_equal(np.asarray(again.theta), np.asarray(res.theta))
        return
    with pytest.raises(sb.NonFiniteLossError) as info:
        run(method, members, NAN, max_steps=60, throw=True)
    np.testing.assert_array_equal(np.asarray(info.value.theta), np.asarray(res.theta))


def runtime_error_inside_the_loss(method, members):
    res = run(method, members, ERROR, max_steps=60, throw=False)
    for sol in each(res):
        check_member(sol, ERROR)
        assert sol.result is sb.RESULTS.solver_failed and "boom" in sol.message
    with pytest.raises(sb.OptimizationError, match="boom") as info:
        run(method, members, ERROR, max_steps=60, throw=True)
    np.testing.assert_array_equal(np.asarray(info.value.theta), np.asarray(res.theta))


def checkpoint_directory_removed_mid_run(method, members, tmp_path):
    folder = tmp_path / "ckpt"
    folder.mkdir()

    def callback(step, theta, value):
        assert isinstance(value, float) and theta.shape == (2,)
        shutil.rmtree(folder, ignore_errors=True)

    every = BUDGET.get(method, 2)  # a checkpoint must fall due before the run converges
    with pytest.warns(RuntimeWarning, match="could not write the checkpoint"):
        res = run(method, members, CONVERGE, max_steps=8, checkpoint=folder / "c.npz",
                  checkpoint_every=every, callback=callback)  # fmt: skip
    for sol in each(res):
        check_member(sol)
        assert sol.result is not sb.RESULTS.solver_failed


# One test per (method, single/ensemble): its programs compile once, in one xdist worker.
@pytest.mark.parametrize("members", [1, 3], ids=["single", "ensemble"])
@pytest.mark.parametrize("method", METHODS)
def test_contract(method, members, tmp_path):
    converges(method, members)
    budget_used_up_never_raises(method, members)
    nan_on_the_way(method, members)
    runtime_error_inside_the_loss(method, members)
    if method in FUSED:
        checkpoint_directory_removed_mid_run(method, members, tmp_path)


_SIGINT = """
import json, os, signal, jax, jax.numpy as jnp, optax
jax.config.update("jax_enable_x64", True)
import sciml_bridge as sb
from sciml_bridge._solvers import _run
from sciml_bridge._solvers._interrupt import catch_sigint
from test_contract import run, each

# A process started by a pytest-xdist worker may inherit SIGINT as ignored (then Python leaves
# `SIG_IGN` in place, seen once in CI): start from Python's own handler, as a terminal does.
signal.signal(signal.SIGINT, signal.default_int_handler)

def callback(step, theta, value):
    os.kill(os.getpid(), signal.SIGINT)  # a real SIGINT, delivered while the run is driven

out = {}
for method, members in CASES:
    res = run(method, members, 0, max_steps=10**6, callback=callback)
    out[f"{method}/{members}"] = [
        [str(s.result is sb.RESULTS.interrupted), s.steps, bool(jnp.all(jnp.isfinite(s.theta)))]
        for s in each(res)
    ]
out["handler restored"] = signal.getsignal(signal.SIGINT) is signal.default_int_handler
print("RESULT", json.dumps(out))
"""
# One host loop serves every fused method, so one case per backend family is enough: Optax
# (single and vmapped ensemble), Optimistix (chunked), SciPy (one Ctrl-C stops all members).
SIGINT_CASES = [("adam", 1), ("adam", 3), ("bfgs", 1), ("scipy:L-BFGS-B", 3), ("scipy:trf", 1)]


def test_one_sigint_returns_the_partial_result_for_every_backend():
    code = f"CASES = {SIGINT_CASES!r}\n" + _SIGINT
    proc = run_python(code, env={"PYTHONPATH": _pythonpath()}, timeout=240)
    line = [x for x in proc.stdout.splitlines() if x.startswith("RESULT ")]
    assert line, proc.stderr[-3000:]
    out = json.loads(line[0][7:])
    assert out.pop("handler restored") is True
    assert set(out) == {f"{m}/{n}" for m, n in SIGINT_CASES}
    for case, members in out.items():
        assert len(members) == int(case.split("/")[1])
        for interrupted, steps, finite in members:
            assert interrupted == "True" and finite and 0 <= steps < 50, case


def test_an_ignored_sigint_stays_ignored():
    # A background job (`cmd &` in a script) starts with SIGINT ignored; a run must not
    # turn it back on.
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        with catch_sigint() as interrupt:
            assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN
            os.kill(os.getpid(), signal.SIGINT)
        assert not interrupt
        assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN
    finally:
        signal.signal(signal.SIGINT, previous)


def _pythonpath() -> str:
    here = pathlib.Path(__file__).resolve().parent
    return os.pathsep.join([str(here.parent), str(here)])


# -- a stall is not convergence ------------------------------------------------------------


def _wrong_model(theta):
    # At theta = 0, J = diag(1, 2e-7): the Gauss-Newton step along theta[1] is 5e6 long and
    # the quadratic term makes every trial step 2^-k d, k = 0..30, raise the loss, although
    # the gradient (2e-7) and the predicted decrease (0.5, all of the loss) are far above `tol`.
    return jnp.stack([theta[0], 2e-7 * theta[1] + theta[1] ** 2 + 1])


@jax.custom_jvp
def _uphill(theta):
    return jnp.sum(theta * theta)


@_uphill.defjvp
def _uphill_jvp(primals, tangents):
    # A derivative with the wrong sign (a buggy custom rule): every quasi-Newton direction
    # points uphill, so the strong-Wolfe search cannot move from `theta0`.
    (theta,), (dtheta,) = primals, tangents
    return _uphill(theta), -2 * theta @ dtheta


def _check_stalled(res, theta0, loss0):
    assert res.result is sb.RESULTS.stalled and not res.success, res.message
    assert "converged" not in res.message and "tol" in res.message
    np.testing.assert_array_equal(np.asarray(res.theta), np.asarray(theta0))
    assert res.steps == 0 and res.loss == loss0 and res.history == [loss0]


def test_a_gauss_newton_step_that_cannot_lower_the_loss_is_a_stall_not_convergence():
    theta0 = jnp.zeros(2)
    for method in ("gauss-newton", "natural-gradient"):
        res = sb.least_squares(_wrong_model, theta0, method, progress=False)  # throw=True
        _check_stalled(res, theta0, 0.5)


@pytest.mark.parametrize("method", ["ssbfgs", "ssbroyden"])
def test_a_quasi_newton_line_search_that_cannot_move_is_a_stall_not_convergence(method):
    theta0 = jnp.array([1.0, -2.0])
    res = sb.minimize(_uphill, theta0, method, progress=False)  # throw=True: not raised
    _check_stalled(res, theta0, 5.0)


def test_a_least_squares_minimum_whose_gradient_rounding_keeps_above_tol_still_converges():
    # Residuals of size 1e9 at the minimum: rounding leaves `J^T r` near 1e-6 > tol = 1e-8,
    # but the predicted relative decrease is at rounding level, so the run converges.
    A = jax.random.normal(jax.random.key(0), (20, 3), dtype=jnp.float64) * 1e3
    b = jax.random.normal(jax.random.key(1), (20,), dtype=jnp.float64) * 1e6
    res = sb.least_squares(lambda t: A @ t - b, jnp.zeros(3), "gauss-newton", progress=False)
    expected = np.linalg.lstsq(np.asarray(A), np.asarray(b), rcond=None)[0]
    assert res.success and res.result is sb.RESULTS.successful, res.message
    np.testing.assert_allclose(np.asarray(res.theta), expected, rtol=1e-12)


# -- a failure while the method sets up at theta0 --------------------------------------------


def _fails_at_start(theta):
    return eqx.error_if(jnp.sum(theta * theta), theta[0] > 0, "boom: the loss fails at theta0")


@pytest.mark.parametrize("method", ["ssbfgs", "ssbroyden", "adam"])
@pytest.mark.parametrize("members", [1, 3])
def test_a_loss_that_fails_at_theta0_follows_the_contract_even_where_setup_evaluates_it(
    method, members
):
    # SSBFGS/SSBroyden evaluate the loss and gradient to build their state, before any step:
    # an error there escaped raw, even under `throw=False`.
    theta0 = jnp.ones(2) if members == 1 else jnp.ones((members, 2))
    res = sb.minimize(_fails_at_start, theta0, method, max_steps=5, throw=False, progress=False)
    for sol in each(res):
        assert sol.result is sb.RESULTS.solver_failed and not sol.success
        assert "boom: the loss fails at theta0" in sol.message and sol.steps == 0
        np.testing.assert_array_equal(np.asarray(sol.theta), np.ones(2))
    with pytest.raises(sb.OptimizationError) as info:
        sb.minimize(_fails_at_start, theta0, method, max_steps=5, progress=False)
    np.testing.assert_array_equal(np.asarray(info.value.result.theta), np.asarray(theta0))


def test_running_out_of_memory_while_setting_up_says_which_methods_fit(monkeypatch):
    def no_memory(*args, **kwargs):
        raise jax.errors.JaxRuntimeError("RESOURCE_EXHAUSTED: Out of memory allocating 8 bytes.")

    monkeypatch.setattr(_run, "init_members", no_memory)
    with pytest.raises(sb.OptimizationError, match="RESOURCE_EXHAUSTED") as info:
        sb.minimize(lambda t: jnp.sum(t * t), jnp.ones(3), "ssbfgs", progress=False)
    assert '"lbfgs"' in str(info.value) and "n x n" in str(info.value)
    np.testing.assert_array_equal(np.asarray(info.value.result.theta), np.ones(3))


def test_running_out_of_memory_mid_run_keeps_the_last_chunk_and_says_what_fits(monkeypatch):
    # The chunk loop's failure path used to append the generic backend text (with a doubled
    # period) and no word on memory; the setup path above already had one.
    loss = lambda t: jnp.sum((t - 1.0) ** 2)
    # Out of memory is not a point in the run (it is not run again step by step): the last
    # point whose loss is known is kept, and the first chunk evaluated the loss after its
    # first step, not after its second.
    one = sb.minimize(loss, jnp.zeros(3), "adam", max_steps=1, learning_rate=0.1,
                      progress=False)
    calls, real = [], _run.run_chunk

    def runs_once(*args, **kwargs):
        calls.append(1)
        if len(calls) > 1:
            raise jax.errors.JaxRuntimeError("RESOURCE_EXHAUSTED: Out of memory allocating 8 "
                                             "bytes.")
        return real(*args, **kwargs)

    monkeypatch.setattr(_run, "run_chunk", runs_once)
    res = sb.minimize(loss, jnp.zeros(3), "adam", max_steps=6, learning_rate=0.1,
                      chunk_size=2, throw=False, progress=False)
    assert res.result is sb.RESULTS.solver_failed and res.steps == 1
    assert "RESOURCE_EXHAUSTED" in res.message and 'solver="cg"' in res.message
    assert "m x n" in res.message and ".." not in res.message
    np.testing.assert_allclose(np.asarray(res.theta), np.asarray(one.theta), rtol=1e-15)


def test_running_out_of_memory_inside_scipy_says_what_fits(monkeypatch):
    def no_memory(*args, **kwargs):
        raise jax.errors.JaxRuntimeError("RESOURCE_EXHAUSTED: Out of memory allocating 8 bytes.")

    monkeypatch.setattr(scipy.optimize, "minimize", no_memory)
    res = sb.minimize(lambda t: jnp.sum(t * t), jnp.ones(3), "scipy:bfgs", throw=False,
                      progress=False)
    assert res.result is sb.RESULTS.solver_failed and 'solver="cg"' in res.message
    np.testing.assert_array_equal(np.asarray(res.theta), np.ones(3))


def _fails_beyond_two(theta):
    # Two wells, at theta[0] = -1 and 3; crossing theta[0] = 2 trips a runtime error.
    theta = eqx.error_if(theta, theta[0] > 2.0, "boom: this member's solve failed")
    return ((theta[0] + 1.0) * (theta[0] - 3.0)) ** 2 + theta[1] ** 2


# Member 0 goes to the left well, member 1 to the right one, crossing theta[0] = 2 mid-run.
_MIXED = jnp.array([[-2.0, 0.5], [1.5, 0.5]])


@pytest.mark.parametrize("method", ["adam", "ssbfgs"])
def test_a_runtime_error_in_one_member_fails_that_member_only(method):
    # `eqx.error_if` raises for a whole vmapped batch; the ensemble used to stop every
    # member with the failing member's message. Each member must end as it does alone.
    kw = dict(max_steps=40, chunk_size=5, throw=False, progress=False)
    kw |= dict(learning_rate=0.02) if method == "adam" else {}
    ens = sb.minimize(_fails_beyond_two, _MIXED, method, **kw)
    for row, sol in zip(_MIXED, ens.members):
        alone = sb.minimize(_fails_beyond_two, row, method, **kw)
        assert sol.result is alone.result and sol.steps == alone.steps, sol.message
        np.testing.assert_allclose(np.asarray(sol.theta), np.asarray(alone.theta), rtol=1e-12,
                                   atol=1e-15)
        np.testing.assert_allclose(sol.history, alone.history, rtol=1e-12, atol=1e-20)
    assert ens[1].result is sb.RESULTS.solver_failed and "boom" in ens[1].message
    if method == "adam":  # (SSBFGS's first line search already crosses)
        assert ens[1].steps > 0  # it failed mid-run, not while setting up
    assert ens[0].result is not sb.RESULTS.solver_failed and "boom" not in ens[0].message
    assert ens[0].steps > ens[1].steps  # member 0 went on after member 1 failed
    with pytest.raises(sb.OptimizationError, match="boom"):
        sb.minimize(_fails_beyond_two, _MIXED, method, **(kw | dict(throw=True)))


def test_a_member_whose_setup_raises_fails_alone_and_the_others_run():
    # SSBFGS evaluates the loss to set up its state: member 1 raises there, member 0 does not.
    theta0 = jnp.array([[-2.0, 0.5], [3.0, 0.5]])
    kw = dict(max_steps=20, throw=False, progress=False)
    ens = sb.minimize(_fails_beyond_two, theta0, "ssbfgs", **kw)
    alone = sb.minimize(_fails_beyond_two, theta0[0], "ssbfgs", **kw)
    assert ens[0].result is alone.result and ens[0].steps == alone.steps > 0
    np.testing.assert_allclose(np.asarray(ens[0].theta), np.asarray(alone.theta), rtol=1e-12,
                               atol=1e-15)
    assert ens[1].result is sb.RESULTS.solver_failed and ens[1].steps == 0
    assert "boom" in ens[1].message
    np.testing.assert_array_equal(np.asarray(ens[1].theta), np.asarray(theta0[1]))


def test_a_last_step_into_a_failing_region_keeps_the_point_before_it():
    # Adam's 25th update lands past theta[0] = 2, where the loss raises; the loop never
    # evaluates it, the final evaluation does: that raise escaped raw (a lost run).
    kw = dict(learning_rate=0.02, throw=False, progress=False)
    before = sb.minimize(_fails_beyond_two, _MIXED[1], "adam", max_steps=24, **kw)
    res = sb.minimize(_fails_beyond_two, _MIXED[1], "adam", max_steps=25, **kw)
    ens = sb.minimize(_fails_beyond_two, _MIXED, "adam", max_steps=25, **kw)
    healthy = sb.minimize(_fails_beyond_two, _MIXED[0], "adam", max_steps=25, **kw)
    assert before.success and float(before.theta[0]) < 2.0
    for sol in (res, ens[1]):
        assert sol.result is sb.RESULTS.solver_failed and "boom" in sol.message
        assert sol.steps == 24 and sol.loss == pytest.approx(before.loss, rel=1e-12)
        np.testing.assert_allclose(np.asarray(sol.theta), np.asarray(before.theta), rtol=1e-12)
    assert ens[0].success and ens[0].steps == 25
    np.testing.assert_allclose(np.asarray(ens[0].theta), np.asarray(healthy.theta), rtol=1e-12)


def test_an_ensemble_counts_steps_by_the_members_still_running(tmp_path):
    # Member 0 turns non-finite at its third step; member 1 runs on. The step handed to the
    # callback and the checkpoint schedule came from member 0's count (4, not 10).
    loss = lambda t: jnp.where(t[0] > 1.25, jnp.nan, jnp.sum((t - 5.0) ** 2))
    seen, path = [], tmp_path / "c.npz"
    res = sb.minimize(loss, jnp.array([[1.0, 0.0], [-50.0, 0.0]]), "adam", learning_rate=0.1,
                      max_steps=30, chunk_size=10, throw=False, progress=False, checkpoint=path,
                      checkpoint_every=10,
                      callback=lambda step, theta, value: seen.append((step, value)))  # fmt: skip
    assert [m.result for m in res] == [sb.RESULTS.nonfinite, sb.RESULTS.successful]
    # Each chunk ends on a point not yet evaluated: the callback gets the one before it.
    assert [step for step, _ in seen] == [9, 19, 29] and res[1].steps == 30
    assert [value for _, value in seen] == [res[1].history[k] for k in (9, 19, 29)]
    saved = []
    sb.minimize(loss, jnp.array([[1.0, 0.0], [-50.0, 0.0]]), "adam", learning_rate=0.1,
                max_steps=30, chunk_size=10, throw=False, progress=False,
                checkpoint=tmp_path / "d.npz", checkpoint_every=10,
                callback=lambda step, theta, value: saved.append((tmp_path / "d.npz").exists()))
    assert saved == [True, True, True]  # written at step 10, before the first callback


@pytest.mark.parametrize("members", [1, 2])
def test_a_failed_minibatch_run_reports_the_loss_on_all_the_data(members):
    # The last good point's loss came from its minibatch: `res.loss != loss(res.theta)`, and
    # `res.best` ranked members by such numbers.
    x = jnp.linspace(-1.0, 1.0, 8)
    loss = lambda t, x, y: jnp.where(t[0] > 2.0, jnp.nan, jnp.mean((t[0] * x - y) ** 2))
    theta0 = jnp.zeros(1) if members == 1 else jnp.zeros((2, 1))
    res = sb.minimize(loss, theta0, "adam", args=(x, 3 * x), batch_size=2,
                      key=jax.random.key(1), learning_rate=0.3, max_steps=100, throw=False,
                      progress=False)  # fmt: skip
    for sol in each(res):
        assert sol.result is sb.RESULTS.nonfinite
        want = float(jnp.mean((sol.theta[0] * x - 3 * x) ** 2))
        np.testing.assert_allclose(sol.loss, want, rtol=1e-14)
        assert sol.history[-1] == sol.loss and len(sol.history) == sol.steps + 1


@pytest.mark.parametrize("method", ["lbfgs", "ssbfgs", "ssbroyden"])
@pytest.mark.parametrize("theta_dtype", [jnp.float64, jnp.float32])
def test_line_search_methods_take_a_loss_of_another_precision_than_theta(method, theta_dtype):
    # A float32 loss of float64 parameters, or float64 data with a float32 model, crashed
    # inside Optax's / our line search (its carry changed type).
    other = jnp.float32 if theta_dtype == jnp.float64 else jnp.float64
    target = jnp.array([1.0, -2.0, 0.5], dtype=other)
    loss = lambda t: jnp.sum((t.astype(other) - target) ** 2)
    res = sb.minimize(loss, jnp.zeros(3, theta_dtype), method, max_steps=50, throw=False,
                      progress=False)  # fmt: skip
    assert res.theta.dtype == theta_dtype and res.result is not sb.RESULTS.solver_failed
    np.testing.assert_allclose(np.asarray(res.theta), np.asarray(target), atol=1e-3)
    # Compiled against eager: equal to float32 rounding, not bits.
    assert res.loss == pytest.approx(float(loss(res.theta)), rel=1e-6, abs=1e-12)


def test_a_runtime_error_keeps_the_steps_before_it_not_the_start_of_the_chunk():
    # With the default chunk (1,000 steps), a raise at step 26 used to roll the run back to
    # theta0 (steps=0): the chunk is run again up to the step that raises.
    kw = dict(learning_rate=0.02, throw=False, progress=False)
    before = sb.minimize(_fails_beyond_two, _MIXED[1], "adam", max_steps=24, **kw)
    res = sb.minimize(_fails_beyond_two, _MIXED[1], "adam", max_steps=100, **kw)
    assert res.result is sb.RESULTS.solver_failed and "boom" in res.message
    # The same point, its loss evaluated by another compiled program: to rounding.
    assert res.steps == 24 and res.loss == pytest.approx(before.loss, rel=1e-14)
    np.testing.assert_allclose(np.asarray(res.theta), np.asarray(before.theta), rtol=1e-12)
    np.testing.assert_allclose(res.history, before.history, rtol=1e-12)
    ens = sb.minimize(_fails_beyond_two, _MIXED, "adam", max_steps=100, **kw)
    assert ens[1].steps == 24 and ens[0].steps == 100 and ens[0].success


def test_the_callback_gets_a_step_its_theta_and_the_loss_there():
    # `step=3` came with theta_2 and history[2]: sgd at 0.25 on (t - 1)^2 gives
    # theta_k = 1 - 0.5^k exactly.
    seen = []
    res = sb.minimize(lambda t: jnp.sum((t - 1.0) ** 2), jnp.zeros(1), "sgd",
                      learning_rate=0.25, max_steps=6, chunk_size=3, progress=False,
                      callback=lambda k, theta, value: seen.append((k, float(theta[0]), value)))
    assert [k for k, _, _ in seen] == [2, 5]
    for k, theta, value in seen:
        assert theta == 1 - 0.5**k and value == res.history[k] == (1 - theta) ** 2


def _rosenbrock_until(theta, limit):
    theta = eqx.error_if(theta, theta[0] > limit, "boom: past the limit")
    return (1 - theta[0]) ** 2 + 100 * (theta[1] - theta[0] ** 2) ** 2


def test_lbfgs_members_run_again_alone_as_single_runs_not_batches_of_one():
    # A vmapped batch of one still evaluates the trial points a batched Optax zoom line search
    # does, which a single run never visits: a member that finishes alone failed at step 0.
    theta0 = jnp.array([[-1.5, 2.0], [-1.6, 1.9]])
    kw = dict(args=(-0.5,), max_steps=5, chunk_size=4, throw=False, progress=False)
    ens = sb.minimize(_rosenbrock_until, theta0, "lbfgs", **kw)
    for row, sol in zip(theta0, ens.members):
        alone = sb.minimize(_rosenbrock_until, row, "lbfgs", **kw)
        assert sol.result is alone.result and sol.steps == alone.steps, sol.message
        np.testing.assert_allclose(np.asarray(sol.theta), np.asarray(alone.theta), rtol=1e-12)
    assert ens[0].steps == 5 and "boom" not in ens[0].message


def _counting_until(theta, state, limit):
    # A stateful loss that counts its evaluations and raises past theta[0] = limit.
    theta = eqx.error_if(theta, theta[0] > limit, "boom: past the limit")
    return 0.5 * jnp.sum((theta - 10.0) ** 2), {"n": state["n"] + 1.0}


def test_a_checkpoint_after_a_member_raised_resumes_its_state_and_message(tmp_path):
    # The checkpoint held the failed member's stand-in state (a running member's) and no
    # message: resumed, member 0 reported member 1's state and lost "boom".
    theta0 = jnp.array([[0.0, 0.0], [-20.0, 0.0]])  # member 0 raises at step 7
    kw = dict(args=(jnp.asarray(5.0),), state={"n": jnp.array(0.0)}, progress=False,
              throw=False, learning_rate=0.1, chunk_size=3)  # fmt: skip
    whole = sb.minimize(_counting_until, theta0, "sgd", max_steps=30, **kw)
    path = tmp_path / "c.npz"
    sb.minimize(_counting_until, theta0, "sgd", max_steps=12, checkpoint=path, **kw)
    resumed = sb.minimize(_counting_until, theta0, "sgd", max_steps=30, checkpoint=path, **kw)
    assert whole[0].result is sb.RESULTS.solver_failed and whole[0].steps < 12
    for a, b in zip(whole, resumed):
        assert a.result is b.result and a.steps == b.steps and a.message == b.message
        assert float(a.state["n"]) == float(b.state["n"])
        np.testing.assert_array_equal(np.asarray(a.theta), np.asarray(b.theta))


def _past_five(theta):
    theta = eqx.error_if(theta, theta[0] > 5.0, "boom: past five")
    return 0.5 * jnp.sum((theta - 10.0) ** 2)


def test_failed_members_stand_in_states_are_renewed_so_chunks_stop_raising(monkeypatch):
    # Member 0 failed and carried member 1's state; member 1 then raised from exactly that
    # state, and member 0's stale stand-in made every later chunk raise and run again member
    # by member (18 of 20 chunks). Recoveries: one per chunk in which a member fails.
    recoveries, real = [], _run._Driver._recover_rows

    def counted(self, keep):
        recoveries.append(1)
        return real(self, keep)

    monkeypatch.setattr(_run._Driver, "_recover_rows", counted)
    theta0 = jnp.array([[0.0, 0.0], [-2.0, 0.0], [-1e6, 0.0]])  # raise at 6, 8, never
    kw = dict(learning_rate=0.1, chunk_size=3, max_steps=60, throw=False, progress=False)
    res = sb.minimize(_past_five, theta0, "sgd", **kw)
    assert [m.steps for m in res] == [6, 8, 60] and len(recoveries) == 2
    for row, sol in zip(theta0, res.members):
        alone = sb.minimize(_past_five, row, "sgd", **kw)
        assert sol.result is alone.result and sol.steps == alone.steps
