"""What every script in `benchmarks/` shares: side-by-side timing and where tables go.

A private module of the benchmark scripts, not of the package: `python benchmarks/x.py` puts
this folder on `sys.path`, and `sciml-bridge bench` (`_cli.load_script`) does the same.
"""

import pathlib
import statistics
import time
from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp


def per_call(calls: dict, number: int, repeats: int) -> dict[str, float]:
    """Median seconds per call for each `name -> (fn, args)`, every call waited for.

    Contenders take turns within each repeat, so a noisy machine slows all of them alike, and
    the turn order rotates from one repeat to the next: no contender always runs right after
    the same (possibly much heavier, cache-evicting) neighbour.
    """
    for fn, args in calls.values():
        jax.block_until_ready(fn(*args))  # warm-up: compile outside the timing
    times: dict = {name: [] for name in calls}
    names = list(calls)
    for i in range(repeats):
        for name in names[i % len(names):] + names[: i % len(names)]:
            fn, args = calls[name]
            start = time.perf_counter()
            for _ in range(number):
                jax.block_until_ready(fn(*args))
            times[name].append((time.perf_counter() - start) / number)
    return {name: statistics.median(t) for name, t in times.items()}


def hand_mlp(sizes: Sequence[int], activation: Callable = jnp.tanh) -> Callable:
    """An MLP written by hand on slices of `theta` (destructure's layout: W then b per layer),
    the reference every fast path is measured against."""

    def mlp(theta, x):
        h, offset = x, 0
        for i, (n_in, n_out) in enumerate(zip(sizes[:-1], sizes[1:])):
            w = theta[offset : offset + n_in * n_out].reshape(n_out, n_in)
            offset += n_in * n_out
            h = w @ h + theta[offset : offset + n_out]
            offset += n_out
            h = activation(h) if i < len(sizes) - 2 else h
        return h

    return mlp


def write_result(script: str, text: str) -> pathlib.Path:
    """Print a benchmark's table and keep it as `benchmarks/results/<script name>.md`."""
    print(text)
    path = pathlib.Path(script)
    out = path.parent / "results" / f"{path.stem}.md"
    out.parent.mkdir(exist_ok=True)
    out.write_text(text + "\n")
    return out
