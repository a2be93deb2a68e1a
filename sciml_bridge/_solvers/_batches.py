"""Minibatches and per-step randomness inside the compiled loop (no host round trip per step).

`batch_size=B`: every array leaf of `args` shares a leading axis of N rows; step `k` sees the
rows `perm_e[i*B:(i+1)*B]` where `e = k // (N // B)` is the epoch, `i = k % (N // B)`, and
`perm_e` a permutation of the N rows drawn from `key` and `e`: every row once per epoch (when
B divides N; otherwise the N % B rows left over after the last full batch of an epoch sit that
epoch out, different ones each epoch), reshuffled each epoch. `key=`: a loss with a `key`
keyword gets `jax.random.fold_in(key, k)` at step `k`. The step counter lives in the solver
state, so a run resumed from a checkpoint draws the same batches and keys.
"""

import inspect
from collections.abc import Callable
from typing import Any, ClassVar, cast

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.tree_util as jtu

from ._stepper import AbstractStepper


_MSG_ROWS = """\
`{where}` with `batch_size={batch}` expected every array in `args` to have the same leading
axis (the data rows to draw minibatches from), but `args{path}` has shape {shape} while
{first_path} has {rows} rows. Fix: pass only per-row data in `args` and close over constants
(`loss = lambda theta, x, y: full_loss(theta, x, y, constant)`)."""

_MSG_BATCH = """\
`{where}` expected `batch_size` to be a positive int no larger than the number of rows in
`args` ({rows}), but got {batch!r}."""


def takes_key(fn: Callable) -> bool:
    """Whether `fn` has a `key` keyword parameter."""
    try:
        params = inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return False
    return "key" in params


class KeyedLoss(eqx.Module):
    """`fn(theta, *args, key=k)` as `fn(theta, *args, k)`: the key rides at the end of `args`."""

    fn: Callable

    def __call__(self, theta, *args):
        return self.fn(theta, *args[:-1], key=args[-1])


def count_rows(args: tuple, batch_size: int, where: str) -> int:
    leaves = [(p, x) for p, x in jtu.tree_leaves_with_path(args) if eqx.is_array(x)]
    if not leaves:
        raise ValueError(f"`{where}` got `batch_size={batch_size}` but no arrays in `args` to "
                         "draw minibatches from. Fix: pass the data as `args=(x, y)`.")  # fmt: skip
    first, rows = leaves[0][0], (jnp.shape(leaves[0][1]) or (None,))[0]
    for path, x in leaves:
        if jnp.ndim(x) == 0 or jnp.shape(x)[0] != rows:
            raise ValueError(_MSG_ROWS.format(where=where, batch=batch_size,
                                              path=jtu.keystr(path), shape=jnp.shape(x),
                                              first_path=f"`args{jtu.keystr(first)}`",
                                              rows=rows))  # fmt: skip
    assert rows is not None  # a 0-d first leaf failed the loop above
    ok = isinstance(batch_size, int) and not isinstance(batch_size, bool)
    if not ok or not 1 <= batch_size <= rows:
        raise ValueError(_MSG_BATCH.format(where=where, rows=rows, batch=batch_size))
    return int(rows)


class MinibatchStepper(AbstractStepper):
    """Runs `inner` on a fresh minibatch (and/or key) at every step; the state carries the
    step counter."""

    step_loss_is_value: ClassVar[bool] = False  # a minibatch's loss, or another step's key

    inner: AbstractStepper
    key: Any
    batch_size: int | None = eqx.field(static=True)
    rows: int | None = eqx.field(static=True)
    pass_key: bool = eqx.field(static=True)

    def has_stopping_rule(self) -> bool:
        return self.inner.has_stopping_rule()

    def criterion(self) -> str:
        return self.inner.criterion()

    def _batch(self, step, args):
        if self.batch_size is None:
            return tuple(args)
        per_epoch = cast(int, self.rows) // self.batch_size
        shuffle = jax.random.fold_in(jax.random.split(self.key)[1], step // per_epoch)
        perm = jax.random.permutation(shuffle, cast(int, self.rows))
        idx = jax.lax.dynamic_slice_in_dim(perm, (step % per_epoch) * self.batch_size,
                                           self.batch_size)  # fmt: skip
        return tuple(jtu.tree_map(lambda a: a[idx] if eqx.is_array(a) else a, tuple(args)))

    def _args(self, step, args):
        batch = self._batch(step, args)
        return (*batch, jax.random.fold_in(self.key, step)) if self.pass_key else batch

    def init(self, theta, args):
        return self.inner.init(theta, self._args(jnp.asarray(0), args)), jnp.asarray(0)

    def theta(self, state):
        return self.inner.theta(state[0])

    def model_state(self, state):
        return self.inner.model_state(state[0])

    def value_of(self, state, args):
        full = (*args, jax.random.fold_in(self.key, 0)) if self.pass_key else tuple(args)
        return self.inner.value_of(state[0], full)

    def value(self, theta, args):
        # The loss on all the data (with the key of step 0): what `res.loss` reports.
        full = (*args, jax.random.fold_in(self.key, 0)) if self.pass_key else tuple(args)
        return self.inner.value(theta, full)

    def step(self, state, args):
        inner, k = state
        new, loss, done, result = self.inner.step(inner, self._args(k, args))
        return (new, k + 1), loss, done, result


def with_batches(stepper: AbstractStepper | None, args: tuple, batch_size: int | None, key: Any,
                 pass_key: bool, where: str) -> AbstractStepper:
    """`stepper` as is (no `batch_size`, no `key`), else wrapped in a `MinibatchStepper`."""
    assert stepper is not None  # only a SciPy plan has none, and it never comes here
    if batch_size is None and key is None:
        return stepper
    rows = None if batch_size is None else count_rows(args, batch_size, where)
    key = jax.random.key(0) if key is None else key
    return MinibatchStepper(stepper, key, batch_size, rows, pass_key)
