"""Roofline of the tiny PINN's fused Adam step: flops per collocation point and achieved rate.

The step of `training_loop.py` (e): loss `mean((u'' - f)^2) + u(0)^2 + u(1)^2` with `u''` from
`sb.laplacian` (forward Laplacian of the 1-10-10-10-1 tanh `sb.FlatMLP`), its theta-gradient, and
an Optax Adam update, `steps` of them fused in one `lax.scan` (what `sb.minimize` dispatches).
Two kernels for `u''`: per point under `jax.vmap` (as in `training_loop.py`), and
`sb.laplacian(fm, batched=True)` (one pass over all points, points last on every carry).
For 128 to 8192 points: the flops XLA counts for one step (`cost_analysis`), divided by the
points; the time per step and per point; the achieved rate; and the number of kernels (fusions,
dots) XLA runs per step, each a separate dispatch inside the compiled program.
Writes `benchmarks/results/roofline.md`.
"""

import re

import jax
import jax.numpy as jnp
import optax

import sciml_bridge as sb

from _timing import per_call, write_result


def fused_steps(n_points: int, steps: int, batched: bool = False):
    """`(run(theta, state), one_step(theta, state), theta0, state0)` for `n_points` points."""
    fm = sb.FlatMLP((1, 10, 10, 10, 1), activation="tanh", key=jax.random.key(0),
                    dtype=jnp.float32)
    x = jnp.linspace(0.0, 1.0, n_points, dtype=jnp.float32)[:, None]
    f = -(jnp.pi**2) * jnp.sin(jnp.pi * x[:, 0])
    ends = jnp.array([[0.0], [1.0]], jnp.float32)
    lap = (sb.laplacian(fm, batched=True) if batched
           else jax.vmap(sb.laplacian(fm), in_axes=(None, 0)))
    opt = optax.adam(1e-3)

    def loss(theta):
        boundary = jnp.sum(jax.vmap(fm, in_axes=(None, 0))(theta, ends) ** 2)
        return jnp.mean((lap(theta, x)[:, 0] - f) ** 2) + boundary

    def step(theta, state):
        updates, state = opt.update(jax.grad(loss)(theta), state, theta)
        return optax.apply_updates(theta, updates), state

    def run(theta, state):
        return jax.lax.scan(lambda c, _: (step(*c), None), (theta, state), None, length=steps)[0]

    return jax.jit(run), jax.jit(step), fm.theta0, opt.init(fm.theta0)


KERNELS = {"per point, `jax.vmap`": False, "`batched=True`": True}


def kernels(compiled_text: str) -> int:
    """Kernels XLA runs for one compiled step: its fusions, dots and custom calls."""
    return len(re.findall(r"= \S+ (?:fusion|dot|custom-call)\(", compiled_text))


def main(points=(128, 1024, 8192), steps: int = 200, repeats: int = 5) -> str:
    lines = [
        "Tiny PINN fused Adam step (1-10-10-10-1 tanh, forward Laplacian via `sb.laplacian`, "
        f"float32, {steps} steps per `lax.scan`), {jax.devices()[0]}: median of {repeats}.",
        "",
        "| points | `u''` kernel | flops / step (XLA) | flops / point | bytes / point (XLA) "
        "| us / step | ns / point | GFLOP/s | GB/s | kernels / step |",
        "|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for n in points:
        built = {name: fused_steps(n, steps, batched) for name, batched in KERNELS.items()}
        # Both kernels interleaved, so a noisy machine slows them alike.
        times = per_call({name: (b[0], b[2:]) for name, b in built.items()}, 1, repeats)
        for name, (_, one, theta, state) in built.items():
            compiled = one.lower(theta, state).compile()
            cost = compiled.cost_analysis()
            flops, moved = float(cost["flops"]), float(cost["bytes accessed"])
            seconds = times[name] / steps
            lines.append(f"| {n} | {name} | {flops:,.0f} | {flops / n:,.0f} | {moved / n:,.0f} | "
                         f"{seconds * 1e6:.1f} | {seconds * 1e9 / n:.0f} | "
                         f"{flops / seconds / 1e9:.2f} | {moved / seconds / 1e9:.1f} | "
                         f"{kernels(compiled.as_text())} |")
    text = "\n".join(lines)
    write_result(__file__, text)
    return text


if __name__ == "__main__":
    main()
