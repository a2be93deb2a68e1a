"""`FlatModel`: a nested model seen as `f(theta, *inputs)`, the object every bridge consumes.

This module holds the base class and the general path; `sb.flat` (which picks between the
general and the fast path) lives in `_make_flat.py`, so imports go one way:
`_flat` <- `_flat_mlp` <- `_make_flat`.
"""

import abc
import dataclasses
from typing import Any, ClassVar

import equinox as eqx
import jax.tree_util as jtu

from ._custom_types import Theta, ThetaLike
from ._destructure import Restructure
from ._precision import guard_x64
from ._state_leaves import check_state, check_state_like


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


class Mode(int):
    """A mode flag (`fm.inference`) that `jax.jit` never traces: a pytree node with no leaves.

    A plain `bool` field would be a leaf, so `jax.jit(lambda fm, t, x: fm(t, x))(fm, ...)`
    would trace it and the `if inference:` of Dropout/BatchNorm/NNX `.eval()` would fail
    (`TracerBoolConversionError`). As a leafless node the flag is part of the tree structure
    (hashed, no retrace) yet still a node that `eqx.nn.inference_mode` (`eqx.tree_at`) can
    replace. It is an `int` subclass, so `bool(m)`, `m == True` and hashing act as the bool's
    (only `m is True` cannot: `eqx.tree_at` finds the node by identity, so it must be its own
    object, and a real `bool` would be a leaf).
    """

    def __repr__(self) -> str:
        return repr(bool(self))


class Unset:
    """`fm.inference` when no mode is set (the model's flags disagreed, or one was unset):
    the model runs as flattened. It acts as `None` (`fm.inference == None`, falsy) but,
    unlike `None`, is a node of its own that `eqx.tree_at` can find:
    `eqx.nn.inference_mode(fm)` replaces it, where a `None` (one object shared by every empty
    place of the tree) made `eqx.tree_at` refuse ("does not uniquely identify").
    """

    __slots__ = ()

    def __bool__(self) -> bool:
        return False

    def __eq__(self, other) -> bool:
        return other is None or isinstance(other, Unset)

    def __hash__(self) -> int:
        return hash(None)

    def __repr__(self) -> str:
        return "Unset()"  # not "None": `fm.inference is None` is False


# Leafless nodes; every unflatten makes a new object, as `eqx.tree_at` needs.
jtu.register_pytree_node(Mode, lambda m: ((), bool(m)), lambda value, _: Mode(value))
jtu.register_pytree_node(Unset, lambda u: ((), None), lambda _, __: Unset())


def _mode(value: Any) -> "Mode | Unset":
    if isinstance(value, Mode | Unset):
        return value
    return Unset() if value is None else Mode(bool(value))


def mode_flag(value: "bool | Mode | Unset | None") -> bool | None:
    """The flag as a plain `bool`, or `None` when unset."""
    return None if value is None or isinstance(value, Unset) else bool(value)


class _ModeField:
    """The `inference` field: stores every value as a `Mode` (or `Unset` for `None`).

    `eqx.nn.inference_mode` replaces the node with a plain bool and Equinox's unflatten
    sets it with `object.__setattr__`, which goes through this data descriptor: the flag
    becomes a `Mode` again instead of a leaf that `jax.jit` would trace."""

    def __set_name__(self, owner: type, name: str) -> None:
        self.name = name

    def __get__(self, obj: Any, owner: Any = None) -> "Mode | Unset | None":
        return None if obj is None else obj.__dict__.get(self.name)

    def __set__(self, obj: Any, value: Any) -> None:
        obj.__dict__[self.name] = _mode(value)


_MSG_NO_ADAPTER = """\
`{what}` needs to know how the model keeps its {kind}, but this `sb.FlatModel`
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
    own mode when flattened (unset, `fm.inference == None`, if its flags disagree: it then
    runs as flattened until `eqx.nn.inference_mode(fm, ...)` sets one). Flax Linen takes its
    mode as a call argument: `fm(theta, x, train=False)`.

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
    `state0` (the state stored at flattening time) and `inference` (the mode flag: it acts as
    a bool, `bool(fm.inference)`, `fm.inference == True`, or as `None` when unset, and is
    never traced by `jax.jit`).

    **Raises:**

    `TypeError` from `fm(theta, ..., state=...)` or a mode switch when the model was built
    with a plain `apply` function that has no state or mode convention, and from
    `fm(theta, x, state=...)` or `fm.init_state()` for a state leaf that is not an array or
    a number (a string, a function); `ValueError` from `fm.init_state()` when the model has
    no state, and from `fm(theta, x, state=state)` when an Equinox or NNX model's `state`
    differs from `fm.init_state()` in structure or shapes.
    """

    theta0: Theta
    restructure: Restructure
    apply: Any = eqx.field(static=True)
    state0: Any = None
    # Set as a bool, stored and read as a `Mode` (see `_ModeField`).
    inference: bool | Mode | Unset | None = _ModeField()  # pyright: ignore[reportAssignmentType]
    is_fast: ClassVar[bool] = False

    def __call__(self, theta: ThetaLike, *inputs: Any, state: Any = None, **kwargs: Any) -> Any:
        # The x64 guard `sb.FlatMLP` applies to `x`, for every input (jax#11895).
        guard_x64((inputs, kwargs, state), "`fm(theta, x)`", "a NumPy input")
        check_state(state, "fm(theta, x, state=state)")
        if state is not None and self.state0 is not None and getattr(self.apply, "fixed_state",
                                                                       False):  # fmt: skip
            check_state_like(state, self.state0)
        # Errors name the call the user wrote, not `re(theta)`.
        model = self.restructure.rebuild(theta, "fm(theta, x)")
        run = getattr(self.apply, "run", None)
        inference = mode_flag(self.inference)
        if run is not None:
            return run(model, inputs, kwargs, state, inference)
        if state is not None or inference is not None:
            what, kind = (("fm(theta, ..., state=...)", "state") if state is not None
                          else ("fm(theta, ...)", "modes (`fm.inference` is set)"))
            raise TypeError(_MSG_NO_ADAPTER.format(what=what, kind=kind))
        return self.apply(model, *inputs, **kwargs)

    def init_state(self) -> Any:
        """The model's initial state (see **State** above), to pass as `state=`: fresh
        containers around `state0`'s arrays at each call, so that changing one in place (an
        NNX `State`'s entries) leaves `state0` and later `init_state()` calls as they were."""
        if self.state0 is None:
            raise ValueError(_MSG_NO_STATE)
        check_state(self.state0, "fm.init_state()")
        return jtu.tree_map(lambda x: x, self.state0)

    def inference_mode(self, value: bool | None = True) -> "FlatModel":
        """This model with its mode flags set (as `eqx.nn.inference_mode(fm, value)`)."""
        return dataclasses.replace(self, inference=value)

    def __hash__(self) -> int:
        # `jax.jit(fm)` and static-argument use need a hash; theta0 is data, not identity.
        return hash((self.restructure, self.apply, self.inference, self.theta0.shape,
                     str(self.theta0.dtype)))
