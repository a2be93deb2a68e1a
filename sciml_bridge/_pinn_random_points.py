"""Uniform random collocation points in a box, strictly inside it as `dtype` holds it.

`sb.collocation_points(..., sampling="random")` draws here: interior points uniform in the box
and redrawn where rounding to `dtype` put them on (or past) a bound, and boundary points
uniform on the union of the chosen faces, a face picked in proportion to its area.
"""

import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array


_MSG_THIN = """\
`sb.collocation_points(..., sampling="random")` in {dtype}: along axis {axis}, [{lo}, {hi}]
rounds to [{low}, {high}] with no normal {dtype} value strictly between, so every interior
point would land on the boundary ({dtype} resolves {ulp:.3g} near {mag:.3g}).
Fix: pass `dtype=jnp.float64` (with `jax.config.update("jax_enable_x64", True)`), widen the box,
or move it towards 0 (e.g. [0, {width:g}], and shift the coordinates inside the residual)."""

# Rounds of redrawing the coordinates that rounded onto a bound before the last resort (the
# box's midpoint): once `_rounded_box` has passed, a draw lands inside with probability about
# 1/2 or more, so 32 rounds leave a coordinate on a bound with odds about 2^-32.
_REDRAWS = 32


def _rounded_box(lo, hi, dtype) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The box as `dtype` holds it (where boundary points lie) and a value inside each axis.

    Raises if some axis has no value strictly inside. XLA CPU flushes subnormals to zero, so
    `nextafter(0, 1)` would not do: the midpoint is inside whenever any normal value is."""
    low, high = lo.astype(dtype), hi.astype(dtype)
    mid = ((low.astype(np.float64) + high.astype(np.float64)) / 2).astype(dtype)
    normal = (mid == 0) | (np.abs(mid) >= jnp.finfo(dtype).tiny)
    for axis in np.flatnonzero(~((low < mid) & (mid < high) & normal)):
        a, b = lo[axis], hi[axis]
        up = np.nextafter(low[axis], np.asarray(np.inf, dtype))
        raise ValueError(_MSG_THIN.format(
            dtype=np.dtype(dtype).name, axis=axis, lo=a, hi=b, low=low[axis], high=high[axis],
            ulp=float(up) - float(low[axis]), mag=max(abs(a), abs(b)), width=b - a,
        ))  # fmt: skip
    return low, high, mid


def interior_random(key, lo, hi, total: int, dtype, *, strict: bool = True) -> Array:
    """Uniform points strictly inside the box as `dtype` holds it (`strict=False`: in it).

    `lo + u (hi - lo)` with `u` in [0, 1) rounds onto a bound whenever the box is thin next to
    the spacing of `dtype` (float32, [1000, 1000.001]: 8% of 100000 points on a bound), and
    `u` is exactly 0 once in 2^23 float32 draws (1/128 in bfloat16). As the grid, we promise
    strictly interior points: the coordinates that rounded onto (or past) a bound are redrawn,
    which keeps them uniform over the interior; the others keep the values they had before."""
    start, width = jnp.asarray(lo, dtype), jnp.asarray(hi - lo, dtype)
    # Drawn eagerly, as before: XLA may fuse `start + u * width` into an FMA under `jax.jit`,
    # which moved 17% of float64 points on [0.1, 0.3] by an ulp for the same key.
    points = start + jax.random.uniform(key, (total, lo.size), dtype=dtype) * width
    if not strict:
        return jnp.clip(points, jnp.asarray(lo.astype(dtype)), jnp.asarray(hi.astype(dtype)))
    low, high, mid = (jnp.asarray(c) for c in _rounded_box(lo, hi, dtype))
    return _redraw_outside(key, points, start, width, low, high, mid)


@jax.jit
def _redraw_outside(key, points, start, width, low, high, mid) -> Array:
    # Jitted at module level: an eager `lax.while_loop` of fresh closures compiles every call.
    outside = lambda p: (p <= low) | (p >= high)

    def redraw(carry):
        i, p = carry
        # A fresh key per round (`fold_in`): a redrawn coordinate is independent of the rest.
        u = jax.random.uniform(jax.random.fold_in(key, i + 1), p.shape, dtype=p.dtype)
        return i + 1, jnp.where(outside(p), start + u * width, p)

    unfinished = lambda carry: (carry[0] < _REDRAWS) & jnp.any(outside(carry[1]))
    points = jax.lax.while_loop(unfinished, redraw, (0, points))[1]
    return jnp.where(outside(points), mid, points)


def boundary_random(key, lo, hi, total: int, faces, dtype) -> Array:
    # A face's area is the product of the other widths (1 for the end points of a 1-D box),
    # summed in logs: the plain product overflowed (widths 1e200 x 1e200: inf / inf = NaN
    # probabilities, every point on one face) or underflowed to 0 / 0.
    log_width = np.log(hi - lo)
    log_area = np.array([np.sum(np.delete(log_width, axis)) for axis, _ in faces])
    area = np.exp(log_area - log_area.max())
    face_key, point_key = jax.random.split(key)
    pick = jax.random.choice(face_key, len(faces), (total,), p=jnp.asarray(area / area.sum()))
    axis = jnp.asarray([a for a, _ in faces])[pick]
    value = jnp.asarray([lo[a] if s == "lower" else hi[a] for a, s in faces], dtype)[pick]
    # The other coordinates of a face point may touch its edges, never leave the face.
    points = interior_random(point_key, lo, hi, total, dtype, strict=False)
    on_face = jnp.arange(lo.size) == axis[:, None]
    return jnp.where(on_face, value[:, None], points)
