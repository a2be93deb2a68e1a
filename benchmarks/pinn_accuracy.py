"""Question: which optimiser of `theta` takes a PINN to high accuracy, how reliably, how fast?

A table over problems x methods x seeds, every method from the same initial weights per seed:

- Poisson 2-D, the ENGD paper's setting (Mueller & Zeinhofer, ICML 2023): `-Lap u = 2 pi^2
  sin(pi x) sin(pi y)` on the unit square, `sb.FlatMLP((2, 32, 1))` (129 parameters), a 30 x 30
  grid with edges inside plus 120 boundary points, each block scaled by `1/sqrt(N)`, relative
  L2 on a 200 x 200 grid, 300 steps for the second-order methods.
  The `natural-gradient+ssbroyden` rows run natural gradient's step budget, then SSBroyden's
  from where it stopped (steps: both counted).
- Helmholtz 2-D (a1 = 1, a2 = 4, k = 1; "Curvature-Aware Optimization for High-Accuracy
  PINNs", arXiv 2604.05230): `Lap u + k^2 u = q` on `[-1, 1]^2`, exact `sin(pi x) sin(4 pi y)`,
  `sb.FlatMLP((2, 50, 50, 1))` (2,751 parameters), a 30 x 30 grid with edges plus 120
  boundary points (1,020 residuals). On these points natural gradient fits the residuals to
  a loss of 8e-10 while the error stays at 4.7e-4: it overfits the collocation set. Two rows
  use more points: `natural-gradient-grid60` a 60 x 60 grid plus 240 boundary points (3,840
  residuals, more than the parameters), 80 steps; `natural-gradient+resampling` 20 rounds of
  20 steps, each on new uniform random points (1,000 inside, 200 on the edges), one compiled
  loop for all rounds (`helmholtz_rounds`). `natural-gradient-hard-bc` imposes the boundary
  condition exactly (`HardBoundary`: `u = (1 - x^2)(1 - y^2) N`), so all residuals are the
  PDE's: 100 steps on the 60 x 60 grid, then 20 on a 90 x 90 grid (8,100 residuals; the
  60 x 60 fit leaves 8x its loss between its points).
- Viscous Burgers, the example's setting (`examples/pinn/burgers.py`; Adam + L-BFGS reach
  7.4e-3 there): the second-order methods start from the example's Adam warm-up. The
  `+resampling` rows are the example's recipe: 8 rounds of 500 steps, each on new points
  (3,000 random, plus the 1,000 of 50,000 random candidates with the largest PDE residual).

Columns: relative L2 (median and worst over the seeds run), steps (median), CPU seconds per
run (median, compile included: a user waits for it). Rows are appended to a JSON-lines file as
they finish, so a long table can be built over several invocations; the Markdown table is made
from every row measured so far.

Run `python benchmarks/pinn_accuracy.py [--problems poisson,helmholtz,burgers]
[--methods natural-gradient,ssbroyden,...] [--seeds 0,1,2,3,4]`; writes
`benchmarks/results/pinn_accuracy.md` (and `.jsonl`).
"""

import argparse
import json
import os
import statistics
import subprocess
import time
from pathlib import Path


# One LAPACK thread: on this shared 2-core machine (load average 8-15) OpenBLAS threads that
# spin-wait made `eigh` of a 1020 x 1020 kernel 2.3 CPU s instead of 0.27 s, and the thin SVD
# of a 1020 x 129 Jacobian 0.27 s instead of 0.014 s. jax's CPU LAPACK is SciPy's OpenBLAS,
# which reads this variable when it loads, so it is set before NumPy/SciPy/JAX are imported.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402

import sciml_bridge as sb  # noqa: E402
from sciml_bridge._cli import load_script  # noqa: E402


jax.config.update("jax_enable_x64", True)

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results" / "pinn_accuracy.md"
ROWS = HERE / "results" / "pinn_accuracy.jsonl"
A1, A2, K = 1.0, 4.0, 1.0


def _grid(lo: float, hi: float, n: int) -> jnp.ndarray:
    side = np.linspace(lo, hi, n)
    return jnp.asarray(np.stack(np.meshgrid(side, side, indexing="ij"), -1).reshape(-1, 2))


def _square_boundary(lo: float, hi: float, n: int) -> jnp.ndarray:
    s, a, b = np.linspace(lo, hi, n), np.full(n, lo), np.full(n, hi)
    sides = [np.stack(p, 1) for p in ((s, a), (s, b), (a, s), (b, s))]
    return jnp.asarray(np.concatenate(sides))


def _poisson_net(key) -> sb.FlatMLP:
    return sb.FlatMLP((2, 32, 1), key=key, dtype=jnp.float64)


def poisson(seed: int):
    exact = lambda x: jnp.sin(jnp.pi * x[..., 0]) * jnp.sin(jnp.pi * x[..., 1])
    fm = _poisson_net(jax.random.key(seed))
    problem = sb.pinn(fm, {
        "pde": (lambda u, x: -u.laplacian(x)[0] - 2 * jnp.pi**2 * exact(x), _grid(0, 1, 30)),
        "boundary": (lambda u, x: u(x)[0], _square_boundary(0.0, 1.0, 30)),
    })  # fmt: skip
    return fm, problem, fm.theta0, _grid(0, 1, 200), exact


def _helmholtz_exact(x):
    return jnp.sin(A1 * jnp.pi * x[..., 0]) * jnp.sin(A2 * jnp.pi * x[..., 1])


def _helmholtz_terms(x_in, x_bc) -> dict:
    q = lambda x: (K**2 - (A1 * jnp.pi) ** 2 - (A2 * jnp.pi) ** 2) * _helmholtz_exact(x)
    return {
        "pde": (lambda u, x: u.laplacian(x)[0] + K**2 * u(x)[0] - q(x), x_in),
        "boundary": (lambda u, x: u(x)[0], x_bc),
    }


def helmholtz(seed: int, n_points: int = 30):
    fm = sb.FlatMLP((2, 50, 50, 1), key=jax.random.key(seed), dtype=jnp.float64)
    problem = sb.pinn(fm, _helmholtz_terms(_grid(-1, 1, n_points),
                                           _square_boundary(-1.0, 1.0, n_points)))
    return fm, problem, fm.theta0, _grid(-1, 1, 200), _helmholtz_exact


def _edge_factor(x):
    # Zero on the edges of [-1, 1]^2, positive inside.
    return (1 - x[..., 0] ** 2) * (1 - x[..., 1] ** 2)


class HardBoundary:
    """`u(theta, x) = (1 - x^2)(1 - y^2) N(theta, x)`: zero on the edges for every `theta`, so
    the boundary condition holds exactly and the PDE residual is the whole loss (Lagaris et
    al. 1998; Sukumar & Srivastava, CMAME 2022). Used for the prediction and its error. The
    measured rows write the product rule by hand (`_helmholtz_hard_pde`); `sb.HardConstraint`
    is the library's form of the same field (tests/test_pinn_accuracy_bench.py: same residual
    and Jacobian)."""

    def __init__(self, fm: sb.FlatMLP):
        self.fm, self.size = fm, fm.size

    def __call__(self, theta, x):
        return _edge_factor(x) * self.fm(theta, x)


def _helmholtz_hard_pde(u, x):
    # `u` is the field of N; Lap(g N) = g Lap N + 2 grad g . grad N + N Lap g, with N's
    # derivatives from the FlatMLP's forward-Laplacian pass.
    g = _edge_factor(x)
    grad_g = jnp.stack([-2 * x[0] * (1 - x[1] ** 2), -2 * x[1] * (1 - x[0] ** 2)])
    lap_g = -2 * (1 - x[1] ** 2) - 2 * (1 - x[0] ** 2)
    n, lap = u(x)[0], g * u.laplacian(x)[0] + 2 * grad_g @ u.grad(x)[0]
    q = (K**2 - (A1 * jnp.pi) ** 2 - (A2 * jnp.pi) ** 2) * _helmholtz_exact(x)
    return lap + n * lap_g + K**2 * g * n - q


def helmholtz_hard(seed: int, n_points: int = 60):
    """Helmholtz with the boundary imposed exactly (`HardBoundary`): the same network and
    seed as `helmholtz`, residuals on the interior grid only."""
    fm = sb.FlatMLP((2, 50, 50, 1), key=jax.random.key(seed), dtype=jnp.float64)
    problem = sb.pinn(fm, {"pde": (_helmholtz_hard_pde, _grid(-1, 1, n_points))})
    return HardBoundary(fm), problem, fm.theta0, _grid(-1, 1, 200), _helmholtz_exact


class HelmholtzOnPoints:
    """The Helmholtz residual with its collocation points as arguments,
    `residual(theta, x_in, x_bc)`, and its per-point Jacobian, which `sb.least_squares` calls
    with the same arguments: every round on new points reuses one compiled loop."""

    def __init__(self, fm):
        self.fm = fm

    def __call__(self, theta, x_in, x_bc):
        return sb.pinn(self.fm, _helmholtz_terms(x_in, x_bc)).residual(theta)

    def residual_and_jacobian(self, theta, x_in, x_bc):
        return sb.pinn(self.fm, _helmholtz_terms(x_in, x_bc)).residual.residual_and_jacobian(theta)


def helmholtz_rounds(fm, theta, *, rounds: int, steps: int, n_points: int, n_boundary: int,
                     seed: int, log=None, **options) -> list:
    """`rounds` natural-gradient runs of up to `steps` steps from `theta`, each on new uniform
    random points (`n_points` inside, `n_boundary` on the edges); returns the results (the
    last holds the final `theta`). `log(step, theta, loss)` counts steps over all rounds."""
    residual, results, done = HelmholtzOnPoints(fm), [], 0
    for key in jax.random.split(jax.random.fold_in(jax.random.key(seed), 1), rounds):
        k_in, k_bc = jax.random.split(key)
        x_in = sb.collocation_points((-1.0, -1.0), (1.0, 1.0), n_points, sampling="random",
                                     key=k_in, dtype=jnp.float64)
        x_bc = sb.collocation_points((-1.0, -1.0), (1.0, 1.0), n_boundary, where="boundary",
                                     sampling="random", key=k_bc, dtype=jnp.float64)
        extra = {} if log is None else dict(
            callback=lambda step, th, loss, done=done: log(done + step, th, loss))
        res = sb.least_squares(residual, theta, "natural-gradient", args=(x_in, x_bc),
                               max_steps=steps, tol=1e-14, progress=False, throw=False,
                               **options, **extra)
        results.append(res)
        theta, done = res.theta, done + int(res.steps)
    return results


def _burgers_example():
    return load_script("examples/pinn/burgers.py", command="bench")


def burgers(seed: int):
    example = _burgers_example()
    fm, problem = example.make_problem(20, 4, 4000, 300, seed)
    # The example's Adam warm-up (1000 steps, lr 1e-3) is the start of every method here.
    warm = sb.minimize(problem.loss, fm.theta0, "adam", max_steps=1000, learning_rate=1e-3,
                       progress=False, throw=False)
    return fm, problem, warm.theta, example.test_grid()[0], example.exact_at


PROBLEMS = {"poisson": poisson, "helmholtz": helmholtz, "burgers": burgers}

# (verb, method, options) by method label (verb "rounds": the Burgers example's
# `resampled_rounds`); `steps` is per problem. Helmholtz quasi-Newton: ~35 ms per SSBroyden
# step at 2,751 parameters (one fused pass over the dense inverse Hessian per update).
STEPS = {
    "poisson": dict(second=300, quasi=3000, first=30_000),
    "helmholtz": dict(second=100, quasi=10_000, first=30_000),
    "burgers": dict(second=50, quasi=4000, first=20_000),
}


# Helmholtz natural gradient on resampled points (`helmholtz_rounds`).
HELMHOLTZ_ROUNDS = dict(rounds=20, steps=20, n_points=1000, n_boundary=200)
# Rows whose problem is built with other settings than the problem's defaults, or by
# another builder.
PROBLEM_OPTIONS = {("helmholtz", "natural-gradient-grid60"): dict(n_points=60)}
BUILDERS = {("helmholtz", "natural-gradient-hard-bc"): helmholtz_hard,
            ("helmholtz", "natural-gradient-hard-bc+ssbroyden"): helmholtz_hard,
            ("helmholtz", "natural-gradient-hard-bc60+ssbroyden"): helmholtz_hard}


def contenders(problem: str) -> dict:
    n = STEPS[problem]
    schedule = optax.cosine_decay_schedule(1e-2, n["first"], alpha=1e-2)
    quasi = dict(max_steps=n["quasi"], tol=1e-14)
    second = dict(max_steps=n["second"], tol=1e-14)
    rounds = dict(rounds=8, steps=500) if problem == "burgers" else None
    ng_rounds = HELMHOLTZ_ROUNDS if problem == "helmholtz" else None
    # Boundary imposed exactly; 100 steps on the 60 x 60 grid, then 20 on a 90 x 90 grid: the
    # 60 x 60 fit leaves 8x its loss between the points.
    hard_bc = dict(first=dict(max_steps=100, tol=1e-14), then=dict(max_steps=20, tol=1e-14),
                   fine=90)
    return {
        "adam": ("minimize", "adam", dict(max_steps=n["first"], learning_rate=schedule)),
        "lbfgs": ("minimize", "lbfgs", quasi),
        "bfgs": ("minimize", "bfgs", quasi),
        "ssbfgs": ("minimize", "ssbfgs", quasi),
        "ssbroyden": ("minimize", "ssbroyden", quasi),
        "lm": ("least_squares", "lm", second),
        "natural-gradient": ("least_squares", "natural-gradient", second),
        "natural-gradient+geodesic": ("least_squares", "natural-gradient",
                                      dict(second, geodesic=True)),
        **({} if problem != "poisson" else {
            # The seed's start and 7 more, as one ensemble split over the CPU devices; the
            # member with the lowest loss is kept (never chosen by its error).
            "natural-gradient-best-of-8": ("best-of", "natural-gradient",
                                                   dict(second, starts=8)),
        }),
        **({} if problem != "helmholtz" else {
            "natural-gradient-grid60": ("least_squares", "natural-gradient",
                                        dict(max_steps=80, tol=1e-14)),
            "natural-gradient-hard-bc": ("refine", "natural-gradient", hard_bc),
            # The same, then SSBroyden on the 90 x 90 loss: below ~1e-7 natural gradient's
            # steps zig-zag, while SSBroyden's curvature keeps halving the loss every ~1,000
            # steps, and the error follows once the loss is 10-30x lower.
            "natural-gradient-hard-bc+ssbroyden": (
                "refine", "natural-gradient",
                dict(hard_bc, polish=("ssbroyden", dict(max_steps=10_000, tol=1e-16)))),
            # The same without the 20 natural-gradient steps on the 90 x 90 grid (~330 CPU s):
            # SSBroyden starts from the 60 x 60 fit, on the 90 x 90 loss.
            "natural-gradient-hard-bc60+ssbroyden": (
                "refine", "natural-gradient",
                dict(hard_bc, then=None,
                     polish=("ssbroyden", dict(max_steps=10_000, tol=1e-16)))),
        }),
        # Natural gradient, then SSBroyden from where it stops: the truncated pseudo-inverse
        # leaves the directions of tiny singular values, where quasi-Newton curvature helps.
        "natural-gradient+ssbroyden": ("then", "ssbroyden", dict(first=second, then=quasi)),
        **({} if rounds is None else {
            "ssbfgs+resampling": ("rounds", "ssbfgs", rounds),
            "ssbroyden+resampling": ("rounds", "ssbroyden", rounds),
        }),
        **({} if ng_rounds is None else {
            "natural-gradient+resampling": ("ng-rounds", "natural-gradient", ng_rounds),
        }),
    }


def run_one(name: str, method: str, seed: int, every: int = 0) -> dict:
    """One cell. With `every`, the relative L2 error is printed every `every` steps (at the
    chunk boundaries of the fused driver; these prints count in the CPU time, and are cheap
    next to the steps)."""
    build = BUILDERS.get((name, method), PROBLEMS[name])
    fm, problem, theta0, x_test, exact = build(seed, **PROBLEM_OPTIONS.get((name, method), {}))
    verb, method_name, options = contenders(name)[method]
    start = time.process_time()
    wall = time.perf_counter()
    extra, runs, most = {}, [], None
    if every:
        def log(step, theta, loss):
            rel = sb.error_report(fm, theta, x_test, exact).rel_l2
            print(f"  {name} {method} seed {seed} step {step}: loss {loss:.3e}, rel. L2 "
                  f"{rel:.3e}, {time.process_time() - start:.0f} CPU s", flush=True)
        extra = dict(callback=log, chunk_size=every)
    if verb == "ng-rounds":
        log_options = dict(log=extra["callback"], chunk_size=every) if every else {}
        runs = helmholtz_rounds(fm, theta0, seed=seed, **options, **log_options)
        res = runs[-1]
    elif verb == "then":
        first = sb.least_squares(problem.residual, theta0, "natural-gradient", progress=False,
                                 throw=False, **options["first"])
        res = sb.minimize(problem.loss, first.theta, method_name, progress=False, throw=False,
                          **options["then"], **extra)
        runs = [first, res]
    elif verb == "refine":
        first = sb.least_squares(problem.residual, theta0, method_name, progress=False,
                                 throw=False, **options["first"], **extra)
        fine = build(seed, n_points=options["fine"])[1]
        res, runs = first, [first]
        if options["then"] is not None:
            res = sb.least_squares(fine.residual, first.theta, method_name, progress=False,
                                   throw=False, **options["then"], **extra)
            runs.append(res)
        if "polish" in options:
            polish, polish_options = options["polish"]
            res = sb.minimize(fine.loss, res.theta, polish, progress=False, throw=False,
                              **polish_options, **extra)
            runs.append(res)
    elif verb == "rounds":
        runs = _burgers_example().resampled_rounds(fm, theta0, method=method_name, seed=seed,
                                                   progress=False, **options)
        res = runs[-1]
    elif verb == "best-of":
        res, most = _best_of(problem, theta0, seed, method_name, dict(options))
    elif verb == "minimize":
        res = sb.minimize(problem.loss, theta0, method_name, progress=False, throw=False,
                          **options, **extra)
    else:
        res = sb.least_squares(problem.residual, theta0, method_name, progress=False,
                               throw=False, **options, **extra)
    jax.block_until_ready(res.theta)
    steps = most or (sum(r.steps for r in runs) if runs else res.steps)
    cpu, wall = time.process_time() - start, time.perf_counter() - wall
    report = sb.error_report(fm, res.theta, x_test, exact)
    return dict(problem=name, method=method, seed=seed, rel_l2=report.rel_l2, steps=steps,
                cpu=cpu, wall=wall, loss=res.loss, params=int(fm.size))


def _best_of(problem, theta0, seed: int, method: str, options: dict):
    """The best member of a multi-start from `theta0` and `starts - 1` more Poisson nets, on
    as many CPU devices as divide the starts, and the most steps any member took."""
    starts = options.pop("starts")
    extra = [_poisson_net(jax.random.fold_in(jax.random.key(seed), i)).theta0
             for i in range(1, starts)]  # fmt: skip
    devices = max(k for k in range(1, len(jax.devices()) + 1) if starts % k == 0)
    mesh = jax.make_mesh((devices,), ("members",), devices=jax.devices()[:devices]) \
        if devices > 1 else None  # fmt: skip
    res = sb.least_squares(problem.residual, jnp.stack([theta0, *extra]), method, mesh=mesh,
                           progress=False, throw=False, **options)  # fmt: skip
    return res.best, max(m.steps for m in res)


ANCHORS = {
    "poisson": "ENGD (Mueller & Zeinhofer 2023, same 2-32-1 net and points, GPU): ~1e-7..1e-6",
    "helmholtz": "arXiv 2604.05230 (GPU, 2,971 params): SSBroyden 3.6e-9 in 319 s, natural "
                 "gradient 4.2e-9 in 251 s, SPRING 2.0e-9 in 540 s",
    "burgers": "this repo's example before SSBroyden (Adam 1000 + L-BFGS 4000): 7.4e-3; "
               "Kiyani et al. CMAME 2025 (SSBroyden, GPU): ~1e-4 and below",
}


def _seed_ranges(seeds: list[int]) -> str:
    """`[0, 1, 2, 3, 4, 7]` -> `"0-4,7"` (runs of three or more consecutive seeds)."""
    runs: list[list[int]] = []
    for s in seeds:
        if runs and s == runs[-1][-1] + 1:
            runs[-1].append(s)
        else:
            runs.append([s])
    spell = lambda run: f"{run[0]}-{run[-1]}" if len(run) > 2 else ",".join(map(str, run))
    return ",".join(spell(run) for run in runs)


def table(rows: list[dict]) -> str:
    lines = []
    for name in PROBLEMS:
        mine = [r for r in rows if r["problem"] == name]
        if not mine:
            continue
        lines += [f"\n**{name}** ({mine[0]['params']} parameters). Anchor: {ANCHORS[name]}.\n",
                  "| method | seeds | rel. L2 median | rel. L2 worst | steps (median) "
                  "| CPU s (median) | wall s (median) |",
                  "|---|---|---:|---:|---:|---:|---:|"]
        for method in contenders(name):
            r = [x for x in mine if x["method"] == method]
            if not r:
                continue
            med = lambda k: statistics.median(x[k] for x in r)
            # Rows pieced together from separately timed stages carry no wall time.
            walls = [x["wall"] for x in r if x.get("wall") is not None]
            wall = f"{statistics.median(walls):.0f}" if walls else "-"
            seeds = _seed_ranges(sorted(x["seed"] for x in r))
            lines.append(
                f"| {method} | {seeds} | {med('rel_l2'):.2e} | {max(x['rel_l2'] for x in r):.2e} "
                f"| {med('steps'):.0f} | {med('cpu'):.0f} | {wall} |"
            )
    return "\n".join(lines)


def jacobian_cost(repeats: int = 5) -> str:
    """Milliseconds for `(r, J)` of the Poisson residual three ways, interleaved in one process:
    per point in reverse mode over the forward-Laplacian pass (what `sb.least_squares` uses for
    an `sb.pinn` residual), `jax.jacfwd` and `jax.jacrev` of the concatenated vector."""
    fm, problem, theta, *_ = poisson(0)
    ways = {
        "per point, reverse mode (used)": jax.jit(problem.residual.residual_and_jacobian),
        "jax.jacfwd of the whole vector": jax.jit(jax.jacfwd(problem.residual)),
        "jax.jacrev of the whole vector": jax.jit(jax.jacrev(problem.residual)),
    }
    times = {name: [] for name in ways}
    for fn in ways.values():
        jax.block_until_ready(fn(theta))
    for _ in range(repeats):
        for name, fn in ways.items():
            start = time.perf_counter()
            jax.block_until_ready(fn(theta))
            times[name].append(time.perf_counter() - start)
    base = statistics.median(times["per point, reverse mode (used)"])
    lines = ["| Jacobian of the Poisson residual (1020 x 129) | ms (median) | ratio |",
             "|---|---:|---:|"]
    for name, t in times.items():
        lines.append(f"| {name} | {1e3 * statistics.median(t):.1f} "
                     f"| {statistics.median(t) / base:.0f}x |")
    return "\n".join(lines)


def _cost_section(measure: bool) -> str:
    """The Jacobian-cost table: measured now, or (`measure=False`) kept from the last file."""
    old = RESULTS.read_text() if RESULTS.is_file() else ""
    if measure or "Cost per step:" not in old:
        return jacobian_cost()
    return old.split("Cost per step:\n\n", 1)[1].rstrip("\n")


def _revision() -> str:
    """The commit the rows were measured at (`-dirty` with uncommitted changes), so a row that
    drifts between measurements can be traced to the code it ran."""
    try:
        out = subprocess.run(["git", "describe", "--always", "--dirty"], cwd=HERE,
                             capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"
    return out.stdout.strip() or "unknown"


def _load_rows() -> list[dict]:
    if not ROWS.is_file():
        return []
    latest = {}
    for line in ROWS.read_text().splitlines():
        row = json.loads(line)
        latest[(row["problem"], row["method"], row["seed"])] = row
    return list(latest.values())


def main(problems: str = "poisson", methods: str = "natural-gradient", seeds: str = "0",
         quick: bool = False, repeats: int = 1, every: int = 0, cost: bool = True) -> str:
    """Run the requested cells, append them to the rows file, print and write the table.

    `quick` (used by `sciml-bridge bench --quick`) runs Poisson seed 0 with natural gradient
    only and writes nothing.
    """
    if quick:
        row = run_one("poisson", "natural-gradient", 0)
        print(f"poisson natural-gradient seed 0: rel. L2 {row['rel_l2']:.2e}, {row['steps']} "
              f"steps, {row['wall']:.0f} s")
        return table([row])
    ROWS.parent.mkdir(parents=True, exist_ok=True)
    revision = _revision()
    for name in problems.split(","):
        for method in methods.split(","):
            for seed in (int(s) for s in seeds.split(",")):
                row = {**run_one(name, method, seed, every), "revision": revision,
                       "date": time.strftime("%Y-%m-%d")}
                with ROWS.open("a") as fh:
                    fh.write(json.dumps(row) + "\n")
                print(f"{name} {method} seed {seed}: rel. L2 {row['rel_l2']:.2e}, "
                      f"{row['steps']} steps, {row['cpu']:.0f} CPU s, {row['wall']:.0f} s",
                      flush=True)
    header = (
        "PINN accuracy, float64, same initial weights per seed; rows measured at different "
        "times, some under load (six people sharing 2 CPU cores: CPU seconds are the fairer "
        f"column), {jax.devices()[0].platform.upper()}, jax "
        f"{jax.__version__}, one OpenBLAS thread (see the top of the script). CPU seconds "
        "include compilation.\n"
    )
    text = header + table(_load_rows()) + "\n\nCost per step:\n\n" + _cost_section(cost)
    print(text)
    RESULTS.write_text(text + "\n")
    return text


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--problems", default="poisson")
    parser.add_argument("--methods", default="natural-gradient")
    parser.add_argument("--seeds", default="0,1,2,3,4")
    parser.add_argument("--every", type=int, default=0, help="print the error every N steps")
    parser.add_argument("--no-cost", action="store_true",
                        help="keep the Jacobian-cost table of the last run instead of timing it")
    a = parser.parse_args()
    # One CPU device per core, for the multi-start rows (before JAX's first operation).
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None
    jax.config.update("jax_num_cpu_devices", cores or os.cpu_count() or 1)
    main(a.problems, a.methods, a.seeds, every=a.every, cost=not a.no_cost)
