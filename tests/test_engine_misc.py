"""The fused driver's edges: a callback that raises, recompilation, checkpoint messages, and
the loss a run reports where it stops."""

import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import assert_callback_error, raises_at

import sciml_bridge as sb
from sciml_bridge._solvers._on_mesh import Kernel
from sciml_bridge._solvers._setup import make_run


def quadratic(theta):
    return 0.5 * jnp.sum((theta - 1.0) ** 2)


KW = dict(learning_rate=0.1, chunk_size=3, progress=False)


@pytest.mark.parametrize("throw", [True, False])
@pytest.mark.parametrize("method", ["adam", "lbfgs"])
def test_a_callback_that_raises_stops_the_run_where_it_was_called(method, throw):
    # The callback's error used to leave the driver: the run was lost.
    seen, callback = raises_at(2)
    with pytest.raises(sb.OptimizationError) as info:
        sb.minimize(quadratic, jnp.zeros(3), method, max_steps=30, callback=callback,
                    throw=throw, **KW)  # fmt: skip
    assert_callback_error(info.value, seen, "sb.minimize", step=5)


@pytest.mark.parametrize("method", ["adam", "scipy:BFGS"])
def test_a_callback_returning_several_truth_values_fails_as_a_callback_keeping_the_run(method):
    # numpy's "truth value ... is ambiguous" escaped the driver (run lost), or read as
    # "SciPy raised ValueError".
    seen = []

    def callback(step, theta, loss):
        seen.append(step)
        return np.array([True, False]) if len(seen) == 2 else None

    with pytest.raises(sb.OptimizationError, match="the callback raised ValueError: The truth "
                                                   "value") as info:  # fmt: skip
        kw = dict(progress=False) if method.startswith("scipy") else KW
        sb.minimize(lambda t: jnp.sum(jnp.cosh(t - 1.0)), jnp.zeros(3), method, max_steps=30,
                    callback=callback, **kw)  # fmt: skip
    assert info.value.result.steps == seen[-1] > 0 and np.all(np.isfinite(info.value.theta))


def test_a_callback_that_raises_for_one_member_stops_the_ensemble():
    calls = []

    def callback(step, theta, loss):
        calls.append((step, np.asarray(theta), loss))
        if len(calls) == 5:  # member 1 at its second call
            raise KeyError("member")

    theta0 = jnp.stack([jnp.zeros(3), -jnp.ones(3), jnp.ones(3)])
    with pytest.raises(sb.OptimizationError, match=r"^the callback raised KeyError: 'member'\. "
                                                   r"`sb.minimize` stopped member 1 at step 5,"
                       ) as info:  # fmt: skip
        sb.minimize(quadratic, theta0, "adam", max_steps=30, callback=callback, throw=False,
                    **KW)  # fmt: skip
    err = info.value
    assert isinstance(err.__cause__, KeyError)
    res = err.result
    assert isinstance(res, sb.EnsembleSolution) and len(res) == 3
    step, theta, loss = calls[-1]
    assert res[1].result is sb.RESULTS.solver_failed and res[1].message == str(err)
    assert res[1].steps == step and np.array_equal(res[1].theta, theta) and res[1].loss == loss
    # The others were still running: stopped as by Ctrl-C, never a failure of theirs.
    for i in (0, 2):
        assert res[i].result is sb.RESULTS.interrupted, res[i].message
        assert "because the callback raised KeyError for member 1" in res[i].message


def test_keyboard_interrupt_in_a_callback_is_still_ctrl_c():
    def callback(step, theta, loss):
        raise KeyboardInterrupt

    res = sb.minimize(quadratic, jnp.zeros(3), "adam", max_steps=30, callback=callback, **KW)
    assert res.result is sb.RESULTS.interrupted and res.steps == 3


def _traces(fn, calls):
    """How many times `fn` is traced over `calls` (each `kwargs -> result`), after the first."""
    count = [0]

    def counted(*args):
        count[0] += 1
        return fn(*args)

    calls[0](counted)
    first = count[0]
    for call in calls[1:]:
        call(counted)
    return count[0] - first


def test_a_new_max_steps_below_chunk_size_reuses_the_compiled_chunk():
    # `chunk = min(chunk_size, max_steps)` set the length of the compiled loss buffer: a new
    # `max_steps` below `chunk_size` compiled the chunk again. The buffer is `max_steps`
    # rounded up to a power of two: 5..8 share one, 600..1000 (chunk 1000) another.
    def calls(steps):
        return [lambda f, n=n: sb.minimize(f, jnp.zeros(3), "adam", max_steps=n, progress=False)
                for n in steps]  # fmt: skip

    assert _traces(quadratic, calls((5, 7, 8, 6))) == 0
    assert _traces(quadratic, calls((600, 1000, 700, 2500))) == 0
    assert _traces(quadratic, calls((5, 9))) > 0  # another buffer length: compiled once


def _residual(theta):
    return theta - jnp.arange(3.0)


@pytest.mark.parametrize(("verb", "method"), [
    (sb.minimize, "adam"), (sb.minimize, "lbfgs"), (sb.minimize, "ssbfgs"),
    (sb.minimize, "bfgs"), (sb.least_squares, "gauss-newton"), (sb.least_squares, "lm"),
])  # fmt: skip
def test_a_new_tol_reuses_the_compiled_kernels(verb, method):
    # `tol` was a static stepper field: each new value compiled all three kernels again.
    fn = quadratic if verb is sb.minimize else _residual
    calls = [lambda f, t=t: verb(f, jnp.zeros(3), method, tol=t, max_steps=20, throw=False,
                                 progress=False) for t in (1e-3, 1e-5, 1e-9)]  # fmt: skip
    assert _traces(fn, calls) == 0


CKPT = dict(max_steps=6, checkpoint_every=3, progress=False)


def test_a_checkpoint_path_that_is_a_directory_says_so(tmp_path):
    # It said "the file is truncated, corrupted, forged, or not a ..." file.
    with pytest.raises(ValueError, match=r"which is a directory\..*\n.*\nFix: name a file in"):
        sb.minimize(quadratic, jnp.zeros(3), "adam", checkpoint=tmp_path, **CKPT)


@pytest.mark.parametrize(("theta0", "method", "saved", "expected"), [
    (jnp.zeros(4), "adam", "`theta` size 3, ", "`theta` size 4, "),
    (jnp.zeros(3), "sgd", "`theta` size 3, 4 state leaves", "`theta` size 3, 1 state leaves"),
])  # fmt: skip
def test_a_checkpoint_of_another_state_says_to_remove_it(tmp_path, theta0, method, saved,
                                                          expected):  # fmt: skip
    # It said "parameter layout does not match the model", with `sb.load`'s fix.
    path = tmp_path / "run.npz"
    sb.minimize(quadratic, jnp.zeros(3), "adam", checkpoint=path, **CKPT)
    with pytest.raises(ValueError) as info:
        sb.minimize(quadratic, theta0, method, checkpoint=path, resume="force", **CKPT)
    text = str(info.value)
    assert "whose saved state does not match this run's" in text
    assert f"saved:    {saved}" in text and f"expected: {expected}" in text
    assert "first differing leaf" in text and "parameter layout" not in text
    assert text.endswith("Fix: remove the file to start afresh, or pass another "
                         "`checkpoint=` path.")


def _finite_at_nan(theta):
    # 0 where `theta[0] <= 0`, NaN included, with a NaN gradient there (`jnp.where` passes a
    # zero cotangent to `sqrt`'s infinite or NaN derivative): Adam steps to a NaN `theta`
    # whose loss is finite.
    return jnp.where(theta[0] > 0, jnp.sum((theta - 2.0) ** 2) + jnp.sqrt(theta[0]), 0.0)


def test_a_nan_theta_beside_a_finite_loss_is_never_a_good_point_alone_or_in_an_ensemble():
    # The chunk runs without testing `theta` at every step, then again with the test when it
    # kept a non-finite `theta`: the outcome is the tested one.
    kw = dict(learning_rate=1e-2, max_steps=20, chunk_size=4, throw=False, progress=False)
    theta0 = jnp.array([[0.0, 1.0], [1.0, 1.0]])
    ens = sb.minimize(_finite_at_nan, theta0, "adam", **kw)
    alone = sb.minimize(_finite_at_nan, theta0[0], "adam", **kw)
    for sol in (ens[0], alone):
        assert sol.result is sb.RESULTS.nonfinite and sol.steps == 0
        np.testing.assert_array_equal(np.asarray(sol.theta), [0.0, 1.0])
        assert sol.loss == 0.0 and sol.history.tolist() == [0.0]
    assert ens[1].success and ens[1].steps == 20
    healthy = sb.minimize(_finite_at_nan, theta0[1], "adam", **kw)
    np.testing.assert_allclose(np.asarray(ens[1].theta), np.asarray(healthy.theta), rtol=1e-13)


def test_a_short_run_carries_a_short_loss_buffer():
    # Uncapped, 20,000 members at max_steps=5 built and read back 160 MB per chunk.
    def chunk(max_steps, chunk_size=1000):
        return make_run("sb.minimize", "adam", max_steps=max_steps, progress=False,
                        callback=None, throw=True, checkpoint=None, every=None,
                        chunk=chunk_size, resume="check").chunk  # fmt: skip

    assert [chunk(n) for n in (1, 2, 5, 8, 9, 600, 5000)] == [1, 2, 8, 8, 16, 1000, 1000]
    assert chunk(5, chunk_size=4) == 4


@pytest.mark.parametrize("verb", [sb.minimize, sb.least_squares])
def test_a_python_number_that_compiles_again_is_named_once_and_an_array_does_not_compile(verb):
    # A Python number in `args` is static (Equinox's rule): each new value compiled the whole
    # run again (0.4 s per value of a 10-step run) without a word.
    def fn(theta, data):
        r = theta - data["lam"] * jnp.arange(3.0)
        return r if verb is sb.least_squares else 0.5 * jnp.sum(r**2)

    def run(lam):
        return verb(fn, jnp.zeros(3), "lm" if verb is sb.least_squares else "lbfgs",
                    args=({"lam": lam},), max_steps=20, progress=False)  # fmt: skip

    run(0.5)
    run(0.5)  # the same value: compiled once, nothing to say
    with pytest.warns(UserWarning, match=r"(?s)Python number `args\[0\]\['lam'\]` changed "
                                         r"\(0\.5 -> 0\.25\).*jnp\.asarray"):  # fmt: skip
        assert np.allclose(run(0.25).theta, 0.25 * np.arange(3.0), rtol=0, atol=1e-10)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        run(0.125)  # said once per loss and structure
        calls = [lambda f, v=v: verb(f, jnp.zeros(3), "lm" if verb is sb.least_squares
                                     else "lbfgs", args=({"lam": jnp.asarray(v)},),
                                     max_steps=20, progress=False) for v in (0.5, 0.25)]
        assert _traces(fn, calls) == 0  # as an array, a new value is the same program


def test_an_exception_in_a_host_callback_of_the_loss_is_named_by_its_own_line():
    # The message was XLA's "INTERNAL: CpuCallback error calling callback: Traceback ...".
    def host(t0):
        if t0 > 2.0:
            raise RuntimeError("boom")
        return t0

    def loss(theta):
        shape = jax.ShapeDtypeStruct((), theta.dtype)
        return jnp.sum((theta - 3.0) ** 2) + jax.pure_callback(host, shape,
                                                               jax.lax.stop_gradient(theta[0]))

    res = sb.minimize(loss, jnp.ones(3), "adam", max_steps=50, throw=False, **KW)
    assert res.result is sb.RESULTS.solver_failed and 0 < res.steps < 50
    assert "a host callback raised RuntimeError: boom." in res.message, res.message
    assert 1.0 < float(res.theta[0]) <= 2.0  # the last good point


def test_a_host_callback_error_at_dispatch_is_a_runtime_failure_and_a_trace_error_is_not():
    # XLA reports an exception raised in a host callback as a `ValueError` when the chunk
    # fails at dispatch (the run was lost there) and a `JaxRuntimeError` when later.
    def at_dispatch(*xs):
        raise ValueError("INTERNAL: CpuCallback error calling callback: Traceback (most recent "
                         "call last):\n  File \"loss.py\", line 3, in host\nRuntimeError: boom")

    def at_trace(*xs):
        raise ValueError("shapes (3,) and (4,) differ")

    with pytest.raises(jax.errors.JaxRuntimeError, match="RuntimeError: boom"):
        Kernel(at_dispatch, lambda *xs: xs)(jnp.zeros(1))
    with pytest.raises(ValueError, match=r"shapes \(3,\) and \(4,\) differ"):
        Kernel(at_trace, lambda *xs: xs)(jnp.zeros(1))
