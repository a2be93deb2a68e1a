"""Forward Laplacian vs folx and `trace(jax.hessian)`: what does a PINN loss with a Laplacian cost?

A Poisson-style PINN loss `mean((lap u(x) + f(x))^2)` over a batch of points, for an MLP
d -> 64 -> 64 -> 64 -> 1 (tanh, `eqx.nn.MLP(d, "scalar", 64, 3)`), d in {2, 8, 32}, same
weights for every contender: (a) `sb.laplacian(fm, batched=True)` on the fast path
(`sb.flat(mlp)`, one forward-Laplacian pass over all points, points on every carry's last axis),
(a') `sb.laplacian(fm)` per point under `jax.vmap`; the peers: (b) folx
(`folx.forward_laplacian`, the reference JAX implementation of the Forward Laplacian paper) of
the same `sb.FlatMLP`, (c) `trace(jax.hessian)`
of the same `sb.FlatMLP`, (d) `sb.laplacian` on the general path (`sb.flat(mlp, fast=False)`,
which is `trace(jax.hessian)`). Per-call time of the loss value and of its theta-gradient
(`jax.value_and_grad`), all contenders interleaved in one process; ratios are time / the best
peer's time (below 1.00x: faster than every peer). folx comes with the `bench` extra; without
it its row says "not installed".
Targets: (a) no slower than folx for the loss + theta-gradient (goal 1.2x faster).
Every row's Laplacian is compared with (a) at every point (last column).
"""


import equinox as eqx
import jax
import jax.numpy as jnp

import sciml_bridge as sb

from _peers import folx_laplacian
from _timing import per_call, write_result


def _hessian_trace(fm):
    def lap(theta, x):
        return jnp.trace(jax.hessian(lambda v: fm(theta, v))(x))

    return lap


def _vmapped(lap):
    return jax.vmap(lap, in_axes=(None, 0))


def _pinn_loss(laps, xs):
    """The loss of `laps(theta, xs)`, the Laplacians of all points."""
    source = jnp.sum(jnp.sin(xs), axis=1)  # any f(x); same for every contender

    def loss(theta):
        return jnp.mean((laps(theta, xs) + source) ** 2)

    return loss


def contenders(d: int, width: int, depth: int, batch: int, dtype, seed: int):
    """`(name -> laps(theta, xs) or why it is missing, points, theta)`, same weights and points."""
    key_model, key_x = jax.random.split(jax.random.key(seed))
    mlp = eqx.nn.MLP(d, "scalar", width, depth, activation=jnp.tanh, dtype=dtype,
                     key=key_model)
    xs = jax.random.uniform(key_x, (batch, d), dtype, -1, 1)
    fast, general = sb.flat(mlp, fast=True), sb.flat(mlp, fast=False)
    folx_lap, why = folx_laplacian(fast)
    laps = {
        "(a) sb forward Laplacian, batched (`sb.laplacian(fm, batched=True)`)":
            sb.laplacian(fast, batched=True),
        "(a') sb forward Laplacian per point, `jax.vmap(sb.laplacian(fm))`":
            _vmapped(sb.laplacian(fast)),
        "(b) folx `forward_laplacian`": _vmapped(folx_lap) if folx_lap is not None else why,
        "(c) trace(hessian) of `sb.FlatMLP`": _vmapped(_hessian_trace(fast)),
        "(d) trace(hessian), general `sb.FlatModel`": _vmapped(sb.laplacian(general)),
    }
    return laps, xs, fast.theta0


def _rows(d, width, depth, batch, dtype, seed, number, repeats) -> list[str]:
    laps, xs, theta = contenders(d, width, depth, batch, dtype, seed)
    missing = {name: why for name, why in laps.items() if isinstance(why, str)}
    losses = {name: _pinn_loss(lap, xs) for name, lap in laps.items() if name not in missing}
    values = per_call({n: (jax.jit(f), (theta,)) for n, f in losses.items()}, number, repeats)
    grads = per_call({n: (jax.jit(jax.value_and_grad(f)), (theta,)) for n, f in losses.items()},
                     number, repeats)
    at_points = {n: jax.jit(laps[n])(theta, xs) for n in losses}
    first, peers = next(iter(losses)), [n for n in losses if not n.startswith("(a")]
    best_value = min(values[n] for n in peers)
    best_grad = min(grads[n] for n in peers)
    rows = []
    for name in losses:
        gap = float(jnp.max(jnp.abs(at_points[name] - at_points[first])))
        rows.append(f"| {d} | {name} | {values[name] * 1e3:.2f} | "
                    f"{values[name] / best_value:.2f}x | {grads[name] * 1e3:.2f} | "
                    f"{grads[name] / best_grad:.2f}x | {gap:.1e} |")
    rows += [f"| {d} | {name} | {why} | | | | |" for name, why in missing.items()]
    return rows


def main(dims=(2, 8, 32), width: int = 64, depth: int = 3, batch: int = 1024,
         dtype=jnp.float32, repeats: int = 7, number: int = 3, seed: int = 0) -> str:
    lines = [
        f"PINN loss with a Laplacian: MLP d -> {width} x {depth} hidden -> 1 (tanh), batch "
        f"{batch}, {jnp.dtype(dtype).name}, {jax.devices()[0]}: median of {repeats} x {number} "
        "calls, interleaved; ratios = time / best peer's time (below 1.00x: faster than every "
        "peer).",
        "",
        "| d | contender | loss (ms/call) | vs best peer | loss + theta-grad (ms/call) "
        "| vs best peer | max abs Laplacian diff vs (a) |",
        "|---|---|---|---|---|---|---|",
    ]
    for d in dims:
        lines += _rows(d, width, depth, batch, dtype, seed, number, repeats)
    text = "\n".join(lines)
    write_result(__file__, text)
    return text


if __name__ == "__main__":
    main()
