"""Shared test helpers: tree comparison, trace counting, a subprocess runner."""

import os
import subprocess
import sys
import textwrap

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.tree_util as jtu
import numpy as np

import sciml_bridge as sb


def assert_ulp_close(actual, desired, *, ulps: int = 8) -> None:
    """`actual` equals `desired` up to `ulps` units in the last place of their dtype.

    The comparison for two *differently compiled* programs on the same inputs: jit vs eager,
    fast path vs general path, vmapped vs looped, a Flax/Equinox module vs its flat model. XLA
    may fuse, contract to FMA or reorder reductions differently in each, so bit equality holds
    on one machine and fails on the next (issue 10: one float32 ulp on an AVX-512 Xeon). The
    tolerance is relative to each entry and, for entries near zero after cancellation, to the
    largest magnitude in `desired`. Shapes and dtypes must match exactly.
    """
    a, d = np.asarray(actual), np.asarray(desired)
    assert a.shape == d.shape, f"shape {a.shape} != {d.shape}"
    assert a.dtype == d.dtype, f"dtype {a.dtype} != {d.dtype}"
    eps = float(np.finfo(d.dtype).eps)
    scale = float(np.max(np.abs(d))) if d.size else 0.0
    np.testing.assert_allclose(a, d, rtol=ulps * eps, atol=ulps * eps * scale)


def tree_allclose(x, y, *, rtol=1e-12, atol=1e-12, check_dtype=True) -> bool:
    """Same structure, same non-array leaves, arrays close (and of the same dtype)."""
    xl, xt = jtu.tree_flatten(x)
    yl, yt = jtu.tree_flatten(y)
    if xt != yt:
        return False
    for a, b in zip(xl, yl):
        if eqx.is_array_like(a) and not isinstance(a, (bool, int, float, complex)):
            a, b = np.asarray(a), np.asarray(b)
            if a.shape != b.shape or (check_dtype and a.dtype != b.dtype):
                return False
            if not np.allclose(a, b, rtol=rtol, atol=atol):
                return False
        elif a is not b and a != b:
            return False
    return True


class TraceCounter:
    """Wrap a function; `count` goes up once per trace, never per call."""

    def __init__(self, fn):
        self.fn = fn
        self.count = 0

    def __call__(self, *args, **kwargs):
        self.count += 1
        return self.fn(*args, **kwargs)


def central_difference(f, theta, eps=1e-6):
    """Gradient of scalar `f` at `theta` by central differences (float64 reference)."""
    theta = np.asarray(theta, dtype=np.float64)
    out = np.empty_like(theta)
    for i in range(theta.size):
        e = np.zeros_like(theta)
        e[i] = eps
        out[i] = (float(f(jnp.asarray(theta + e))) - float(f(jnp.asarray(theta - e)))) / (2 * eps)
    return out


def run_python(code: str, *, env: dict | None = None, timeout: int = 300):
    """Run `code` in a fresh interpreter (for x64-off or multi-device behaviour)."""
    full_env = dict(os.environ)
    full_env.update(env or {})
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        capture_output=True,
        text=True,
        env=full_env,
        timeout=timeout,
    )




def raises_at(call: int, error: Exception | None = None):
    """A callback that records `(step, theta, loss)` and raises at its `call`-th call."""
    seen = []

    def callback(step, theta, loss):
        seen.append((step, np.asarray(theta), loss))
        if len(seen) == call:
            raise error if error is not None else ValueError("boom\nsecond line")

    return seen, callback


def assert_callback_error(err, seen: list, where: str, step: int):
    """The outcome of a callback that raised `ValueError("boom")` at its last call `seen[-1]`
    (and first saw `seen[0]`): the run stopped there, carried by `err`. Returns its result."""
    _, theta, loss = seen[-1]
    assert str(err).startswith("the callback raised ValueError: boom. ")
    assert f"`{where}` stopped at step {step}, the point" in str(err)
    assert isinstance(err.__cause__, ValueError) and str(err.__cause__).startswith("boom")
    res = err.result
    assert isinstance(res, sb.Solution) and res.result is sb.RESULTS.solver_failed
    assert not res.success and res.message == str(err)
    assert res.steps == seen[-1][0] == step and len(res.history) == step + 1
    assert res.loss == loss == res.history[-1] and res.history[seen[0][0]] == seen[0][2]
    assert err.theta is res.theta and np.array_equal(res.theta, theta)
    return res


__all__ = [
    "assert_ulp_close", "tree_allclose", "TraceCounter", "central_difference", "run_python", "jax",
    "raises_at", "assert_callback_error",
]
