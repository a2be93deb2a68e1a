"""Fit a stochastic differential equation to the statistics of sampled paths (Ornstein-Uhlenbeck).

Data: `paths` sample paths of dy = b (mu - y) dt + sigma dW with b = 1, mu = 1, sigma = 0.3 from
y0 = 0 on [0, 2], observed at 21 times. Model: `sb.NeuralSDE` with drift `theta[0] (theta[1] - y)`
and diffusion `exp(theta[2])` (Itô, `diffrax.Euler`), started far from the truth. The loss
compares the model's mean and standard deviation across paths with the data's at every time;
every step draws new Brownian paths from a fresh key. Swap the drift for an `sb.FlatMLP` to
learn an unknown drift: nothing else changes.

Run: `python examples/neural_ode/ou_sde.py` (prints the learned diffusion, writes
out/neural_sde_ou.png).
"""

import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

import sciml_bridge as sb


jax.config.update("jax_enable_x64", True)

TRUE_THETA = (1.0, 1.0, float(np.log(0.3)))  # b, mu, log sigma
TS = np.linspace(0.0, 2.0, 21)
Y0 = np.zeros(1)


def drift(theta, y):
    return theta[0] * (theta[1] - y)


def diffusion(theta, y):
    return jnp.exp(theta[2]) * jnp.ones_like(y)


SDE = sb.NeuralSDE(drift, diffusion, dt0=0.02)


def sample(theta, key, paths: int):
    """`(paths, times)` sample paths of the model at `theta`."""
    keys = jax.random.split(key, paths)
    ys = jax.vmap(SDE, in_axes=(None, None, None, 0))(theta, jnp.asarray(Y0), jnp.asarray(TS), keys)
    return ys[..., 0]


def statistics(ys):
    """Mean and standard deviation across paths after t = 0 (where every path is `y0`, and the
    derivative of a zero standard deviation is NaN)."""
    return jnp.mean(ys[:, 1:], axis=0), jnp.std(ys[:, 1:], axis=0)


def make_loss(paths: int):
    def loss(theta, mean, std, *, key):
        model_mean, model_std = statistics(sample(theta, key, paths))
        return jnp.mean((model_mean - mean) ** 2) + jnp.mean((model_std - std) ** 2)

    return loss


def fit(loss, theta0, args, key, *, steps, learning_rate, progress):
    """`sb.minimize(..., key=key)`: the engine hands the loss a fresh key per step."""
    return sb.minimize(loss, theta0, "adam", args=args, key=key, max_steps=steps,
                       learning_rate=learning_rate, progress=progress, throw=False)


def plot_paths(path, data, model) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 4.5))
    for i in range(20):
        ax.plot(TS, data[i], color="k", alpha=0.3, lw=0.8, label="data paths" if i == 0 else None)
        ax.plot(TS, model[i], color="tab:blue", alpha=0.4, lw=0.8,
                label="model paths" if i == 0 else None)
    for ys, color, name in ((data, "k", "data"), (model, "tab:blue", "model")):
        mean, std = np.mean(ys, 0), np.std(ys, 0)
        ax.plot(TS, mean, color=color, lw=2.5, label=f"{name} mean")
        ax.fill_between(TS, mean - std, mean + std, color=color, alpha=0.1)
    ax.set(xlabel="t", ylabel="y", title="Ornstein-Uhlenbeck: data vs fitted neural SDE")
    ax.legend(loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(paths: int = 512, steps: int = 300, seed: int = 0, learning_rate: float = 0.05,
         plot: bool = True, out_dir: str = "out", progress: bool = True) -> dict:
    """Fit the diffusion and drift; print and return the learned diffusion and its error."""
    data_key, train_key, plot_key = jax.random.split(jax.random.key(seed), 3)
    data = sample(jnp.array(TRUE_THETA), data_key, paths)
    theta0 = jnp.array([0.5, 0.5, np.log(0.1)])
    start = time.perf_counter()
    res = fit(make_loss(paths), theta0, statistics(data), train_key, steps=steps,
              learning_rate=learning_rate, progress=progress)
    seconds = time.perf_counter() - start
    sigma, true_sigma = float(jnp.exp(res.theta[2])), float(np.exp(TRUE_THETA[2]))
    error = abs(sigma - true_sigma) / true_sigma
    print(f"ou_sde: {res.steps} Adam steps, loss {res.loss:.2e}, {seconds:.1f} s (compile incl.)")
    print(f"ou_sde: learned diffusion {sigma:.4f} (true {true_sigma}), relative error {error:.3f}")
    print(f"ou_sde: learned drift b = {float(res.theta[0]):.3f}, mu = {float(res.theta[1]):.3f}")
    out = dict(sigma=sigma, error=error, theta=res.theta, loss=res.loss, png=None)
    if plot:
        Path(out_dir).mkdir(parents=True, exist_ok=True)
        out["png"] = str(Path(out_dir) / "neural_sde_ou.png")
        plot_paths(out["png"], np.asarray(data), np.asarray(sample(res.theta, plot_key, paths)))
        print(f"ou_sde: wrote {out['png']}")
    return out


if __name__ == "__main__":
    main()
