"""2-D Helmholtz PINN to ~5e-9: the boundary built into the network, natural gradient, SSBroyden.

    Lap u + k^2 u = q   on [-1, 1]^2,   u = 0 on the boundary,   k = 1,

with `q` chosen so that the exact solution is `u = sin(pi x) sin(4 pi y)` (the setting of
"Curvature-Aware Optimization for High-Accuracy PINNs", arXiv 2604.05230). Three things take it
from ~1e-5 to ~5e-9 on a 2-50-50-1 tanh network (2,751 parameters):

- `sb.HardConstraint(fm, distance)`: `u = (1 - x^2)(1 - y^2) N(theta, x)` is zero on the edges
  for every `theta`, so the loss is the PDE residual alone. With boundary terms instead, the
  boundary values stayed 1.6e-5 off and held the error near 8e-6 (README, "PINNs to 1e-7");
- natural gradient (`sb.least_squares(..., "natural-gradient")`) on a 60 x 60 grid (3,600
  residuals, more than the parameters), then a few steps on a 90 x 90 grid: the 60 x 60 fit
  leaves 8x its loss between its points. This reaches ~1e-7, where its steps zig-zag;
- SSBroyden (`sb.minimize(..., "ssbroyden")`) on the 90 x 90 loss: its curvature, built over
  thousands of steps, halves the loss every ~1,000 steps, and the error follows.

With the defaults this script reaches 9.5e-9 relative L2 on seed 0 in about 1,630 CPU s on one
core (after the natural-gradient stages: 1.5e-7 at ~710 CPU s). `benchmarks/pinn_accuracy.py`
(the same field with its product rule written by hand, which changes the trajectory at rounding
level) has seeds 0-4 at median 9.4e-8 after those stages (row `natural-gradient-hard-bc`), and
at median 5.4e-9, worst 9.4e-9 after 10,000 more SSBroyden steps (row
`natural-gradient-hard-bc+ssbroyden`, about 1,900 CPU s per seed). Most of a natural-gradient
step is `J^T J` and its eigendecomposition at 2,751 parameters; an SSBroyden step is ~0.1 s.
`fine_steps=0` skips the natural-gradient steps on the 90 x 90 grid (~330 CPU s), and SSBroyden
starts from the 60 x 60 fit: seed 0 ends at 8.9e-9 in about 1,340 CPU s; the benchmark's row
`natural-gradient-hard-bc60+ssbroyden` has seeds 0-4 at median 6.4e-9, worst 1.0e-8 in about
1,470 CPU s per seed: a quarter less time, errors within the seed-to-seed spread.

Run `python examples/pinn/helmholtz_2d.py [seed]`; it prints the loss and error after each stage
and writes `out/helmholtz_2d.png` (the solution and the pointwise error).
"""

import os
import sys
import time
from pathlib import Path


# One LAPACK thread (read by OpenBLAS when it loads): threads that spin-wait for a busy core made
# the eigendecomposition several times slower on a shared machine (benchmarks/pinn_accuracy.py).
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

import sciml_bridge as sb  # noqa: E402


jax.config.update("jax_enable_x64", True)

K, A1, A2 = 1.0, 1.0, 4.0


def exact(x):
    """The exact solution at points `x` of shape `(..., 2)`."""
    return jnp.sin(A1 * jnp.pi * x[..., 0]) * jnp.sin(A2 * jnp.pi * x[..., 1])


def pde(u, x):
    q = (K**2 - (A1 * jnp.pi) ** 2 - (A2 * jnp.pi) ** 2) * exact(x)
    return u.laplacian(x)[0] + K**2 * u(x)[0] - q


def edges(x):
    """Zero on the edges of [-1, 1]^2, positive inside."""
    return (1 - x[0] ** 2) * (1 - x[1] ** 2)


def grid(n: int):
    """An `n` x `n` grid over the closed square, as `(n * n, 2)` points."""
    side = np.linspace(-1.0, 1.0, n)
    return jnp.asarray(np.stack(np.meshgrid(side, side, indexing="ij"), -1).reshape(-1, 2))


def main(seed: int = 0, width: int = 50, coarse: int = 60, coarse_steps: int = 100,
         fine: int = 90, fine_steps: int = 20, polish_steps: int = 10_000, test_n: int = 200,
         out_dir: str = "out", progress: bool = True, plot: bool = True) -> dict:
    """Train, print each stage's loss and relative L2 error, plot, and return them."""
    fm = sb.FlatMLP((2, width, width, 1), key=jax.random.key(seed), dtype=jnp.float64)
    u = sb.HardConstraint(fm, edges)
    x_test, theta, stages = grid(test_n), u.theta0, []
    start = time.process_time()

    def stage(name, n, res):
        rel = sb.error_report(u, res.theta, x_test, exact).rel_l2
        stages.append(dict(stage=name, grid=n, steps=int(res.steps), loss=float(res.loss),
                           rel_l2=rel, result=res.result, cpu=time.process_time() - start))
        print(f"{name}, {n} x {n} grid, {int(res.steps)} steps: loss {float(res.loss):.2e}, "
              f"relative L2 {rel:.2e}, {stages[-1]['cpu']:.0f} CPU s ({res.message})")
        return res.theta

    for n, steps in ((coarse, coarse_steps), (fine, fine_steps)):
        problem = sb.pinn(u, {"pde": (pde, grid(n))})
        if steps:
            res = sb.least_squares(problem.residual, theta, "natural-gradient",
                                   max_steps=steps, tol=1e-14, progress=progress, throw=False)
            theta = stage("natural gradient", n, res)
    if polish_steps:
        # Below ~1e-7 natural gradient's steps zig-zag; SSBroyden's curvature, built over
        # thousands of steps, goes on lowering the loss of the fine grid, and the error with it.
        res = sb.minimize(problem.loss, theta, "ssbroyden", max_steps=polish_steps, tol=1e-16,
                          progress=progress, throw=False)
        theta = stage("SSBroyden", fine, res)
    report = sb.error_report(u, theta, x_test, exact)
    png = _plot(report, test_n, Path(out_dir)) if plot else None
    return dict(theta=theta, model=u, stages=stages, rel_l2=report.rel_l2, png=png)


def _plot(report, n: int, out_dir: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4.3), constrained_layout=True)
    err = np.abs(np.asarray(report.prediction) - np.asarray(report.reference)).reshape(n, n)
    maps = ((np.asarray(report.prediction).reshape(n, n), "PINN $u$", "$u$"),
            (np.log10(np.maximum(err, 1e-16)),
             f"$|u - u_{{exact}}|$ (rel. L2 {report.rel_l2:.1e})", "$\\log_{10}$ |error|"))
    for ax, (values, title, label) in zip(axes, maps):
        im = ax.imshow(values.T, origin="lower", extent=(-1, 1, -1, 1), cmap="viridis")
        fig.colorbar(im, ax=ax, label=label)
        ax.set(xlabel="$x$", ylabel="$y$", title=title)
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / "helmholtz_2d.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 0)
