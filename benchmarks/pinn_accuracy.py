"""Question: on the 2-D Poisson PINN, what error does each optimiser of `theta` reach, how fast?

Same problem, same network (`sb.FlatMLP((2, 32, 1))`), same initial weights for every
contender: the one from `examples/pinn/poisson_2d.py` (20 x 20 interior grid, 84 boundary
points, 129 parameters). Each method gets a fixed budget of steps; the table shows the relative
L2 and max error against the exact solution on a 101 x 101 grid, and the median wall time of
`repeats` runs after one warm-up run (so compilation is not counted), with ratios against
dense Gauss-Newton.

Run `python benchmarks/pinn_accuracy.py`; writes `benchmarks/results/pinn_accuracy.md`.
"""

import statistics
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax

import sciml_bridge as sb


jax.config.update("jax_enable_x64", True)

RESULTS = Path(__file__).resolve().parent / "results" / "pinn_accuracy.md"


def exact(x):
    return jnp.sin(jnp.pi * x[..., 0]) * jnp.sin(jnp.pi * x[..., 1])


def problem(width: int, n_points: int, seed: int):
    fm = sb.FlatMLP((2, width, 1), key=jax.random.key(seed), dtype=jnp.float64)
    x_in = sb.collocation_points((0.0, 0.0), (1.0, 1.0), n_points, dtype=jnp.float64)
    x_bc = sb.collocation_points((0.0, 0.0), (1.0, 1.0), n_points + 2, where="boundary",
                                 dtype=jnp.float64)
    pinn = sb.pinn(fm, {
        "pde": (lambda u, x: -u.laplacian(x) - 2 * jnp.pi**2 * exact(x), x_in),
        "boundary": (lambda u, x: u(x), x_bc),
    })
    return fm, pinn


def contenders(steps_scale: float) -> list[tuple[str, str, str, dict]]:
    """(label, verb, method, options): first-order, quasi-Newton, then least-squares methods."""
    n = lambda k: max(int(k * steps_scale), 2)
    # Adam as in the example: cosine decay 1e-2 -> 1e-4 over its budget.
    schedule = optax.cosine_decay_schedule(1e-2, n(30_000), alpha=1e-2)
    return [
        ("Adam (cosine lr 1e-2 -> 1e-4)", "minimize", "adam",
         dict(max_steps=n(30_000), learning_rate=schedule)),
        ("L-BFGS (Optax)", "minimize", "lbfgs", dict(max_steps=n(3000), tol=1e-14)),
        ("BFGS (Optimistix)", "minimize", "bfgs", dict(max_steps=n(10_000), tol=1e-14)),
        ("Levenberg-Marquardt (Optimistix)", "least_squares", "lm",
         dict(max_steps=n(500), tol=1e-14)),
        ("dense Gauss-Newton", "least_squares", "gauss-newton",
         dict(max_steps=n(500), tol=1e-14, damping=1e-5)),
    ]


def run_one(pinn, theta0, verb: str, method: str, options: dict):
    if verb == "minimize":
        res = sb.minimize(pinn.loss, theta0, method=method, progress=False, throw=False,
                          **options)
    else:
        res = sb.least_squares(pinn.residual, theta0, method=method, progress=False,
                               throw=False, **options)
    jax.block_until_ready(res.theta)
    return res


def measure(pinn, theta0, verb, method, options, repeats: int):
    run_one(pinn, theta0, verb, method, options)  # warm-up: compile
    times, res = [], None
    for _ in range(repeats):
        start = time.perf_counter()
        res = run_one(pinn, theta0, verb, method, options)
        times.append(time.perf_counter() - start)
    return res, statistics.median(times)


def table(rows: list[dict]) -> str:
    ref = next(r for r in rows if r["method"] == "gauss-newton")
    lines = [
        "| method | steps | rel. L2 error | max abs error | final loss | time (s) "
        "| time / GN | error / GN |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r['label']} | {r['steps']} | {r['rel_l2']:.2e} | {r['max_abs']:.2e} "
            f"| {r['loss']:.2e} | {r['time']:.2f} | {r['time'] / ref['time']:.2f}x "
            f"| {r['rel_l2'] / ref['rel_l2']:.3g}x |"
        )
    return "\n".join(lines)


def main(repeats: int = 2, quick: bool = False, width: int = 32, n_points: int = 20,
         seed: int = 0) -> str:
    """Run every contender; print the Markdown table and (unless `quick`) write it to `results/`."""
    fm, pinn = problem(width, n_points, seed)
    side = np.linspace(0.0, 1.0, 101)
    x_test = jnp.asarray(np.stack(np.meshgrid(side, side, indexing="ij"), -1).reshape(-1, 2))
    rows = []
    for label, verb, method, options in contenders(0.1 if quick else 1.0):
        res, seconds = measure(pinn, fm.theta0, verb, method, options, repeats)
        report = sb.error_report(fm, res.theta, x_test, exact)
        rows.append(dict(label=label, method=method, steps=res.steps, rel_l2=report.rel_l2,
                         max_abs=report.max_abs, loss=res.loss, time=seconds))
        print(f"  {label}: {report} in {seconds:.2f} s", flush=True)
    header = (
        f"2-D Poisson PINN, `sb.FlatMLP((2, {width}, 1))` ({fm.size} parameters), "
        f"{n_points}x{n_points} interior grid, float64, same initial weights; median of "
        f"{repeats} run(s) after a warm-up{' (quick: 10% of the steps)' if quick else ''}; "
        f"{jax.devices()[0].platform.upper()}.\n\n"
    )
    text = header + table(rows)
    print(text)
    if not quick:  # a smoke run must not overwrite the table the README quotes
        RESULTS.parent.mkdir(parents=True, exist_ok=True)
        RESULTS.write_text(text + "\n")
    return text


if __name__ == "__main__":
    main()
