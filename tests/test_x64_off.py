"""With x64 off JAX truncates float64 silently (jax#11895); every entry point that takes arrays
raises instead. One fresh process (x64 off) runs every case."""

import jax.numpy as jnp
import numpy as np
import pytest
from helpers import run_python

import sciml_bridge as sb


_CODE = """
import jax, jax.numpy as jnp, numpy as np, equinox as eqx
import os, sys
import sciml_bridge as sb
assert not jax.config.read("jax_enable_x64")
PATH = os.environ["SB_TEST_PATH"]


class LAYOUT:  # the layout of the float64 file (a float64 `re` cannot be made with x64 off)
    paths, shapes, dtypes, size = ["['w']"], [(3,)], [np.float64], 3


mlp = eqx.nn.MLP(1, 1, 4, 1, key=jax.random.key(0))
theta, re = sb.destructure(mlp)
assert theta.dtype == jnp.float32
assert re(np.asarray(theta, np.float32))(jnp.ones(1)).dtype == jnp.float32
fm = sb.flat(mlp)
x64 = np.linspace(0.0, 1.0, 8)[:, None]
fast = sb.FlatMLP((1, 4, 1), key=jax.random.key(0))
u = lambda theta, x: theta[0] * x
checks = {
    "dtype=float64": lambda: sb.destructure(mlp, dtype=jnp.float64),
    "numpy theta": lambda: re(np.asarray(theta, np.float64)),
    "numpy leaves": lambda: sb.destructure({"w": np.ones(3)}),
    "flat numpy theta": lambda: sb.flat(mlp, fast=False)(np.zeros(theta.size), jnp.ones(1)),
    "FlatMLP dtype": lambda: sb.FlatMLP((1, 4, 1), key=jax.random.key(0), dtype=jnp.float64),
    "FlatMLP numpy x": lambda: fast(fast.theta0, np.ones(1)),
    "HardConstraint numpy x": lambda: sb.HardConstraint(fast, lambda x: x[0])(fast.theta0,
                                                                              np.ones(1)),
    "HardConstraint laplacian numpy x": lambda: sb.laplacian(
        sb.HardConstraint(fast, lambda x: x[0]))(fast.theta0, np.ones(1)),
    "pinn points": lambda: sb.pinn(fm, {"bc": (lambda u, x: u(x), x64)}),
    "error_report points": lambda: sb.error_report(u, jnp.ones(1), x64, np.zeros((8, 1), "f4")),
    "error_report reference": lambda: sb.error_report(u, jnp.ones(1), x64.astype("f4"),
                                                      np.zeros((8, 1))),
    "collocation bounds": lambda: sb.collocation_points(np.zeros(2), np.ones(2), 4),
    "collocation dtype": lambda: sb.collocation_points(0.0, 1.0, 4, dtype=jnp.float64),
    "load float64": lambda: sb.load(PATH, LAYOUT),
    "save numpy float64": lambda: sb.save(PATH + ".new", np.zeros(theta.size), re),
}
# Inputs on every path, frozen leaves and NumPy scalars (not only FlatMLP's `x`).
general = sb.flat(mlp, fast=False)
checks.update({
    "general path numpy x": lambda: general(general.theta0, np.ones(1)),
    "apply_fn numpy x": lambda: sb.flat(lambda v, x: v["w"] @ x, {"w": jnp.ones((1, 1))})(
        jnp.ones(1, jnp.float32), np.ones(1)),
    "laplacian general numpy x": lambda: sb.laplacian(general)(general.theta0, np.ones(1)),
    "laplacian batched general numpy xs": lambda: sb.laplacian(general, batched=True)(
        general.theta0, np.ones((2, 1))),
    "grad_x general numpy x": lambda: sb.grad_x(general)(general.theta0, np.ones(1)),
    "frozen numpy leaf": lambda: sb.destructure({"w": jnp.ones(3), "k": np.ones(3)},
                                                params=lambda x: x.dtype == jnp.float32),
    "shard numpy scalar": lambda: sb.shard((np.float64(1.0),), jax.make_mesh((1,), ("d",))),
})
# Every array entering the engine (issue 12 #2) and the neural-ODE inputs.
checks.update({
    "minimize theta0": lambda: sb.minimize(lambda t: jnp.sum(t ** 2), np.zeros(3), max_steps=2),
    "minimize args": lambda: sb.minimize(lambda t, a: jnp.sum((t - a[0]) ** 2), theta,
                                         "adam", args=(np.ones(theta.size),), max_steps=2),
    "least_squares args": lambda: sb.least_squares(lambda t, a: t - a[0], theta, "lm",
                                                   args=(np.ones(theta.size),), max_steps=2),
    "scipy_objective args": lambda: sb.scipy_objective(lambda t, a: jnp.sum(t * a),
                                                       np.ones(theta.size), dtype=jnp.float32),
})
node = sb.NeuralODE(lambda theta, y: theta * y)
f32 = dict(theta=np.ones(2, np.float32), y0=np.ones(2, np.float32),
           ts=np.linspace(0, 1, 3, dtype=np.float32))
assert node(**f32).dtype == jnp.float32
for name in f32:
    checks[f"NeuralODE {name}"] = lambda name=name: node(**{**f32, name: f32[name].astype("f8")})

def failures(checks):
    failed = []
    for name, check in checks.items():
        try:
            check()
        except TypeError as e:
            msg = str(e)
            ok = 'jax.config.update("jax_enable_x64", True)' in msg and "silently" in msg
            if not (ok and "float64" in msg):
                failed.append((name, msg[:300]))
        except Exception as e:
            failed.append((name, f"{type(e).__name__}: {str(e)[:300]}"))
        else:
            failed.append((name, "no TypeError"))
    return failed


print("FAILED", failures(checks))
# The error names the argument.
for name in f32:
    try:
        node(**{**f32, name: f32[name].astype("f8")})
    except TypeError as e:
        print("NAMED", name, f"`{name}`" in str(e))
# Defaults follow JAX's widest float: float32 with x64 off.
print("COLLOCATION", sb.collocation_points(0.0, 1.0, 4).dtype)
# Both SciPy routes, one float rule: float32, JAX's widest float with x64 off.
seen = []
def rec(t):
    seen.append(str(t.dtype))
    return jnp.sum((t - 1.0) ** 2)
res = sb.minimize(rec, jnp.zeros(2), "scipy:BFGS", progress=False)
sb.scipy_objective(rec).fun_and_jac(np.zeros(2))
print("SCIPY", sorted(set(seen)), res.theta.dtype, np.allclose(res.theta, 1.0))
# A list of Python numbers is weakly typed: saved as float32, which loads back.
sb.save(PATH + ".list", [0.5] * theta.size, re)
back = sb.load(PATH + ".list", re)
print("LIST", back.dtype, bool(np.all(np.asarray(back) == 0.5)))
"""


@pytest.fixture(scope="module")
def x64_off_run(tmp_path_factory):
    """One fresh process with x64 off runs every case; the tests read its report."""
    path = str(tmp_path_factory.mktemp("x64") / "theta64.npz")
    _, re = sb.destructure({"w": jnp.zeros(3)})  # a float64 checkpoint (x64 is on here)
    sb.save(path, np.arange(3.0), re)
    proc = run_python(_CODE, env={"JAX_ENABLE_X64": "0", "SB_TEST_PATH": path})
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout.splitlines()


def test_float64_with_x64_off_is_a_clear_type_error_at_every_entry_point(x64_off_run):
    assert "FAILED []" in x64_off_run, x64_off_run


def test_the_error_names_the_neural_ode_argument(x64_off_run):
    named = [line for line in x64_off_run if line.startswith("NAMED")]
    assert named == ["NAMED theta True", "NAMED y0 True", "NAMED ts True"], x64_off_run


def test_defaults_and_scipy_use_float32_with_x64_off(x64_off_run):
    assert "COLLOCATION float32" in x64_off_run, x64_off_run
    assert "SCIPY ['float32'] float32 True" in x64_off_run, x64_off_run


def test_a_list_saved_with_x64_off_is_float32_and_loads_back(x64_off_run):
    assert "LIST float32 True" in x64_off_run, x64_off_run
