"""Forward Laplacian vs `trace(jax.hessian)`: how much does knowing the network save a PINN?

A Poisson-style PINN loss `mean((lap u(x) + f(x))^2)` over a batch of points, for an MLP
d -> 64 -> 64 -> 64 -> 1 (tanh, `eqx.nn.MLP(d, "scalar", 64, 3)`), d in {2, 8, 32}, same
weights for every contender: (a) `sb.laplacian` on the fast path (`sb.flat(mlp)`, a
forward-Laplacian pass), (b) `trace(jax.hessian)` of the same `sb.FlatMLP`, (c) `sb.laplacian`
on the general path (`sb.flat(mlp, fast=False)`, which is `trace(jax.hessian)`). Per-call time
of the loss value and of its theta-gradient (`jax.value_and_grad`); ratios against (a).
Targets: (a) at least 2x faster than trace(hessian) at d=8 and 3x at d=32.
"""


import equinox as eqx
import jax
import jax.numpy as jnp

import sciml_bridge as sb

from _timing import per_call, write_result


def _hessian_trace(fm):
    def lap(theta, x):
        return jnp.trace(jax.hessian(lambda v: fm(theta, v))(x))

    return lap


def _pinn_loss(lap, xs):
    source = jnp.sum(jnp.sin(xs), axis=1)  # any f(x); same for every contender

    def loss(theta):
        return jnp.mean((jax.vmap(lap, in_axes=(None, 0))(theta, xs) + source) ** 2)

    return loss


def contenders(d: int, width: int, depth: int, batch: int, dtype, seed: int):
    """`(name -> lap(theta, x), points, theta)`, all on the same weights and points."""
    key_model, key_x = jax.random.split(jax.random.key(seed))
    mlp = eqx.nn.MLP(d, "scalar", width, depth, activation=jnp.tanh, dtype=dtype,
                     key=key_model)
    xs = jax.random.uniform(key_x, (batch, d), dtype, -1, 1)
    fast, general = sb.flat(mlp, fast=True), sb.flat(mlp, fast=False)
    laps = {
        "(a) forward Laplacian (`sb.FlatMLP`)": sb.laplacian(fast),
        "(b) trace(hessian) of `sb.FlatMLP`": _hessian_trace(fast),
        "(c) trace(hessian), general `sb.FlatModel`": sb.laplacian(general),
    }
    return laps, xs, fast.theta0


def _rows(d, width, depth, batch, dtype, seed, number, repeats) -> list[str]:
    laps, xs, theta = contenders(d, width, depth, batch, dtype, seed)
    losses = {name: _pinn_loss(lap, xs) for name, lap in laps.items()}
    values = per_call({n: (jax.jit(f), (theta,)) for n, f in losses.items()}, number, repeats)
    grads = per_call({n: (jax.jit(jax.value_and_grad(f)), (theta,)) for n, f in losses.items()},
                     number, repeats)
    at_points = {n: jax.jit(jax.vmap(lap, in_axes=(None, 0)))(theta, xs) for n, lap in laps.items()}
    first = next(iter(losses))
    rows = []
    for name in losses:
        gap = float(jnp.max(jnp.abs(at_points[name] - at_points[first])))
        rows.append(f"| {d} | {name} | {values[name] * 1e3:.2f} | "
                    f"{values[name] / values[first]:.2f}x | {grads[name] * 1e3:.2f} | "
                    f"{grads[name] / grads[first]:.2f}x | {gap:.1e} |")
    return rows


def main(dims=(2, 8, 32), width: int = 64, depth: int = 3, batch: int = 1024,
         dtype=jnp.float32, repeats: int = 5, number: int = 3, seed: int = 0) -> str:
    lines = [
        f"PINN loss with a Laplacian: MLP d -> {width} x {depth} hidden -> 1 (tanh), batch "
        f"{batch}, {jnp.dtype(dtype).name}, {jax.devices()[0]}: median of {repeats} x {number} "
        "calls; ratios vs (a) (higher = (a) is that much faster).",
        "",
        "| d | contender | loss (ms/call) | vs (a) | loss + theta-grad (ms/call) | vs (a) "
        "| max abs Laplacian diff vs (a) |",
        "|---|---|---|---|---|---|---|",
    ]
    for d in dims:
        lines += _rows(d, width, depth, batch, dtype, seed, number, repeats)
    text = "\n".join(lines)
    write_result(__file__, text)
    return text


if __name__ == "__main__":
    main()
