"""An ensemble's stacked model state passed back as `sb.minimize(..., state=)`.

Every member of an ensemble starts from the one `state` given (it rides in the stepper, outside
the vmap over members), and `res.state` of an ensemble is stacked over members. Passing that
back would hand every member all the rows: a loss that cannot take them fails deep inside the
model (NNX `Rngs`: "fold_in accepts a single key"; Equinox BatchNorm: "different shapes"), and
one that broadcasts (Linen BatchNorm statistics, counters) silently mixes the members' rows.

Which one was meant is read off the loss, by shapes only (`eqx.filter_eval_shape`, nothing
runs): a stacked state has a leading axis of the member count on every array, and the loss
takes one row of it back to a state of the row's shapes. If the loss cannot do the same with
the whole state, it is refused; if it can, either reading fits and the run warns.
"""

import warnings
from collections.abc import Callable
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp


_MSG_STACKED = """\
`{where}` got a `state` whose every array has a leading axis of {members}, the number of
members of `theta0`, and `loss` takes one row of it: an ensemble's stacked `res.state`?
Every member starts from the one `state` given, so each would get all {members} rows: {how}.
Fix: start every member from one state (member `i`'s: `state=jax.tree.map(lambda a: a[i],
res.state)`, or `fm.init_state()`), or, to go on with each member's own state, run both calls
with the same `checkpoint=` path (a resumed run restores every member's state)."""

_HOW_FAILS = "`loss`\ncannot take them"
_HOW_MIXES = ("`loss`\nwould broadcast them, mixing the members (if one shared state of this "
              "shape is meant,\nignore this warning)")  # fmt: skip


class StackedStateWarning(UserWarning):
    """`state=` of an ensemble run looks like an ensemble's stacked `res.state`."""


def _same_shapes(fn: Callable, theta, state, args: tuple) -> bool:
    """Whether `fn(theta, state, *args)` traces and returns `(value, new_state)` with
    `new_state` of `state`'s structure and shapes."""
    try:
        out = eqx.filter_eval_shape(fn, theta, state, *args)
    except Exception:  # any failure to trace with this state: it does not take it
        return False
    if not (isinstance(out, tuple | list) and len(out) == 2):
        return False
    if jax.tree.structure(out[1]) != jax.tree.structure(state):
        return False
    return all(jnp.shape(a) == jnp.shape(b)
               for a, b in zip(jax.tree.leaves(out[1]), jax.tree.leaves(state)))  # fmt: skip


def check_not_stacked(fn: Callable, theta, state: Any, args: tuple, members: int,
                      where: str) -> None:  # fmt: skip
    """Refuse (or, when both readings fit, warn about) an ensemble's stacked `res.state`
    given as the `state` every member of a `members`-member run starts from.

    `theta` is one member's row; `fn` the stateful loss.

    **Raises:**

    `ValueError` when the loss takes one row of `state` but not the whole; a
    `StackedStateWarning` when it takes both.
    """
    arrays = [x for x in jax.tree.leaves(state) if eqx.is_array(x)]
    if members < 2 or not arrays:
        return
    if any(jnp.ndim(x) == 0 or jnp.shape(x)[0] != members for x in arrays):
        return
    row = jax.tree.map(lambda x: x[0] if eqx.is_array(x) else x, state)
    if not _same_shapes(fn, theta, row, args):
        return
    if not _same_shapes(fn, theta, state, args):
        raise ValueError(_MSG_STACKED.format(where=where, members=members, how=_HOW_FAILS))
    warnings.warn(_MSG_STACKED.format(where=where, members=members, how=_HOW_MIXES),
                  StackedStateWarning, stacklevel=3)  # fmt: skip
