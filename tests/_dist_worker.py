"""One process of the 2-process checks in test_distributed.py (run by `sciml_bridge.launch`).

`python -m sciml_bridge.launch --processes 2 --devices-per-process 2 _dist_worker.py DIR`
gives a 4-device global mesh. Every check compares the distributed run against the same run
on this process's own single device (no mesh), computed here too. All checks share one launch
(starting processes and compiling is most of the time): the resume is a fresh `sb.minimize`
call of both processes, reading the checkpoint that process 0 wrote in DIR.
"""

import os
import signal
import sys
import time

import sciml_bridge as sb


sb.distributed_init()  # before any JAX computation

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from helpers import assert_ulp_close  # noqa: E402
from jax.experimental import multihost_utils  # noqa: E402

import sciml_bridge._solvers._checkpoint as checkpoint_module  # noqa: E402
import sciml_bridge._solvers._run as run_module  # noqa: E402


jax.config.update("jax_enable_x64", True)
# A test runner may start us with SIGINT ignored; handle it as Python does by default.
signal.signal(signal.SIGINT, signal.default_int_handler)
OUT = sys.argv[1]
PID = jax.process_index()
assert jax.process_count() == 2 and jax.device_count() == 4 and jax.local_device_count() == 2
MESH = jax.make_mesh((4,), ("data",))
FM = sb.FlatMLP((1, 8, 1), key=jax.random.key(0), dtype=jnp.float64)
X = jnp.linspace(-1.0, 1.0, 64)[:, None]
Y = jnp.sin(3 * X)
HALF = slice(32 * PID, 32 * (PID + 1))  # this process's rows
ARGS = sb.shard((np.asarray(X)[HALF], np.asarray(Y)[HALF]), MESH, process_local=True)
ADAM = dict(learning_rate=1e-2, chunk_size=10, progress=False, throw=False)

writes = []
_write = checkpoint_module.write_arrays
checkpoint_module.write_arrays = lambda *a: (writes.append(a[0]), _write(*a))
chunks = []
_chunk = run_module.run_chunk
run_module.run_chunk = lambda keep, dyn: chunks.append(_chunk(keep, dyn)) or chunks[-1]


def loss(th, x, y):
    return jnp.mean((jax.vmap(FM, (None, 0))(th, x) - y) ** 2)


def residual(th, x, y):
    return jax.vmap(FM, (None, 0))(th, x)[:, 0] - y[:, 0]


def same(dist, ref, rtol=1e-10):
    np.testing.assert_allclose(np.asarray(dist.theta), np.asarray(ref.theta), rtol=rtol, atol=rtol)
    np.testing.assert_allclose(dist.history, ref.history, rtol=rtol, atol=1e-14)
    assert dist.result is ref.result and dist.steps == ref.steps, (dist, ref)


def check_data_that_is_not_global_is_refused():
    # Own rows passed as if they were the whole data, and a theta0 that differs by process:
    # both would train on a silent mixture.
    mine = (np.asarray(X)[HALF], np.asarray(Y)[HALF])
    for args, theta0 in [(mine, FM.theta0), ((X, Y), FM.theta0 + PID)]:
        try:
            sb.minimize(loss, theta0, "adam", args=args, max_steps=2, mesh=MESH, progress=False)
        except ValueError as e:
            assert "differ between" in str(e) and "process_local=True" in str(e), e
        else:
            raise AssertionError("data that differs between processes was accepted")


def check_data_parallel():
    # The global array is the two processes' rows in process order, split over 4 devices.
    x = ARGS[0]
    assert x.shape == (64, 1) and x.sharding.shard_shape(x.shape) == (16, 1)
    np.testing.assert_array_equal(multihost_utils.process_allgather(x, tiled=True), X)
    ref = sb.minimize(loss, FM.theta0, "adam", args=(X, Y), max_steps=30, **ADAM)
    same(sb.minimize(loss, FM.theta0, "adam", args=ARGS, max_steps=30, mesh=MESH, **ADAM), ref)
    # A cutoff well above the Gramian's rounding floor (test_scale.py): at 1e-4 this tiny net
    # has singular values near the cutoff and 1e-16 reduction differences grow to 4e-8.
    kw = dict(max_steps=3, rcond=(1e-3,), progress=False, throw=False)
    ref = sb.least_squares(residual, FM.theta0, "gauss-newton", args=(X, Y), **kw)
    same(sb.least_squares(residual, FM.theta0, "gauss-newton", args=ARGS, mesh=MESH, **kw), ref)


def nan_loss(th, x):
    # NaN once th[0] > 2.5, but only at x > 0: the rows of process 1 alone.
    fit = jnp.mean((th[0] * x - 3.0 * x) ** 2)
    return fit + jnp.mean(jnp.where(x > 0, jnp.log(2.5 - th[0]) * 0.0, 0.0))


def check_process_local_nan():
    (xs,) = sb.shard((np.asarray(X)[HALF, 0],), MESH, process_local=True)
    kw = dict(max_steps=60, learning_rate=0.1, chunk_size=7, progress=False, throw=False)
    ref = sb.minimize(nan_loss, jnp.zeros(1), "adam", args=(X[:, 0],), **kw)
    dist = sb.minimize(nan_loss, jnp.zeros(1), "adam", args=(xs,), mesh=MESH, **kw)
    assert ref.result is sb.RESULTS.nonfinite and 0 < ref.steps < 60, ref
    assert float(ref.theta[0]) <= 2.5 and np.isfinite(ref.loss)
    same(dist, ref)
    try:
        sb.minimize(nan_loss, jnp.zeros(1), "adam", args=(xs,), mesh=MESH, **{**kw, "throw": True})
    except sb.NonFiniteLossError as e:
        np.testing.assert_allclose(np.asarray(e.theta), np.asarray(ref.theta), rtol=1e-10)
    else:
        raise AssertionError("throw=True did not raise on the process-local NaN")


def check_ensembles():
    keys = jax.random.split(jax.random.key(1), 8)
    thetas = jnp.stack([sb.FlatMLP((1, 8, 1), key=k, dtype=jnp.float64).theta0 for k in keys])
    kw = dict(args=(X, Y), max_steps=10, **ADAM)
    ref = sb.minimize(loss, thetas, "adam", **kw)
    # ("members", "data") meshes compile one more program each: their placement is checked
    # in test_distributed.py, the members axis alone here.
    mesh = jax.make_mesh((4,), ("members",))
    res = sb.minimize(loss, thetas, "adam", mesh=mesh, **kw)
    for i in range(8):
        assert_ulp_close(res[i].theta, ref[i].theta, ulps=64)
        np.testing.assert_allclose(res[i].history, ref[i].history, rtol=1e-12)
    state, (good_theta, *_) = chunks[-1]
    # theta and the optimiser state during the run, and the result's theta after it
    for leaf in [good_theta, *jax.tree.leaves(state), res.theta]:
        assert tuple(leaf.sharding.spec)[:1] == ("members",), leaf.sharding
        assert [s.data.shape[0] for s in leaf.addressable_shards] == [2, 2]  # 2 members each
        assert {s.device for s in leaf.addressable_shards} == set(jax.local_devices())
    try:
        sb.minimize(loss, thetas[:6], "adam", mesh=jax.make_mesh((4,), ("members",)), **kw)
    except ValueError as e:
        assert "multiple of 4" in str(e), e
    else:
        raise AssertionError("6 members on 4 devices were accepted")


def check_checkpoint_written_once():
    path = os.path.join(OUT, "ck.npz")
    res = sb.minimize(loss, FM.theta0, "adam", args=ARGS, max_steps=20, mesh=MESH,
                      checkpoint=path, **ADAM)  # fmt: skip
    assert res.steps == 20
    multihost_utils.sync_global_devices("listed")  # nobody writes while the others look
    assert writes == ([path, path] if PID == 0 else []), writes  # steps 10 and 20, process 0
    assert sorted(os.listdir(OUT)) == ["ck.npz"], os.listdir(OUT)


def check_resume():
    path = os.path.join(OUT, "ck.npz")
    writes.clear()
    full = sb.minimize(loss, FM.theta0, "adam", args=ARGS, max_steps=40, mesh=MESH, **ADAM)
    resumed = sb.minimize(loss, FM.theta0, "adam", args=ARGS, max_steps=40, mesh=MESH,
                          checkpoint=path, **ADAM)  # fmt: skip
    np.testing.assert_array_equal(np.asarray(resumed.theta), np.asarray(full.theta))
    np.testing.assert_array_equal(resumed.history, full.history)
    assert resumed.steps == 40 and writes == ([path, path] if PID == 0 else []), writes  # 30, 40


def check_sigint_on_one_process():
    # Ctrl-C reaching one process only (or the processes between different chunks): every
    # process stops at the same chunk boundary. Before, process 0 returned alone and process
    # 1's next chunk failed in its all-reduce with a raw Gloo error: its run was lost.
    calls = []

    def callback(step, theta, value):
        calls.append(step)
        if PID == 0 and len(calls) == 2:
            os.kill(os.getpid(), signal.SIGINT)

    kw = {**ADAM, "chunk_size": 5}
    res = sb.minimize(loss, FM.theta0, "adam", args=ARGS, max_steps=1000, mesh=MESH,
                      callback=callback, **kw)  # fmt: skip
    assert res.result is sb.RESULTS.interrupted and res.steps == 10 and len(calls) == 2, res


def check_callback_raising_on_one_process():
    # A callback raising on process 0 only: process 1 went on into the next chunk's
    # all-reduce and died with a raw Gloo error (its run lost). Now both fail at that point.
    calls = []

    def callback(step, theta, value):
        calls.append(step)
        if PID == 0 and len(calls) == 2:
            raise ValueError("boom")

    kw = {**ADAM, "chunk_size": 5}
    try:
        sb.minimize(loss, FM.theta0, "adam", args=ARGS, max_steps=1000, mesh=MESH,
                    callback=callback, **kw)  # fmt: skip
    except sb.OptimizationError as e:
        assert e.result.steps == 9 and len(calls) == 2, e.result
        assert ("boom" if PID == 0 else "it raised on process 0") in str(e), str(e)
    else:
        raise AssertionError("no OptimizationError")


def check_a_run_of_one_process_own_data_waits_for_no_one():
    # Under jax.distributed a run on one process's own arrays is that process's alone: the
    # agreement on Ctrl-C and callbacks made it wait (forever) for processes not running it.
    x = jnp.linspace(0.0, 1.0, 8)
    quad = lambda t, x: jnp.sum((t - jnp.mean(x)) ** 2)
    if PID == 0:
        kw = {**ADAM, "chunk_size": 5}
        res = sb.minimize(quad, jnp.zeros(2), "adam", args=(x,), max_steps=20,
                          callback=lambda *a: None, **kw)  # fmt: skip
        assert res.steps == 20, res
        res = sb.minimize(quad, jnp.zeros(2), "scipy:BFGS", args=(x,), progress=False,
                          callback=lambda *a: None)  # fmt: skip
        assert res.success, res


def check_scipy_callback_raising_on_one_process():
    # As `check_callback_raising_on_one_process`, on a SciPy route over the mesh.
    calls = []

    def callback(step, theta, value):
        calls.append(step)
        if PID == 1 and len(calls) == 2:
            raise ValueError("boom")

    try:
        sb.minimize(loss, FM.theta0, "scipy:L-BFGS-B", args=ARGS, max_steps=50, mesh=MESH,
                    callback=callback, progress=False)  # fmt: skip
    except sb.OptimizationError as e:
        assert e.result.steps == 2 and len(calls) == 2, e.result
        assert ("boom" if PID == 1 else "it raised on process 1") in str(e), str(e)
    else:
        raise AssertionError("no OptimizationError")


CHECKS = (check_data_that_is_not_global_is_refused, check_data_parallel, check_process_local_nan,
          check_ensembles, check_checkpoint_written_once, check_resume,
          check_sigint_on_one_process, check_callback_raising_on_one_process,
          check_a_run_of_one_process_own_data_waits_for_no_one,
          check_scipy_callback_raising_on_one_process)  # fmt: skip
for check in CHECKS:
    start = time.perf_counter()
    check()
    print(f"process {PID}: {check.__name__} {time.perf_counter() - start:.1f} s", flush=True)
multihost_utils.sync_global_devices("done")
print(f"process {PID}: ok", flush=True)
