"""Minibatches and per-step randomness inside the compiled loop (no host round trip per step).

`batch_size=B`: every array leaf of `args` shares a leading axis of N rows; step `k` sees the
rows `perm_e[i*B:(i+1)*B]` where `e = k // (N // B)` is the epoch, `i = k % (N // B)`, and
`perm_e` a permutation of the N rows drawn from `key` and `e` (`_shuffle.py`: only the B entries
a step needs are computed): every row once per epoch (when B divides N; otherwise the N % B
rows left after the last full batch sit that epoch out, different ones each epoch),
reshuffled each epoch. `key=`: a loss with a `key`
keyword gets `jax.random.fold_in(key, k)` at step `k`. The step counter lives in the solver
state, so a run resumed from a checkpoint draws the same batches and keys. Every member of an
ensemble shares the one `key`: the same batches and step keys, in the same order.

A stopping rule needs the gradient of one fixed loss, and minibatches (or a loss drawing from a
fresh key) change the loss at every step: a run on two rows said "converged" at loss 50 with
the minimum at 25, because one row's gradient vanished there. So an explicit `tol=` is refused
with them (`prepare_batches`), and a method's default stopping rule is switched off: such a
run takes its whole `max_steps` budget (as Optax's own loops do) unless it fails.
"""

import inspect
from collections.abc import Callable
from typing import Any, ClassVar, cast

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.tree_util as jtu
import numpy as np

from ._shuffle import batch_rows
from ._stepper import AbstractStepper


_MSG_ROWS = """\
`{where}` with `batch_size={batch}` expected every array in `args` to have the same leading
axis (the data rows to draw minibatches from), but `args{path}` has shape {shape} while
{first_path} has {rows} rows. Fix: pass only per-row data in `args` and close over constants
(`loss = lambda theta, x, y: full_loss(theta, x, y, constant)`)."""

_MSG_BATCH = """\
`{where}` expected `batch_size` to be a positive int no larger than the number of rows in
`args` ({rows}), but got {batch!r}."""

_MSG_BATCH_TYPE = """\
`{where}` expected `batch_size` to be None or a positive int (the rows of `args` each step
sees), but got {batch!r}. Fix: `batch_size=32`."""

_MSG_TOL = """\
`{where}` got `tol={tol!r}` with {what}, but `tol` is a stopping rule on the gradient of
one fixed loss, and {why} changes the loss at every step: a step's gradient is noise
around the full one, so `tol` would be met by chance far from the minimum (or never).
Fix: drop `tol=` and set the budget with `max_steps=`; then check convergence on all the
data, e.g. continue from `res.theta` without `batch_size=`/`key=` and with `tol=`."""

_MSG_KEY_TYPE = """\
`{where}` expected `key` to be a JAX PRNG key (`jax.random.key(0)`, or a legacy
`jax.random.PRNGKey(0)`), but got {got}. Fix: `key=jax.random.key({seed})`."""

_MSG_KEY_BATCH = """\
`{where}` expected one PRNG key, but got {count} keys (a key array of shape {shape}). Every
member of an ensemble shares one `key`: the same minibatches and the same step keys, in the
same order (the members still differ in `theta`). Fix: pass one key (`key=keys[0]`); to
give each member its own sequence, call `{where}` once per member with its own key."""

_MSG_NO_KEY = """\
`{where}` got a loss that requires a `key` argument, but no `key=`. Fix:
`{where}(..., key=jax.random.key(0))`: step `k` then calls it with
`key=jax.random.fold_in(key, k)` (the same sequence on every run with that key)."""


def takes_key(fn: Callable) -> bool:
    """Whether `fn` has a `key` keyword parameter."""
    try:
        params = inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return False
    return "key" in params


def _requires_key(fn: Callable, positional: int) -> bool:
    """Whether `fn` called with `positional` arguments and no `key=` misses a `key`."""
    try:
        signature = inspect.signature(fn)
    except (TypeError, ValueError):
        return False
    param = signature.parameters.get("key")
    if param is None or param.default is not param.empty:
        return False
    try:
        signature.bind(*range(positional))
    except TypeError as e:
        return "'key'" in str(e)
    return False


def _check_key(key: Any, where: str) -> Any:
    if key is None:
        return None
    if isinstance(key, jax.Array | np.ndarray) and jnp.issubdtype(key.dtype, jax.dtypes.prng_key):
        typed = key
    elif isinstance(key, jax.Array | np.ndarray) and key.dtype == np.uint32 and key.ndim >= 1:
        try:
            typed = jax.random.wrap_key_data(jnp.asarray(key))  # the default implementation's
        except (TypeError, ValueError) as e:
            got = f"a uint32 array of shape {key.shape}"
            raise TypeError(_MSG_KEY_TYPE.format(where=where, got=got, seed=0)) from e
    else:
        seed = int(key) if isinstance(key, int | np.integer) and not isinstance(key, bool) else 0
        got = f"{key!r} ({type(key).__name__})" if np.ndim(key) == 0 else (
            f"a {type(key).__name__} of shape {np.shape(key)} and dtype "
            f"{getattr(key, 'dtype', None)}")  # fmt: skip
        raise TypeError(_MSG_KEY_TYPE.format(where=where, got=got, seed=seed))
    if typed.shape != ():
        raise ValueError(_MSG_KEY_BATCH.format(where=where, count=typed.size,
                                               shape=typed.shape))  # fmt: skip
    return key


def _check_batch_size(batch_size: Any, where: str) -> int | None:
    if batch_size is None:
        return None
    ok = isinstance(batch_size, int | np.integer) and not isinstance(batch_size, bool)
    if not ok or batch_size < 1:  # the wrong kind (4.0, "4", True) or a count below 1
        error = ValueError if ok else TypeError
        raise error(_MSG_BATCH_TYPE.format(where=where, batch=batch_size))
    return int(batch_size)


def prepare_batches(fn: Callable, args: tuple, batch_size: Any, key: Any, tol: float | None,
                    where: str, stateful: bool = False) -> tuple[int | None, Any, bool]:
    """The checked `batch_size` (an int or None) and `key`, and whether `fn` takes the key.
    `fn` is the user's loss (`fn(theta, [state,] *args)`)."""
    batch_size, key = _check_batch_size(batch_size, where), _check_key(key, where)
    if key is None and _requires_key(fn, 1 + stateful + len(args)):
        raise TypeError(_MSG_NO_KEY.format(where=where))
    pass_key = key is not None and takes_key(fn)
    if tol is not None and (batch_size is not None or pass_key):
        what, why = ((f"`batch_size={batch_size}`", "drawing a new minibatch")
                     if batch_size is not None else
                     ("`key=` and a loss that takes `key`", "a fresh key"))  # fmt: skip
        raise ValueError(_MSG_TOL.format(where=where, tol=tol, what=what, why=why))
    return batch_size, key, pass_key


_MSG_CARRIED = """\
`{where}` got method={method!r} with {what}, but {method!r} carries the loss and gradient of
one step into the next step's line search: with {why} at every step that search compares
values of two different losses, fails its sufficient-decrease test and stalls after a step or
two.
Fix: train on minibatches with a first-order method ("adam") or "lbfgs", then continue from
`res.theta` with {method!r} on the full data (no `batch_size=`)."""

# Methods whose next step starts from values the previous step computed.
_CARRIES_VALUES = ("ssbfgs", "ssbroyden")


def check_batches_method(method: Any, batch_size: int | None, pass_key: bool,
                         where: str) -> None:
    """Refuse minibatches (or a fresh key per step) for a method that cannot take them."""
    if not (isinstance(method, str) and method in _CARRIES_VALUES):
        return
    if batch_size is not None or pass_key:
        what, why = ((f"`batch_size={batch_size}`", "a new minibatch")
                     if batch_size is not None else
                     ("`key=` and a loss that takes `key`", "a fresh key"))  # fmt: skip
        raise ValueError(_MSG_CARRIED.format(where=where, method=method, what=what, why=why))


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
    ok = isinstance(batch_size, int | np.integer) and not isinstance(batch_size, bool)
    if not ok or not 1 <= batch_size <= rows:
        raise ValueError(_MSG_BATCH.format(where=where, rows=rows, batch=batch_size))
    return int(rows)


class MinibatchStepper(AbstractStepper):
    """Runs `inner` on a fresh minibatch (and/or key) at every step; the state carries the
    step counter. With minibatches or a key the loss takes (`stochastic`), `inner`'s stopping
    rule is off: it would test one step's sample of the gradient (module docstring)."""

    step_loss_is_value: ClassVar[bool] = False  # a minibatch's loss, or another step's key

    inner: AbstractStepper
    key: Any
    batch_size: int | None = eqx.field(static=True)
    rows: int | None = eqx.field(static=True)
    pass_key: bool = eqx.field(static=True)

    @property
    def stochastic(self) -> bool:
        return self.batch_size is not None or self.pass_key

    def has_stopping_rule(self) -> bool:
        return self.inner.has_stopping_rule() and not self.stochastic

    def criterion(self) -> str:
        return self.inner.criterion()

    def _batch(self, step, args):
        if self.batch_size is None:
            return tuple(args)
        idx = batch_rows(self.key, step, cast(int, self.rows), self.batch_size)
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
        if self.stochastic:
            # `done` tested this step's sample; a failure still stops the run via `result`.
            # A step `inner` held back (Optax keeps `theta` where its test held) is redone
            # on the next minibatch.
            done = jnp.zeros_like(done)
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
