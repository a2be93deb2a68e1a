"""Flax is optional: imported once, here, at module top; `nnx` is None without it."""

try:
    from flax import nnx
except ImportError:  # pragma: no cover - flax is an optional dependency
    nnx = None
