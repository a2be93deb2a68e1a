"""Which leaves of a model are parameters, and their slots in `theta` (ties included).

Computed once, on the concrete tree, when `sb.destructure` is called: array identity (a tie)
does not survive a `jax.jit` round trip (shared/PITFALLS.md, "Flattening"), so ties are
recorded here, as static data, and never looked for again.
"""

from collections.abc import Callable
from typing import Any

import equinox as eqx
import jax.tree_util as jtu
import numpy as np

from ._custom_types import Model, Ties
from ._destructure_restructure import Slot


_MSG_TIE_FILTER = """\
`{where}(..., params=...)` froze the array at `{frozen}` but trains the very same array
object at `{trained}` (a tie: one parameter in two places). Training one place and freezing
the other would silently untie them.
Fix: select both places or neither in `params=`, or pass `ties="none"` to treat the two places
as independent copies (Equinox's semantics)."""

_MSG_TIES = """\
`{where}` expected `ties` to be "identity" (the same array object in several places is
one parameter) or "none" (every place is its own parameter, as `eqx.filter_grad` sees a model),
but got {got!r}."""

TIES = ("identity", "none")


_MSG_PARAMS = """\
`{where}(..., params=...)` expected a callable `leaf -> bool` or a pytree prefix of the
model (an Equinox filter spec), but got a {got} that does not match the model's structure.
Fix: `spec = jax.tree.map(lambda _: False, model)`, then set the chosen leaves to True with
`eqx.tree_at`."""


_MSG_PARAMS_ANSWER = """\
`{where}(..., params=f)` expected `f(leaf)` to answer True or False for each array leaf,
but it returned {what} for a leaf of shape {shape}.
Fix: reduce the answer to one bool, e.g. `params=lambda leaf: leaf.ndim == 2` or
`params=lambda leaf: bool((leaf > 0).all())`."""


def check_ties(ties: Any, where: str = "sb.destructure") -> None:
    """Raise `ValueError` for a `ties=` other than `"identity"` or `"none"`."""
    if ties not in TIES:
        raise ValueError(_MSG_TIES.format(got=ties, where=where))


def is_state_index(x) -> bool:
    # Running statistics (BatchNorm) live in `StateIndex.init`: state, not parameters.
    return isinstance(x, eqx.nn.StateIndex)


_NOT_PARAM = object()


def _on_arrays(predicate: Callable[..., Any], where: str) -> Callable[[Any], bool]:
    """`predicate` asked only about inexact array leaves: nothing else can be a parameter, so a
    natural `lambda leaf: leaf.ndim == 2` never meets an activation function or an int."""

    def ask(leaf: Any) -> bool:
        if not eqx.is_inexact_array(leaf):
            return False
        answer = predicate(leaf)
        try:
            return bool(answer)
        except (TypeError, ValueError) as e:  # an array of several entries has no truth value
            what = f"an array of shape {np.shape(answer)}" if np.ndim(answer) else repr(answer)
            raise TypeError(_MSG_PARAMS_ANSWER.format(what=what, shape=leaf.shape,
                                                      where=where)) from e

    return ask


def param_flags(model: Model, leaves: list, params, where: str = "sb.destructure") -> list[bool]:
    """Which flattened leaves are parameters: inexact arrays, narrowed by `params`."""
    flags = [eqx.is_inexact_array(leaf) for leaf in leaves]
    if params is None:
        return flags
    # Equinox filter semantics: a callable, or a pytree prefix of bools/callables.
    spec = jtu.tree_map(lambda f: _on_arrays(f, where) if callable(f) else f, params)
    try:
        chosen = eqx.filter(model, spec, replace=_NOT_PARAM, is_leaf=is_state_index)
    except ValueError as e:
        raise ValueError(_MSG_PARAMS.format(got=type(params).__name__, where=where)) from e
    chosen_leaves = jtu.tree_leaves(chosen, is_leaf=lambda x: x is _NOT_PARAM or is_state_index(x))
    if len(chosen_leaves) != len(leaves):
        raise ValueError(_MSG_PARAMS.format(got=type(params).__name__, where=where))
    return [f and c is not _NOT_PARAM for f, c in zip(flags, chosen_leaves)]


def check_filter_ties(paths: list, leaves: list, flags: list[bool],
                      where: str = "sb.destructure") -> None:  # fmt: skip
    """Refuse a `params=` filter that trains one place of a tied array and freezes another."""
    trained = {id(x): i for i, (x, f) in enumerate(zip(leaves, flags)) if f}
    for i, (leaf, flag) in enumerate(zip(leaves, flags)):
        if not flag and id(leaf) in trained and eqx.is_inexact_array(leaf):
            raise ValueError(_MSG_TIE_FILTER.format(frozen=jtu.keystr(paths[i]), where=where,
                                                    trained=jtu.keystr(paths[trained[id(leaf)]])))


def slots(paths: list, leaves: list, flags: list[bool], ties: Ties) -> tuple[Slot, ...]:
    """One slot per distinct parameter array; ties (same object) share the first slot.

    With `ties="none"` every place is its own slot (Equinox's copy semantics)."""
    first: dict[int, int] = {}
    groups: list[list[int]] = []
    for i, (leaf, flag) in enumerate(zip(leaves, flags)):
        if not flag:
            continue
        tie = id(leaf) if ties == "identity" else i
        if tie in first:
            groups[first[tie]].append(i)
        else:
            first[tie] = len(groups)
            groups.append([i])
    out, start = [], 0
    for places in groups:
        leaf = leaves[places[0]]
        slot = Slot(start, tuple(leaf.shape), np.dtype(leaf.dtype), jtu.keystr(paths[places[0]]),
                    tuple(places))
        out.append(slot)
        start += slot.size
    return tuple(out)
