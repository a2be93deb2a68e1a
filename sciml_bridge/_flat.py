"""`FlatModel`: a nested model seen as `f(theta, *inputs)`, the object every bridge consumes.

This module holds the base class and the general path; `sb.flat` (which picks between the
general and the fast path) lives in `_make_flat.py`, so imports go one way:
`_flat` <- `_flat_mlp` <- `_make_flat`.
"""

import abc
from collections.abc import Callable
from typing import Any

import equinox as eqx

from ._custom_types import Model, Theta, ThetaLike
from ._destructure import Restructure
from ._flax import nnx


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
    def __call__(self, theta: ThetaLike, *inputs: Any, **kwargs: Any) -> Any:
        """Evaluate the model with parameters `theta` on `inputs` (keywords forwarded)."""

    @property
    def size(self) -> int:
        return self.restructure.size


def call_module(model: Model, *inputs: Any, **kwargs: Any) -> Any:
    return model(*inputs, **kwargs)


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


class FlatModel(AbstractFlatModel):
    """The general path: `fm(theta, *inputs) = apply(restructure(theta), *inputs)`.

    Inside `jax.jit` the rebuild is static slicing and costs nothing at run time (the layout
    was computed once by `destructure`; nothing walks the tree per call).
    """

    theta0: Theta
    restructure: Restructure
    apply: Callable[..., Any] = eqx.field(static=True)
    is_fast = False

    def __call__(self, theta: ThetaLike, *inputs: Any, **kwargs: Any) -> Any:
        model = self.restructure(theta)
        _check_point(model, inputs)
        return self.apply(model, *inputs, **kwargs)

    def __hash__(self) -> int:
        # `jax.jit(fm)` and static-argument use need a hash; theta0 is data, not identity.
        return hash((self.restructure, self.apply, self.theta0.shape, str(self.theta0.dtype)))


class ApplyVariables(eqx.Module):
    """`apply_fn(variables, *inputs)`: Flax Linen's `module.apply`, Haiku's `apply`, ..."""

    apply_fn: Callable[..., Any] = eqx.field(static=True)

    def __call__(self, variables: Model, *inputs: Any, **kwargs: Any) -> Any:
        return self.apply_fn(variables, *inputs, **kwargs)


class MergeNNX(eqx.Module):
    """Flax NNX: merge the graph definition with the rebuilt state, then call."""

    graphdef: Any = eqx.field(static=True)

    def __call__(self, states: Model, *inputs: Any, **kwargs: Any) -> Any:
        params, rest = states
        return nnx.merge(self.graphdef, params, rest)(*inputs, **kwargs)
