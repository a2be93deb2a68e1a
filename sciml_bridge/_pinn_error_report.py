"""`sb.error_report`: how far a trained network is from a reference solution.

Relative L2, max and rms errors of `fm(theta, x)` against reference values at test points,
with norms that stay right at any magnitude and shapes checked rather than guessed.
"""

from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import checkify
from jaxtyping import Array, ArrayLike

from ._custom_types import Theta, Validated
from ._precision import guard_x64, is_complex


class ErrorReport(NamedTuple):
    """How far a trained network is from a reference solution, made by `sb.error_report`.

    `rel_l2` is `||u - u_ref|| / ||u_ref||` over the points (where `u_ref` is zero everywhere:
    0 for an exact prediction, `inf` otherwise), `max_abs` is `max |u - u_ref|`, `rms` is the
    root-mean-square error (norms are scaled, so right at any magnitude, in float32 too);
    `prediction` and `reference` are the NumPy values (with the network's output shape per
    point), kept for plots and error maps.

    !!! example

        ```python
        fm = lambda theta, x: theta[0] * x[0]
        report = sb.error_report(fm, jnp.array([2.0]), jnp.ones((4, 1)), jnp.full(4, 2.5))
        assert report.max_abs == 0.5 and report.prediction.shape == (4,)
        print(report)   # relative L2 error 2.000e-01, max |error| 5.000e-01 over 4 points
        ```
    """

    rel_l2: float
    max_abs: float
    rms: float
    prediction: np.ndarray
    reference: np.ndarray

    def __str__(self) -> str:
        return (
            f"relative L2 error {self.rel_l2:.3e}, max |error| {self.max_abs:.3e} "
            f"over {len(self.prediction)} points"
        )


_MSG_REFERENCE = """\
`sb.error_report(fm, theta, points, reference)` expected `reference` of the prediction's shape
{shape} (points first, then the network's output shape), but got shape {got}.
Fix: pass an array of shape {shape} (a scalar-output network also accepts {squeezed}), or a
function of the whole `points` array that returns one; for a `(outputs, points)` array pass
`reference.T`."""

_MSG_POINTS = """\
`sb.error_report(fm, theta, points, reference)` expected `points` with a leading axis of at
least one point (e.g. `(points, dim)`), but got shape {shape}: there is no error to report.
Fix: pass the test points as rows, e.g. `jnp.linspace(0.0, 1.0, 101)[:, None]`."""

_MSG_COMPLEX_REFERENCE = """\
`sb.error_report` got a complex `reference` (dtype {dtype}) for a network with real output
({out}): its imaginary part would be dropped without a word.
Fix: compare real parts explicitly (`reference.real`), or use a complex-valued network."""


_MSG_OUT_OF_BOUNDS = """\
`sb.error_report(fm, theta, points, reference)` expected the function `reference` to index
only within its arrays, but it indexed out of bounds: {error}
JAX clamps such an index (or fills it) without a word, so the error reported would be
measured against the wrong values. Fix: index within the shapes (`points` has shape
{shape}); if out-of-bounds reads are intended (`mode="fill"`, `map_coordinates` outside its
grid), pass the values instead: `reference=reference(points)`."""


def _reference_values(reference: Callable[[Any], Any], points: Any) -> Any:
    """`reference(points)`, first traced under `checkify.index_checks`: JAX clamps an
    out-of-range index (`x[:, 1]` of a `(points, 1)` array read column 0) and
    `sb.error_report` gave an error of 0 against the wrong values. The values come from a
    plain call: checkify rounds a float64 NumPy result to float32 when x64 is off.

    A reference JAX cannot trace (NumPy on a tracer, a Python `if` on a value, a boolean
    mask) is only called plainly, as before: NumPy raises on an out-of-range index by itself,
    and an error of the reference's own is raised by that call."""
    try:
        error = checkify.checkify(reference, errors=checkify.index_checks)(points)[0].get()
    except Exception:  # not traceable: the plain call below decides
        error = None
    if error is not None:
        raise ValueError(_MSG_OUT_OF_BOUNDS.format(error=error.strip(), shape=np.shape(points)))
    return reference(points)


def error_report(
    fm: Callable[..., Any],
    theta: Theta,
    points: Validated[ArrayLike | Sequence],
    reference: Array | np.ndarray | Callable[[Any], Any],
) -> ErrorReport:
    """Compare `fm(theta, x)` with a reference solution at `points`.

    !!! example

        ```python
        fm = lambda theta, x: theta[0] * jnp.sin(jnp.pi * x)   # any fm(theta, x)
        x_test = jnp.linspace(-1.0, 1.0, 101)[:, None]
        report = sb.error_report(fm, jnp.array([1.01]), x_test,
                                 lambda x: jnp.sin(jnp.pi * x[:, 0]))
        print(report)   # relative L2 error 1.000e-02, max |error| 1.000e-02 over 101 points
        ```

    **Arguments:**

    - `fm`, `theta`: the network and its parameters.
    - `points`: a `(points, dim)` array (or nested list); `fm` is evaluated at each row.
    - `reference`: the reference values at `points`, or a function taking the whole `points`
        array (vectorised NumPy or JAX) and returning them, of shape `(points,) + out` (`out`
        the network's output shape); `(points,)` is accepted for output shape `(1,)` and
        `(points, 1)` for output shape `()`.

    **Returns:**

    An [`ErrorReport`][sciml_bridge.ErrorReport] (`rel_l2`, `max_abs`, `rms`, `prediction`,
    `reference`). A reference that is zero everywhere gives `rel_l2 = 0` for an exact
    prediction and `inf` otherwise (read `max_abs` or `rms` then).

    **Raises:**

    - `ValueError`: `points` without a leading axis of at least one point; `reference` does
        not have the prediction's shape (`(points,) + out`, where a trailing output axis of
        size 1 may be left out); a `reference` function that indexes out of bounds (checked
        with `jax.experimental.checkify` where JAX can trace it, so it is called twice; JAX
        would clamp the index).
    - `TypeError`: a complex `reference` for a real network; float64 NumPy `points` or
        `reference` while JAX's x64 mode is off.
    """
    guard_x64(points, "`sb.error_report`", "`points`")
    if not isinstance(points, jax.Array | np.ndarray):
        # A nested list is a pytree to `jax.vmap`: its leaves are Python floats (rank 0), and
        # the call failed with "vmap was requested to map its argument along axis 0".
        points = jnp.asarray(points)
    if np.ndim(points) == 0 or np.shape(points)[0] == 0:
        raise ValueError(_MSG_POINTS.format(shape=np.shape(points)))
    if not callable(reference):
        guard_x64(reference, "`sb.error_report`", "`reference`")
    prediction = np.asarray(jax.vmap(fm, in_axes=(None, 0))(theta, points))
    values = _reference_values(reference, points) if callable(reference) else reference
    values = _check_reference(np.asarray(values), prediction)
    err = prediction - values
    err_norm, ref_norm = _norm(err), _norm(values)
    if ref_norm == 0:
        rel_l2 = 0.0 if err_norm == 0 else float("inf")
    else:
        rel_l2 = err_norm / ref_norm
    return ErrorReport(
        rel_l2=rel_l2,
        max_abs=float(np.max(np.abs(err))),
        rms=err_norm / float(np.sqrt(err.size)),
        prediction=prediction,
        reference=values,
    )


def _norm(x: np.ndarray) -> float:
    """`||x||_2`, right at any magnitude: `sqrt(sum(x**2))` over- or underflows (in float32
    past ~1e19 and below ~1e-23), so scale by `max |x|` first, in float64."""
    a = np.abs(np.asarray(x)).astype(np.float64)
    m = float(np.max(a, initial=0.0))
    if m == 0 or not np.isfinite(m):
        return m  # 0, inf, or NaN: nothing to scale
    return m * float(np.sqrt(np.sum((a / m) ** 2)))


def _check_reference(values: np.ndarray, prediction: np.ndarray) -> np.ndarray:
    """`values` in the prediction's shape; refuses shapes whose meaning would be guessed."""
    if is_complex(values.dtype) and not is_complex(prediction.dtype):
        raise TypeError(_MSG_COMPLEX_REFERENCE.format(dtype=values.dtype,
                                                      out=prediction.dtype))
    squeezed = prediction.shape[:1] + tuple(d for d in prediction.shape[1:] if d != 1)
    unit = prediction.shape[:1] + (1,)
    accepted = {prediction.shape, squeezed}
    if prediction.shape == prediction.shape[:1]:
        accepted.add(unit)
    if values.shape not in accepted:
        raise ValueError(_MSG_REFERENCE.format(shape=prediction.shape, got=values.shape,
                                               squeezed=squeezed if squeezed
                                               != prediction.shape else unit))
    return values.reshape(prediction.shape)
