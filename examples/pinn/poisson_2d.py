"""2-D Poisson PINN to 1e-7: natural gradient on the flat vector, against Adam and SSBroyden.

    -Laplace(u) = 2 pi^2 sin(pi x) sin(pi y)   on [0, 1]^2,   u = 0 on the boundary,

whose exact solution is u = sin(pi x) sin(pi y). The setting is the ENGD paper's (Mueller &
Zeinhofer, ICML 2023): `sb.FlatMLP((2, 32, 1))` (129 parameters), a 30 x 30 grid with edges
inside plus 120 boundary points, each block scaled by 1/sqrt(N). The same `sb.pinn` problem is
handed to three solvers, from the same initial weights, and to a fourth run that chains two:

- `sb.minimize(problem.loss, theta0, method="adam")`: the usual PINN training, first order;
- `sb.minimize(problem.loss, theta0, method="ssbroyden")`: self-scaled Broyden quasi-Newton
  with a strong-Wolfe line search (Urban, Stefanou & Pons, JCP 2025);
- `sb.least_squares(problem.residual, theta0, method="natural-gradient")`: energy natural
  gradient (= Gauss-Newton for this loss) with a truncated pseudo-inverse of the Jacobian and a
  grid line search. The residual is a function of one flat `theta`, so its Jacobian is a small
  dense matrix (computed per point in reverse mode over the forward-Laplacian pass); nothing
  about the network's structure has to be known: this is what the flat-vector bridge buys;
- natural gradient, then SSBroyden from where it stopped: natural gradient stalls short of a
  minimum (what is left lies along singular directions below its cutoffs), quasi-Newton
  curvature goes on from there on most seeds (median 6.5e-8 over seeds 0-16, against 3.6e-7).

Then the multi-start: 8 initialisations stacked into a 2-D `theta0` train as one ensemble, and
the member with the lowest loss is kept (`res.best`). The same 8 starts are also trained as 8
separate runs, and both are timed and their ratio printed. On a CPU the ensemble is split over
the cores: run as a script (or by `make demo`), it asks JAX for one CPU device per core and
passes `mesh=` with a `"members"` axis, so each core trains its share of the starts (on 2 cores
8 starts cost 0.55-0.62x of the time of 8 runs, median 0.61, measured after compiling; on one
device 0.75x, since XLA's own threads already use both cores).

With the defaults Adam stops near 1e-3, SSBroyden near 1e-5..1e-6 and natural gradient (alone
or followed by SSBroyden) near 1e-7 relative L2 (seed-dependent; `benchmarks/pinn_accuracy.py`
has the table over seeds).

Run `python examples/pinn/poisson_2d.py`; it prints the errors and writes `out/poisson_2d.png`.
"""

import os
import time
from pathlib import Path


# One LAPACK thread (read by OpenBLAS when it loads, so before NumPy/JAX are imported): with
# the multi-start's starts on every core, OpenBLAS threads that spin-wait for a core took the
# ensemble on 2 cores from about 0.6x of the time of 8 separate runs to 0.93-0.97x.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402

import sciml_bridge as sb  # noqa: E402


jax.config.update("jax_enable_x64", True)

TEST_N = 101
LABELS = {"adam": "Adam", "ssbroyden": "SSBroyden", "natural-gradient": "Natural gradient",
          "natural-gradient+ssbroyden": "NG, then SSBroyden"}
BEST = "natural-gradient"


def exact(x):
    """The exact solution at a batch of points `x` of shape `(points, 2)`."""
    return jnp.sin(jnp.pi * x[..., 0]) * jnp.sin(jnp.pi * x[..., 1])


def source(x):
    """The right-hand side f = -Laplace(u) at one point."""
    return 2 * jnp.pi**2 * exact(x)


def pde(u, x):
    return -u.laplacian(x) - source(x)


def boundary(u, x):
    return u(x)


def test_grid(n: int = TEST_N):
    """An `n` x `n` grid over the closed square (boundary included), as `(n * n, 2)` points."""
    side = np.linspace(0.0, 1.0, n)
    return jnp.asarray(np.stack(np.meshgrid(side, side, indexing="ij"), -1).reshape(-1, 2))


def boundary_points(n: int):
    """`n` equally spaced points on each side of the square (corners counted on two sides)."""
    s, zero, one = np.linspace(0.0, 1.0, n), np.zeros(n), np.ones(n)
    sides = [np.stack(p, 1) for p in ((s, zero), (s, one), (zero, s), (one, s))]
    return jnp.asarray(np.concatenate(sides))


def make_problem(width: int, n_points: int, seed: int):
    """The network, and the PINN problem on an `n_points`^2 grid (edges included)."""
    fm = sb.FlatMLP((2, width, 1), key=jax.random.key(seed), dtype=jnp.float64)
    terms = {"pde": (pde, test_grid(n_points)), "boundary": (boundary, boundary_points(n_points))}
    return fm, sb.pinn(fm, terms)


def train(problem, theta0, adam_steps: int, ssbroyden_steps: int, ng_steps: int,
          progress: bool) -> dict:
    """Every solver from the same `theta0`; returns the `sb` results (one per stage) by method
    name."""
    # A fair baseline: Adam's usual PINN setting, a learning rate decayed 1e-2 -> 1e-4.
    schedule = optax.cosine_decay_schedule(1e-2, max(adam_steps, 1), alpha=1e-2)
    adam = sb.minimize(problem.loss, theta0, method="adam", max_steps=adam_steps,
                       learning_rate=schedule, progress=progress, throw=False)
    ssbroyden = sb.minimize(problem.loss, theta0, method="ssbroyden", max_steps=ssbroyden_steps,
                            tol=1e-14, progress=progress, throw=False)
    # The tiny `tol` lets the step budget (or a stall: no step size decreases the loss) decide.
    ng = sb.least_squares(problem.residual, theta0, method="natural-gradient",
                          max_steps=ng_steps, tol=1e-14, progress=progress, throw=False)
    # Natural gradient stops short of a minimum: what is left lies along singular directions
    # below its cutoffs. SSBroyden's accumulated curvature goes on from there.
    then = sb.minimize(problem.loss, ng.theta, method="ssbroyden", max_steps=ssbroyden_steps,
                       tol=1e-14, progress=progress, throw=False)
    return {"adam": [adam], "ssbroyden": [ssbroyden], "natural-gradient": [ng],
            "natural-gradient+ssbroyden": [ng, then]}


def multi_start(problem, width: int, starts: int, steps: int, progress: bool) -> dict:
    """`starts` initialisations trained as one ensemble (a 2-D `theta0`, split over the CPU
    devices), the best kept, and the same starts trained as `starts` separate runs one after
    the other, both timed after compiling."""
    thetas = jnp.stack([
        sb.FlatMLP((2, width, 1), key=jax.random.key(100 + i), dtype=jnp.float64).theta0
        for i in range(starts)
    ])  # fmt: skip
    options = dict(method=BEST, max_steps=steps, tol=1e-14, progress=progress, throw=False)
    # The starts split evenly over as many devices as divide them (each core takes its share).
    devices = max(k for k in range(1, len(jax.devices()) + 1) if starts % k == 0)
    mesh = jax.make_mesh((devices,), ("members",), devices=jax.devices()[:devices]) \
        if devices > 1 else None  # fmt: skip
    # One step of each first, so both timings below are of compiled programs.
    warm = {**options, "max_steps": 1, "progress": False}
    sb.least_squares(problem.residual, thetas, mesh=mesh, **warm)
    sb.least_squares(problem.residual, thetas[0], **warm)
    start = time.perf_counter()
    res = sb.least_squares(problem.residual, thetas, mesh=mesh, **options)
    best = res.best  # the member with the lowest loss
    ensemble = time.perf_counter() - start
    start = time.perf_counter()
    separate = [sb.least_squares(problem.residual, theta, **options) for theta in thetas]
    separate_time = time.perf_counter() - start
    return dict(theta=best.theta, loss=best.loss, time=ensemble, separate_time=separate_time,
                losses=np.asarray(res.loss), separate_losses=np.array([r.loss for r in separate]),
                devices=devices)


def main(
    width: int = 32,
    n_points: int = 30,
    adam_steps: int = 30_000,
    ssbroyden_steps: int = 3000,
    ng_steps: int = 300,
    starts: int = 8,
    multi_start_steps: int | None = None,
    seed: int = 0,
    plot: bool = True,
    out_dir: str = "out",
    progress: bool = True,
) -> dict:
    """Train with Adam, SSBroyden and natural gradient, then a multi-start; print the errors.

    Returns a dict with `methods` (per method: `rel_l2`, `max_abs`, `loss`, `steps`, `time`,
    `history`, `theta`), `multi_start` (`rel_l2` of the best member, `time` of the ensemble,
    `separate_time` of `starts` separate runs, the final `losses` and `separate_losses`, `starts`;
    absent if `starts` is 0; each start runs `multi_start_steps`, by default `ng_steps`),
    `png` (the path written, or `None`) and `n_params`.
    """
    fm, problem = make_problem(width, n_points, seed)
    x_test = test_grid()
    results = train(problem, fm.theta0, adam_steps, ssbroyden_steps, ng_steps, progress)
    methods = {}
    for name, runs in results.items():
        res = runs[-1]
        steps, seconds = sum(r.steps for r in runs), sum(r.wall_time for r in runs)
        history = np.concatenate([runs[0].history, *(r.history[1:] for r in runs[1:])])
        report = sb.error_report(fm, res.theta, x_test, exact)
        print(f"{LABELS[name]:>18}: {report} (loss {res.loss:.2e}, {steps} steps, "
              f"{seconds:.1f} s)")
        methods[name] = dict(rel_l2=report.rel_l2, max_abs=report.max_abs, loss=res.loss,
                             steps=steps, time=seconds, history=history, theta=res.theta,
                             report=report)
    out = {"methods": methods, "n_params": fm.size}
    if starts:
        steps = ng_steps if multi_start_steps is None else multi_start_steps
        ms = multi_start(problem, width, starts, steps, progress)
        rel_l2 = sb.error_report(fm, ms["theta"], x_test, exact).rel_l2
        print(f"{starts} starts as one ensemble over {ms['devices']} device(s): best rel. L2 "
              f"{rel_l2:.3e} in {ms['time']:.1f} s; "
              f"as {starts} separate runs: {ms['separate_time']:.1f} s "
              f"(ensemble / separate = {ms['time'] / ms['separate_time']:.2f})")
        out["multi_start"] = dict(rel_l2=rel_l2, time=ms["time"], starts=starts,
                                  devices=ms["devices"],
                                  separate_time=ms["separate_time"], losses=ms["losses"],
                                  separate_losses=ms["separate_losses"])
    out["png"] = _plot(methods, Path(out_dir)) if plot else None
    return out


def _plot(methods: dict, out_dir: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = TEST_N
    side = np.linspace(0.0, 1.0, n)
    fig, axes = plt.subplots(1, 4, figsize=(19, 4.3), constrained_layout=True)
    u = methods[BEST]["report"].prediction.reshape(n, n)
    _image(fig, axes[0], u, side, f"{LABELS[BEST]} solution $u(x, y)$", "$u$", plt)
    logs = {}
    for name, m in ((k, methods[k]) for k in ("adam", BEST)):
        err = np.abs(m["report"].prediction - m["report"].reference).reshape(n, n)
        logs[name] = np.log10(np.maximum(err, 1e-16))
    # One colour scale for both error maps (six decades), so they compare at a glance.
    top = max(float(v.max()) for v in logs.values())
    for ax, name in zip(axes[1:3], ("adam", BEST)):
        title = f"{LABELS[name]}: $|u - u_{{exact}}|$ (rel. L2 {methods[name]['rel_l2']:.1e})"
        _image(fig, ax, logs[name], side, title, "$\\log_{10}$ |error|", plt,
               vmin=top - 6, vmax=top)
    ax = axes[3]
    for name, m in methods.items():
        ax.semilogy(np.arange(len(m["history"])), m["history"],
                    label=f"{LABELS[name]} ({m['steps']} steps, {m['time']:.0f} s)")
    ax.set_xscale("symlog", linthresh=10)
    ax.set(xlabel="step", ylabel="loss  $\\frac{1}{2}\\|r(\\theta)\\|^2$", title="training loss")
    ax.grid(True, which="major", alpha=0.3)
    ax.legend(loc="lower left", fontsize=8)
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / "poisson_2d.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _image(fig, ax, values, side, title, label, plt, vmin=None, vmax=None):
    im = ax.imshow(values.T, origin="lower", extent=(side[0], side[-1], side[0], side[-1]),
                   cmap="viridis", aspect="equal", vmin=vmin, vmax=vmax)
    fig.colorbar(im, ax=ax, label=label)
    ax.set(xlabel="$x$", ylabel="$y$", title=title)


if __name__ == "__main__":
    # One CPU device per core, for the multi-start's "members" mesh (`sciml-bridge demo` does
    # the same). JAX takes this only before its first operation.
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None
    jax.config.update("jax_num_cpu_devices", cores or os.cpu_count() or 1)
    start = time.perf_counter()
    main()
    print(f"total {time.perf_counter() - start:.1f} s")
