"""The seed benchmark: does the fast path make a tiny PINN network cost what hand code costs?

1 -> 10 -> 10 -> 10 -> 1 tanh MLP on one input point, float32 and float64, same weights for
every contender: (a) `eqx.filter_jit` on the nested model, (b) the general `sb.FlatModel`
(`sb.flat(mlp, fast=False)`), (c) the fast path `sb.FlatMLP` (`sb.flat(mlp)`), (d) a
hand-written MLP on slices of `theta`; and the PyTorch peers (`bench` extra) on the same
weights and dtype: `nn.Sequential` eager with `.backward()`, `torch.func.grad` over
`functional_call`, and `torch.compile` of both (a row says why when it does not work here).
Per-call forward and theta-gradient time (each call waited for; all contenders interleaved in one
process), and compile time (first call of a fresh jitted function: trace + compile + run).
Ratios: vs (d), and vs the best peer (the fastest of (a) and the PyTorch rows).
Targets: (c) within 1.05x of (d); (c) at least 5x faster than (a) forward, 10x for the gradient.
"""

import time

import equinox as eqx
import jax
import jax.numpy as jnp

import sciml_bridge as sb

from _peers import torch_seed_calls
from _timing import hand_mlp as _hand_mlp, per_call, write_result


SIZES = (1, 10, 10, 10, 1)
hand_mlp = _hand_mlp(SIZES)
PEER_A = "(a) `eqx.filter_jit`, nested"


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
    torch_calls = torch_seed_calls(mlp, x, dtype)
    missing = {n: why for n, why in torch_calls.items() if isinstance(why, str)}
    torch_ok = {n: c for n, c in torch_calls.items() if n not in missing}
    compile_s = {name: first_call(make_f, args) + first_call(make_g, args)
                 for name, (make_f, make_g, args) in table.items()}
    fwd_calls = {n: (make_f(), args) for n, (make_f, _, args) in table.items()}
    grad_calls = {n: (make_g(), args) for n, (_, make_g, args) in table.items()}
    fwd_calls.update({n: (f, ()) for n, (f, _) in torch_ok.items()})
    grad_calls.update({n: (g, ()) for n, (_, g) in torch_ok.items()})
    fwd = per_call(fwd_calls, number, repeats)
    grad = per_call(grad_calls, number // 2, repeats)
    base_f, base_g = fwd["(d) hand-written slices"], grad["(d) hand-written slices"]
    peers = [PEER_A, *torch_ok]
    best_f, best_g = min(fwd[n] for n in peers), min(grad[n] for n in peers)
    rows = []
    for name in fwd:
        c = f"{compile_s[name] * 1e3:.0f}" if name in compile_s else "-"
        rows.append(f"| {jnp.dtype(dtype).name} | {name} | {fwd[name] * 1e6:.1f} | "
                    f"{fwd[name] / base_f:.2f}x | {fwd[name] / best_f:.2f}x | "
                    f"{grad[name] * 1e6:.1f} | {grad[name] / base_g:.2f}x | "
                    f"{grad[name] / best_g:.2f}x | {c} |")
    rows += [f"| {jnp.dtype(dtype).name} | {n} | {why} | | | | | | |" for n, why in missing.items()]
    c_f, c_g = fwd["(c) `sb.FlatMLP` (fast)"], grad["(c) `sb.FlatMLP` (fast)"]
    rows.append(f"| {jnp.dtype(dtype).name} | speed-up (a)/(c) | {fwd[PEER_A] / c_f:.1f}x | | | "
                f"{grad[PEER_A] / c_g:.1f}x | | | |")
    return rows


def main(repeats: int = 7, number: int = 2000, seed: int = 0) -> str:
    jax.config.update("jax_enable_x64", True)  # float64 rows need it; float32 rows are explicit
    lines = [
        f"Seed PINN MLP {' -> '.join(map(str, SIZES))} (tanh, one point), {jax.devices()[0]}:"
        f" median of {repeats} x {number} calls, interleaved; ratios = time / (d)'s and time / "
        "the best peer's (the fastest of (a) and PyTorch; below 1.00x: faster than every peer).",
        "",
        "| dtype | contender | forward (us/call) | vs (d) | vs best peer | gradient (us/call) "
        "| vs (d) | vs best peer | compile fwd+grad (ms) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for dtype in (jnp.float32, jnp.float64):
        lines += _rows(dtype, repeats, number, seed)
    text = "\n".join(lines)
    write_result(__file__, text)
    return text


if __name__ == "__main__":
    main()
