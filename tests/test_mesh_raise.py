"""A loss that raises (`eqx.error_if`) on some members of an ensemble split over a members
mesh of 2 CPU devices: the run must return (XLA used to abort the process after 40 s, a
device waiting in an all-reduce the raising one never reached), and the mesh must still run
Lineax/Optimistix solvers (Levenberg-Marquardt's QR, Gauss-Newton) inside its `shard_map`. A
single run on such a mesh that raises returns too (it aborted the same way).
A mesh with data axes beside "members" still partitions each member's data automatically (a
raise there still aborts, see the README), and must give the points of one device.
The cases run in one fresh interpreter with 4 CPU devices, under a timeout: a hang fails it."""

import json

import numpy as np
import pytest
from helpers import run_python


_CODE = """
import json
import jax
jax.config.update("jax_num_cpu_devices", 4)
jax.config.update("jax_enable_x64", True)
import equinox as eqx
import jax.numpy as jnp
import numpy as np
import sciml_bridge as sb

def rosen(t):
    return jnp.sum(100 * (t[1:] - t[:-1] ** 2) ** 2 + (1 - t[:-1]) ** 2)

def raising(t):
    return eqx.error_if(rosen(t), t[0] > 0.5, "t0 too big")

def resid(t):
    return jnp.concatenate([10 * (t[1:] - t[:-1] ** 2), 1 - t[:-1]])

t0 = jnp.array([-1.2, 1.0, 0.5, -0.3])
T = jnp.stack([t0, t0 * 0.9, t0 * 1.1, t0 * 0.8])
mesh = jax.make_mesh((2,), ("members",), devices=jax.devices()[:2])
KW = dict(progress=False, throw=False)
out = {}

def record(name, res):
    out[name] = dict(steps=[int(s) for s in res.steps], theta=np.asarray(res.theta).tolist(),
                     failed=[not m.success for m in res.members])

for method, kw in (("adam", dict(learning_rate=0.3)), ("lbfgs", {})):
    for where, mesh_kw in (("one", {}), ("mesh", dict(mesh=mesh))):
        record(f"{method}-{where}", sb.minimize(raising, T, method, max_steps=30, chunk_size=4,
                                                **kw, **mesh_kw, **KW))
for method in ("lm", "gauss-newton"):
    for where, mesh_kw in (("one", {}), ("mesh", dict(mesh=mesh))):
        record(f"{method}-{where}", sb.least_squares(resid, T, method, max_steps=40,
                                                     **mesh_kw, **KW))
X = jnp.linspace(-1, 1, 8)

def fit(t, x):
    return t[0] * jnp.tanh(t[1] * x + t[2]) + t[3] * x - jnp.sin(2 * x)

both = jax.make_mesh((2, 2), ("members", "data"))
for where, mesh_kw in (("one", {}), ("mesh", dict(mesh=both))):
    record(f"data-{where}", sb.least_squares(fit, T, "lm", args=(X,), max_steps=20, **mesh_kw,
                                             **KW))
for where, mesh_kw in (("one", {}), ("mesh", dict(mesh=mesh))):
    single = sb.minimize(raising, jnp.array([0.3, 0.0]), "adam", learning_rate=0.1,
                         max_steps=50, **mesh_kw, **KW)
    out[f"single-{where}"] = dict(steps=int(single.steps), success=bool(single.success),
                                  theta=np.asarray(single.theta).tolist())
for where, mesh_kw in (("one", {}), ("mesh", dict(mesh=mesh))):
    res = sb.minimize(lambda t, x: jnp.mean(fit(t, x) ** 2), t0, "lbfgs", args=(X,),
                      max_steps=10, **mesh_kw, **KW)
    out[f"args-{where}"] = dict(steps=int(res.steps), theta=np.asarray(res.theta).tolist())
jax.effects_barrier()  # no error of a device JAX did not report is left behind
print("RESULT " + json.dumps(out))
"""


@pytest.fixture(scope="module")
def runs():
    proc = run_python(_CODE, timeout=180)  # a hang raises `subprocess.TimeoutExpired`
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "Exception ignored" not in proc.stderr, proc.stderr[-3000:]
    line = next(x for x in proc.stdout.splitlines() if x.startswith("RESULT "))
    return json.loads(line[len("RESULT ") :])


def _same_steps(a, b):
    # Differently compiled programs (shard_map + lax.map vs vmap) round apart: a stopping test
    # near its threshold may pass one step later on another machine.
    assert np.all(np.abs(np.asarray(a["steps"]) - np.asarray(b["steps"])) <= 1), (a, b)


def _close(a, b, rtol):
    np.testing.assert_allclose(np.asarray(a["theta"]), np.asarray(b["theta"]), rtol=rtol,
                               atol=1e-9)  # fmt: skip


@pytest.mark.parametrize("method", ["adam", "lbfgs"])
def test_raise_on_a_members_mesh_returns(runs, method):
    """The run returns (no abort): every member that raised is failed, at a finite point."""
    one, mesh = runs[f"{method}-one"], runs[f"{method}-mesh"]
    assert any(one["failed"]) and any(mesh["failed"])
    assert np.all(np.isfinite(np.asarray(mesh["theta"])))


def test_single_run_raising_on_a_members_mesh_returns(runs):
    """A single run on a members mesh runs whole on each device: its raise stops it there."""
    one, mesh = runs["single-one"], runs["single-mesh"]
    assert not mesh["success"]
    _same_steps(mesh, one)
    _close(mesh, one, rtol=1e-12)


def test_single_run_with_args_on_a_members_mesh_matches_one_device(runs):
    """Its data closed over by the `shard_map` body met the body's manual arrays: "Mesh for
    all inputs should be equal" from JAX when the run ended (the final loss)."""
    one, mesh = runs["args-one"], runs["args-mesh"]
    _same_steps(mesh, one)
    _close(mesh, one, rtol=1e-12)


def test_members_and_data_mesh_matches_one_device(runs):
    """Members over one axis (manual), each member's points over the other (automatic)."""
    one, mesh = runs["data-one"], runs["data-mesh"]
    assert mesh["failed"] == one["failed"]
    _same_steps(mesh, one)
    _close(mesh, one, rtol=1e-9)


@pytest.mark.parametrize("method", ["lm", "gauss-newton"])
def test_least_squares_on_a_members_mesh(runs, method):
    """Lineax's QR (Levenberg-Marquardt) and Gauss-Newton inside the members `shard_map`: the
    same steps and points as on one device."""
    one, mesh = runs[f"{method}-one"], runs[f"{method}-mesh"]
    assert mesh["failed"] == one["failed"]
    _same_steps(mesh, one)
    _close(mesh, one, rtol=1e-9)


@pytest.mark.parametrize("method", ["adam", "lbfgs"])
def test_raise_on_a_members_mesh_matches_one_device(runs, method):
    """Each member ends where it ends on one device: failed at its own last good point."""
    one, mesh = runs[f"{method}-one"], runs[f"{method}-mesh"]
    assert mesh["failed"] == one["failed"]
    _same_steps(mesh, one)
    _close(mesh, one, rtol=1e-6)  # L-BFGS: vmapped vs mapped line searches round apart
