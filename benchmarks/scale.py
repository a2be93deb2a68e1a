"""Scale-out: is an 8-member ensemble cheaper than 8 runs, and what do simulated devices give?

(a) 8 sequential `sb.minimize` runs vs one 8-member ensemble (a `(8, n)` theta0), Adam on a
    tiny PINN-sized fit; (b) the same single run sharded over 1, 2 and 4 simulated CPU
    devices (`--xla_force_host_platform_device_count`), each in its own process because the
    flag must be set before JAX starts; (c) the same run on 2 devices in one process against
    2 processes of 1 device each (JAX's distributed runtime, gloo, started by
    `sciml_bridge.launch`); (d) an 8-member ensemble on 4 simulated devices: unsharded, data
    split, members split. Honest caveat: simulated devices and local processes share this
    machine's cores, so (b)-(d) show overhead and correctness of the paths, not a real
    speed-up.
"""

import os
import statistics
import subprocess
import sys
import tempfile
import time


_WORKER = """
import time, statistics, jax, jax.numpy as jnp
jax.config.update("jax_enable_x64", True)
import sciml_bridge as sb
mesh = jax.make_mesh((jax.device_count(),), ("data",))
fm = sb.FlatMLP((1, 32, 32, 1), key=jax.random.key(0), dtype=jnp.float64)
x = jnp.linspace(-1, 1, {points})[:, None]
y = jnp.sin(3 * x)
loss = lambda th, x, y: jnp.mean((jax.vmap(fm, (None, 0))(th, x) - y) ** 2)
run = lambda: sb.minimize(loss, fm.theta0, "adam", args=(x, y), max_steps={steps},
                          progress=False, mesh=mesh, learning_rate=1e-3)
run()
times = []
for _ in range({repeats}):
    t = time.perf_counter(); run(); times.append(time.perf_counter() - t)
print(statistics.median(times))
"""


# (c): one process of a 2-process run; process 0 prints the median.
_PROCESS_WORKER = """
import time, statistics
import sciml_bridge as sb
sb.distributed_init()
import jax, jax.numpy as jnp
jax.config.update("jax_enable_x64", True)
""" + _WORKER.split("import sciml_bridge as sb", 1)[1].replace(
    "print(statistics.median(times))",
    "if jax.process_index() == 0:\n    print(statistics.median(times))")

# (d): an 8-member ensemble on 4 simulated devices, three placements.
_ENSEMBLE_WORKER = """
import time, statistics, jax, jax.numpy as jnp
jax.config.update("jax_enable_x64", True)
import sciml_bridge as sb
keys = jax.random.split(jax.random.key(0), 8)
fm = sb.FlatMLP((1, 32, 32, 1), key=keys[0], dtype=jnp.float64)
thetas = jnp.stack([sb.FlatMLP((1, 32, 32, 1), key=k, dtype=jnp.float64).theta0 for k in keys])
x = jnp.linspace(-1, 1, {points})[:, None]
y = jnp.sin(3 * x)
loss = lambda th, x, y: jnp.mean((jax.vmap(fm, (None, 0))(th, x) - y) ** 2)
meshes = dict(none=None, data=jax.make_mesh((4,), ("data",)),
              members=jax.make_mesh((4,), ("members",)))
runs = {{k: (lambda m=m: sb.minimize(loss, thetas, "adam", args=(x, y), max_steps={steps},
                                     progress=False, mesh=m, learning_rate=1e-3))
        for k, m in meshes.items()}}
times = {{k: [] for k in runs}}
for run in runs.values():
    run()
for _ in range({repeats}):  # interleaved, so load changes hit every placement alike
    for k, run in runs.items():
        t = time.perf_counter(); run(); times[k].append(time.perf_counter() - t)
print(*(statistics.median(times[k]) for k in runs))
"""


def _problem(points: int, sizes=(1, 32, 32, 1)):
    import jax
    import jax.numpy as jnp

    import sciml_bridge as sb

    jax.config.update("jax_enable_x64", True)
    keys = jax.random.split(jax.random.key(0), 8)
    thetas = jnp.stack([sb.FlatMLP(sizes, key=k, dtype=jnp.float64).theta0 for k in keys])
    fm = sb.FlatMLP(sizes, key=keys[0], dtype=jnp.float64)
    x = jnp.linspace(-1, 1, points)[:, None]
    y = jnp.sin(3 * x)

    def loss(th, x, y):
        return jnp.mean((jax.vmap(fm, (None, 0))(th, x) - y) ** 2)

    return loss, thetas, (x, y)


def _median(fn, repeats: int) -> float:
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def _ensemble_table(points: int, steps: int, repeats: int, sizes) -> list[str]:
    import sciml_bridge as sb

    loss, thetas, args = _problem(points, sizes)
    kw = dict(args=args, max_steps=steps, progress=False, learning_rate=1e-3)
    seq = _median(lambda: [sb.minimize(loss, t, "adam", **kw) for t in thetas], repeats)
    ens = _median(lambda: sb.minimize(loss, thetas, "adam", **kw), repeats)
    label = f"{sizes}, {points} points"
    return [
        f"| 8 sequential runs, {label} | {seq * 1e3:.1f} ms | 1.00x |",
        f"| one 8-member ensemble, {label} | {ens * 1e3:.1f} ms | {seq / ens:.2f}x |",
    ]


def _device_table(points: int, steps: int, repeats: int) -> list[str]:
    rows, base = [], None
    code = _WORKER.format(points=points, steps=steps, repeats=repeats)
    for n in (1, 2, 4):
        env = dict(os.environ, XLA_FLAGS=f"--xla_force_host_platform_device_count={n}")
        out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                             text=True, check=True)
        seconds = float(out.stdout.strip().splitlines()[-1])
        base = base or seconds
        rows.append(f"| {n} simulated device(s) | {seconds * 1e3:.1f} ms | {base / seconds:.2f}x |")
    return rows


def _process_table(points: int, steps: int, repeats: int) -> list[str]:
    """One process with 2 devices against 2 processes with 1 device each: the same mesh size."""
    from sciml_bridge.launch import launch

    code = _WORKER.format(points=points, steps=steps, repeats=repeats)
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=2")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                         check=True)  # fmt: skip
    one = float(out.stdout.strip().splitlines()[-1])
    with tempfile.TemporaryDirectory() as tmp:
        script = os.path.join(tmp, "worker.py")
        with open(script, "w") as f:
            f.write(_PROCESS_WORKER.format(points=points, steps=steps, repeats=repeats))
        with open(os.path.join(tmp, "log"), "w+") as log:
            if launch(script, processes=2, devices=1, timeout=1800, out=log):
                raise RuntimeError("the 2-process run failed")
            log.seek(0)
            two = float([ln for ln in log.read().splitlines() if ln.startswith("[0]")][-1][4:])
    return [f"| 1 process x 2 devices | {one * 1e3:.1f} ms | 1.00x |",
            f"| 2 processes x 1 device (gloo) | {two * 1e3:.1f} ms | {one / two:.2f}x |"]


def _sharded_ensemble_table(points: int, steps: int, repeats: int) -> list[str]:
    code = _ENSEMBLE_WORKER.format(points=points, steps=steps, repeats=repeats)
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=4")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                         check=True)  # fmt: skip
    none, data, members = map(float, out.stdout.strip().splitlines()[-1].split())
    label = "8-member ensemble on 4 simulated devices"
    return [f"| {label}, no mesh | {none * 1e3:.1f} ms | 1.00x |",
            f"| {label}, data split (`(\"data\",)`) | {data * 1e3:.1f} ms | {none / data:.2f}x |",
            f"| {label}, members split (`(\"members\",)`) | {members * 1e3:.1f} ms | "
            f"{none / members:.2f}x |"]


def main(points: int = 1024, steps: int = 500, repeats: int = 5) -> str:
    header = ["| configuration | wall time | speed-up |", "|---|---|---|"]
    load = os.getloadavg()[0]
    lines = [
        f"Adam, {steps} steps, FlatMLP (1, 32, 32, 1), {points} points, float64, median of "
        f"{repeats}. Measured under load (load average {load:.1f} on {os.cpu_count()} cores at "
        "the start): absolute times and ratios between tables are noisy; rows inside the",
        "sharded-ensemble table are interleaved, so their ratios are the fairest.",
        "",
        *header,
        *_ensemble_table(points, steps, repeats, (1, 32, 32, 1)),
        *_ensemble_table(32, steps, repeats, (1, 10, 10, 1)),
        "",
        "An ensemble shares dispatches and compilation, not arithmetic: on a quiet 2-core CPU",
        "8 members cost between 3.5 and 6 single runs (batched small matmuls are barely cheaper",
        "per member than separate ones); under load the ratio moves much more. Accelerators",
        "batch far better.",
        "",
        *header,
        *_device_table(points, steps, repeats),
        "",
        "Simulated devices share the same 2 CPU cores: a second device can use the second",
        "core (one device runs this small problem on about one), more devices only add the",
        "sharded path's overhead. Not a speed-up you would get from real accelerators.",
        "",
        *header,
        *_process_table(points, steps, repeats),
        "",
        "Both rows use a 2-device mesh on the same 2 CPU cores; the second adds JAX's",
        "distributed runtime and gloo's cross-process all-reduce (over local TCP) to every",
        "step. Across real hosts the network decides this cost.",
        "",
        *header,
        *_sharded_ensemble_table(points, steps, repeats),
        "",
        "Members split over devices need no communication (each device trains its own members",
        "on the whole data); data split needs one all-reduce per step. Simulated devices share",
        "the 2 cores, so these rows show the overhead of each layout here, not scaling; on",
        "accelerators the members split is the one that grows with the device count.",
    ]
    table = "\n".join(lines)
    print(table)
    os.makedirs(os.path.join(os.path.dirname(__file__), "results"), exist_ok=True)
    with open(os.path.join(os.path.dirname(__file__), "results", "scale.md"), "w") as f:
        f.write(table + "\n")
    return table


if __name__ == "__main__":
    main()
