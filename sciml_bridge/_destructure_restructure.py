"""`Restructure`: the static layout that rebuilds a model from `theta`, and the `theta` check.

Everything here runs at trace time on static data: `re(theta)` checks `theta` once, then
slices it at fixed offsets and puts each chunk back in its places in the tree. The layout is
computed once, on the concrete tree, by `sb.destructure` (`_destructure_layout.py`).
"""

from typing import Any, NamedTuple

import equinox as eqx
import jax
import jax.core
import jax.numpy as jnp
import jax.tree_util as jtu
import numpy as np

from ._custom_types import Model, Precision, Theta, ThetaLike
from ._precision import WarnOnce, cast_leaf, check_jax_dtype, guard_x64, is_inexact


_MSG_SIZE = """\
`{where}` expected a 1-D `theta` of length {want} ({origin}), but got shape {shape}.
Fix: pass {fix} (or a vector of the same length)."""

_MSG_NDIM = """\
`{where}` expected a 1-D `theta`, but got shape {shape}.
Fix: pass one flat vector; for a batch of vectors map over it with `jax.vmap`."""

_MSG_KIND = """\
`{where}` expected a floating or complex `theta`, but got dtype {dtype}.
Fix: `theta.astype(jnp.float64)` (or float32); integer vectors cannot carry gradients."""


class Slot(NamedTuple):
    """One parameter: its place in theta and every place it occupies in the tree."""

    start: int
    shape: tuple[int, ...]
    dtype: np.dtype
    path: str
    places: tuple[int, ...]

    @property
    def size(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64))


class Static:
    """A non-parameter leaf kept as static data (a Python number, string, function, ...).

    Equal only to a leaf of the same type: Python's `1 == 1.0 == True` would make two layouts
    equal, so a function jitted for one model would serve the other and rebuild its number as
    the first one's. JAX compares the types of its own static arguments for the same reason.
    """

    __slots__ = ("value",)

    def __init__(self, value: Any):
        self.value = value

    def __eq__(self, other) -> bool:
        if type(other) is not Static or type(self.value) is not type(other.value):
            return False
        if self.value is other.value:
            return True
        try:
            return bool(self.value == other.value)
        except (TypeError, ValueError):  # an `==` with no single truth value (a table, ...)
            return False

    def __hash__(self) -> int:
        # An unhashable leaf (a `set`, a class defining only `__eq__`) hashes by its type:
        # equal values then still hash alike, and `__eq__` tells them apart.
        if not hashable(self.value):
            return hash(type(self.value))
        return hash((type(self.value), self.value))

    def __repr__(self) -> str:
        return repr(self.value)


def check_theta(theta: ThetaLike, size: int, where: str) -> Theta:
    """Validate a flat vector at trace time and return it as a JAX array."""
    if not isinstance(theta, jax.Array):
        guard_x64(theta, f"`{where}`", "a NumPy `theta`")
        theta = np.asarray(theta)
    dtype = np.dtype(theta.dtype)
    if not is_inexact(dtype):
        raise TypeError(_MSG_KIND.format(where=where, dtype=dtype))
    check_jax_dtype(dtype, f"`{where}`", "a NumPy `theta`")
    if theta.ndim != 1:
        raise TypeError(_MSG_NDIM.format(where=where, shape=tuple(theta.shape)))
    if theta.shape[0] != size:
        flat = where.startswith("fm(")
        origin = ("`fm.size`, the parameters of this flat model" if flat
                  else "the parameters of the model given to `sb.destructure`")
        fix = "`fm.theta0`" if flat else "the vector made by `sb.destructure` for this model"
        raise ValueError(_MSG_SIZE.format(where=where, want=size, shape=tuple(theta.shape),
                                          origin=origin, fix=fix))
    # A weakly typed vector (`jnp.full(n, 0.1)`) would give weakly typed leaves, which follow
    # a narrower input's dtype (float32): theta's own dtype must decide (`precision="vector"`).
    # For a strongly typed theta this is no operation at all.
    theta = jnp.asarray(theta)
    return jax.lax.convert_element_type(theta, theta.dtype)


class Restructure(eqx.Module):
    """Rebuilds the model from a flat vector: `re(theta)`. Made by `sb.destructure`.

    Hashable and comparable: two `destructure` calls on the same tree give equal `re`s, and a
    function jitted over `theta` never retraces for a new `theta` of the same shape and dtype.

    !!! example

        ```python
        model = {"w": jnp.ones((2, 3)), "b": jnp.zeros(3), "n": 4}
        theta, re = sb.destructure(model)
        assert re.size == 9 and re.paths == ("['b']", "['w']")
        doubled = re(2.0 * theta)                 # {"w": 2s, "b": 0s, "n": 4}
        ```

    **Attributes:**

    - `size`: the length of `theta`.
    - `dtype`: the dtype of the `theta` that `sb.destructure` made.
    - `precision`: the precision policy (see `sb.destructure`).
    - The layout, one entry per parameter slot: `paths`, `shapes`, `dtypes` (stored leaf
        dtypes), `offsets` (start of each slot in `theta`).

    **Raises:**

    `re(theta)` raises `TypeError` for a `theta` that is not a 1-D floating array (or, under
    `precision="strict"`, whose dtype differs from a leaf's) and `ValueError` for a `theta`
    whose length is not `size`.
    """

    size: int = eqx.field(static=True)
    dtype: np.dtype = eqx.field(static=True)
    precision: Precision = eqx.field(static=True)
    _slots: tuple[Slot, ...] = eqx.field(static=True)
    _treedef: Any = eqx.field(static=True)
    _static: tuple[Static | None, ...] = eqx.field(static=True)
    _arrays: tuple[Any, ...]
    _warned: WarnOnce = eqx.field(static=True, default_factory=WarnOnce)

    def __call__(self, theta: ThetaLike) -> Model:
        return self.rebuild(theta, "re(theta)")

    def rebuild(self, theta: ThetaLike, where: str) -> Model:
        """`re(theta)`, its errors and warnings naming `where` (e.g. `fm(theta, x)`)."""
        theta = check_theta(theta, self.size, where)
        leaves = [a if s is None else s.value for s, a in zip(self._static, self._arrays)]
        for slot in self._slots:
            chunk = theta[slot.start : slot.start + slot.size].reshape(slot.shape)
            value = cast_leaf(chunk, slot.dtype, slot.path, self.precision, self._warned, where)
            for place in slot.places:
                leaves[place] = value
        return jtu.tree_unflatten(self._treedef, leaves)

    @property
    def paths(self) -> tuple[str, ...]:
        return tuple(s.path for s in self._slots)

    @property
    def shapes(self) -> tuple[tuple[int, ...], ...]:
        return tuple(s.shape for s in self._slots)

    @property
    def dtypes(self) -> tuple[np.dtype, ...]:
        return tuple(s.dtype for s in self._slots)

    @property
    def offsets(self) -> tuple[int, ...]:
        return tuple(s.start for s in self._slots)

    def _key(self):
        arrays = tuple(None if a is None else (a.shape, str(a.dtype)) for a in self._arrays)
        statics = tuple(s if s is None or hashable(s.value) else id(s.value)
                        for s in self._static)
        return (self.size, self.dtype, self.precision, self._slots, self._treedef, statics, arrays)

    def __hash__(self) -> int:
        # Arrays are unhashable; hash the layout, their shapes and the static leaves.
        return hash(self._key())

    def __eq__(self, other) -> bool:
        if type(other) is not type(self) or self._key() != other._key():
            return False
        return all(_same_array(a, b) for a, b in zip(self._arrays, other._arrays))


def hashable(x) -> bool:
    try:
        hash(x)
    except TypeError:
        return False
    return True


def _same_array(a, b) -> bool:
    if a is b:
        return True
    if isinstance(a, jax.core.Tracer) or isinstance(b, jax.core.Tracer):
        return False
    return bool(jtu.tree_all(jtu.tree_map(_equal_leaf, a, b)))


def _equal_leaf(x, y) -> bool:
    # NumPy cannot read a typed PRNG key (`np.array_equal` says False even for equal keys):
    # compare the implementation and the raw key data instead.
    keys = [isinstance(z, jax.Array) and jnp.issubdtype(z.dtype, jax.dtypes.prng_key)
            for z in (x, y)]
    if any(keys):
        return (all(keys) and x.dtype == y.dtype
                and np.array_equal(jax.random.key_data(x), jax.random.key_data(y)))
    return np.array_equal(x, y)
