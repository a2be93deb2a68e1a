"""Recover the missing interaction terms of Lotka–Volterra from noisy data (a universal ODE).

Truth: dx/dt = alpha x - beta x y, dy/dt = gamma x y - delta y (alpha=1.3, beta=0.9, gamma=0.8,
delta=1.8), observed at 41 times on [0, 5] with 1% Gaussian noise. We know the linear growth and
decay and learn the rest with a network `u = net(theta, (x, y) / scale)`:

    dx/dt = alpha x + u_1,    dy/dt = -delta y + u_2

`sb.NeuralODE.hybrid` solves this known-physics-plus-network field with one flat `theta`. Training
on the whole span from a random network diverges, so Adam first fits growing time horizons, then
BFGS fits the whole span. The error printed is how well `u` recovers the true missing terms
(-beta x y, gamma x y) along the true trajectory.

Run: `python examples/neural_ode/lotka_volterra_ude.py` (writes out/lotka_volterra_ude.png).
"""

import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

import sciml_bridge as sb


jax.config.update("jax_enable_x64", True)

ALPHA, BETA, GAMMA, DELTA = 1.3, 0.9, 0.8, 1.8
Y0 = (0.44249296, 4.6280594)


def lotka_volterra(t, y, p, args):
    alpha, beta, gamma, delta = p
    return jnp.stack([alpha * y[0] - beta * y[0] * y[1], gamma * y[0] * y[1] - delta * y[1]])


def missing_terms(y):
    """What the network should learn: the interactions -beta x y and gamma x y."""
    xy = y[..., 0] * y[..., 1]
    return jnp.stack([-BETA * xy, GAMMA * xy], axis=-1)


def noisy_data(n_times: int, noise: float, seed: int):
    """`(ts, y0, truth, data)` with Gaussian noise of `noise` times each state's std."""
    ts = jnp.linspace(0.0, 5.0, n_times)
    y0 = jnp.array(Y0)
    truth = sb.NeuralODE.hybrid(lotka_volterra)(jnp.array([ALPHA, BETA, GAMMA, DELTA]), y0, ts)
    eps = jax.random.normal(jax.random.key(seed + 1), truth.shape, dtype=truth.dtype)
    return ts, y0, truth, truth + noise * jnp.std(truth, axis=0) * eps


def make_ude(width: int, seed: int, scale):
    """The hybrid model and the network inside it."""
    net = sb.FlatMLP(
        (2, width, width, 2), activation="tanh", key=jax.random.key(seed), dtype=jnp.float64
    )

    def field(t, y, theta, args):
        alpha, delta = args
        u = net(theta, y / scale)  # inputs of order one
        return jnp.stack([alpha * y[0] + u[0], -delta * y[1] + u[1]])

    # `throw=False`: a diverging trial trajectory becomes an inf loss that `sb.minimize`
    # reports, keeping the last good theta, instead of an error mid-run.
    return sb.NeuralODE.hybrid(field, throw=False), net


def horizon(ts, k: int):
    """`ts` cut after `k` times but of fixed length (the last time repeated), and its mask.

    A fixed shape means one compilation serves every horizon; the repeated times cost nothing
    because the solve stops at `ts[k - 1]`.
    """
    keep = jnp.arange(ts.shape[0]) < k
    return jnp.where(keep, ts, ts[k - 1]), keep.astype(ts.dtype)


def fit(node, theta0, ts, y0, data, *, steps, bfgs_steps, horizons, progress):
    physics = (jnp.array(ALPHA), jnp.array(DELTA))

    def loss(theta, ts, mask, data):
        err = (node(theta, y0, ts, physics) - data) ** 2
        return jnp.sum(mask[:, None] * err) / (2 * jnp.sum(mask))

    theta, adam = theta0, []
    for k in horizons:
        res = sb.minimize(
            loss, theta, "adam", args=(*horizon(ts, k), data), max_steps=steps,
            learning_rate=1e-2, progress=progress, throw=False,
        )  # fmt: skip
        theta = res.theta
        adam.append(res)
    full = horizon(ts, ts.shape[0])
    bfgs = sb.minimize(
        loss, theta, "bfgs", args=(*full, data), max_steps=bfgs_steps, progress=progress,
        throw=False,
    )  # fmt: skip
    return adam, bfgs


def plot_fit(path, ts, truth, data, fitted, learned) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    want = np.asarray(missing_terms(truth))
    fig, (ax0, ax1) = plt.subplots(1, 2, figsize=(11, 4.5))
    for i, (name, color) in enumerate((("prey $x$", "tab:blue"), ("predator $y$", "tab:red"))):
        ax0.plot(ts, data[:, i], "o", color=color, ms=3.5, alpha=0.6, label=f"noisy {name}")
        ax0.plot(ts, fitted[:, i], color=color, label=f"UDE fit {name}")
    ax0.set(xlabel="time $t$", ylabel="population", title="Lotka–Volterra: data vs hybrid fit")
    ax0.legend(fontsize=8)
    for i, (name, color) in enumerate(
        ((r"$-\beta x y$", "tab:blue"), (r"$\gamma x y$", "tab:red"))
    ):
        ax1.plot(ts, want[:, i], "--", color="k", lw=1)
        ax1.plot(ts, learned[:, i], color=color, label=f"learned vs true {name}")
    ax1.set(xlabel="time $t$", ylabel="interaction term", title="Missing terms (dashed: truth)")
    ax1.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(
    width: int = 16,
    steps: int = 300,
    bfgs_steps: int = 500,
    horizons: tuple[int, ...] = (14, 28, 41),
    noise: float = 0.01,
    seed: int = 0,
    plot: bool = True,
    out_dir: str = "out",
    progress: bool = True,
) -> dict:
    """Fit the universal ODE; print and return the losses, the missing-term error, the PNG."""
    ts, y0, truth, data = noisy_data(41, noise, seed)
    scale = jnp.max(data, axis=0)
    node, net = make_ude(width, seed, scale)
    start = time.perf_counter()
    adam, bfgs = fit(
        node, net.theta0, ts, y0, data, steps=steps, bfgs_steps=bfgs_steps,
        horizons=horizons, progress=progress,
    )  # fmt: skip
    seconds = time.perf_counter() - start
    theta = bfgs.theta
    fitted = node(theta, y0, ts, (jnp.array(ALPHA), jnp.array(DELTA)))
    learned = jax.vmap(net, in_axes=(None, 0))(theta, truth / scale)
    want = missing_terms(truth)
    error = float(jnp.linalg.norm(learned - want) / jnp.linalg.norm(want))
    fit_error = float(jnp.linalg.norm(fitted - truth) / jnp.linalg.norm(truth))
    out = dict(
        method="adam+bfgs", loss=bfgs.loss, error=error, fit_error=fit_error, time=seconds,
        adam_losses=[r.loss for r in adam], theta=theta, png=None,
    )  # fmt: skip
    for k, r in zip(horizons, adam):
        print(f"lotka-volterra: Adam on the first {k} times -> loss {r.loss:.3e}")
    print(f"lotka-volterra: BFGS {bfgs.steps} steps -> loss {bfgs.loss:.3e} ({bfgs.message})")
    print(f"lotka-volterra: missing-term relative L2 error {error:.3e}")
    print(f"lotka-volterra: trajectory relative L2 error vs noise-free truth {fit_error:.3e}")
    print(f"lotka-volterra: fit time {seconds:.1f} s (compilation included)")
    if plot:
        Path(out_dir).mkdir(parents=True, exist_ok=True)
        out["png"] = str(Path(out_dir) / "lotka_volterra_ude.png")
        plot_fit(out["png"], np.asarray(ts), truth, np.asarray(data), np.asarray(fitted),
                 np.asarray(learned))  # fmt: skip
        print(f"lotka-volterra: wrote {out['png']}")
    return out


if __name__ == "__main__":
    main()
