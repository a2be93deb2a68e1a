"""`FlatModel`: a nested model seen as `f(theta, *inputs)`, the object every bridge consumes."""

import abc
from collections.abc import Callable, Mapping
from typing import Any

import equinox as eqx

from ._custom_types import Model, Precision, Theta, ThetaLike
from ._destructure import Restructure, destructure


class AbstractFlatModel(eqx.Module):
    """A model as a pure function of one flat parameter vector: `fm(theta, *inputs)`.

    Subclasses: `sb.FlatModel` (any pytree, rebuilt by `restructure`) and `sb.FlatMLP`
    (slices of `theta`, no rebuild). Both share one `theta` layout for the same network.

    **Attributes:** `theta0` (the initial vector), `restructure` (`fm.restructure(theta)` gives
    back the nested model), `size`, `is_fast`.
    """

    theta0: eqx.AbstractVar[Theta]
    restructure: eqx.AbstractVar[Restructure]
    is_fast: eqx.AbstractClassVar[bool]

    @abc.abstractmethod
    def __call__(self, theta: ThetaLike, *inputs: Any) -> Any:
        """Evaluate the model with parameters `theta` on `inputs`."""

    @property
    def size(self) -> int:
        return self.restructure.size


def _call_module(model: Model, *inputs: Any) -> Any:
    return model(*inputs)


class FlatModel(AbstractFlatModel):
    """The general path: `fm(theta, *inputs) = apply(restructure(theta), *inputs)`.

    Inside `jax.jit` the rebuild is static slicing and costs nothing at run time (the layout
    was computed once by `destructure`; nothing walks the tree per call).
    """

    theta0: Theta
    restructure: Restructure
    apply: Callable[..., Any] = eqx.field(static=True)
    is_fast = False

    def __call__(self, theta: ThetaLike, *inputs: Any) -> Any:
        return self.apply(self.restructure(theta), *inputs)

    def __hash__(self) -> int:
        # `jax.jit(fm)` and static-argument use need a hash; theta0 is data, not identity.
        return hash((self.restructure, self.apply, self.theta0.shape, str(self.theta0.dtype)))


class _ApplyVariables(eqx.Module):
    """`apply_fn(variables, *inputs)`: Flax Linen's `module.apply`, Haiku's `apply`, ..."""

    apply_fn: Callable[..., Any] = eqx.field(static=True)

    def __call__(self, variables: Model, *inputs: Any) -> Any:
        return self.apply_fn(variables, *inputs)


class _MergeNNX(eqx.Module):
    """Flax NNX: merge the graph definition with the rebuilt state, then call."""

    graphdef: Any = eqx.field(static=True)

    def __call__(self, states: Model, *inputs: Any) -> Any:
        from flax import nnx

        params, rest = states
        return nnx.merge(self.graphdef, params, rest)(*inputs)


def _nnx_parts(model: Any):
    """`(apply, pytree, params)` for a Flax NNX module; None for anything else."""
    try:
        from flax import nnx
    except ImportError:
        return None
    if not isinstance(model, nnx.Module):
        return None
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)
    # Only `nnx.Param` state is trained; batch statistics and RNG state ride along.
    spec = (True, False)
    return _MergeNNX(graphdef), (params, rest), spec


def _params_collection(variables: Model):
    """Flax-style `{"params": ..., "batch_stats": ...}`: train only the "params" collection."""
    if isinstance(variables, Mapping) and "params" in variables and len(variables) > 1:
        return type(variables)({k: k == "params" for k in variables})
    return None


def flat(
    model: Model | Callable[..., Any],
    variables: Model | None = None,
    /,
    *,
    params: Callable[[Any], bool] | Any | None = None,
    dtype=None,
    precision: Precision = "vector",
    fast: bool | str = "auto",
) -> AbstractFlatModel:
    """Turn a model into `fm(theta, *inputs)` with `theta` one flat vector.

    Three forms: an Equinox module (or any callable pytree), `flat(apply_fn, variables)` for
    any pure `apply_fn(variables, *inputs)` (Flax Linen, Haiku, hand-written), and a Flax NNX
    module (split into graph and state; only `nnx.Param` is trained). Inputs follow the wrapped
    model's convention (Equinox: unbatched `x`; batch with `jax.vmap`).

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
        collections such as `"batch_stats"` are present, only `"params"` is trained unless
        `params=` says otherwise).
    - `params`, `dtype`, `precision`: as in `sb.destructure`.
    - `fast`: `"auto"` uses the slice-based fast path (`sb.FlatMLP`) when the model is one it
        knows (`eqx.nn.MLP`, or an `eqx.nn.Sequential` of `Linear` layers each followed by at
        most one activation `Lambda`) with the very same `theta` layout; `True` requires it;
        `False` forces the general path.

    **Returns:** an `sb.AbstractFlatModel` (`fm.theta0`, `fm.size`, `fm.restructure`,
    `fm.is_fast`).

    **Raises:** as `sb.destructure`; `TypeError` if `fast=True` and there is no fast path for
    this model.
    """
    if fast not in ("auto", True, False):
        raise ValueError(f"`sb.flat(..., fast=...)` expected 'auto', True or False, got {fast!r}.")
    kwargs = dict(params=params, dtype=dtype, precision=precision)
    if variables is not None:
        if params is None:
            kwargs["params"] = _params_collection(variables)
        theta0, re = destructure(variables, **kwargs)
        return FlatModel(theta0, re, _ApplyVariables(model))
    nnx_parts = _nnx_parts(model)
    if nnx_parts is not None:
        apply, states, spec = nnx_parts
        theta0, re = destructure(states, **{**kwargs, "params": params or spec})
        return FlatModel(theta0, re, apply)
    theta0, re = destructure(model, **kwargs)
    if fast is not False:
        from ._fast import fast_path

        fm = fast_path(model, theta0, re, fast)
        if fm is not None:
            return fm
    return FlatModel(theta0, re, _call_module)

