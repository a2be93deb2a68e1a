"""The seed benchmark: does the fast path make a tiny PINN network cost what hand code costs?

1 -> 10 -> 10 -> 10 -> 1 tanh MLP on one input point, float32 and float64, same weights for
every contender: (a) `eqx.filter_jit` on the nested model, (b) the general `sb.FlatModel`
(`sb.flat(mlp, fast=False)`), (c) the fast path `sb.FlatMLP` (`sb.flat(mlp)`), (d) a
hand-written MLP on slices of `theta`. Per-call forward and theta-gradient time (each call
waited for), and compile time (first call of a fresh jitted function: trace + compile + run).
Targets: (c) within 1.05x of (d); (c) at least 5x faster than (a) forward, 10x for the gradient.
"""

import time

import equinox as eqx
import jax
import jax.numpy as jnp

import sciml_bridge as sb

from _timing import hand_mlp as _hand_mlp, per_call, write_result


SIZES = (1, 10, 10, 10, 1)
hand_mlp = _hand_mlp(SIZES)






def first_call(make, args) -> float:
    """Seconds for the first call of a freshly made jitted function."""
    fn = make()
    start = time.perf_counter()
    jax.block_until_ready(fn(*args))
    return time.perf_counter() - start


def _loss(y):
    # A PINN-style squared residual at the point; the gradient is w.r.t. all parameters.
    return jnp.sum((y - 1) ** 2)


def contenders(mlp, x):
    """name -> (make forward, make gradient, args); `make` builds a fresh jitted function."""
    general, fast = sb.flat(mlp, fast=False), sb.flat(mlp, fast=True)
    theta = fast.theta0

    def flat(f):
        return (lambda: jax.jit(lambda t, x: f(t, x)),
                lambda: jax.jit(jax.grad(lambda t, x: _loss(f(t, x)))), (theta, x))

    return {
        "(a) `eqx.filter_jit`, nested": (
            lambda: eqx.filter_jit(lambda m, x: m(x)),
            lambda: eqx.filter_jit(eqx.filter_grad(lambda m, x: _loss(m(x)))), (mlp, x)),
        "(b) `sb.FlatModel` (general)": flat(general),
        "(c) `sb.FlatMLP` (fast)": flat(fast),
        "(d) hand-written slices": flat(hand_mlp),
    }


def _rows(dtype, repeats: int, number: int, seed: int) -> list[str]:
    mlp = eqx.nn.MLP(1, 1, 10, 3, activation=jnp.tanh, dtype=dtype, key=jax.random.key(seed))
    x = jnp.array([0.5], dtype)
    table = contenders(mlp, x)
    compile_s = {name: first_call(make_f, args) + first_call(make_g, args)
                 for name, (make_f, make_g, args) in table.items()}
    fwd = per_call({n: (make_f(), args) for n, (make_f, _, args) in table.items()}, number,
                   repeats)
    grad = per_call({n: (make_g(), args) for n, (_, make_g, args) in table.items()},
                    number // 2, repeats)
    measured = {name: (fwd[name], grad[name], compile_s[name]) for name in table}
    base_f, base_g, _ = measured["(d) hand-written slices"]
    rows = []
    for name, (f, g, c) in measured.items():
        rows.append(f"| {jnp.dtype(dtype).name} | {name} | {f * 1e6:.1f} | {f / base_f:.2f}x | "
                    f"{g * 1e6:.1f} | {g / base_g:.2f}x | {c * 1e3:.0f} |")
    (a_f, a_g, _), (c_f, c_g, _) = measured["(a) `eqx.filter_jit`, nested"], measured[
        "(c) `sb.FlatMLP` (fast)"]
    rows.append(f"| {jnp.dtype(dtype).name} | speed-up (a)/(c) | {a_f / c_f:.1f}x | | "
                f"{a_g / c_g:.1f}x | | |")
    return rows


def main(repeats: int = 7, number: int = 2000, seed: int = 0) -> str:
    jax.config.update("jax_enable_x64", True)  # float64 rows need it; float32 rows are explicit
    lines = [
        f"Seed PINN MLP {' -> '.join(map(str, SIZES))} (tanh, one point), {jax.devices()[0]}:"
        f" median of {repeats} x {number} calls; ratios vs (d).",
        "",
        "| dtype | contender | forward (us/call) | vs (d) | gradient (us/call) | vs (d) "
        "| compile fwd+grad (ms) |",
        "|---|---|---|---|---|---|---|",
    ]
    for dtype in (jnp.float32, jnp.float64):
        lines += _rows(dtype, repeats, number, seed)
    text = "\n".join(lines)
    write_result(__file__, text)
    return text


if __name__ == "__main__":
    main()
