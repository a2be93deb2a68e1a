"""Types named once, used in every public signature.

Pyright reads the precise types below. At runtime, the test suite also checks every annotation
in the package (jaxtyping's import hook with beartype, as Equinox and Diffrax do). The aliases
for user input that a public function validates itself (`ThetaLike`, `ThetaBatchLike`,
`Precision`, `Ties`, `Size`, `KeyLike`) are deliberately loose at runtime (`Any`): the
function's own check then runs, and its error (what was expected, what was got, the fix) is
the one the user sees instead of a generic type-check failure. What the library builds itself
(`Theta`, `ThetaBatch`, `LossScalar`) keeps its precise dtype and shape check at runtime too.
"""

from typing import TYPE_CHECKING, Annotated, Any, Literal, TypeAlias, TypeVar

from jax.typing import DTypeLike as DTypeLike
from jaxtyping import Array, ArrayLike, Inexact, PRNGKeyArray, PyTree, Scalar


Theta: TypeAlias = Inexact[Array, " n"]
"""The flat parameter vector: one 1-D floating or complex array."""

ThetaBatch: TypeAlias = Inexact[Array, "members n"]
"""A stack of flat parameter vectors, one row per ensemble member."""

Model: TypeAlias = PyTree[Any]
"""A nested model: an Equinox module, Flax params, a dict of arrays, ..."""

LossScalar: TypeAlias = Inexact[Scalar, ""]
"""A scalar loss value: a 0-d floating array."""

if TYPE_CHECKING:
    ThetaLike: TypeAlias = Inexact[ArrayLike, " n"]
    """Anything a user may pass as `theta`: a 1-D JAX or NumPy floating array."""

    ThetaBatchLike: TypeAlias = Inexact[ArrayLike, "members n"]
    """Anything a user may pass as an ensemble `theta0`: one row per member."""

    Precision: TypeAlias = Literal["vector", "model", "strict"]
    """What `re(theta)` builds: `"vector"`, `"model"` or `"strict"` (see `sb.destructure`)."""

    Ties: TypeAlias = Literal["identity", "none"]
    """How `sb.destructure` treats one array object found in several places."""

    Size: TypeAlias = int | Literal["scalar"]
    """One layer size of `sb.FlatMLP`: a positive int, or `"scalar"` at either end."""

    KeyLike: TypeAlias = PRNGKeyArray
    """One PRNG key, e.g. `jax.random.key(0)` (a raw `jax.random.PRNGKey(0)` also works)."""

    _T = TypeVar("_T")
    Validated: TypeAlias = Annotated[_T, "validated"]
    """`Validated[T]` is `T` for pyright and anything at runtime: for the arguments of a
    front door (`sb.minimize(..., tol=...)`) that the function checks itself."""
else:
    # Validated by the functions that take them, with errors that name the fix (see above).
    ThetaLike = ThetaBatchLike = Precision = Ties = Size = KeyLike = Any

    class Validated:
        """`Validated[T]` is `Any` at runtime (see the module docstring)."""

        def __class_getitem__(cls, item: Any) -> Any:
            return Any
