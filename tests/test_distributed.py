"""Several processes on JAX's distributed runtime, the launcher, and `sb.distributed_init`.

The multi-process checks run in ONE launch of two real processes with two CPU devices each
(tests/_dist_worker.py): compiling is most of their time, so they share it.
"""

import io
import os
import pathlib
import subprocess
import sys
import textwrap
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import run_python
from jax.sharding import NamedSharding, PartitionSpec

import sciml_bridge as sb
from sciml_bridge import _distributed
from sciml_bridge._sharding import members_sharding, place
from sciml_bridge._solvers._cpu_pool import batched_lapack
from sciml_bridge.launch import launch, main


TESTS = pathlib.Path(__file__).parent


@pytest.mark.slow
def test_two_processes_match_one_and_checkpoint_once(tmp_path):
    """2 processes x 2 devices: Adam, Gauss-Newton, a NaN in one process's rows, sharded
    ensembles and a checkpoint written once and resumed (see _dist_worker.py)."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(TESTS.parent), str(TESTS), env.get("PYTHONPATH", "")])
    cmd = [sys.executable, "-m", "sciml_bridge.launch", "--processes", "2",
           "--devices-per-process", "2", "--timeout", "400", str(TESTS / "_dist_worker.py"),
           str(tmp_path)]  # fmt: skip
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=450)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
    assert "[0] process 0: ok" in proc.stdout and "[1] process 1: ok" in proc.stdout
    assert sorted(os.listdir(tmp_path)) == ["ck.npz"]


def _script(tmp_path, code: str) -> str:
    path = tmp_path / "script.py"
    path.write_text(textwrap.dedent(code))
    return str(path)


def test_launcher_sets_the_environment_and_prefixes_output(tmp_path):
    script = _script(tmp_path, """
        import os, sys
        e = os.environ
        print(e["SCIML_BRIDGE_PROCESS_ID"], e["SCIML_BRIDGE_NUM_PROCESSES"],
              e["SCIML_BRIDGE_COORDINATOR"], e["XLA_FLAGS"].split()[-1], sys.argv[1:])
    """)
    out = io.StringIO()
    assert launch(script, ["a", "--b"], processes=3, devices=2, timeout=60, out=out) == 0
    lines = sorted(out.getvalue().splitlines())
    assert [line.split()[:3] for line in lines] == [[f"[{i}]", str(i), "3"] for i in range(3)]
    addresses = {line.split()[3] for line in lines}
    assert len(addresses) == 1 and addresses.pop().startswith("127.0.0.1:")
    assert all("--xla_force_host_platform_device_count=2 ['a', '--b']" in x for x in lines)


def test_launcher_stops_the_others_when_one_fails(tmp_path):
    script = _script(tmp_path, """
        import os, sys, time
        i = int(os.environ["SCIML_BRIDGE_PROCESS_ID"])
        print("started", i, flush=True)
        if i == 1:
            sys.exit(3)
        time.sleep(120)
    """)
    out, start = io.StringIO(), time.monotonic()
    assert launch(script, processes=2, timeout=100, out=out) == 3
    assert time.monotonic() - start < 30  # process 0 was stopped, not waited for
    assert "[1] started 1" in out.getvalue()


def test_launcher_timeout_stops_every_process(tmp_path):
    script = _script(tmp_path, "import time\ntime.sleep(120)\n")
    out, start = io.StringIO(), time.monotonic()
    assert launch(script, processes=2, timeout=1.0, out=out) == 124
    assert time.monotonic() - start < 30
    assert "timed out after 1.0 s" in out.getvalue()


def test_launcher_command_line_rejects_zero_processes(capsys):
    with pytest.raises(SystemExit):
        main(["--processes", "0", "x.py"])
    assert "at least 1" in capsys.readouterr().err


def test_distributed_init_is_a_no_op_without_the_launcher(monkeypatch):
    monkeypatch.delenv(_distributed.ENV_COORDINATOR, raising=False)
    assert sb.distributed_init() is False
    assert jax.process_count() == 1


def test_mesh_for_several_processes_without_the_runtime_is_an_error(monkeypatch):
    # Started by the launcher for 2 processes, but `jax.distributed` was never initialised:
    # each process would silently train alone.
    monkeypatch.setenv(_distributed.ENV_NUM_PROCESSES, "2")
    mesh = jax.make_mesh((1,), ("data",))
    with pytest.raises(RuntimeError, match=r"jax\.distributed\.initialize.*") as err:
        sb.minimize(lambda th: jnp.sum(th**2), jnp.ones(2), mesh=mesh, progress=False)
    assert "sb.distributed_init()" in str(err.value) and "2 processes" in str(err.value)
    with pytest.raises(RuntimeError, match="sb.shard"):
        sb.shard((jnp.zeros(4),), mesh)


def test_process_local_data_in_one_process_is_the_global_array():
    mesh = jax.make_mesh((1,), ("data",))
    x, s = np.arange(8.0).reshape(4, 2), np.float64(2.5)
    xs, ss = sb.shard((x, s), mesh, process_local=True)
    np.testing.assert_array_equal(np.asarray(xs), x)
    assert xs.sharding.mesh.axis_names == ("data",) and float(ss) == 2.5
    with pytest.raises(TypeError, match="jax.sharding.Mesh"):
        sb.shard((x,), "cpu", process_local=True)


def test_members_axis_splits_theta_and_leaves_data_whole():
    # The equality with an unsharded ensemble on 4 devices is in _dist_worker.py.
    mesh = jax.make_mesh((1,), ("members",))
    thetas, x = jnp.ones((3, 2)), jnp.linspace(0.0, 1.0, 6)
    placed, (xs,) = place(thetas, (x,), mesh, "sb.minimize")
    assert tuple(placed.sharding.spec) == ("members",) and members_sharding(placed) is not None
    assert tuple(xs.sharding.spec) == ()  # no data axis: the data is replicated
    single, _ = place(thetas[0], (x,), mesh, "sb.minimize")  # one run: theta replicated
    assert tuple(single.sharding.spec) == () and members_sharding(single) is None
    both = jax.make_mesh((1, 1), ("members", "data"))  # members and data parallelism
    placed, (xs,) = place(thetas, (x,), both, "sb.minimize")
    assert tuple(placed.sharding.spec) == ("members",) and tuple(xs.sharding.spec) == ("data",)


_LAPACK_ENSEMBLE = """
import os, warnings
if hasattr(os, "sched_setaffinity"):  # 2 CPUs: XLA's intra-op pool gets 2 threads, one a device
    os.sched_setaffinity(0, sorted(os.sched_getaffinity(0))[:2])
os.environ.pop("NPROC", None), os.environ.pop("PORTABLE_NPROC", None)
import jax, jax.numpy as jnp, numpy as np
jax.config.update("jax_enable_x64", True)
import sciml_bridge as sb
warnings.simplefilter("error", RuntimeWarning)  # the driver's own factorisations: no warning

A = jax.random.normal(jax.random.key(0), (120, 96)) / 10
b = jax.random.normal(jax.random.key(1), (120,))

def residual(th):  # 96 parameters: big enough that jaxlib splits a batched factorisation
    return A @ th + 0.1 * jnp.sin(th).sum() - b

thetas = jax.random.normal(jax.random.key(2), (4, 96))
kw = dict(max_steps=4, progress=False, throw=False)
for method in ("natural-gradient", "lm"):  # eigh; Lineax's QR
    refs = [sb.least_squares(residual, theta, method, **kw) for theta in thetas]
    for axis in ("members", "data"):
        res = sb.least_squares(residual, thetas, method, mesh=jax.make_mesh((2,), (axis,)), **kw)
        for got, ref in zip(res, refs):
            np.testing.assert_allclose(got.theta, ref.theta, rtol=1e-9, atol=1e-12)
            assert got.steps == ref.steps, (axis, method)
        spec = tuple(res.theta.sharding.spec)
        assert spec == ((axis,) if axis == "members" else ()), spec

def nan_loss(th):  # NaN once th[0] > 2.5: member 0 fails at step 28, the others run on
    return jnp.sum((th - 3.0) ** 2) + jnp.where(th[0] > 2.5, jnp.nan, 0.0)

starts = jnp.array([[0.0, 0.0], [-10.0, 0.0], [-10.0, 1.0], [-20.0, 0.0]])
kw = dict(max_steps=50, learning_rate=0.1, chunk_size=7, progress=False, throw=False)
ref = sb.minimize(nan_loss, starts, "adam", **kw)
assert ref[0].result is sb.RESULTS.nonfinite and 0 < ref[0].steps < 50, ref[0]
for axis in ("members", "data"):
    res = sb.minimize(nan_loss, starts, "adam", mesh=jax.make_mesh((2,), (axis,)), **kw)
    for got, want in zip(res, ref):
        assert got.result is want.result and got.steps == want.steps, (axis, got, want)
        np.testing.assert_allclose(got.theta, want.theta, rtol=1e-12, atol=1e-14)

# A loss that batches a factorisation itself (a vmapped solve over the data split across the
# devices) is warned about before it runs; this one is too small for jaxlib to split, so it
# finishes. With NPROC=4 in the environment it would not be warned about.
X = jax.random.normal(jax.random.key(3), (8, 3, 3))
def solve_loss(th, X):
    A = X @ jnp.swapaxes(X, 1, 2) + (1.0 + th[0] ** 2) * jnp.eye(3)
    return jnp.mean(jnp.linalg.solve(A, jnp.ones((8, 3, 1))) ** 2)
warnings.simplefilter("always", RuntimeWarning)
with warnings.catch_warnings(record=True) as caught:
    sb.minimize(solve_loss, jnp.ones(1), "adam", args=(X,), mesh=jax.make_mesh((2,), ("data",)),
                max_steps=2, progress=False)
messages = [str(w.message) for w in caught if w.category is RuntimeWarning]
assert len(messages) == 1 and "`lu`" in messages[0] and "NPROC=4" in messages[0], messages
print("ok")
"""


@pytest.mark.slow
def test_ensembles_with_factorisations_finish_on_as_many_cpu_devices_as_threads():
    # jax 0.10.2: a batched LAPACK call (eigh, QR, ...) on a CPU device spreads its batch over
    # the intra-op thread pool the devices themselves run on. With 2 devices and 2 threads,
    # a 4-member ensemble on a 2-device mesh never finished (LM and natural gradient). Members
    # now run one at a time per device: each still fails alone, as in a vmapped ensemble.
    flags = f"{os.environ.get('XLA_FLAGS', '')} --xla_force_host_platform_device_count=2"
    proc = run_python(_LAPACK_ENSEMBLE, env={"XLA_FLAGS": flags.strip()}, timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.strip().endswith("ok")


def test_batched_lapack_is_found_inside_nested_jaxprs_and_only_when_batched():
    a = jnp.eye(3) + 0.1
    one = lambda a: jnp.linalg.solve(a, jnp.ones(3))
    many = jax.vmap(one)
    in_loop = lambda x: jax.lax.fori_loop(0, 2, lambda i, y: y + many(y).sum(), x)
    assert batched_lapack(jax.make_jaxpr(one)(a).jaxpr) is None
    assert batched_lapack(jax.make_jaxpr(many)(jnp.stack([a, a])).jaxpr) == "lu"
    assert batched_lapack(jax.make_jaxpr(in_loop)(jnp.stack([a, a])).jaxpr) == "lu"
    eigh = jax.vmap(lambda a: jnp.linalg.eigh(a)[0])
    assert batched_lapack(jax.make_jaxpr(eigh)(jnp.stack([a, a])).jaxpr) == "eigh"


def test_an_ensemble_put_on_an_explicit_axis_mesh_by_hand_runs():
    # `jax.make_mesh` gives Explicit axes; a `theta0` put there by hand (no `mesh=`) could not
    # even be indexed (JAX's ShardingTypeError asks for `out_sharding=` on the gather).
    mesh = jax.make_mesh((1,), ("members",))
    thetas = jax.device_put(jnp.zeros((2, 3)), NamedSharding(mesh, PartitionSpec("members")))
    res = sb.minimize(lambda t: jnp.sum((t - 1.0) ** 2), thetas, "lbfgs", max_steps=20,
                      progress=False)  # fmt: skip
    assert all(m.success for m in res) and res.theta.shape == (2, 3)
    np.testing.assert_allclose(np.asarray(res.theta), 1.0, rtol=1e-10)
    fit = sb.least_squares(lambda t: t - 1.0, thetas, "gauss-newton", max_steps=20,
                           progress=False)  # fmt: skip
    np.testing.assert_allclose(np.asarray(fit.theta), 1.0, rtol=1e-12)
