"""Does `sb.NeuralODE` cost anything over the Equinox-module style of the Diffrax example?

Question: time per loss+gradient step on the spiral problem (2 -> 50 -> 2 tanh on y**3, Tsit5,
PID rtol=atol=1e-6, 30 times on [0, 1.5]) for

- (a) the Diffrax example's style: an `eqx.Module` vector field closed into the `ODETerm`,
  `eqx.filter_jit(eqx.filter_value_and_grad(loss))(model)`; and (a') the same model partitioned
  once so the step is a `jax.jit` over arrays (the dispatch-free baseline, PITFALLS "Dispatch");
- (b) `sb.NeuralODE` with `theta` one flat vector under `jax.jit`: the fast path (`sb.flat` of
  the MLP picks `FlatMLP`) and the general path (`fast=False`, rebuilt once per solve);

for `RecursiveCheckpointAdjoint` and `BacksolveAdjoint`. Same weights for every contender.
Then the full spiral fit of `examples/neural_ode/spiral.py`: Adam 500 steps (timed again after
compilation) and BFGS to the end. Writes its tables to `benchmarks/results/neural_ode.md`.
"""

import statistics
import time
from pathlib import Path

import diffrax
import equinox as eqx
import jax
import jax.numpy as jnp

import sciml_bridge as sb
from sciml_bridge._cli import load_script


jax.config.update("jax_enable_x64", True)

RESULTS = Path(__file__).parent / "results" / "neural_ode.md"
ADJOINTS = {
    "recursive checkpoint": diffrax.RecursiveCheckpointAdjoint(),
    "backsolve": diffrax.BacksolveAdjoint(),
}
CONTROLLER = diffrax.PIDController(rtol=1e-6, atol=1e-6)


class Func(eqx.Module):
    """The Diffrax example's vector field: the network is part of the term."""

    mlp: eqx.nn.MLP

    def __call__(self, t, y, args):
        return self.mlp(y**3)


def diffrax_style_loss(adjoint, ts, y0, data):
    def loss(func):
        sol = diffrax.diffeqsolve(
            diffrax.ODETerm(func), diffrax.Tsit5(), ts[0], ts[-1], None, y0,
            saveat=diffrax.SaveAt(ts=ts), stepsize_controller=CONTROLLER, adjoint=adjoint,
            max_steps=4096,
        )  # fmt: skip
        return jnp.mean((sol.ys - data) ** 2)

    return loss


def cubed(model, y):
    """`sb.flat(cubed, mlp)`: the general path, whose `apply` feeds y**3 to the rebuilt MLP."""
    return model(y**3)


def bridge_loss(fm, adjoint, ts, y0, data):
    # A general FlatModel is the vector field itself, so NeuralODE rebuilds it once per solve.
    field = fm if isinstance(fm, sb.FlatModel) else (lambda theta, y: fm(theta, y**3))
    node = sb.NeuralODE(field, adjoint=adjoint)
    return lambda theta: jnp.mean((node(theta, y0, ts) - data) ** 2)


def median_seconds(contenders: dict, repeats: int) -> dict:
    """Median seconds per call of each `(step, arg)`, after a warm-up (compilation) call.

    Round-robin over the contenders, one call each per round, so that a shared machine's
    load drifts over all of them alike.
    """
    for step, arg in contenders.values():
        jax.block_until_ready(step(arg))
    times = {name: [] for name in contenders}
    for _ in range(repeats):
        for name, (step, arg) in contenders.items():
            start = time.perf_counter()
            jax.block_until_ready(step(arg))
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(t) for name, t in times.items()}


def step_contenders(adjoint, mlp, ts, y0, data):
    """`{name: (step, argument)}`, every one computing the same loss and gradient."""
    func = Func(mlp)
    a_loss = diffrax_style_loss(adjoint, ts, y0, data)
    params, static = eqx.partition(func, eqx.is_inexact_array)
    a_jit = jax.jit(jax.value_and_grad(lambda p: a_loss(eqx.combine(p, static))))
    fast, general = sb.flat(mlp), sb.flat(cubed, mlp)
    return {
        "(a) Diffrax example: eqx.filter_jit": (
            eqx.filter_jit(eqx.filter_value_and_grad(a_loss)), func),
        "(a') Diffrax example: jax.jit over arrays": (a_jit, params),
        "(b) sb.NeuralODE, FlatMLP fast path": (
            jax.jit(jax.value_and_grad(bridge_loss(fast, adjoint, ts, y0, data))), fast.theta0),
        "(b') sb.NeuralODE, general FlatModel": (
            jax.jit(jax.value_and_grad(bridge_loss(general, adjoint, ts, y0, data))),
            general.theta0),
    }  # fmt: skip


def step_table(repeats: int, ts, y0, data) -> str:
    mlp = eqx.nn.MLP(2, 2, 50, 1, activation=jnp.tanh, key=jax.random.key(0), dtype=jnp.float64)
    lines = [
        "| adjoint | contender | ms / loss+grad step | ratio to (a') | max abs grad diff |",
        "|---|---|---:|---:|---:|",
    ]
    for adjoint_name, adjoint in ADJOINTS.items():
        contenders = step_contenders(adjoint, mlp, ts, y0, data)
        times = median_seconds(contenders, repeats)
        grads = {
            name: jnp.concatenate([jnp.ravel(g) for g in jax.tree_util.tree_leaves(step(arg)[1])])
            for name, (step, arg) in contenders.items()
        }
        base = "(a') Diffrax example: jax.jit over arrays"
        for name, seconds in times.items():
            diff = float(jnp.max(jnp.abs(grads[name] - grads[base])))
            lines.append(
                f"| {adjoint_name} | {name} | {1e3 * seconds:.2f} | "
                f"{seconds / times[base]:.2f}x | {diff:.1e} |"
            )
    return "\n".join(lines)


def fit_table(adam_steps: int, bfgs_steps: int) -> str:
    """The spiral fit of the example: first call (with compilation) and a repeat (without)."""
    spiral = load_script("examples/neural_ode/spiral.py", command="bench")
    ts, y0, data = spiral.spiral_data()
    node, theta0 = spiral.make_node(50, 0)

    def loss(theta, data):
        return jnp.mean((node(theta, y0, ts) - data) ** 2)

    runs = []
    for _ in range(2):
        adam = sb.minimize(loss, theta0, "adam", args=(data,), max_steps=adam_steps,
                           learning_rate=1e-2, progress=False, throw=False)  # fmt: skip
        bfgs = sb.minimize(loss, adam.theta, "bfgs", args=(data,), max_steps=bfgs_steps,
                           progress=False, throw=False)  # fmt: skip
        runs.append((adam, bfgs))
    (adam0, bfgs0), (adam1, bfgs1) = runs
    return "\n".join([
        "| phase | steps | loss reached | s (first call, compile incl.) | s (after compile) |",
        "|---|---:|---:|---:|---:|",
        f"| Adam (lr 1e-2) | {adam1.steps} | {adam1.loss:.2e} | {adam0.wall_time:.2f} | "
        f"{adam1.wall_time:.2f} |",
        f"| BFGS (from Adam) | {bfgs1.steps} | {bfgs1.loss:.2e} | {bfgs0.wall_time:.2f} | "
        f"{bfgs1.wall_time:.2f} |",
    ])  # fmt: skip


def main(repeats: int = 100, quick: bool = False) -> str:
    """Print both tables and write them to `benchmarks/results/neural_ode.md`."""
    spiral = load_script("examples/neural_ode/spiral.py", command="bench")
    ts, y0, data = spiral.spiral_data()
    steps = step_table(repeats, ts, y0, data)
    fit = fit_table(*((50, 50) if quick else (500, 500)))
    device = jax.devices()[0].device_kind
    text = "\n".join([
        f"Neural ODE spiral (2 -> 50 -> 2 tanh on y**3, Tsit5, PID 1e-6, float64, {device}, "
        f"median of {repeats}). Target: (b) within 1.05x of (a).",
        "",
        steps,
        "",
        "Full spiral fit (`examples/neural_ode/spiral.py`). Targets: Adam 500 steps < 5 s after "
        "compilation; BFGS to loss <= 1e-3.",
        "",
        fit,
    ])  # fmt: skip
    print(text)
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(text + "\n")
    return text


if __name__ == "__main__":
    main()
