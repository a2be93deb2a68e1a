"""Overhead of the flat view: what does `fm(theta, x)` cost over hand-written slices?

The seed network (1 -> 10 -> 10 -> 10 -> 1, tanh, one input point), same weights everywhere:
(a) `eqx.filter_jit` on the nested model (the usual Equinox call), (b) `jax.jit` of
`fm(theta, x)` with `fm = sb.flat(mlp, fast=False)` (the general path: rebuild by static
slicing inside jit), (c) a hand-written MLP on slices of the same `theta`. Per-call time of the
forward pass and of the theta-gradient of a squared output; ratios against (c).
Target: (b) within 1.1x of (c).
"""


import equinox as eqx
import jax
import jax.numpy as jnp

import sciml_bridge as sb

from _timing import hand_mlp as _hand_mlp, per_call, write_result


SIZES = (1, 10, 10, 10, 1)
hand_mlp = _hand_mlp(SIZES)






def contenders(mlp, x):
    """name -> (forward, gradient, args), all on the same weights."""
    fm = sb.flat(mlp, fast=False)
    theta = fm.theta0
    sq = lambda y: jnp.sum(y**2)
    nested_fwd = eqx.filter_jit(lambda m, x: m(x))
    nested_grad = eqx.filter_jit(eqx.filter_grad(lambda m, x: sq(m(x))))
    flat_grad = jax.jit(jax.grad(lambda t, x: sq(fm(t, x))))
    hand_grad = jax.jit(jax.grad(lambda t, x: sq(hand_mlp(t, x))))
    return {
        "(a) `eqx.filter_jit`, nested model": (nested_fwd, nested_grad, (mlp, x)),
        "(b) `jax.jit(fm)`, `sb.flat(mlp, fast=False)`": (jax.jit(fm), flat_grad, (theta, x)),
        "(c) hand-written slices": (jax.jit(hand_mlp), hand_grad, (theta, x)),
    }


def main(repeats: int = 7, number: int = 2000, seed: int = 0) -> str:
    mlp = eqx.nn.MLP(1, 1, 10, 3, activation=jnp.tanh, key=jax.random.key(seed))
    x = jnp.array([0.5], jnp.float32)
    table = contenders(mlp, x)
    ref_y = mlp(x)
    fwd = per_call({n: (f, args) for n, (f, _, args) in table.items()}, number, repeats)
    grad = per_call({n: (g, args) for n, (_, g, args) in table.items()}, number // 2, repeats)
    gaps = {n: float(jnp.max(jnp.abs(f(*args) - ref_y))) for n, (f, _, args) in table.items()}
    rows = {name: (fwd[name], grad[name], gaps[name]) for name in table}
    base_f, base_g, _ = rows["(c) hand-written slices"]
    lines = [
        f"Seed MLP {' -> '.join(map(str, SIZES))} (tanh, float32, one point), {jax.devices()[0]}:"
        f" median of {repeats} x {number} calls.",
        "",
        "| contender | forward (us/call) | vs (c) | gradient (us/call) | vs (c) | max abs diff |",
        "|---|---|---|---|---|---|",
    ]
    for name, (f, g, gap) in rows.items():
        lines.append(f"| {name} | {f * 1e6:.1f} | {f / base_f:.2f}x | {g * 1e6:.1f} | "
                     f"{g / base_g:.2f}x | {gap:.1e} |")
    text = "\n".join(lines)
    write_result(__file__, text)
    return text


if __name__ == "__main__":
    main()
