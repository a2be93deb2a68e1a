"""`FlatModel`: a nested model seen as `f(theta, *inputs)`, the object every bridge consumes.

This module holds the base class and the general path; `sb.flat` (which picks between the
general and the fast path) lives in `_make_flat.py`, so imports go one way:
`_flat` <- `_flat_mlp` <- `_make_flat`.
"""

import abc
from typing import Any, ClassVar

import equinox as eqx

from ._custom_types import Theta, ThetaLike
from ._destructure import Restructure


class AbstractFlatModel(eqx.Module):
    """A model as a pure function of one flat parameter vector: `fm(theta, *inputs)`.

    Subclasses: `sb.FlatModel` (any pytree, rebuilt by `restructure`) and `sb.FlatMLP`
    (slices of `theta`, no rebuild). Both share one `theta` layout for the same network.

    !!! example

        ```python
        fm = sb.flat(eqx.nn.MLP(2, 1, 8, 2, key=jax.random.key(0)))
        assert isinstance(fm, sb.AbstractFlatModel)
        y = fm(fm.theta0, jnp.ones(2))            # the network at its initial parameters
        net = fm.restructure(2.0 * fm.theta0)     # the nested model for another vector
        ```

    **Attributes:**

    - `theta0`: the initial flat vector.
    - `restructure`: an `sb.Restructure`; `fm.restructure(theta)` gives back the nested model.
    - `size`: the length of `theta`.
    - `is_fast`: whether this is a fast path (`sb.FlatMLP`) rather than a rebuild.
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


_MSG_NO_ADAPTER = """\
`fm(theta, ..., {what})` needs to know how the model keeps its {kind}, but this `sb.FlatModel`
was built with a plain `apply` function.
Fix: build it with `sb.flat(...)`, which picks the framework's convention."""


_MSG_NO_STATE = """\
`fm.init_state()` found no state: the model has no batch statistics or RNG streams that
`sb.flat` knows of. For an Equinox model made with `eqx.nn.make_with_state`, pass its state:
`model, state = eqx.nn.make_with_state(Net)(...)`, then `fm = sb.flat(model, state=state)`."""


class FlatModel(AbstractFlatModel):
    """The general path: `fm(theta, *inputs, **kwargs) = apply(restructure(theta), *inputs)`.

    Inside `jax.jit` the rebuild is static slicing and costs nothing at run time (the layout
    was computed once by `destructure`; nothing walks the tree per call). Keyword inputs
    (`key=`, `train=`, `deterministic=`, ...) are forwarded to the model.

    **Modes:** `eqx.nn.inference_mode(fm, True)` (or `fm.inference_mode(True)`) switches the
    rebuilt model's `inference` flags (Equinox `Dropout`, `BatchNorm`) or calls `.eval()` on a
    Flax NNX module; `False` switches back to training. `fm.inference` starts as the model's
    own mode when flattened (`None` if its flags disagree: it then runs as flattened until
    `fm.inference_mode(...)` sets one). Flax Linen takes its mode as a call argument:
    `fm(theta, x, train=False)`.

    **State:** `state = fm.init_state()`, then `y, state = fm(theta, x, state=state)`: an
    `eqx.nn.State` (BatchNorm statistics, given as `sb.flat(model, state=state)` from
    `eqx.nn.make_with_state`; passed to the model after the inputs), the non-param
    collections of Flax Linen (`batch_stats`, passed as `mutable`), or the non-param state of
    a Flax NNX module (batch statistics, `nnx.Rngs` streams). Without `state=` the state
    stored at flattening time is used and not updated.

    !!! example

        ```python
        mlp = eqx.nn.MLP(2, 1, 8, 2, key=jax.random.key(0))
        fm = sb.flat(mlp, fast=False)             # the general path: an `sb.FlatModel`
        y = fm(fm.theta0, jnp.ones(2))            # rebuilds `mlp` from theta, then calls it
        ```

    **Attributes:** as `sb.AbstractFlatModel`, plus `apply` (how the rebuilt model is called),
    `state0` (the state stored at flattening time) and `inference` (the mode flags, or `None`).

    **Raises:**

    `TypeError` from `fm(theta, ..., state=...)` or a mode switch when the model was built
    with a plain `apply` function that has no state or mode convention; `ValueError` from
    `fm.init_state()` when the model has no state.
    """

    theta0: Theta
    restructure: Restructure
    apply: Any = eqx.field(static=True)
    state0: Any = None
    inference: bool | None = None
    is_fast: ClassVar[bool] = False

    def __call__(self, theta: ThetaLike, *inputs: Any, state: Any = None, **kwargs: Any) -> Any:
        model = self.restructure(theta)
        run = getattr(self.apply, "run", None)
        if run is not None:
            return run(model, inputs, kwargs, state, self.inference)
        if state is not None or self.inference is not None:
            what, kind = ("state=...", "state") if state is not None else ("", "modes")
            raise TypeError(_MSG_NO_ADAPTER.format(what=what, kind=kind))
        return self.apply(model, *inputs, **kwargs)

    def init_state(self) -> Any:
        """The model's initial state (see **State** above), to pass as `state=`."""
        if self.state0 is None:
            raise ValueError(_MSG_NO_STATE)
        return self.state0

    def inference_mode(self, value: bool | None = True) -> "FlatModel":
        """This model with its mode flags set (as `eqx.nn.inference_mode(fm, value)`)."""
        return eqx.tree_at(lambda fm: fm.inference, self, value,
                           is_leaf=lambda x: x is None)

    def __hash__(self) -> int:
        # `jax.jit(fm)` and static-argument use need a hash; theta0 is data, not identity.
        return hash((self.restructure, self.apply, self.inference, self.theta0.shape,
                     str(self.theta0.dtype)))
