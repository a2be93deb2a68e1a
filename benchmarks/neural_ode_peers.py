"""`sb.NeuralODE` against torchdiffeq on the spiral: one loss + gradient step, same problem.

The spiral of `examples/neural_ode/spiral.py` (2 -> 50 -> 2 tanh on y**3, 30 times on
[0, 1.5], float64, rtol = atol = 1e-6), the same initial weights for every contender, the same
solver (Dormand-Prince 5(4): `diffrax.Dopri5`, torchdiffeq `"dopri5"`), and both ways to get the
gradient: backpropagation through the solver (`RecursiveCheckpointAdjoint` / `odeint`) and the
continuous adjoint (`BacksolveAdjoint` / `odeint_adjoint`). The library's default solver (Tsit5)
is one more row. Contenders are timed round-robin in one process (`_timing.per_call`: the
turn order rotates each round, so no row always follows torchdiffeq's seconds-long adjoint);
the ratio column is against the best peer. Writes `benchmarks/results/neural_ode_peers.md`.
"""

import diffrax
import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

import sciml_bridge as sb
from sciml_bridge._cli import load_script

from _peers import torchdiffeq_steps
from _timing import per_call, write_result


RTOL = ATOL = 1e-6


def sb_steps(mlp, ts, y0, data) -> dict:
    """`name -> step()`: jitted loss + theta-gradient of `sb.NeuralODE` on the fast path."""
    fm = sb.flat(mlp)
    theta = fm.theta0
    field = lambda th, y: fm(th, y**3)
    controller = diffrax.PIDController(rtol=RTOL, atol=ATOL)
    setups = {
        "sb.NeuralODE, Dopri5, RecursiveCheckpointAdjoint": (diffrax.Dopri5(),
                                                             diffrax.RecursiveCheckpointAdjoint()),
        "sb.NeuralODE, Dopri5, BacksolveAdjoint": (diffrax.Dopri5(), diffrax.BacksolveAdjoint()),
        "sb.NeuralODE, Tsit5 (default), RecursiveCheckpointAdjoint": (
            diffrax.Tsit5(), diffrax.RecursiveCheckpointAdjoint()),
    }
    steps = {}
    for name, (solver, adjoint) in setups.items():
        node = sb.NeuralODE(field, solver=solver, adjoint=adjoint, stepsize_controller=controller)
        grad = jax.jit(jax.value_and_grad(lambda th, n=node: jnp.mean((n(th, y0, ts) - data) ** 2)))
        steps[name] = lambda g=grad: jax.block_until_ready(g(theta))[1]
    return steps


def _flat_grad(g) -> np.ndarray:
    if isinstance(g, list):  # torch: weight, bias per layer, the order of `sb.flat`'s theta
        return np.concatenate([p.detach().numpy().ravel() for p in g])
    return np.asarray(g)


def main(repeats: int = 20) -> str:
    jax.config.update("jax_enable_x64", True)
    spiral = load_script("examples/neural_ode/spiral.py", command="bench")
    ts, y0, data = spiral.spiral_data()
    mlp = eqx.nn.MLP(2, 2, 50, 1, activation=jnp.tanh, key=jax.random.key(0), dtype=jnp.float64)
    steps = sb_steps(mlp, ts, y0, data)
    peers = torchdiffeq_steps(mlp, ts, y0, data, RTOL, ATOL)
    missing = {name: why for name, why in peers.items() if isinstance(why, str)}
    steps.update({name: step for name, step in peers.items() if name not in missing})
    times = per_call({name: (step, ()) for name, step in steps.items()}, 1, repeats)
    peer_times = [times[n] for n in peers if n not in missing]
    best = min(peer_times) if peer_times else None
    reference = _flat_grad(next(iter(steps.values()))())
    lines = [
        f"Spiral neural ODE, loss + gradient per step (2 -> 50 -> 2 tanh on y**3, float64, "
        f"rtol = atol = {RTOL:g}, {jax.devices()[0].device_kind}): median of {repeats}, "
        "round-robin, rotating order; ratio = time / best peer (below 1: faster than every peer).",
        "",
        "| contender | ms / step | vs best peer | max rel. grad diff vs first row |",
        "|---|---:|---:|---:|",
    ]
    for name, seconds in times.items():
        grad = _flat_grad(steps[name]())
        diff = np.max(np.abs(grad - reference)) / np.max(np.abs(reference))
        ratio = f"{seconds / best:.2f}x" if best else "-"
        lines.append(f"| {name} | {seconds * 1e3:.2f} | {ratio} | {diff:.1e} |")
    lines += [f"| {name} | {why} | | |" for name, why in missing.items()]
    text = "\n".join(lines)
    write_result(__file__, text)
    return text


if __name__ == "__main__":
    main()
