"""How a rebuilt model is run, per framework: inputs, keyword inputs, modes and state.

One convention for every framework (Lux's): `fm.init_state()` gives the model's state (batch
statistics, RNG streams; for Equinox the `eqx.nn.State` given to `sb.flat(..., state=)`),
and `y, state = fm(theta, *inputs, state=state)` threads it through a call. Modes
(train/eval) follow each framework: Equinox's `inference` flags and NNX's `.eval()` /
`.train()` are set from `fm.inference` (which `eqx.nn.inference_mode(fm)` sets); Linen takes
its mode as a call argument (`fm(theta, x, train=False)`).
"""

from collections.abc import Callable, Mapping
from typing import Any, ClassVar

import equinox as eqx
import jax.numpy as jnp
import jax.tree_util as jtu
import numpy as np

from ._custom_types import Model
from ._flax import nnx
from ._precision import is_lossless, real_dtype


_MSG_POINT = """\
`fm(theta, x)` wraps an `eqx.nn.{kind}` with input size {size!r}, which expects one point `x`
of shape {want}, but got shape {got}. Equinox layers take unbatched inputs.
Fix: batch with `jax.vmap(fm, in_axes=(None, 0))(theta, xs)`."""


def _check_point(model: Any, inputs: tuple) -> None:
    """A batched `x` for an Equinox MLP/Linear would fail deep inside a matmul: say why here.

    Only these layers declare their input shape; other models get what they were given.
    """
    if type(model) is eqx.nn.MLP:
        size = model.in_size
    elif type(model) is eqx.nn.Linear:
        size = model.in_features
    else:
        return
    want = () if size == "scalar" else (size,)
    got = getattr(inputs[0], "shape", None) if inputs else None
    if got is not None and tuple(got) != want:
        raise ValueError(_MSG_POINT.format(kind=type(model).__name__, size=size, want=want,
                                           got=tuple(got)))


_MSG_LINEN_MODE = """\
`eqx.nn.inference_mode(fm)` cannot switch a model given as `sb.flat(apply_fn, variables)`:
its mode is a call argument, not a flag stored in the model.
Fix: pass the mode when calling, e.g. `fm(theta, x, train=False)` or
`fm(theta, x, deterministic=True)` (whatever `apply_fn` takes)."""


def _at_model_precision(model: Any, state: Any) -> Any:
    """`state` with its floating leaves widened to the precision of `model`'s parameters, when
    each has one precision and the parameters' is wider.

    Under `precision="vector"` a float64 `theta` rebuilds a float32 model in float64, so its
    BatchNorm computes float64 statistics that an `eqx.nn.State` holding float32 ones
    refuses ("Old and new values have different ... dtypes"). The state follows, as
    `sb.flat(..., dtype=)` widens both. A state wider than the parameters is never narrowed
    (that would lose its digits without a word): a `TypeError` says how to choose.
    """
    index = lambda x: isinstance(x, eqx.nn.StateIndex)
    params = {real_dtype(x.dtype) for x in jtu.tree_leaves(model, is_leaf=index)
              if eqx.is_inexact_array(x)}  # fmt: skip
    floating = lambda x: eqx.is_array(x) and jnp.issubdtype(x.dtype, jnp.floating)
    stats = {x.dtype for x in jtu.tree_leaves(state) if floating(x)}
    if len(params) != 1 or len(stats) != 1 or params == stats:
        return state
    (dtype,), (old,) = params, stats
    if not is_lossless(old, dtype):
        raise TypeError(_MSG_NARROW.format(old=np.dtype(old).name, new=np.dtype(dtype).name))
    return jtu.tree_map(lambda x: x.astype(dtype) if floating(x) else x, state)


_MSG_NARROW = """\
`fm(theta, ..., state=state)` got a {old} `state` for a model computed in {new} (`theta`'s
precision wins): its statistics cannot be narrowed without loss.
Fix: pass `theta` in {old}, or the state in {new} on purpose, `state=jax.tree.map(lambda a:
a.astype(jnp.{new}) if jnp.issubdtype(a.dtype, jnp.floating) else a, state)`."""


class EquinoxCall(eqx.Module):
    """An Equinox module (or any callable pytree): `model(*inputs, **kwargs)`.

    State is an `eqx.nn.State`, passed after the inputs as Equinox's stateful layers expect
    (`y, state = model(x, state)`)."""

    fixed_state: ClassVar[bool] = True  # the model fixes its state's structure and shapes

    def run(self, model: Model, inputs: tuple, kwargs: dict, state: Any, inference) -> Any:
        if inference is not None:
            model = eqx.nn.inference_mode(model, inference)
        _check_point(model, inputs)
        if state is None:
            return model(*inputs, **kwargs)
        # A fresh `eqx.nn.State` around the same arrays: `State.set` invalidates the object it
        # is called on, so an eager call would otherwise consume the caller's state, and with
        # it `fm.init_state()` ("Attempted to use old state") for every later call. A state
        # that was already consumed still raises Equinox's error here, when it is flattened.
        state = jtu.tree_map(lambda x: x, state)
        return model(*inputs, _at_model_precision(model, state), **kwargs)

    def __call__(self, model: Model, *inputs: Any, **kwargs: Any) -> Any:
        return self.run(model, inputs, kwargs, None, None)


class ApplyVariables(eqx.Module):
    """`apply_fn(variables, *inputs)`: Flax Linen's `module.apply`, Haiku's `apply`, ...

    State is every collection other than `"params"` (Linen's `batch_stats`, ...); a stateful
    call passes them as `mutable` and returns the updated collections."""

    apply_fn: Callable[..., Any] = eqx.field(static=True)

    def run(self, variables: Model, inputs: tuple, kwargs: dict, state: Any, inference) -> Any:
        if inference:
            raise TypeError(_MSG_LINEN_MODE)
        if state is None:
            return self.apply_fn(variables, *inputs, **kwargs)
        y, updates = self.apply_fn({**variables, **state}, *inputs, mutable=list(state),
                                   **kwargs)
        return y, {**state, **updates}

    def __call__(self, variables: Model, *inputs: Any, **kwargs: Any) -> Any:
        return self.run(variables, inputs, kwargs, None, None)


def linen_state(variables: Model) -> dict | None:
    """The non-`"params"` collections of Flax-style variables (None if there are none)."""
    if not isinstance(variables, Mapping) or "params" not in variables:
        return None
    return {k: v for k, v in variables.items() if k != "params"} or None


class MergeNNX(eqx.Module):
    """Flax NNX: merge the graph definition with the rebuilt state, then call.

    State is the non-`nnx.Param` state (batch statistics, `nnx.Rngs` streams); a stateful
    call splits it back out of the module after the call."""

    fixed_state: ClassVar[bool] = True  # the graph fixes its state's structure and shapes

    graphdef: Any = eqx.field(static=True)

    def run(self, states: Model, inputs: tuple, kwargs: dict, state: Any, inference) -> Any:
        params, rest = states
        # Fresh Variable containers: `nnx.merge` adopts the Variables of the state it is given,
        # and a call in train mode (BatchNorm statistics, Rngs counts) would then change the
        # caller's state, `fm.init_state()` and the original module in place (and fail under
        # `jax.grad`: "Cannot mutate BatchStat from a different trace level").
        fresh = jtu.tree_map(lambda x: x, rest if state is None else state)
        model = nnx.merge(self.graphdef, params, fresh)
        if inference is not None:
            model.eval() if inference else model.train()
        y = model(*inputs, **kwargs)
        if state is None:
            return y
        _, _, new_state = nnx.split(model, nnx.Param, ...)
        return y, new_state

    def __call__(self, states: Model, *inputs: Any, **kwargs: Any) -> Any:
        return self.run(states, inputs, kwargs, None, None)


def _common(flags: list) -> bool | None:
    """The one value all mode flags share; False when there are none; None when mixed or
    when one is unset (`None`: NNX `MultiHeadAttention`'s default, decided per call). Setting
    such a flag (`.train()`) would make `fm` run what the nested module refuses: attention
    dropout instead of "No `deterministic` argument was provided"."""
    if any(f is None for f in flags):
        return None
    values = {bool(f) for f in flags}
    if len(values) > 1:
        return None
    return values.pop() if values else False


def initial_mode(model: Any) -> bool | None:
    """`fm.inference` at flattening time: the model's own mode, so nothing changes until the
    user switches it (None when its flags disagree: then only `fm.inference_mode` can set it).
    """
    if nnx is not None and isinstance(model, nnx.Module):
        flags = [getattr(m, a) for _, m in nnx.iter_modules(model)
                 for a in ("deterministic", "use_running_average") if hasattr(m, a)]
        return _common(flags)
    has = lambda x: hasattr(x, "inference")
    flags = [x.inference for x in jtu.tree_leaves(model, is_leaf=has) if has(x)]
    return _common(flags)
