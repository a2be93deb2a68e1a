"""Activations with their first and second derivatives, for forward input derivatives.

A forward Laplacian pass (Li et al. 2023, "Forward Laplacian") pushes `(value, Jacobian,
Laplacian)` through each activation `f`, which needs `f`, `f'` and `f''` at the pre-activation.
Known activations carry closed forms that share work (`tanh'` reuses `tanh`); a user may supply
`(f, df, d2f)`; any other callable falls back to nested forward-mode AD on the scalar function.
"""

import dataclasses
import functools
from collections.abc import Callable
from typing import Any, cast

import jax
import jax.numpy as jnp
from jaxtyping import Array


def _tanh(z):
    t = jnp.tanh(z)
    d = 1 - t * t
    return t, d, -2 * t * d


def _sin(z):
    s = jnp.sin(z)
    return s, jnp.cos(z), -s


def _cos(z):
    c = jnp.cos(z)
    return c, -jnp.sin(z), -c


def _sigmoid(z):
    s = jax.nn.sigmoid(z)
    d = s * (1 - s)
    return s, d, d * (1 - 2 * s)


def _softplus(z):
    s = jax.nn.sigmoid(z)
    return jax.nn.softplus(z), s, s * (1 - s)


def _silu(z):
    s = jax.nn.sigmoid(z)
    d = s * (1 + z * (1 - s))
    return z * s, d, s * (1 - s) * (2 + z * (1 - 2 * s))


def _identity(z):
    return z, jnp.ones_like(z), jnp.zeros_like(z)


def _relu(z):
    # Same convention as `jax.nn.relu`'s custom JVP: derivative 0 at 0.
    return jax.nn.relu(z), (z > 0).astype(z.dtype), None


def _per_entry(fn: Callable, z: Array) -> Any:
    """`fn` applied to each entry of `z`, at any shape: one `jax.vmap` per axis.

    `eqx.nn.MLP` applies its activation to each scalar (`_vmap_a_of_b`), so a user's
    activation may accept only scalars (`lax.cond` on its input): the batched Laplacian
    passes `(width, points)` pre-activations, so vmapping only the leading axis is not enough.
    """
    for _ in range(jnp.ndim(z)):  # a "scalar" output is 0-d: no vmap at all
        fn = jax.vmap(fn)
    return fn(z)


def _jvp_ones(fn: Callable, z: Array) -> Any:
    return jax.jvp(fn, (z,), (jnp.ones_like(z),))


def _elementwise_ad(fn: Callable, order: int = 2) -> Callable:
    """`z -> (f, f'[, f''])` by forward over forward AD of an elementwise `fn`.

    A JVP with tangent ones is the elementwise derivative only if `fn` acts on each entry on
    its own; for a function that accepts only scalars, wrap it in `_per_entry` first."""

    def derivatives(z: Array) -> tuple[Array, ...]:
        if order == 1:
            return _jvp_ones(fn, z)
        (value, d1), (_, d2) = _jvp_ones(lambda u: _jvp_ones(fn, u), z)
        return value, d1, d2

    return derivatives


def _nested_ad(fn: Callable, z: Array, order: int) -> tuple[Array, ...]:
    """`(f, f'[, f''])` of a user's scalar function at every entry of `z` (any shape)."""
    return _per_entry(_elementwise_ad(fn, order), z)


def identity(x):
    """The identity activation (what `activation=None` means)."""
    return x


try:
    # `eqx.nn.MLP`'s default `final_activation` is its private `lambda x: x`; knowing it lets
    # the fast path skip it exactly. If Equinox renames it, it is merely a callable (nested AD).
    from equinox.nn._mlp import _identity as _EQX_IDENTITY
except ImportError:  # pragma: no cover - depends on the Equinox version
    _EQX_IDENTITY = identity


# name -> (the function stored in the rebuilt model, z -> (f, f', f'' or None)).
_TABLE: dict[str, tuple[Callable, Callable]] = {
    "tanh": (jnp.tanh, _tanh),
    "sin": (jnp.sin, _sin),
    "cos": (jnp.cos, _cos),
    "sigmoid": (jax.nn.sigmoid, _sigmoid),
    "softplus": (jax.nn.softplus, _softplus),
    "silu": (jax.nn.silu, _silu),
    # `jax.nn.gelu` acts on whole arrays: no per-entry vmap needed.
    "gelu": (jax.nn.gelu, _elementwise_ad(jax.nn.gelu)),
    "relu": (jax.nn.relu, _relu),
    "identity": (identity, _identity),
}

# Callables we recognise by identity (`jax.nn.swish is jax.nn.silu`, `jax.nn.tanh is jnp.tanh`).
_KNOWN: tuple[tuple[Any, str], ...] = tuple((fn, name) for name, (fn, _) in _TABLE.items()) + (
    (_EQX_IDENTITY, "identity"),
)

NAMES = tuple(_TABLE)

# JAX's activations whose first derivative jumps (piecewise linear ones, `selu`'s slope change
# at 0): like relu, their second derivative has Dirac deltas that autodiff reports as 0, so a
# Laplacian through them was 0 (leaky_relu, relu6, hard_tanh, abs) without a word.
_KINKED: tuple[Any, ...] = (
    jax.nn.relu, jax.nn.leaky_relu, jax.nn.relu6, jax.nn.hard_tanh, jax.nn.hard_sigmoid,
    jax.nn.hard_silu, jax.nn.sparse_sigmoid, jax.nn.selu, jnp.abs, jnp.absolute,
)

_MSG_UNKNOWN = """\
`sb.FlatMLP(..., activation={got!r})` does not know this activation name.
Expected one of {names}, a callable acting on each entry (e.g. `jnp.tanh`), or a tuple
`(f, df, d2f)` of a callable and its first and second derivatives."""

_MSG_NOT_C2 = """\
`sb.laplacian` needs second derivatives of every activation, but `{name}` is not twice
differentiable (its second derivative has Dirac deltas at its kinks, at 0 for relu, which
autodiff reports as 0).
Fix: use a smooth activation (`"tanh"`, `"softplus"`, `"silu"`, `"sin"`, ...) for PINNs;
`sb.grad_x` (first derivatives only) works with `{name}`."""

_MSG_NO_D2F = """\
`sb.laplacian` needs second derivatives of every activation, but `{name}` was given as
`(f, df)` without its second derivative.
Fix: pass `activation=(f, df, d2f)`, or just `f` to get both derivatives by nested autodiff."""


@dataclasses.dataclass(frozen=True)
class Activation:
    """An elementwise activation with its derivatives.

    `kind` is `"table"` (closed forms, see `NAMES`), `"user"` (derivatives `df`, `d2f` given)
    or `"ad"` (derivatives by nested forward-mode AD of the scalar function `fn`).
    Hashable, so it can be static data of a jitted model.
    """

    name: str
    fn: Callable
    kind: str
    df: Callable | None = None
    d2f: Callable | None = None

    def __call__(self, z: Array) -> Array:
        if self.kind == "table":
            return self.fn(z)
        return _per_entry(self.fn, z)

    @property
    def twice_differentiable(self) -> bool:
        if self.kind == "table":
            return self.name != "relu"
        if self.kind == "ad":
            # `functools.partial(jax.nn.leaky_relu, negative_slope=0.1)` is the same kink.
            fn = self.fn.func if isinstance(self.fn, functools.partial) else self.fn
            return not any(fn is kinked for kinked in _KINKED)
        return self.d2f is not None

    def derivatives(self, z: Array, order: int) -> tuple[Array, ...]:
        """`(f, f')` for `order=1`, `(f, f', f'')` for `order=2`, at every entry of `z`.

        `z` is `(width,)` per point, or `(width, points)` in the batched Laplacian."""
        if self.kind == "table":
            out = _TABLE[self.name][1](z)
        elif self.kind == "user":
            second = None if (order < 2 or self.d2f is None) else _per_entry(self.d2f, z)
            out = (self(z), _per_entry(cast(Callable, self.df), z), second)
        else:
            out = _nested_ad(self.fn, z, order) + (None,) * (2 - order)
        if order == 2 and out[2] is None:
            check_twice_differentiable(self)
        return cast(tuple[Array, ...], out[: order + 1])


def check_twice_differentiable(activation: "Activation | None") -> None:
    """Raise the promised error for `sb.laplacian` through a non-C2 activation (relu)."""
    if activation is not None and not activation.twice_differentiable:
        msg = _MSG_NO_D2F if activation.kind == "user" else _MSG_NOT_C2
        raise ValueError(msg.format(name=activation.name))


def _name_of(fn: Callable) -> str:
    return getattr(fn, "__name__", type(fn).__name__)


def known_activation(fn: Any) -> "Activation | None":
    """The table entry for a callable we know by identity (`jnp.tanh`, ...), else None."""
    for known, name in _KNOWN:
        if fn is known:
            return Activation(name, _TABLE[name][0], "table")
    return None


def make_activation(spec: Any) -> "Activation | None":
    """Normalise a name, a callable or a `(f, df[, d2f])` tuple; None means identity."""
    if spec is None:
        return None
    if isinstance(spec, Activation):
        return _skip_identity(spec)
    if isinstance(spec, str):
        if spec not in _TABLE:
            raise ValueError(_MSG_UNKNOWN.format(got=spec, names=NAMES))
        return _skip_identity(Activation(spec, _TABLE[spec][0], "table"))
    if isinstance(spec, tuple):
        if len(spec) not in (2, 3) or not all(callable(f) for f in spec):
            raise TypeError(_MSG_UNKNOWN.format(got=spec, names=NAMES))
        fn, df, *rest = spec
        return Activation(_name_of(fn), fn, "user", df, rest[0] if rest else None)
    if not callable(spec):
        raise TypeError(_MSG_UNKNOWN.format(got=spec, names=NAMES))
    return _skip_identity(known_activation(spec) or Activation(_name_of(spec), spec, "ad"))


def _skip_identity(activation: Activation) -> "Activation | None":
    # The identity costs nothing when it is not applied at all; None means exactly that.
    return None if activation.kind == "table" and activation.name == "identity" else activation
