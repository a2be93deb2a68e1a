"""`sb.flat`: any model -> `fm(theta, *inputs)`, on the fast path when one exists."""

import inspect
from collections.abc import Callable, Mapping
from typing import Any, cast

import equinox as eqx
import jax
import numpy as np

from ._activations import NAMES
from ._adapters import ApplyVariables, EquinoxCall, MergeNNX, initial_mode, linen_state
from ._custom_types import DTypeLike, Model, Precision, Theta, Ties
from ._destructure import Restructure, flatten_as
from ._fast import Unsupported, recognise
from ._flat import AbstractFlatModel, FlatModel
from ._flat_mlp import FlatMLP
from ._flax import nnx
from ._precision import (
    complex_dtype,
    guard_x64,
    is_complex,
    is_inexact,
    is_lossless,
    real_dtype,
)
from ._state_leaves import check_state


_MSG_FAST = """\
`sb.flat(..., fast=True)` has no fast path for this {kind}: {reason}.
The fast path (`sb.FlatMLP`) covers `eqx.nn.MLP` with parameter-free activations and
`eqx.nn.Sequential` of `eqx.nn.Linear` layers each followed by at most one `eqx.nn.Lambda` of a
known activation (the `jnp`/`jax.nn` function of: {known}).
Fix: use `fast="auto"` (falls back quietly) or `fast=False` for the general path."""


_MSG_ALREADY_FLAT = """\
`sb.flat(fm)` got a model that is already flat (an `sb.{kind}`): flattening it again would
make its `theta0` a parameter of a new model that calls `fm(*inputs)` without a `theta`.
Fix: use `fm` as it is (`fm(theta, x)`), or flatten a nested model again:
`sb.flat(fm.restructure(theta))`."""

_MSG_CLASS = """\
`sb.flat(model)` got the class `{name}`, not a model: it holds no parameters.
Fix: build the model first, e.g. `sb.flat({name}(..., key=jax.random.key(0)))`."""

_MSG_NO_VARIABLES = """\
`sb.flat(f)` got a function with no parameters (`{name}`) and no `variables`: `theta` would
be empty and `fm(theta, x)` would call `f(x)`. For an `apply_fn(variables, *inputs)` (Flax
Linen's `module.apply`, Haiku's `apply`) the parameters are in `variables`.
Fix: `sb.flat(apply_fn, variables)`, e.g. `sb.flat(module.apply, module.init(key, x))`."""


_MSG_METHOD = """\
`sb.flat(model.method)` got the bound method `{name}`: to JAX a method is one opaque leaf, so
its module's parameters would not be in `theta` (it would be empty, and training would
change nothing).
Fix: flatten the module itself, `sb.flat(model)`; for another method than `__call__`, wrap
it in an `eqx.Module` whose `__call__` calls it."""


def _check_model(model: Any, variables: Any) -> None:
    """Refuse what cannot be meant: a flat model, a class, an `apply_fn` without variables.

    Each was taken as a model with no (or the wrong) parameters and failed only when called,
    inside Flax or Equinox."""
    if isinstance(model, AbstractFlatModel):
        raise TypeError(_MSG_ALREADY_FLAT.format(kind=type(model).__name__))
    if isinstance(model, type):
        raise TypeError(_MSG_CLASS.format(name=model.__name__))
    # A Python function or bound method is a single leaf: it can hold no parameters.
    if variables is None and (inspect.isfunction(model) or inspect.ismethod(model)):
        name = getattr(model, "__qualname__", repr(model))
        owner = getattr(model, "__self__", None)
        if any(eqx.is_inexact_array(x) for x in jax.tree.leaves(owner)):
            raise TypeError(_MSG_METHOD.format(name=name))
        raise TypeError(_MSG_NO_VARIABLES.format(name=name))


def _fast_path(model: Any, theta0: Theta, re: Restructure, fast) -> FlatMLP | None:
    """A `FlatMLP` with `theta0`'s layout for `model`, or None under `fast="auto"`.

    **Raises:**

    `TypeError` naming what is unsupported when `fast=True`.
    """
    try:
        parts = recognise(model, re)
    except Unsupported as e:
        if fast is True:
            raise TypeError(_MSG_FAST.format(kind=f"`{type(model).__name__}`", reason=e,
                                             known=", ".join(NAMES))) from None
        return None
    return FlatMLP.from_layout(theta0, re, *parts)


def _nnx_parts(model: Any, params: Any):
    """`(apply, pytree, params)` for a Flax NNX module; None for anything else."""
    if nnx is None or not isinstance(model, nnx.Module):
        return None
    graphdef, param_state, rest = nnx.split(model, nnx.Param, ...)
    # Only `nnx.Param` state is trained; `params=` narrows within it (a callable asked about
    # its leaves, or a filter spec for it). Batch statistics and RNG state ride along.
    spec = (True if params is None else params, False)
    return MergeNNX(graphdef), (param_state, rest), spec


def _snapshot(state: Any) -> Any:
    """Fresh containers around the same arrays: `fm.init_state()` is the state at flattening
    time. `nnx.split` hands out the module's own `Variable`s (and Linen variables are plain
    dicts), so a train-mode call of the original module (BatchNorm statistics, `Rngs`
    counts) would otherwise change `fm.init_state()` in place."""
    return jax.tree.map(lambda x: x, state)


def _nnx_state0(rest: Any) -> Any:
    """An NNX module's state for `fm.init_state()`: its non-`nnx.Param` state, or None when
    that holds no array (a stateless module), so that `fm.init_state()` says there is no
    state, as for a stateless Equinox or Linen model, instead of an empty `nnx.State`."""
    return _snapshot(rest) if jax.tree.leaves(rest) else None


def _params_collection(variables: Model, params: Any):
    """Flax-style `{"params": ..., "batch_stats": ...}`: train only the "params" collection,
    narrowed by `params=` (a callable, a spec for `variables["params"]`, or a spec for the
    whole `variables` whose other collections are then ignored: they stay frozen)."""
    if not (isinstance(variables, Mapping) and "params" in variables):
        return params
    if params is None:
        within = True
    elif isinstance(params, Mapping) and set(params) == set(variables):
        within = params["params"]
    else:
        within = params
    return cast(Any, type(variables))({k: within if k == "params" else False for k in variables})


def _widened(state: Any, dtype: Any) -> Any:
    """The model's state with its inexact leaves widened to `dtype`'s precision, as `dtype=`
    widens the parameters (a float32 BatchNorm computing in float64 writes float64 statistics,
    which an `eqx.nn.State` holding float32 ones refuses). As for parameters, real leaves stay
    real and complex ones complex (a complex `dtype` must not make real statistics complex);
    wider or other leaves stay."""
    if dtype is None or state is None:
        return state
    dtype = np.dtype(dtype)

    def widen(x):
        kind = getattr(x, "dtype", None)
        if kind is None or not is_inexact(kind):
            return x
        want = complex_dtype(dtype) if is_complex(kind) else real_dtype(dtype)
        return x.astype(want) if kind != want and is_lossless(kind, want) else x

    return jax.tree.map(widen, state)


def flat(
    model: Model | Callable[..., Any],
    variables: Model | None = None,
    /,
    *,
    params: Callable[[Any], bool] | Any | None = None,
    dtype: DTypeLike | None = None,
    precision: Precision = "vector",
    ties: Ties = "identity",
    lossy: bool = False,
    fast: bool | str = "auto",
    state: Any = None,
) -> AbstractFlatModel:
    """Turn a model into `fm(theta, *inputs)` with `theta` one flat vector.

    Three forms: an Equinox module (or any callable pytree), `flat(apply_fn, variables)` for
    any pure `apply_fn(variables, *inputs)` (Flax Linen, Haiku, hand-written), and a Flax NNX
    module (split into graph and state; only `nnx.Param` is trained). Inputs follow the wrapped
    model's convention (Equinox: unbatched `x`; batch with `jax.vmap`).

    !!! example

        ```python
        import jax, jax.numpy as jnp, equinox as eqx
        import sciml_bridge as sb

        mlp = eqx.nn.MLP(2, 1, 16, 2, activation=jnp.tanh, key=jax.random.key(0))
        fm = sb.flat(mlp)
        y = jax.jit(fm)(fm.theta0, jnp.ones(2))
        assert y.shape == (1,) and fm.size == 337
        ```

    **Arguments:**

    - `model`: the model, or a pure `apply_fn` when `variables` is given.
    - `variables`: the parameters of `apply_fn` (e.g. Flax's `{"params": ...}`; when other
        collections such as `"batch_stats"` are present, only `"params"` is trained).
    - `params`: as in `sb.destructure`, but it only narrows what the framework trains: for a
        Flax NNX module, within the `nnx.Param` state (a callable is asked about its leaves;
        a filter spec is a prefix of `nnx.state(model, nnx.Param)`); for Flax-style
        `variables`, within `"params"` (a callable, a spec for `variables["params"]`, or a
        spec for all of `variables` whose other collections are ignored). Batch
        statistics and RNG state are never trained.
    - `dtype`, `precision`, `ties`, `lossy`: as in `sb.destructure`.
    - `fast`: `"auto"` uses the slice-based fast path (`sb.FlatMLP`) when the model is one it
        knows (`eqx.nn.MLP`, or an `eqx.nn.Sequential` of `Linear` layers each followed by at
        most one activation `Lambda`) with the very same `theta` layout; `True` requires it;
        `False` forces the general path. Inside `sb.NeuralODE`/`NeuralSDE`/`NeuralCDE` either
        path is rebuilt into its Equinox network once per solve (cheaper than slicing at every
        solver stage); only under `BacksolveAdjoint` does a `FlatMLP` keep slicing `theta`.
    - `state`: the model's initial state, returned by `fm.init_state()`: for Equinox the
        `eqx.nn.State` from `eqx.nn.make_with_state`; Flax state (Linen's non-`"params"`
        collections, NNX batch statistics and RNG streams) is found without it. A model
        without state (in any framework) has none: `fm.init_state()` raises `ValueError`.

    Keyword inputs are forwarded (`fm(theta, x, key=k)`, `fm(theta, x, train=False)`);
    `y, state = fm(theta, x, state=state)` threads the model's state, and
    `eqx.nn.inference_mode(fm)` switches Equinox and NNX models to inference
    (see `sb.FlatModel`).

    **Returns:**

    An `sb.AbstractFlatModel` (`fm.theta0`, `fm.size`, `fm.restructure`,
    `fm.is_fast`).

    **Raises:**

    As `sb.destructure`; `TypeError` if `fast=True` and there is no fast path for
    this model.
    """
    _check_model(model, variables)
    if fast not in ("auto", True, False):
        raise ValueError(f"`sb.flat(..., fast=...)` expected 'auto', True or False, got {fast!r}.")
    kwargs: dict[str, Any] = dict(params=params, dtype=dtype, precision=precision, ties=ties,
                                  lossy=lossy)
    # jax#11895: a float64 NumPy state would be truncated at its first use with x64 off.
    guard_x64(state, "`sb.flat`", "`state`")
    check_state(state, "sb.flat(model, state=state)")
    if variables is not None:
        kwargs["params"] = _params_collection(variables, params)
        theta0, re = flatten_as("sb.flat", variables, **kwargs)
        state0 = _widened(_snapshot(linen_state(variables) if state is None else state), dtype)
        return FlatModel(theta0, re, ApplyVariables(model), state0, False)
    nnx_parts = _nnx_parts(model, params)
    if nnx_parts is not None:
        apply, states, spec = nnx_parts
        theta0, re = flatten_as("sb.flat", states, **{**kwargs, "params": spec})
        state0 = _nnx_state0(states[1]) if state is None else _snapshot(state)
        return FlatModel(theta0, re, apply, _widened(state0, dtype), initial_mode(model))
    theta0, re = flatten_as("sb.flat", model, **kwargs)
    state = _widened(state, dtype)
    if fast is not False and state is None:
        fm = _fast_path(model, theta0, re, fast)
        if fm is not None:
            return fm
    return FlatModel(theta0, re, EquinoxCall(), state, initial_mode(model))

