"""The dtype rules: which dtype a rebuilt leaf gets, and the x64 guard.

JAX's own flattening casts each chunk back to the leaf's stored dtype (jax#7809,
`jax/_src/flatten_util.py`) and, with x64 off, truncates float64 input to float32 without
a word (jax#11895). Both lose precision silently; here every loss is either refused or
announced.
"""

import os
import sys
import warnings

import equinox as eqx
import jax
import jax.core
import jax.numpy as jnp
import jax.tree_util as jtu
import jaxtyping
import numpy as np
from jaxtyping import Array


PRECISIONS = ("vector", "model", "strict")


class PrecisionLossWarning(UserWarning):
    """A lossy cast made on purpose under `precision="model"` (e.g. float64 -> float32).

    Raised once per leaf and layout by `re(theta)` when `theta` is wider than a leaf's stored
    dtype; `precision="vector"` (the default) keeps `theta`'s precision and never warns.

    !!! example

        ```python
        import warnings
        theta, re = sb.destructure({"w": jnp.ones(3, jnp.float32)}, precision="model")
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            re(theta.astype(jnp.float64) / 3.0)    # float64 entries cast down to float32
        assert caught[0].category is sb.PrecisionLossWarning
        ```
    """


_MSG_X64 = """\
{where} got {what} of dtype {dtype}, but JAX is running with 64-bit mode off, so JAX would
silently truncate it to {short}. sciml_bridge refuses to lose precision behind your back.
Fix: turn on 64-bit mode before creating any arrays:

    import jax
    jax.config.update("jax_enable_x64", True)

or, to really compute in single precision, give it {short} values explicitly (for an array:
`numpy.asarray(value, dtype=numpy.{short})`)."""

_MSG_NOT_JAX = """\
{where} got {what} of dtype {dtype}, which JAX cannot hold: its widest types are float64 and
complex128, and it would refuse this data deep inside a computation.
Fix: round it to a dtype JAX has, knowing that this loses precision, e.g.
`numpy.asarray(value, dtype=numpy.{fix})`."""

_MSG_IMAG = """\
`{where}` got a complex `theta` whose entries for the real leaf `{path}` have a non-zero
imaginary part{largest}. Dropping it would silently change the model.
Fix: keep those entries real, or make that leaf complex in the model."""

_MSG_STRICT = """\
`{where}` with `precision="strict"` got a `theta` of dtype {got}, but the leaf `{path}` is
stored as {want}. Strict mode allows no cast at all.
Fix: pass `theta.astype({want})`, or use `precision="vector"` (theta's precision wins) or
`precision="model"` (cast back to the stored dtypes, warning on loss)."""

_MSG_MODEL = (
    "`{where}` with `precision=\"model\"` casts the {got} entries for leaf `{path}` down to "
    "its stored dtype {want}, losing precision. Use `precision=\"vector\"` to keep them."
)

class WarnOnce:
    """Which leaves already warned under `precision="model"`, one registry per layout.

    Owned by a `Restructure` (made once per `sb.destructure` call), so no `id()` can be
    reused by another object. It does not take part in the owner's equality or hash: two
    equal layouts still share jit caches.
    """

    def __init__(self):
        self._seen: set[str] = set()

    def first(self, path: str) -> bool:
        """True the first time `path` is seen (and remembers it)."""
        if path in self._seen:
            return False
        self._seen.add(path)
        return True

    def __eq__(self, other) -> bool:
        return isinstance(other, WarnOnce)

    def __hash__(self) -> int:
        return hash(WarnOnce)


def is_inexact(dtype) -> bool:
    """Floating or complex, bfloat16 and float8 included (NumPy calls their kind `'V'`)."""
    try:
        return bool(jnp.issubdtype(np.dtype(dtype), jnp.inexact))
    except TypeError:
        return False


def is_complex(dtype) -> bool:
    return bool(jnp.issubdtype(np.dtype(dtype), jnp.complexfloating))


def is_wide(dtype) -> bool:
    """float64 / complex128: the dtypes JAX truncates when x64 is off."""
    return np.dtype(dtype) in (np.dtype(np.float64), np.dtype(np.complex128))


def is_lossless(got, want) -> bool:
    """Every value of dtype `got` is exactly representable in dtype `want` (JAX's lattice)."""
    got, want = np.dtype(got), np.dtype(want)
    return got == want or _promote_two(got, want) == want


def _holds(wide: np.dtype, narrow: np.dtype) -> bool:
    """Every value of the floating dtype `narrow` is a value of `wide` (by their `finfo`):
    as many mantissa bits, as large an exponent, as small a subnormal."""
    if is_complex(narrow) and not is_complex(wide):
        return False
    w, n = jnp.finfo(wide), jnp.finfo(narrow)
    return (w.nmant >= n.nmant and w.maxexp >= n.maxexp
            and w.minexp - w.nmant <= n.minexp - n.nmant)


def _carrier(dtype: np.dtype) -> np.dtype:
    """The narrowest of float16, bfloat16, float32 that holds `dtype` exactly (float8, float4)."""
    if not is_inexact(dtype) or dtype.itemsize > 1:
        return dtype
    return next(np.dtype(d) for d in (jnp.float16, jnp.bfloat16, jnp.float32)
                if _holds(np.dtype(d), dtype))


def _promote_two(a, b) -> np.dtype:
    """JAX's promotion of two dtypes, also for float8/float4 (which JAX refuses to promote
    implicitly, `jax.dtypes.TypePromotionError`): the wider one if it holds the narrow float
    exactly, else the promotion of their exact 16/32-bit carriers (a lossless widening)."""
    a, b = np.dtype(a), np.dtype(b)
    # Our own choice of dtype must not depend on the user's promotion mode.
    with jax.numpy_dtype_promotion("standard"):
        try:
            return np.dtype(jnp.promote_types(a, b))
        except jax.dtypes.TypePromotionError:
            if is_inexact(a) and is_inexact(b):
                for wide, narrow in ((a, b), (b, a)):
                    if narrow.itemsize == 1 and _holds(wide, narrow):
                        return wide
            return np.dtype(jnp.promote_types(_carrier(a), _carrier(b)))


def is_jax_dtype(dtype) -> bool:
    """A dtype JAX can hold (NumPy's float128/complex256, the x87 long double, it cannot)."""
    try:
        dtype = np.dtype(dtype).newbyteorder("=")  # the byte order is not JAX's concern here
        jnp.promote_types(dtype, dtype)
    except (TypeError, ValueError):
        return False
    return True


def check_jax_dtype(dtype, where: str, what: str = "data") -> None:
    """Raise `TypeError` for an inexact dtype JAX cannot hold, naming the call and the data."""
    if is_inexact(dtype) and not is_jax_dtype(dtype):
        fix = "complex128" if is_complex(dtype) else "float64"
        raise TypeError(_MSG_NOT_JAX.format(where=where, what=what, dtype=np.dtype(dtype),
                                            fix=fix))


def check_x64(dtype, where: str, what: str = "data") -> None:
    """Raise instead of letting JAX truncate float64 input with x64 off."""
    if is_wide(dtype) and not jax.config.read("jax_enable_x64"):
        short = "complex64" if is_complex(dtype) else "float32"
        msg = _MSG_X64.format(where=where, what=what, dtype=np.dtype(dtype), short=short)
        raise TypeError(msg)


def guard_x64(tree, where: str, what: str = "data") -> None:
    """The one x64 guard for every array that enters the library (theta, args, data, points,
    `y0`, `ts`, bounds): any leaf carrying a float64/complex128 dtype (NumPy arrays and
    scalars, dtype objects) is refused while x64 is off, because `jnp.asarray`,
    `jax.device_put` and jitted calls would truncate it without a word (jax#11895).

    Python floats pass: they are weakly typed in JAX and follow the computation's dtype.
    `where` names the call in backticks (e.g. "`sb.minimize`"), `what` the argument.
    """
    if jax.config.read("jax_enable_x64"):
        return
    for leaf in jtu.tree_leaves(tree):
        dtype = leaf if isinstance(leaf, np.dtype) else getattr(leaf, "dtype", None)
        if dtype is not None and not isinstance(leaf, jax.Array):
            check_x64(dtype, where, what)


def real_dtype(dtype) -> np.dtype:
    """float64 for complex128, float32 for complex64, itself for a real dtype."""
    return np.dtype(jnp.finfo(np.dtype(dtype)).dtype)


def complex_dtype(dtype) -> np.dtype:
    """complex128 for float64, complex64 for float32 or narrower, itself for complex."""
    dtype = np.dtype(dtype)
    if is_complex(dtype):
        return dtype
    return np.dtype(np.complex128) if dtype.itemsize >= 8 else np.dtype(np.complex64)


def promote(dtypes) -> np.dtype:
    """The dtype that holds every dtype in `dtypes` exactly (JAX's lattice, never strict)."""
    out = None
    for dtype in dtypes:
        out = np.dtype(dtype) if out is None else _promote_two(out, dtype)
    return np.dtype(out if out is not None else jnp.zeros(()).dtype)


def cast_leaf(chunk: Array, stored, path: str, precision: str, warned: WarnOnce,
              where: str = "re(theta)") -> Array:  # fmt: skip
    """Give one rebuilt chunk of `theta` the dtype that `precision` asks for; errors and
    warnings name `where`, the call the user wrote (`re(theta)`, `fm(theta, x)`)."""
    stored = np.dtype(stored)
    got = np.dtype(chunk.dtype)
    if precision == "vector":
        if is_complex(stored):
            return chunk.astype(complex_dtype(got))
        return _real_part(chunk, path, where) if is_complex(got) else chunk
    if precision == "strict":
        if got != stored and chunk.size:  # an empty leaf holds nothing to cast
            raise TypeError(_MSG_STRICT.format(got=got, want=stored, path=path, where=where))
        return chunk.astype(stored)
    if not is_lossless(got, stored) and warned.first(path):
        warnings.warn(_MSG_MODEL.format(got=got, want=stored, path=path, where=where),
                      PrecisionLossWarning,
                      stacklevel=_user_stacklevel(sys._getframe()))
    if is_complex(got) and not is_complex(stored):
        chunk = jnp.real(chunk)
    return chunk.astype(stored)


# Frames inside these packages are ours, the tracing machinery's or a runtime type checker's
# (jaxtyping's import hook wraps our functions), never the user's line.
_INTERNAL = tuple(os.path.dirname(f) + os.sep
                  for f in (__file__, jax.__file__, eqx.__file__, jaxtyping.__file__) if f)


def _user_stacklevel(frame) -> int:
    """The `stacklevel` of the first frame outside those packages, for a `warnings.warn` made
    in `frame`: `re(theta)`, `fm(theta, x)` and a jitted caller reach `cast_leaf` through
    different numbers of frames, so a fixed level pointed at our code or past the user's line."""
    level = 1
    while frame is not None and frame.f_code.co_filename.startswith(_INTERNAL):
        level, frame = level + 1, frame.f_back
    return level


def _real_part(chunk: Array, path: str, where: str) -> Array:
    imag = jnp.imag(chunk)
    if isinstance(chunk, jax.core.Tracer):
        # Under jit/vmap the check runs on device (Equinox's runtime-error mechanism).
        chunk = eqx.error_if(chunk, jnp.any(imag != 0),
                             _MSG_IMAG.format(path=path, largest="", where=where))
        return jnp.real(chunk)
    largest = float(jnp.max(jnp.abs(imag))) if imag.size else 0.0
    if largest != 0.0:
        raise ValueError(_MSG_IMAG.format(path=path, where=where,
                                          largest=f" (largest |imag| = {largest:.3g})"))
    return jnp.real(chunk)
