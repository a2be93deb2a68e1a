"""Fit a neural ODE to a spiral, Adam then BFGS, with the parameters as one flat vector.

The data come from dy/dt = (y**3) A with y0 = (2, 0) and A = [[-0.1, 2], [-2, -0.1]], observed at
30 times on [0, 1.5] (the classic DiffEqFlux / Diffrax spiral). The model is
dy/dt = net(theta, y**3) with `net` a 2 -> 50 -> 2 tanh `sb.FlatMLP`; `sb.NeuralODE` solves it with
Diffrax (Tsit5, adaptive steps) and `theta` is one vector, so Adam (Optax) and BFGS (Optimistix)
are the same one-line `sb.minimize` call.

Run: `python examples/neural_ode/spiral.py` (prints the losses, writes out/neural_ode_spiral.png).
"""

import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

import sciml_bridge as sb


jax.config.update("jax_enable_x64", True)

TRUE_A = ((-0.1, 2.0), (-2.0, -0.1))
Y0 = (2.0, 0.0)


def cubic_linear(a, y):
    """The true dynamics dy/dt = (y**3) A, with `a` the four entries of A."""
    return (y**3) @ a.reshape(2, 2)


def spiral_data(n_times: int = 30, t_end: float = 1.5):
    """`(ts, y0, ys)`: the spiral observed at `n_times` times on [0, t_end]."""
    ts = jnp.linspace(0.0, t_end, n_times)
    y0 = jnp.array(Y0)
    truth = sb.NeuralODE(cubic_linear)
    return ts, y0, truth(jnp.array(TRUE_A).ravel(), y0, ts)


def make_node(width: int, seed: int):
    """The model dy/dt = net(theta, y**3) and its initial `theta`."""
    net = sb.FlatMLP((2, width, 2), activation="tanh", key=jax.random.key(seed), dtype=jnp.float64)
    # `throw=False`: a step into a region where the solve fails gives an inf loss, and
    # `sb.minimize` stops there keeping the last good theta instead of raising mid-run.
    node = sb.NeuralODE(lambda theta, y: net(theta, y**3), throw=False)
    return node, net.theta0


def fit(node, theta0, ts, y0, data, *, steps, bfgs_steps, learning_rate, progress):
    """Adam to get near, BFGS to finish: two calls of the same front door."""

    def loss(theta, data):
        return jnp.mean((node(theta, y0, ts) - data) ** 2)

    adam = sb.minimize(
        loss, theta0, "adam", args=(data,), max_steps=steps, learning_rate=learning_rate,
        progress=progress, throw=False,
    )  # fmt: skip
    bfgs = sb.minimize(
        loss, adam.theta, "bfgs", args=(data,), max_steps=bfgs_steps, progress=progress,
        throw=False,
    )  # fmt: skip
    return adam, bfgs


def plot_fit(path, node, theta, ts, y0, data, adam, bfgs) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fine = jnp.linspace(float(ts[0]), float(ts[-1]), 300)
    fitted, start = np.asarray(node(theta, y0, fine)), np.asarray(node(adam.theta, y0, fine))
    fig, (ax0, ax1) = plt.subplots(1, 2, figsize=(11, 4.5))
    ax0.plot(data[:, 0], data[:, 1], "o", color="k", ms=4, label="data (30 times)")
    ax0.plot(start[:, 0], start[:, 1], "--", color="tab:orange", label="after Adam")
    ax0.plot(fitted[:, 0], fitted[:, 1], color="tab:blue", label="after Adam + BFGS")
    ax0.set(xlabel="$y_1$", ylabel="$y_2$", title="Spiral: data vs neural ODE fit")
    ax0.legend()
    steps_adam = np.arange(len(adam.history))
    ax1.semilogy(steps_adam, adam.history, label="Adam")
    ax1.semilogy(steps_adam[-1] + np.arange(len(bfgs.history)), bfgs.history, label="BFGS")
    ax1.set(xlabel="step", ylabel="mean squared error", title="Training loss")
    ax1.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(
    width: int = 50,
    steps: int = 500,
    bfgs_steps: int = 500,
    seed: int = 0,
    learning_rate: float = 1e-2,
    plot: bool = True,
    out_dir: str = "out",
    progress: bool = True,
) -> dict:
    """Fit the spiral; print and return the losses, times and the PNG path."""
    ts, y0, data = spiral_data()
    node, theta0 = make_node(width, seed)
    start = time.perf_counter()
    adam, bfgs = fit(
        node, theta0, ts, y0, data, steps=steps, bfgs_steps=bfgs_steps,
        learning_rate=learning_rate, progress=progress,
    )  # fmt: skip
    seconds = time.perf_counter() - start
    out = dict(
        method="adam+bfgs", loss=bfgs.loss, adam_loss=adam.loss, adam_steps=adam.steps,
        bfgs_steps=bfgs.steps, time=seconds, theta=bfgs.theta, png=None,
    )  # fmt: skip
    print(f"spiral: {theta0.size} parameters, Adam {adam.steps} steps -> loss {adam.loss:.3e}")
    print(f"spiral: BFGS {bfgs.steps} steps -> loss {bfgs.loss:.3e} ({bfgs.message})")
    print(f"spiral: fit time {seconds:.1f} s (compilation included)")
    if plot:
        Path(out_dir).mkdir(parents=True, exist_ok=True)
        out["png"] = str(Path(out_dir) / "neural_ode_spiral.png")
        plot_fit(out["png"], node, bfgs.theta, ts, y0, data, adam, bfgs)
        print(f"spiral: wrote {out['png']}")
    return out


if __name__ == "__main__":
    main()
