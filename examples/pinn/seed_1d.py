"""The seed problem: a 1 -> 10 -> 10 -> 10 -> 1 tanh network solving a 1-D Poisson equation.

    -u''(x) = pi^2 sin(pi x)   on [-1, 1],   u(-1) = u(1) = 0,   exact u = sin(pi x).

This is the PINN the project started from: a small network, a second derivative in the loss,
Adam to get close, then BFGS on the flat parameter vector to finish. `sb.FlatMLP` is the network
(its `theta` has the layout of the equivalent `eqx.nn.MLP`), `sb.pinn` builds the loss, and both
optimisers are one `sb.minimize` call each, the second starting where the first stopped.

Run `python examples/pinn/seed_1d.py`; it prints the relative L2 error and writes
`out/seed_1d.png`.
"""

import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

import sciml_bridge as sb


jax.config.update("jax_enable_x64", True)


def exact(x):
    return jnp.sin(jnp.pi * x[..., 0])


def pde(u, x):
    return -u.laplacian(x) - jnp.pi**2 * jnp.sin(jnp.pi * x)


def boundary(u, x):
    return u(x)


def main(
    width: int = 10,
    n_points: int = 64,
    adam_steps: int = 2000,
    bfgs_steps: int = 1000,
    seed: int = 0,
    plot: bool = True,
    out_dir: str = "out",
    progress: bool = True,
) -> dict:
    """Adam, then BFGS from where Adam stopped; print and return the error.

    Returns a dict with `rel_l2`, `max_abs`, `rel_l2_adam` (after Adam alone), `time` (seconds),
    `history` (loss after each step, Adam then BFGS), `steps`, `theta` and `png`.
    """
    fm = sb.FlatMLP((1, width, width, width, 1), key=jax.random.key(seed), dtype=jnp.float64)
    x_in = sb.collocation_points(-1.0, 1.0, n_points, dtype=jnp.float64)
    x_bc = sb.collocation_points(-1.0, 1.0, 2, where="boundary", dtype=jnp.float64)
    problem = sb.pinn(fm, {"pde": (pde, x_in), "boundary": (boundary, x_bc)})
    adam = sb.minimize(problem.loss, fm.theta0, method="adam", max_steps=adam_steps,
                       learning_rate=1e-2, progress=progress, throw=False)
    bfgs = sb.minimize(problem.loss, adam.theta, method="bfgs", max_steps=bfgs_steps,
                       tol=1e-14, progress=progress, throw=False)
    x_test = jnp.linspace(-1.0, 1.0, 501)[:, None]
    after_adam = sb.error_report(fm, adam.theta, x_test, exact)
    report = sb.error_report(fm, bfgs.theta, x_test, exact)
    seconds = adam.wall_time + bfgs.wall_time
    print(f"seed 1-D Poisson: Adam {adam.steps} steps: rel. L2 {after_adam.rel_l2:.2e}; "
          f"+ BFGS {bfgs.steps} steps: {report}, {seconds:.1f} s")
    history = np.concatenate([adam.history, bfgs.history[1:]])
    png = _plot(np.asarray(x_test[:, 0]), report, after_adam, history, adam.steps,
                Path(out_dir)) if plot else None
    return dict(rel_l2=report.rel_l2, max_abs=report.max_abs, rel_l2_adam=after_adam.rel_l2,
                time=seconds, history=history, steps=adam.steps + bfgs.steps, theta=bfgs.theta,
                png=png)


def _plot(x, report, after_adam, history, switch: int, out_dir: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(16, 4.3), constrained_layout=True)
    axes[0].plot(x, report.reference[:, 0], lw=3, alpha=0.4, label="exact $\\sin(\\pi x)$")
    axes[0].plot(x, report.prediction[:, 0], "--", label="PINN (Adam + BFGS)")
    axes[0].set(xlabel="$x$", ylabel="$u$", title="solution")
    axes[0].legend()
    for r, label in ((after_adam, "after Adam"), (report, "after Adam + BFGS")):
        err = np.abs(r.prediction[:, 0] - r.reference[:, 0])
        axes[1].semilogy(x, np.maximum(err, 1e-17), label=f"{label} (rel. L2 {r.rel_l2:.1e})")
    axes[1].set(xlabel="$x$", ylabel="$|u - u_{exact}|$", title="pointwise error")
    axes[1].legend()
    axes[2].semilogy(history)
    axes[2].axvline(switch, color="gray", ls=":", label="Adam -> BFGS")
    axes[2].set(xlabel="step", ylabel="loss", title="training loss")
    axes[2].legend()
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / "seed_1d.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


if __name__ == "__main__":
    start = time.perf_counter()
    main()
    print(f"total {time.perf_counter() - start:.1f} s")
