"""Collocation points in a box: grid or random, interior or boundary.

A PINN needs points where the residual is evaluated. For a box `[lower, upper]` in `d`
dimensions there are four kinds: a regular interior grid, uniform random interior points, a
regular grid on the boundary faces, and uniform random points on the boundary faces. One
function makes all four; `faces=` picks a subset of the faces (a space-time box has an initial
face but no final one). Every box is checked here; random draws: `_pinn_random_points.py`.
"""

import operator
from collections.abc import Sequence

import jax
import jax.core
import jax.numpy as jnp
import jax.tree_util as jtu
import numpy as np
from jaxtyping import Array, ArrayLike, Float, PRNGKeyArray

from ._custom_types import DTypeLike, Validated
from ._pinn_random_points import boundary_random, interior_random
from ._precision import check_x64, guard_x64


Face = tuple[int, str]
"""A face of a box: `(axis, "lower")` or `(axis, "upper")`."""

_WHERE = ("interior", "boundary")
_SAMPLING = ("grid", "random")
_SIDES = ("lower", "upper")

_MSG_BOUNDS = """\
`sb.collocation_points` expected finite `lower` and `upper` of the same length with every
`lower[i] < upper[i]`, but got lower={lower} and upper={upper}.
Fix: give one bound per dimension, e.g. `sb.collocation_points((0.0, 0.0), (1.0, 1.0), 16)`
for the unit square."""

_MSG_WIDE = """\
`sb.collocation_points` expected a box whose widths `upper - lower` float64 can hold, but along
axis {axis} [{lo}, {hi}] is {width} wide: grid spacing and random points would be inf or NaN.
Fix: rescale the coordinates (e.g. to [-1, 1]) and scale back inside the residual."""

_MSG_RANGE = """\
`sb.collocation_points` in {dtype}: along axis {axis}, [{lo}, {hi}] is beyond what {dtype} holds
(largest finite value {big:.3g}; the {what} would round to inf), so points would be inf or NaN.
Fix: pass `dtype=jnp.float64` (with `jax.config.update("jax_enable_x64", True)`), or rescale
the coordinates (e.g. to [-1, 1]) and scale back inside the residual."""

_MSG_N = """\
`sb.collocation_points` expected `n` to be a positive int (points per axis for `sampling="grid"`,
total points for `sampling="random"`), or one positive int per axis for a grid, but got {n!r}."""

_MSG_KEY = """\
`sb.collocation_points(..., sampling="random")` needs a PRNG key, but got `key=None`.
Fix: pass `key=jax.random.key(0)` (or any key)."""

_MSG_ONE_KEY = """\
`sb.collocation_points(..., sampling="random")` expected one PRNG key (`jax.random.key(0)`,
shape ()), but got {got}.
Fix: pass one key; for several point sets, call it once per key (e.g. over `jax.random.split`)."""

_MSG_FACES_INTERIOR = """\
`sb.collocation_points` got `faces={faces!r}` with `where="interior"`, where faces mean nothing:
the points would be interior ones, and a boundary term would hold inside the box.
Fix: pass `where="boundary"` with `faces`, or leave `faces` out for interior points."""

_MSG_FACES = """\
`sb.collocation_points` expected `faces` to be a sequence of `(axis, "lower" | "upper")` with
0 <= axis < {d}, but got {faces!r}. Example: `faces=[(0, "lower"), (1, "lower"), (1, "upper")]`
for the initial face and the two spatial walls of a (t, x) box."""


def collocation_points(
    lower: float | Sequence[float] | ArrayLike,
    upper: float | Sequence[float] | ArrayLike,
    n: Validated[int | Sequence[int]],
    *,
    where: str = "interior",
    sampling: str = "grid",
    key: Validated[PRNGKeyArray | None] = None,
    faces: Validated[Sequence[Face] | None] = None,
    dtype: DTypeLike | None = None,
) -> Float[Array, "points dim"]:
    """Collocation points in the box `[lower, upper]`, as one `(points, dim)` array.

    The grid interior holds `n` equally spaced points per axis strictly inside the box (the
    boundary belongs to the boundary set, so no point is counted twice). The boundary grid is the
    full grid of `n` points per axis *including* the end points, restricted to the chosen faces,
    each point once. Random interior points are uniform in the box; random boundary points are
    uniform on the union of the chosen faces (a face is picked in proportion to its area). Interior
    points, grid or random, are strictly inside the box as `dtype` holds it.

    !!! example

        ```python
        import sciml_bridge as sb
        x_in = sb.collocation_points((0.0, 0.0), (1.0, 1.0), 8)   # (64, 2), strictly inside
        x_bc = sb.collocation_points((0.0, 0.0), (1.0, 1.0), 8, where="boundary")  # (28, 2)
        ```

    **Arguments:**

    - `lower`, `upper`: the corners of the box, one float per dimension (a float for 1-D).
    - `n`: for `sampling="grid"`, points per axis (an int, or one int per axis); for
        `sampling="random"`, the total number of points.
    - `where`: `"interior"` (default) or `"boundary"`.
    - `sampling`: `"grid"` (default) or `"random"`.
    - `key`: one JAX PRNG key; required for `sampling="random"`.
    - `faces`: for `where="boundary"` only, the faces to use as `(axis, "lower" | "upper")`
        pairs. Defaults to all `2 * dim` faces.
    - `dtype`: floating dtype of the points; defaults to JAX's default float dtype.

    **Returns:**

    An array of shape `(points, dim)`.

    **Raises:**

    - `ValueError`: mismatched, empty or non-finite bounds, a non-positive `n`, an unknown
        `where`, `sampling` or face, `faces` with `where="interior"`, a missing key or a
        batch of keys for random sampling, or a grid that
        `dtype` cannot hold without repeating points or rounding interior points onto the
        boundary (float32 resolves about 6e-5 near 1000: use float64 or fewer points), or
        a box with no `dtype` value strictly inside some axis for random interior points.
    - `TypeError`: `dtype=float64`, or float64 NumPy bounds, while JAX runs with 64-bit mode
        off.
    """
    lo, hi = _bounds(lower, upper)
    d = lo.size
    dtype = _dtype(dtype)
    _check_range(lo, hi, dtype)
    if where not in _WHERE:
        raise ValueError(f"`sb.collocation_points` expected `where` in {_WHERE}, got {where!r}.")
    if sampling not in _SAMPLING:
        raise ValueError(
            f"`sb.collocation_points` expected `sampling` in {_SAMPLING}, got {sampling!r}."
        )
    if faces is not None and where == "interior":
        raise ValueError(_MSG_FACES_INTERIOR.format(faces=faces))
    chosen = _faces(faces, d)
    if sampling == "grid":
        counts = _counts(n, d)
        _check_resolution(lo, hi, counts, where == "interior", dtype)
        if where == "interior":
            points = _interior_grid(lo, hi, counts)
        else:
            points = _boundary_grid(lo, hi, counts, chosen)
        return jnp.asarray(points, dtype=dtype)
    if key is None:
        raise ValueError(_MSG_KEY)
    _check_one_key(key)
    total = _counts(n, 1)[0]
    if where == "interior":
        return interior_random(key, lo, hi, total, dtype)
    return boundary_random(key, lo, hi, total, chosen, dtype)


def _check_one_key(key) -> None:
    """One key: `jax.random.uniform` refused a batch of keys with a message about `vmap`."""
    shape, dtype = np.shape(key), getattr(key, "dtype", None)
    typed = dtype is not None and jnp.issubdtype(dtype, jax.dtypes.prng_key)
    if len(shape) != (0 if typed else 1):  # a raw key is 1-D: (2,), or (4,) for "rbg"
        got = f"{'a typed key array' if typed else 'an array'} of shape {shape}"
        raise ValueError(_MSG_ONE_KEY.format(got=got))


def _bounds(lower, upper) -> tuple[np.ndarray, np.ndarray]:
    guard_x64((lower, upper), "`sb.collocation_points`", "bounds")
    if any(isinstance(b, jax.core.Tracer) for b in jtu.tree_leaves((lower, upper))):
        raise TypeError(_MSG_TRACED)
    try:
        lo = np.atleast_1d(np.asarray(lower, dtype=np.float64))
        hi = np.atleast_1d(np.asarray(upper, dtype=np.float64))
    except (TypeError, ValueError) as e:
        raise ValueError(_MSG_BOUNDS.format(lower=lower, upper=upper)) from e
    ok = lo.ndim == 1 and lo.shape == hi.shape and lo.size > 0
    if not ok or not np.all(np.isfinite(lo) & np.isfinite(hi) & (lo < hi)):
        raise ValueError(_MSG_BOUNDS.format(lower=lower, upper=upper))
    with np.errstate(over="ignore"):
        width = hi - lo
    for axis in np.flatnonzero(~np.isfinite(width)):
        raise ValueError(_MSG_WIDE.format(axis=axis, lo=lo[axis], hi=hi[axis], width=width[axis]))
    return lo, hi


_MSG_TRACED = (
    "`sb.collocation_points` expected concrete `lower` and `upper` (they fix the grid), but got "
    "values traced by `jax.jit`/`jax.vmap`. Fix: make the points once outside the transform "
    "and pass them in as data (or close over constant bounds)."
)


def _check_range(lo, hi, dtype) -> None:
    """Bounds finite in float64 may not be in `dtype` (float32 past 3.4e38, float16 past
    65504): the grid's resolution check and the random draws then met inf (a cryptic
    "cannot convert float NaN to integer", or boundary points at inf without a word)."""
    big = float(jnp.finfo(dtype).max)
    sizes = {"bounds": np.maximum(np.abs(lo), np.abs(hi)), "width": hi - lo}
    for what, size in sizes.items():
        with np.errstate(over="ignore"):
            held = size.astype(dtype)
        for axis in np.flatnonzero(~np.isfinite(held)):
            raise ValueError(_MSG_RANGE.format(dtype=np.dtype(dtype).name, axis=axis, lo=lo[axis],
                                               hi=hi[axis], big=big, what=what))


def _dtype(dtype) -> np.dtype:
    if dtype is None:
        return np.dtype(jnp.zeros(()).dtype)
    dtype = np.dtype(dtype)
    if not jnp.issubdtype(dtype, jnp.floating):
        raise TypeError(
            f"`sb.collocation_points` expected a floating `dtype`, got {dtype}. "
            "Fix: pass e.g. `dtype=jnp.float64`."
        )
    check_x64(dtype, "`sb.collocation_points`", "`dtype`")
    return dtype


_MSG_RESOLUTION = """\
`sb.collocation_points` in {dtype}: {n} grid points along axis {axis} of [{lo}, {hi}] are {step:.3g}
apart, but {dtype} only resolves {ulp:.3g} near {mag:.3g}, so after rounding some points would
repeat{edge}.
Fix: pass `dtype=jnp.float64` (with `jax.config.update("jax_enable_x64", True)`), use fewer
points on that axis (about {most} at most), or move the box towards 0 (e.g. [0, {width:g}], and
shift the coordinates inside the residual)."""


def _check_resolution(lo, hi, counts, interior: bool, dtype) -> None:
    """The grid promises distinct points, and interior points strictly inside the box: true
    in float64, but rounding to `dtype` can merge neighbours or land on the boundary (float32:
    20000 points on [1000, 1001] gave 16383 distinct values)."""
    for axis, (a, b, c) in enumerate(zip(lo, hi, counts)):
        exact = np.linspace(a, b, c + 2) if interior else np.linspace(a, b, max(c, 2))
        rounded = exact.astype(dtype).astype(np.float64)
        if np.all(np.diff(rounded) > 0):
            continue
        mag = max(abs(a), abs(b))
        ulp = float(np.spacing(np.asarray(mag, dtype=dtype)))
        raise ValueError(_MSG_RESOLUTION.format(
            dtype=np.dtype(dtype).name, n=c, axis=axis, lo=a, hi=b, step=exact[1] - exact[0],
            ulp=ulp, mag=mag, most=max(int((b - a) / ulp) // 2, 1), width=b - a,
            edge=" or land on the boundary" if interior else "",
        ))  # fmt: skip


def _counts(n, d: int) -> tuple[int, ...]:
    # `operator.index` takes ints and 0-d integer arrays (NumPy, JAX) and refuses floats: a
    # float `n` or a 0-d array raised "'float' object is not iterable" and the like.
    try:
        counts = (operator.index(n),) * d if np.ndim(n) == 0 else tuple(n)
    except TypeError:
        raise ValueError(_MSG_N.format(n=n)) from None
    ok = len(counts) == d and not isinstance(n, bool) and all(_is_int(c) and c > 0 for c in counts)
    if not ok:
        raise ValueError(_MSG_N.format(n=n))
    return tuple(int(c) for c in counts)


def _is_int(value) -> bool:
    """An int that is not a bool (`True` is an int to Python: it passed as axis 1 or n = 1);
    0-d integer arrays count (`jnp.int32(0)`), as `operator.index` takes them."""
    if isinstance(value, bool | np.bool_) or getattr(value, "dtype", None) == np.bool_:
        return False
    try:
        operator.index(value)
    except TypeError:
        return False
    return True


def _faces(faces, d: int) -> tuple[Face, ...]:
    if faces is None:
        return tuple((axis, side) for axis in range(d) for side in _SIDES)
    try:
        chosen = tuple((axis, side) for axis, side in faces)
    except (TypeError, ValueError) as e:
        raise ValueError(_MSG_FACES.format(d=d, faces=faces)) from e
    # `int(axis)` took 0.7 as axis 0, True as 1 and "1" as 1 without a word.
    if not chosen or any(not _is_int(a) or not 0 <= a < d or s not in _SIDES for a, s in chosen):
        raise ValueError(_MSG_FACES.format(d=d, faces=faces))
    return tuple(dict.fromkeys((int(a), s) for a, s in chosen))


def _mesh(axes: list[np.ndarray]) -> np.ndarray:
    return np.stack([g.ravel() for g in np.meshgrid(*axes, indexing="ij")], axis=-1)


def _interior_grid(lo, hi, counts) -> np.ndarray:
    # `n + 2` points with the two ends dropped: equal spacing, nothing on the boundary.
    return _mesh([np.linspace(a, b, c + 2)[1:-1] for a, b, c in zip(lo, hi, counts)])


def _boundary_grid(lo, hi, counts, faces) -> np.ndarray:
    # A 1-point axis still has two ends: at least 2 points per axis so faces exist.
    points = _mesh([np.linspace(a, b, max(c, 2)) for a, b, c in zip(lo, hi, counts)])
    keep = np.zeros(len(points), dtype=bool)
    for axis, side in faces:
        keep |= points[:, axis] == (lo[axis] if side == "lower" else hi[axis])
    return points[keep]
