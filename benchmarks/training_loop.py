"""Training-loop throughput: how many Adam steps per second on a tiny PINN?

The seed PINN (1 -> 10 -> 10 -> 10 -> 1, tanh; 1-D Poisson u'' = -pi^2 sin(pi x) on 128 points
plus the two boundary values), Adam with learning rate 1e-3, same initial weights everywhere:
(a) the idiomatic Equinox + Optax loop, an `eqx.filter_jit` step called from Python;
(b) a `jax.jit` step on the flat vector (`sb.flat`) called from Python;
(c) `sb.minimize(loss, theta0, method="adam")` (fused chunks of steps per dispatch);
(d) a bare hand-written `lax.scan` of the same flat step, one dispatch;
(e) the loop as this library recommends writing it: `sb.laplacian(fm)` (forward Laplacian) in
the loss, `sb.minimize(method="adam")`;
and the PyTorch peers (`bench` extra), same weights and dtype as the JAX rows: the usual PINN
loop (`u''` by double backward with `create_graph=True`, `torch.optim.Adam`) eager and under
`torch.compile` (a row says why when a peer is missing or does not compile here).
Steps per second (median of repeats, after a warm-up that compiles); ratios against (a), (d)
and the best peer (the fastest of (a) and the PyTorch rows).
Target: (c) at least 10x faster than (a) and within 1.2x of (d).
"""

import statistics
import time

import equinox as eqx
import jax
import jax.numpy as jnp
import optax

import sciml_bridge as sb

from _peers import torch_pinn_runs
from _timing import write_result


PEER_A = "(a) Equinox + Optax, `eqx.filter_jit` step"


def problem(n_points: int = 128):
    x = jnp.linspace(0.0, 1.0, n_points)
    f = -(jnp.pi**2) * jnp.sin(jnp.pi * x)
    return x, f


def pinn_loss(u, x, f):
    """Mean squared PDE residual of the scalar function `u` plus its boundary values."""
    u_xx = jax.vmap(jax.grad(jax.grad(u)))(x)
    boundary = u(jnp.zeros(())) ** 2 + u(jnp.ones(())) ** 2
    return jnp.mean((u_xx - f) ** 2) + boundary


def contenders(mlp, steps: int, x, f):
    """name -> a zero-argument callable running `steps` Adam steps from the same weights."""
    opt = optax.adam(1e-3)
    fm = sb.flat(mlp)
    theta0 = fm.theta0
    flat_loss = lambda theta, x, f: pinn_loss(lambda s: fm(theta, s[None])[0], x, f)
    nested_loss = lambda m, x, f: pinn_loss(lambda s: m(s[None])[0], x, f)

    @eqx.filter_jit
    def nested_step(model, state):
        grads = eqx.filter_grad(nested_loss)(model, x, f)
        updates, state = opt.update(grads, state, eqx.filter(model, eqx.is_array))
        return eqx.apply_updates(model, updates), state

    def flat_step(theta, state):
        grad = jax.grad(flat_loss)(theta, x, f)
        updates, state = opt.update(grad, state, theta)
        return optax.apply_updates(theta, updates), state

    jit_step = jax.jit(flat_step)
    scan = jax.jit(lambda t, s: jax.lax.scan(lambda c, _: (flat_step(*c), None), (t, s), None,
                                             length=steps)[0])  # fmt: skip

    def run_a():
        model, state = mlp, opt.init(eqx.filter(mlp, eqx.is_array))
        for _ in range(steps):
            model, state = nested_step(model, state)
        return eqx.filter(model, eqx.is_array)

    def run_b():
        theta, state = theta0, opt.init(theta0)
        for _ in range(steps):
            theta, state = jit_step(theta, state)
        return theta

    def run_c():
        res = sb.minimize(flat_loss, theta0, "adam", args=(x, f), max_steps=steps,
                          learning_rate=1e-3, progress=False)  # fmt: skip
        return res.theta

    lap = jax.vmap(sb.laplacian(fm), in_axes=(None, 0))

    def laplacian_loss(theta, x, f):
        # The recommended form: the forward Laplacian of the flat model, one pass per point.
        u_xx = lap(theta, x[:, None])[:, 0]
        ends = jnp.array([[0.0], [1.0]], x.dtype)
        boundary = jnp.sum(jax.vmap(fm, in_axes=(None, 0))(theta, ends) ** 2)
        return jnp.mean((u_xx - f) ** 2) + boundary

    def run_e():
        res = sb.minimize(laplacian_loss, theta0, "adam", args=(x, f), max_steps=steps,
                          learning_rate=1e-3, progress=False)  # fmt: skip
        return res.theta

    return {
        "(a) Equinox + Optax, `eqx.filter_jit` step": run_a,
        "(b) `jax.jit` flat step, Python loop": run_b,
        '(c) `sb.minimize(method="adam")`': run_c,
        "(d) bare `lax.scan` of the flat step": lambda: scan(theta0, opt.init(theta0)),
        '(e) `sb.laplacian` in the loss, `sb.minimize(method="adam")`': run_e,
        **torch_pinn_runs(mlp, x, f, steps),
    }


def steps_per_second(run, steps: int, repeats: int) -> float:
    jax.block_until_ready(run())  # warm-up: compile
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(run())
        times.append(time.perf_counter() - start)
    return steps / statistics.median(times)


def _table(mlp, n_points: int, steps: int, repeats: int) -> list[str]:
    x, f = problem(n_points)
    runs = contenders(mlp, steps, x, f)
    missing = {name: why for name, why in runs.items() if isinstance(why, str)}
    rates = {name: steps_per_second(run, steps, repeats)
             for name, run in runs.items() if name not in missing}  # fmt: skip
    base = rates["(a) Equinox + Optax, `eqx.filter_jit` step"]
    scan = rates["(d) bare `lax.scan` of the flat step"]
    best = max(rate for name, rate in rates.items() if name == PEER_A or "PyTorch" in name)
    lines = [
        f"Adam steps/s, tiny PINN (1-10-10-10-1 tanh, {n_points} points), {steps} steps, "
        f"median of {repeats}, {jax.default_backend()}",
        "",
        "| contender | steps/s | us/step | speed-up vs (a) | time vs (d) | time vs best peer |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for name, rate in rates.items():
        lines.append(f"| {name} | {rate:,.0f} | {1e6 / rate:.1f} | {rate / base:.1f}x | "
                     f"{scan / rate:.2f}x | {best / rate:.2f}x |")
    lines += [f"| {name} | {why} | | | | |" for name, why in missing.items()]
    return lines


def main(repeats: int = 5, steps: int = 2000, seed: int = 0, points=(128, 8)) -> str:
    """One table per problem size: 128 points (the issue's setting, where the step's own
    arithmetic bounds every loop, (d) included) and 8 points (dispatch-bound)."""
    mlp = eqx.nn.MLP(1, 1, 10, 3, activation=jnp.tanh, key=jax.random.key(seed))
    tables = ["\n".join(_table(mlp, n, steps, repeats)) for n in points]
    table = "\n\n".join(tables)
    write_result(__file__, table)
    return table


if __name__ == "__main__":
    main()
