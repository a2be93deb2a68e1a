"""What `sb.FlatMLP(sizes, ...)` builds: its checked arguments and the Equinox network it mirrors.

`FlatMLP` never holds this network; it builds it once, to take `theta0` and the layout from
`sb.destructure` of it, so the fast path and `fm.restructure(theta)` share every number.
"""

from collections.abc import Sequence
from typing import Any, cast

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import PRNGKeyArray

from ._activations import Activation, identity
from ._custom_types import Size
from ._precision import check_jax_dtype, check_x64, is_inexact


_MSG_SIZES = """\
`sb.FlatMLP(sizes, ...)` expected `sizes = (in, hidden..., out)`: at least two positive ints,
with `"scalar"` allowed only as the first or last entry (as in `eqx.nn.MLP`), but got {got!r}."""


_MSG_KEY = """\
`sb.FlatMLP(..., key=...)` expected a JAX PRNG key such as `jax.random.key(0)`, but got
{got}. Fix: `key=jax.random.key({seed})`."""

_MSG_DTYPE = """\
`sb.FlatMLP(..., dtype=...)` expected a floating or complex parameter dtype (e.g.
`jnp.float64`, `jnp.float32`, `jnp.bfloat16`), but got {got}."""


_MSG_KEYS = """\
`sb.FlatMLP(..., key=...)` expected one PRNG key (shape ()), but got a key array of shape
{shape}. Fix: pass one of them, `key=keys[0]`; for several networks, build one per key."""


def check_key(key: Any) -> None:
    if isinstance(key, jax.Array):
        if jnp.issubdtype(key.dtype, jax.dtypes.prng_key):
            if key.shape != ():
                raise ValueError(_MSG_KEYS.format(shape=key.shape))
            return
        if key.dtype == jnp.uint32 and key.shape == (2,):
            return  # a legacy raw key from `jax.random.PRNGKey`
    seed = key if isinstance(key, int) and not isinstance(key, bool) else 0
    got = f"{type(key).__name__} {key!r}"[:120]
    raise TypeError(_MSG_KEY.format(got=got, seed=seed))


def check_dtype(dtype: Any) -> None:
    if dtype is None:
        return
    try:
        ok = is_inexact(dtype)
    except TypeError:
        ok = False
    if not ok:
        raise TypeError(_MSG_DTYPE.format(got=dtype))
    check_x64(dtype, "`sb.FlatMLP(..., dtype=...)`", "a request")
    check_jax_dtype(dtype, "`sb.FlatMLP(..., dtype=...)`", "a request")


def check_sizes(sizes: Sequence[Any]) -> tuple[Size, ...]:
    sizes = tuple(sizes)

    def size(s: Any, end: bool) -> Size:
        if end and isinstance(s, str) and s == "scalar":
            return "scalar"
        if isinstance(s, (bool, np.bool_)) or not isinstance(s, (int, np.integer)):
            raise TypeError(_MSG_SIZES.format(got=sizes))  # the wrong kind: 2.0, True, "3"
        if s <= 0:
            raise ValueError(_MSG_SIZES.format(got=sizes))
        return int(s)

    if len(sizes) < 2:
        raise ValueError(_MSG_SIZES.format(got=sizes))
    last = len(sizes) - 1
    return tuple(size(s, i in (0, last)) for i, s in enumerate(sizes))


def _fn(activation: Activation | None):
    return identity if activation is None else activation.fn


def equivalent_model(sizes: tuple[Size, ...], hidden: Activation | None,
                     final: Activation | None, key: PRNGKeyArray, dtype,
                     use_bias: bool) -> eqx.Module:
    """The Equinox network FlatMLP mirrors: `eqx.nn.MLP`, or a `Sequential` of
    `Linear`/`Lambda` for uneven widths or for one layer with a `final_activation`.

    Keys are split as `eqx.nn.MLP` splits them (one per layer, in order), so for uniform
    widths both constructions give the very same numbers.
    """
    depth = len(sizes) - 2
    widths = set(sizes[1:-1])
    # `eqx.nn.MLP` ignores `final_activation` at depth 0 (`layers[0](x)`): a `Sequential`
    # then keeps the activation, so `restructure` still rebuilds what `fm` computes.
    if len(widths) <= 1 and not (depth == 0 and final is not None):
        width = cast(int, widths.pop()) if widths else 1  # hidden sizes are never "scalar"
        kwargs: dict[str, Any] = {} if final is None else {"final_activation": final.fn}
        return eqx.nn.MLP(sizes[0], sizes[-1], width, depth, activation=_fn(hidden),
                          use_bias=use_bias, use_final_bias=use_bias, dtype=dtype, key=key,
                          **kwargs)
    keys = jax.random.split(key, depth + 1)
    modules: list[Any] = []
    for i, k in enumerate(keys):
        modules.append(eqx.nn.Linear(sizes[i], sizes[i + 1], use_bias, dtype=dtype, key=k))
        act = hidden if i < depth else final
        if act is not None:
            # A known function as itself; any other as the `Activation`, applied per entry
            # (as `eqx.nn.MLP` applies it) and recognised by `_fast.py` as elementwise.
            modules.append(eqx.nn.Lambda(act.fn if act.kind == "table" else act))
    return eqx.nn.Sequential(modules)
