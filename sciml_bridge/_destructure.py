"""`destructure`: a nested model <-> one flat parameter vector, exactly.

We do not use `jax.flatten_util.ravel_pytree`: it packs integer leaves too, gives a tied array
two slots, and with mixed leaf dtypes casts every chunk back to its stored dtype (jax#7809).
Instead the layout (which leaves are parameters, their slots, ties, stored dtypes) is computed
once, on the concrete tree, and kept as static data; rebuilding is static slicing only.
"""

from collections.abc import Callable
from typing import Any, NamedTuple

import equinox as eqx
import jax
import jax.core
import jax.numpy as jnp
import jax.tree_util as jtu
import numpy as np

from ._custom_types import DTypeLike, Model, Precision, Theta, ThetaLike, Ties
from ._precision import (
    PRECISIONS,
    WarnOnce,
    cast_leaf,
    check_x64,
    guard_x64,
    is_complex,
    is_inexact,
    is_lossless,
    promote,
)


_MSG_SIZE = """\
`{where}` expected a 1-D `theta` of length {want} (the parameters of the model given to
`sb.destructure`), but got shape {shape}.
Fix: pass the vector made by `sb.destructure` for this model (or one of the same length)."""

_MSG_NDIM = """\
`{where}` expected a 1-D `theta`, but got shape {shape}.
Fix: pass one flat vector; for a batch of vectors map over it with `jax.vmap`."""

_MSG_KIND = """\
`{where}` expected a floating or complex `theta`, but got dtype {dtype}.
Fix: `theta.astype(jnp.float64)` (or float32); integer vectors cannot carry gradients."""

_MSG_DTYPE_ARG = """\
`sb.destructure(..., dtype={dtype})` would {why}.
Fix: pick a floating dtype wide enough for every parameter (e.g. `dtype=jnp.float64`, or a
complex dtype for complex parameters), or leave `dtype=None`."""

_MSG_LOSSY = """\
`sb.destructure(..., dtype={dtype})` would round the parameter `{path}` (stored as {stored})
to {dtype}, losing precision.
Fix: leave `dtype=None` (a dtype that holds every parameter exactly), pick a wider dtype, or,
to really train in lower precision, opt in with `lossy=True`."""

_MSG_STRICT_MIXED = """\
`sb.destructure(..., precision="strict")` got parameters of several dtypes ({mixed}), but
strict mode needs every leaf to have exactly `theta`'s dtype: no `theta` could rebuild this
model (its own `re` would refuse every vector).
Fix: use `precision="vector"` (theta's precision wins, here a {stored} theta) or
`precision="model"` (cast back to the stored dtypes), or give the parameters one dtype first:
`model = jax.tree.map(lambda x: x.astype(jnp.{stored}) if eqx.is_inexact_array(x) else x,
model)`."""

_MSG_TIE_FILTER = """\
`sb.destructure(..., params=...)` froze the array at `{frozen}` but trains the very same array
object at `{trained}` (a tie: one parameter in two places). Training one place and freezing
the other would silently untie them.
Fix: select both places or neither in `params=`, or pass `ties="none"` to treat the two places
as independent copies (Equinox's semantics)."""

_MSG_TIES = """\
`sb.destructure` expected `ties` to be "identity" (the same array object in several places is
one parameter) or "none" (every place is its own parameter, as `eqx.filter_grad` sees a model),
but got {got!r}."""

TIES = ("identity", "none")


_MSG_PARAMS = """\
`sb.destructure(..., params=...)` expected a callable `leaf -> bool` or a pytree prefix of the
model (an Equinox filter spec), but got a {got} that does not match the model's structure.
Fix: `spec = jax.tree.map(lambda _: False, model)`, then set the chosen leaves to True with
`eqx.tree_at`."""


class _Slot(NamedTuple):
    """One parameter: its place in theta and every place it occupies in the tree."""

    start: int
    shape: tuple[int, ...]
    dtype: np.dtype
    path: str
    places: tuple[int, ...]

    @property
    def size(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64))


def _is_state_index(x) -> bool:
    # Running statistics (BatchNorm) live in `StateIndex.init`: state, not parameters.
    return isinstance(x, eqx.nn.StateIndex)


def check_theta(theta: ThetaLike, size: int, where: str) -> Theta:
    """Validate a flat vector at trace time and return it as a JAX array."""
    if not isinstance(theta, jax.Array):
        guard_x64(theta, f"`{where}`", "a NumPy `theta`")
        theta = np.asarray(theta)
    dtype = np.dtype(theta.dtype)
    if not is_inexact(dtype):
        raise TypeError(_MSG_KIND.format(where=where, dtype=dtype))
    if theta.ndim != 1:
        raise TypeError(_MSG_NDIM.format(where=where, shape=tuple(theta.shape)))
    if theta.shape[0] != size:
        raise ValueError(_MSG_SIZE.format(where=where, want=size, shape=tuple(theta.shape)))
    return jnp.asarray(theta)


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
    _slots: tuple[_Slot, ...] = eqx.field(static=True)
    _treedef: Any = eqx.field(static=True)
    _static: tuple[Any, ...] = eqx.field(static=True)
    _arrays: tuple[Any, ...]
    _warned: WarnOnce = eqx.field(static=True, default_factory=WarnOnce)

    def __call__(self, theta: ThetaLike) -> Model:
        theta = check_theta(theta, self.size, "re(theta)")
        leaves = [s if a is None else a for s, a in zip(self._static, self._arrays)]
        for slot in self._slots:
            chunk = theta[slot.start : slot.start + slot.size].reshape(slot.shape)
            value = cast_leaf(chunk, slot.dtype, slot.path, self.precision, self._warned)
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
        statics = tuple(s if _hashable(s) else id(s) for s in self._static)
        return (self.size, self.dtype, self.precision, self._slots, self._treedef, statics, arrays)

    def __hash__(self) -> int:
        # Arrays are unhashable; hash the layout, their shapes and the static leaves.
        return hash(self._key())

    def __eq__(self, other) -> bool:
        if type(other) is not type(self) or self._key() != other._key():
            return False
        return all(_same_array(a, b) for a, b in zip(self._arrays, other._arrays))


def _hashable(x) -> bool:
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
    return bool(jtu.tree_all(jtu.tree_map(lambda x, y: np.array_equal(x, y), a, b)))


_NOT_PARAM = object()


def _on_arrays(predicate: Callable[..., Any]) -> Callable[[Any], bool]:
    """`predicate` asked only about inexact array leaves: nothing else can be a parameter, so a
    natural `lambda leaf: leaf.ndim == 2` never meets an activation function or an int."""
    return lambda leaf: eqx.is_inexact_array(leaf) and bool(predicate(leaf))


def _param_flags(model: Model, leaves: list, params) -> list[bool]:
    """Which flattened leaves are parameters: inexact arrays, narrowed by `params`."""
    flags = [eqx.is_inexact_array(leaf) for leaf in leaves]
    if params is None:
        return flags
    # Equinox filter semantics: a callable, or a pytree prefix of bools/callables.
    spec = jtu.tree_map(lambda f: _on_arrays(f) if callable(f) else f, params)
    try:
        chosen = eqx.filter(model, spec, replace=_NOT_PARAM, is_leaf=_is_state_index)
    except ValueError as e:
        raise ValueError(_MSG_PARAMS.format(got=type(params).__name__)) from e
    chosen_leaves = jtu.tree_leaves(chosen, is_leaf=lambda x: x is _NOT_PARAM or _is_state_index(x))
    if len(chosen_leaves) != len(leaves):
        raise ValueError(_MSG_PARAMS.format(got=type(params).__name__))
    return [f and c is not _NOT_PARAM for f, c in zip(flags, chosen_leaves)]


def _check_filter_ties(paths: list, leaves: list, flags: list[bool]) -> None:
    """Refuse a `params=` filter that trains one place of a tied array and freezes another."""
    trained = {id(x): i for i, (x, f) in enumerate(zip(leaves, flags)) if f}
    for i, (leaf, flag) in enumerate(zip(leaves, flags)):
        if not flag and id(leaf) in trained and eqx.is_inexact_array(leaf):
            raise ValueError(_MSG_TIE_FILTER.format(frozen=jtu.keystr(paths[i]),
                                                    trained=jtu.keystr(paths[trained[id(leaf)]])))


def _slots(paths: list, leaves: list, flags: list[bool], ties: Ties) -> tuple[_Slot, ...]:
    """One slot per distinct parameter array; ties (same object) share the first slot.

    With `ties="none"` every place is its own slot (Equinox's copy semantics)."""
    first: dict[int, int] = {}
    groups: list[list[int]] = []
    for i, (leaf, flag) in enumerate(zip(leaves, flags)):
        if not flag:
            continue
        tie = id(leaf) if ties == "identity" else i
        if tie in first:
            groups[first[tie]].append(i)
        else:
            first[tie] = len(groups)
            groups.append([i])
    slots, start = [], 0
    for places in groups:
        leaf = leaves[places[0]]
        slot = _Slot(start, tuple(leaf.shape), np.dtype(leaf.dtype), jtu.keystr(paths[places[0]]),
                     tuple(places))
        slots.append(slot)
        start += slot.size
    return tuple(slots)


def _theta_dtype(slots: tuple[_Slot, ...], dtype, precision: Precision,
                 lossy: bool) -> np.dtype:
    stored = promote(s.dtype for s in slots)
    if precision == "strict" and dtype is None and len({s.dtype for s in slots}) > 1:
        first = {}
        for s in slots:
            first.setdefault(s.dtype, s.path)
        mixed = ", ".join(f"{d} at `{path}`" for d, path in first.items())
        raise TypeError(_MSG_STRICT_MIXED.format(stored=stored, mixed=mixed))
    if dtype is None:
        check_x64(stored, "`sb.destructure`", "a model with parameters")
        return stored
    try:
        dtype = np.dtype(dtype)
    except TypeError as e:
        raise TypeError(_MSG_DTYPE_ARG.format(dtype=dtype, why="not name a dtype")) from e
    check_x64(dtype, "`sb.destructure(..., dtype=...)`", "a request")
    if not is_inexact(dtype):
        raise TypeError(_MSG_DTYPE_ARG.format(dtype=dtype, why="make theta non-floating"))
    if is_complex(stored) and not is_complex(dtype):
        raise TypeError(_MSG_DTYPE_ARG.format(dtype=dtype, why="drop the imaginary parts of "
                                              "complex parameters"))
    if precision == "strict" and any(s.dtype != dtype for s in slots):
        raise TypeError(_MSG_DTYPE_ARG.format(dtype=dtype, why="differ from the stored dtypes "
                                              "under `precision=\"strict\"`"))
    lost = next((s for s in slots if not is_lossless(s.dtype, dtype)), None)
    if lost is not None and not lossy:
        raise TypeError(_MSG_LOSSY.format(dtype=dtype, path=lost.path, stored=lost.dtype))
    return dtype


def destructure(
    model: Model,
    *,
    params: Callable[[Any], bool] | Any | None = None,
    dtype: DTypeLike | None = None,
    precision: Precision = "vector",
    ties: Ties = "identity",
    lossy: bool = False,
) -> tuple[Theta, Restructure]:
    """Flatten the parameters of any pytree into one vector, and say how to rebuild it.

    Parameters are the inexact (floating or complex) array leaves; everything else (integers,
    booleans, Python scalars, functions, `eqx.nn.StateIndex` buffers) passes through untouched.
    The same array object at several places is one parameter: one slot in `theta`, written
    back to every place, its gradient summed over them.

    !!! example

        ```python
        import jax, jax.numpy as jnp, equinox as eqx
        import sciml_bridge as sb

        mlp = eqx.nn.MLP(1, 1, 10, 3, key=jax.random.key(0))
        theta, re = sb.destructure(mlp, dtype=jnp.float64)  # float32 model, run in float64
        assert theta.shape == (251,) and re(theta)(jnp.ones(1)).dtype == jnp.float64
        ```

    **Arguments:**

    - `model`: any pytree (Equinox module, dict/list/tuple/NamedTuple, Flax params).
    - `params`: narrows which leaves are parameters: a callable `leaf -> bool` or an
        Equinox filter spec (pytree prefix of bools or such callables). A callable is asked
        only about inexact array leaves (nothing else can be a parameter). Unselected leaves
        ride along as constants.
    - `dtype`: dtype of `theta`. Default: one that holds every parameter exactly. A `dtype`
        that cannot hold some parameter exactly (float64 -> float32 or float16, complex128 ->
        complex64) is a `TypeError` naming that parameter, unless `lossy=True`.
    - `precision`: dtypes that `re(theta)` builds. `"vector"` (default): theta's precision
        wins (real leaves stay real, complex stay complex; a non-zero imaginary part headed
        for a real leaf is an error). `"model"`: cast back to the stored dtypes, warning once
        per leaf on a lossy cast. `"strict"`: any dtype difference is a `TypeError` (so the
        parameters must share one dtype, the dtype of `theta`).
    - `ties`: `"identity"` (default): the same array object in several places is one
        parameter (one slot, gradient summed over places). `"none"`: every place is its own
        parameter, Equinox's semantics (the same layer twice is two independent copies;
        `eqx.filter_grad` gives one gradient per place; tie with `eqx.nn.Shared`).
    - `lossy`: `True` opts in to a lossy `dtype` (e.g. training a float64 model in float32):
        `theta` is rounded to `dtype`. Default `False`.

    **Returns:**

    `(theta, re)`: a 1-D array and a hashable `sb.Restructure`.

    **Raises:**

    `TypeError` for a float64 request or float64 NumPy data (parameters or frozen leaves)
    while JAX's x64 mode is off (JAX would truncate silently), a non-floating `dtype`, a lossy
    `dtype` without `lossy=True`, or `precision="strict"` with parameters of several dtypes;
    `ValueError` for an unknown `precision` or `ties`, a malformed `params`, or a `params`
    that freezes one place of a tied array and trains another.
    """
    if precision not in PRECISIONS:
        raise ValueError(f"`sb.destructure` expected `precision` in {PRECISIONS}, got "
                         f"{precision!r}.")
    if ties not in TIES:
        raise ValueError(_MSG_TIES.format(got=ties))
    with_paths, treedef = jtu.tree_flatten_with_path(model, is_leaf=_is_state_index)
    paths = [p for p, _ in with_paths]
    leaves = [leaf for _, leaf in with_paths]
    # Frozen NumPy leaves too: JAX would truncate them silently when the model runs.
    guard_x64([x for x in leaves if isinstance(x, np.ndarray | np.generic)], "`sb.destructure`",
              "a NumPy leaf")
    flags = _param_flags(model, leaves, params)
    if ties == "identity":
        _check_filter_ties(paths, leaves, flags)
    slots = _slots(paths, leaves, flags, ties)
    theta_dtype = _theta_dtype(slots, dtype, precision, lossy)
    chunks = [jnp.ravel(jnp.asarray(leaves[s.places[0]])).astype(theta_dtype) for s in slots]
    theta = jnp.concatenate(chunks) if chunks else jnp.zeros((0,), theta_dtype)
    is_param = [False] * len(leaves)
    for slot in slots:
        for place in slot.places:
            is_param[place] = True
    dynamic = [not p and (eqx.is_array(x) or _is_state_index(x) or not _hashable(x))
               for p, x in zip(is_param, leaves)]
    static = tuple(None if p or d else x for p, d, x in zip(is_param, dynamic, leaves))
    arrays = tuple(x if d else None for d, x in zip(dynamic, leaves))
    size = sum(s.size for s in slots)
    re = Restructure(size, theta_dtype, precision, slots, treedef, static, arrays)
    return theta, re
