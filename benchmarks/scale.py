"""Scale-out: is an 8-member ensemble cheaper than 8 runs, and what do simulated devices give?

(a) 8 sequential `sb.minimize` runs vs one 8-member ensemble (a `(8, n)` theta0), Adam on a
    tiny PINN-sized fit; (b) the same single run sharded over 1, 2 and 4 simulated CPU
    devices (`--xla_force_host_platform_device_count`), each in its own process because the
    flag must be set before JAX starts. Honest caveat: simulated devices share this machine's
    cores, so (b) shows overhead and correctness of the path, not a real speed-up.
"""

import os
import statistics
import subprocess
import sys
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


def main(points: int = 1024, steps: int = 500, repeats: int = 5) -> str:
    header = ["| configuration | wall time | speed-up |", "|---|---|---|"]
    lines = [
        f"Adam, {steps} steps, FlatMLP (1, 32, 32, 1), {points} points, float64, median of "
        f"{repeats}.",
        "",
        *header,
        *_ensemble_table(points, steps, repeats, (1, 32, 32, 1)),
        *_ensemble_table(32, steps, repeats, (1, 10, 10, 1)),
        "",
        "An ensemble shares dispatches and compilation, not arithmetic: on this 2-core CPU",
        "8 members cost between 3.5 and 6 single runs over our repeats (batched small matmuls are",
        "barely cheaper per member than separate ones); accelerators batch far better.",
        "",
        *header,
        *_device_table(points, steps, repeats),
        "",
        "Simulated devices share the same 2 CPU cores: the rows show the sharded path's",
        "overhead, not a speed-up you would get from real accelerators.",
    ]
    table = "\n".join(lines)
    print(table)
    os.makedirs(os.path.join(os.path.dirname(__file__), "results"), exist_ok=True)
    with open(os.path.join(os.path.dirname(__file__), "results", "scale.md"), "w") as f:
        f.write(table + "\n")
    return table


if __name__ == "__main__":
    main()
