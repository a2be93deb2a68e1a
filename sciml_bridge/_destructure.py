"""`destructure`: a nested model <-> one flat parameter vector, exactly.

We do not use `jax.flatten_util.ravel_pytree`: it packs integer leaves too, gives a tied array
two slots, and with mixed leaf dtypes casts every chunk back to its stored dtype (jax#7809).
Instead the layout (which leaves are parameters, their slots, ties, stored dtypes:
`_destructure_layout.py`) is computed once, on the concrete tree, and kept as static data in a
`Restructure` (`_destructure_restructure.py`); rebuilding is static slicing only. This module
is the front door and the choice of `theta`'s dtype; it re-exports `Restructure` and
`check_theta`, which other modules import from here.
"""

from collections.abc import Callable
from typing import Any

import equinox as eqx
import jax
import jax.core
import jax.numpy as jnp
import jax.tree_util as jtu
import numpy as np

from ._custom_types import DTypeLike, Model, Precision, Theta, Ties
from ._destructure_layout import (
    check_filter_ties,
    check_ties,
    is_state_index,
    param_flags,
    slots as make_slots,
)
from ._destructure_restructure import (
    Restructure as Restructure,
    Slot,
    Static,
    check_theta as check_theta,
)
from ._precision import (
    PRECISIONS,
    check_jax_dtype,
    check_x64,
    complex_dtype,
    guard_x64,
    is_complex,
    is_inexact,
    is_lossless,
    promote,
    real_dtype,
)


_MSG_DTYPE_ARG = """\
`{where}(..., dtype={dtype})` would {why}.
Fix: pick a floating dtype wide enough for every parameter (e.g. `dtype=jnp.float64`, or a
complex dtype for complex parameters), or leave `dtype=None`."""

_MSG_LOSSY = """\
`{where}(..., dtype={dtype})` would round the parameter `{path}` (stored as {stored})
to {dtype}, losing precision.
Fix: leave `dtype=None` (a dtype that holds every parameter exactly), pick a wider dtype, or,
to really train in lower precision, opt in with `lossy=True`."""

_MSG_STRICT_MIXED = """\
`{where}(..., precision="strict")` got parameters of several dtypes ({mixed}), but
strict mode needs every leaf to have exactly `theta`'s dtype: no `theta` could rebuild this
model (its own `re` would refuse every vector).
Fix: use `precision="vector"` (theta's precision wins, here a {stored} theta) or
`precision="model"` (cast back to the stored dtypes), or give the parameters one dtype first:
`model = jax.tree.map(lambda x: x.astype(jnp.{stored}) if eqx.is_inexact_array(x) else x,
model)`."""


def _settle_weak(slots: tuple[Slot, ...], weak: list[bool], leaves: list) -> tuple[Slot, ...]:
    """Give each weakly typed parameter (`jnp.array(0.5)`, `eqx.nn.PReLU`'s slope) the dtype
    it computes in, the promotion of the strongly typed ones (real or complex as the leaf is),
    where its value is exact there.

    JAX's rule: a weak type does not decide the dtype of a computation (`float32 * 0.5` is
    float32), so a weak float64 scalar beside float32 weights must not make `theta`, and
    with it the rebuilt model's output, float64. But `theta` holds every parameter exactly:
    a weak `0.1` (not a float32 number) keeps its own dtype, and a traced one (its value
    unknown) too. With no strongly typed parameter the weak dtypes are all there is."""
    strong = [s for s, w in zip(slots, weak) if not w and s.size]
    if not strong or not any(weak):
        return slots
    own = promote(s.dtype for s in strong)
    settled = lambda s: complex_dtype(own) if is_complex(s.dtype) else real_dtype(own)

    def exact(s: Slot) -> bool:
        leaf = leaves[s.places[0]]
        if isinstance(leaf, jax.core.Tracer):
            return False
        value = np.asarray(leaf)
        return bool(np.array_equal(value.astype(settled(s)).astype(value.dtype), value,
                                   equal_nan=True))  # fmt: skip

    return tuple(s._replace(dtype=settled(s)) if w and exact(s) else s
                 for s, w in zip(slots, weak))  # fmt: skip


def _theta_dtype(slots: tuple[Slot, ...], dtype, precision: Precision, lossy: bool,
                 where: str) -> np.dtype:  # fmt: skip
    for s in slots:
        check_jax_dtype(s.dtype, f"`{where}`", f"the parameter `{s.path}`")
    # An empty leaf holds no number: it must not widen theta (a `jnp.array([])` placeholder is
    # float64 under x64) nor make it complex, nor count as a second dtype under strict mode.
    slots = tuple(s for s in slots if s.size) or slots
    stored = promote(s.dtype for s in slots)
    if precision == "strict" and dtype is None and len({s.dtype for s in slots}) > 1:
        first = {}
        for s in slots:
            first.setdefault(s.dtype, s.path)
        mixed = ", ".join(f"{d} at `{path}`" for d, path in first.items())
        raise TypeError(_MSG_STRICT_MIXED.format(stored=stored, mixed=mixed, where=where))
    if dtype is None:
        check_x64(stored, f"`{where}`", "a model with parameters")
        return stored
    bad = lambda why: TypeError(_MSG_DTYPE_ARG.format(dtype=dtype, why=why, where=where))
    try:
        dtype = np.dtype(dtype)
    except TypeError as e:
        raise bad("not name a dtype") from e
    check_x64(dtype, f"`{where}(..., dtype=...)`", "a request")
    check_jax_dtype(dtype, f"`{where}(..., dtype=...)`", "a request")
    if not is_inexact(dtype):
        raise bad("make theta non-floating")
    if is_complex(stored) and not is_complex(dtype):
        raise bad("drop the imaginary parts of complex parameters")
    if precision == "strict" and any(s.dtype != dtype for s in slots):
        raise bad("differ from the stored dtypes under `precision=\"strict\"`")
    lost = next((s for s in slots if not is_lossless(s.dtype, dtype)), None)
    if lost is not None and not lossy:
        raise TypeError(_MSG_LOSSY.format(dtype=dtype, path=lost.path, stored=lost.dtype,
                                          where=where))
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
        complex64) is a `TypeError` naming that parameter, unless `lossy=True`. As in JAX's
        promotion, a weakly typed parameter (`jnp.array(0.5)`, `eqx.nn.PReLU`'s slope) does
        not decide the dtype: it counts at the dtype the strongly typed ones promote to.
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
    while JAX's x64 mode is off (JAX would truncate silently), a parameter or `dtype` JAX
    cannot hold (NumPy's float128), a non-floating `dtype`, a lossy `dtype` without
    `lossy=True`, `precision="strict"` with parameters of several dtypes, or a `params`
    callable that does not answer one bool per leaf; `ValueError` for an unknown `precision`
    or `ties`, a malformed `params`, or a `params` that freezes one place of a tied array and
    trains another.
    """
    return flatten_as("sb.destructure", model, params=params, dtype=dtype, precision=precision,
                      ties=ties, lossy=lossy)


def flatten_as(where: str, model: Model, *, params, dtype, precision: Precision, ties: Ties,
               lossy: bool) -> tuple[Theta, Restructure]:  # fmt: skip
    """`sb.destructure`, its errors naming `where`, the call the user wrote (`sb.flat`)."""
    if precision not in PRECISIONS:
        raise ValueError(f"`{where}` expected `precision` in {PRECISIONS}, got "
                         f"{precision!r}.")
    check_ties(ties, where)
    with_paths, treedef = jtu.tree_flatten_with_path(model, is_leaf=is_state_index)
    paths = [p for p, _ in with_paths]
    leaves = [leaf for _, leaf in with_paths]
    # Frozen NumPy leaves too: JAX would truncate them silently when the model runs.
    guard_x64([x for x in leaves if isinstance(x, np.ndarray | np.generic)], f"`{where}`",
              "a NumPy leaf")
    flags = param_flags(model, leaves, params, where)
    if ties == "identity":
        check_filter_ties(paths, leaves, flags, where)
    slots = make_slots(paths, leaves, flags, ties)
    weak = [bool(getattr(leaves[s.places[0]], "weak_type", False)) for s in slots]
    slots = _settle_weak(slots, weak, leaves)
    theta_dtype = _theta_dtype(slots, dtype, precision, lossy, where)
    chunks = [jnp.ravel(jnp.asarray(leaves[s.places[0]])).astype(theta_dtype) for s in slots
              if s.size]  # an empty complex leaf may meet a real theta
    theta = jnp.concatenate(chunks) if chunks else jnp.zeros((0,), theta_dtype)
    is_param = [False] * len(leaves)
    for slot in slots:
        for place in slot.places:
            is_param[place] = True
    # Everything else is static, unhashable objects (a `set`, a config class with `__eq__`
    # only) included: as data they made `hash(re)`, `jax.jit(fm)` and `fm` as a jit argument
    # fail ("has no attribute 'shape'", "not a valid JAX type"). `Static` hashes them by type.
    dynamic = [not p and (eqx.is_array(x) or is_state_index(x)) for p, x in zip(is_param, leaves)]
    static = tuple(None if p or d else Static(x) for p, d, x in zip(is_param, dynamic, leaves))
    arrays = tuple(x if d else None for d, x in zip(dynamic, leaves))
    size = sum(s.size for s in slots)
    re = Restructure(size, theta_dtype, precision, slots, treedef, static, arrays)
    return theta, re
