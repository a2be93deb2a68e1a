"""Physics-informed losses from a FlatModel: one residual vector, two kinds of solver.

A PINN problem is a list of terms `(residual_fn, points)`: the PDE in the interior, the
boundary and initial conditions on their faces, data if any. `sb.pinn` evaluates each term at
its points, scales it, and concatenates everything into one residual vector `r(theta)`, whose
squared norm is the usual weighted mean-squared PINN loss. The same problem then runs with a
first-order method (`sb.minimize(problem.loss, ...)`) or with a second-order least-squares method
(`sb.least_squares(problem.residual, ...)`): switching is a one-word edit.

Residual functions see the network through a `Field`: `u(x)`, `u.grad(x)`, `u.laplacian(x)`,
`u.hessian(x)`, `u.second_derivative(x, axis)`, computed by `sb.grad_x` / `sb.laplacian` (a
forward-Laplacian pass on the fast path). Nothing here knows about a particular PDE.

This module is the builder (terms and weights checked once, here); the residual and its
per-point Jacobian live in `_pinn_residual.py`, the `Field` in `_pinn_field.py`, and
`sb.error_report` in `_pinn_error_report.py` (re-exported here).
"""

from collections.abc import Callable, Mapping, Sequence
from typing import Any, NamedTuple

import jax
import jax.core
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, ArrayLike, PyTree

from ._custom_types import LossScalar, Theta, Validated
from ._pinn_error_report import ErrorReport as ErrorReport, error_report as error_report
from ._pinn_field import Field as Field
from ._pinn_residual import PointwiseResidual as PointwiseResidual
from ._precision import guard_x64, is_inexact


_MSG_TERMS = """\
`sb.pinn(fm, terms)` expected `terms` to be a non-empty mapping `{{name: (residual_fn, points)}}`
(or a sequence of `(residual_fn, points)` pairs) where `residual_fn(u, x)` gives the residual at
one point and `points` has a leading axis of points, but got {got}.
Example: `sb.pinn(fm, {{"pde": (pde, x_interior), "bc": (lambda u, x: u(x), x_boundary)}})`."""

_MSG_POINTS = """\
`sb.pinn` term {name!r}: expected `points` whose array leaves all share one non-zero leading
axis (the points), but got leaf shapes {shapes}.
Fix: pass a `(points, dim)` array such as the output of `sb.collocation_points`. A list is a
pytree whose items are leaves, not an array: a nested list of numbers is `jnp.asarray(points)`."""

_MSG_MODEL = """\
`sb.pinn(fm, terms)` expected a flat model `fm(theta, x)` (an `sb.FlatMLP`, `sb.flat(...)`,
`sb.HardConstraint` or any such function), but got a {kind}.
Fix: pass the model first and the terms second: `sb.pinn(fm, {{"pde": (pde, x_interior)}})`."""

_MSG_NAMES = """\
`sb.pinn` expected distinct term names, but {names} name more than one term once made strings
(`term_losses` and `weights` key terms by `str(name)`), so one term would be lost.
Fix: give every term its own string name."""

_MSG_FINITE = """\
`sb.pinn` term {name!r}: expected finite `points`, but {bad} of its {n} rows hold NaN or inf
(the first is row {first}): every residual there would be NaN, and so would the loss.
Fix: drop or repair those rows (e.g. `points[jnp.all(jnp.isfinite(points), axis=1)]`)."""

_MSG_WEIGHTS = """\
`sb.pinn` expected `weights` to map term names (names among {names}) to finite, non-negative
floats, but got {got!r}. Terms left out of `weights` weigh 1."""


class PINN(NamedTuple):
    """A PINN problem in the two forms solvers want, made by `sb.pinn`.

    - `residual(theta)`: the real 1-D vector of all scaled residuals (a complex residual as its
        real and imaginary parts), for `sb.least_squares`.
    - `loss(theta)`: `0.5 * sum(residual(theta) ** 2)`, for `sb.minimize`. This is the objective
        `sb.least_squares` reports, so losses of both verbs compare directly; it is half the
        weighted mean-squared residual.
    - `term_losses(theta)`: a dict with each term's share of `loss(theta)` (they add up to it),
        for logging.

    !!! example

        ```python
        fm = sb.FlatMLP((1, 4, "scalar"), key=jax.random.key(0))
        x = jnp.linspace(0.0, 1.0, 5)[:, None]
        problem = sb.pinn(fm, {"fit": (lambda u, x: u(x) - x[0], x)})
        r = problem.residual(fm.theta0)            # shape (5,)
        assert jnp.allclose(problem.loss(fm.theta0), 0.5 * jnp.sum(r**2))
        ```
    """

    residual: Callable[[Theta], Array]
    loss: Callable[[Theta], LossScalar]
    term_losses: Callable[[Theta], dict[str, Array]]


def pinn(
    fm: Validated[Callable[..., Any]],
    terms: Validated[
        Mapping[str, tuple[Callable, PyTree[Array]]] | Sequence[tuple[Callable, PyTree[Array]]]
    ],
    *,
    weights: Validated[Mapping[str, float] | None] = None,
) -> PINN:
    """Build the residual and loss of a physics-informed network.

    Each term is `(residual_fn, points)`. `residual_fn(u, x)` returns the residual (any shape)
    at one point `x`, where `u` is a [`Field`][sciml_bridge.Field]; `points` has a leading axis
    of points (a
    `(points, dim)` array, or a tuple of such arrays if a term needs data per point, which
    `residual_fn(u, *row)` then receives). A term with `P` points and weight `w` contributes
    `sqrt(w / P) * r` to the residual vector, so `loss = 0.5 * sum_k w_k * mean_p |r_k(x_p)|**2`.
    The residual vector is real: a complex `r` (a complex PDE or network) enters as its real
    and imaginary parts, two entries per value, so the loss is still `|r|**2`.

    !!! example

        ```python
        import jax, jax.numpy as jnp, sciml_bridge as sb
        fm = sb.FlatMLP((1, 16, 1), key=jax.random.key(0), dtype=jnp.float64)
        x_in = sb.collocation_points(-1.0, 1.0, 32, dtype=jnp.float64)
        x_bc = sb.collocation_points(-1.0, 1.0, 2, where="boundary", dtype=jnp.float64)
        f = lambda x: jnp.pi**2 * jnp.sin(jnp.pi * x)
        problem = sb.pinn(fm, {
            "pde": (lambda u, x: -u.laplacian(x) - f(x), x_in),
            "bc": (lambda u, x: u(x), x_bc),
        })
        problem.residual(fm.theta0).shape   # (34,)
        ```

    **Arguments:**

    - `fm`: the network `fm(theta, x)` on one unbatched `x`: an `sb.FlatMLP`, `sb.flat(...)`,
        or any such function.
    - `terms`: a mapping `{name: (residual_fn, points)}`, or a sequence of pairs (named
        `"term0"`, `"term1"`, ...).
    - `weights`: optional `{name: weight}`; missing names weigh 1.

    **Returns:**

    A [`PINN`][sciml_bridge.PINN] with `residual`, `loss` and `term_losses`, plain pure
    functions of `theta`.

    **Raises:**

    - `ValueError`: empty or malformed `terms`, two names equal as strings, points without a
        common leading axis or with NaN/inf entries, unknown names or negative or non-finite
        values in `weights`.
    - `TypeError`: `fm` not callable or `weights` not a mapping; float64 NumPy points while
        JAX's x64 mode is off (JAX would truncate them); when `residual` is first traced, a
        `residual_fn` that returns something other than one floating or complex array (a
        tuple, a boolean).
    """
    if not callable(fm):
        raise TypeError(_MSG_MODEL.format(kind=type(fm).__name__))
    named = _named_terms(terms)
    scales = _scales(named, weights)
    residual = PointwiseResidual(fm, named, scales)

    def loss(theta: Theta) -> LossScalar:
        r = residual(theta)
        return 0.5 * jnp.sum(r * r)

    def term_losses(theta: Theta) -> dict[str, Array]:
        return {name: 0.5 * jnp.sum(r * r) for name, r in residual.terms(theta).items()}

    return PINN(residual, loss, term_losses)


def _named_terms(terms) -> dict[str, tuple[Callable, Any]]:
    if isinstance(terms, Mapping):
        items = list(terms.items())
    elif isinstance(terms, Sequence) and not isinstance(terms, str):
        items = [(f"term{i}", term) for i, term in enumerate(terms)]
    else:
        raise ValueError(_MSG_TERMS.format(got=type(terms).__name__))
    ok = items and all(
        isinstance(t, tuple) and len(t) == 2 and callable(t[0]) for _, t in items
    )
    if not ok:
        raise ValueError(_MSG_TERMS.format(got=repr(terms)[:200]))
    names = [str(name) for name, _ in items]
    if len(set(names)) != len(names):
        twice = sorted({repr(k) for k, _ in items if names.count(str(k)) > 1})
        raise ValueError(_MSG_NAMES.format(names=", ".join(twice)))
    for name, (_, points) in items:
        guard_x64(points, "`sb.pinn`", f"points of term {name!r}")
        _check_finite(name, points, _count(name, points))
    return {str(name): (fn, points) for name, (fn, points) in items}


def _check_finite(name: str, points: PyTree[ArrayLike], n: int) -> None:
    """NaN or inf points make the whole loss NaN, and the optimiser would blame the loss; the
    points are concrete here (unless `sb.pinn` runs under a transform), so check them once."""
    bad = np.zeros(n, dtype=bool)
    for leaf in jax.tree_util.tree_leaves(points):
        if isinstance(leaf, jax.core.Tracer) or (
                isinstance(leaf, jax.Array) and not leaf.is_fully_addressable):  # fmt: skip
            continue  # traced, or another process holds part of it
        values = np.asarray(leaf)
        if is_inexact(values.dtype):
            bad |= ~np.isfinite(values).reshape(n, -1).all(axis=1)
    if bad.any():
        first = int(np.flatnonzero(bad)[0])
        raise ValueError(_MSG_FINITE.format(name=name, bad=int(bad.sum()), n=n, first=first))


def _count(name: str, points: PyTree[ArrayLike]) -> int:
    leaves = jax.tree_util.tree_leaves(points)
    shapes = [np.shape(leaf) for leaf in leaves]
    if not shapes or any(len(s) == 0 for s in shapes) or len({s[0] for s in shapes}) != 1:
        raise ValueError(_MSG_POINTS.format(name=name, shapes=shapes))
    if shapes[0][0] == 0:
        raise ValueError(_MSG_POINTS.format(name=name, shapes=shapes))
    return shapes[0][0]


def _weight_ok(name, weight, named: dict) -> bool | np.bool_:
    try:
        value = float(weight)
    except (TypeError, ValueError):
        return False
    return name in named and np.isfinite(value) and value >= 0


def _scales(named: dict, weights: Validated[Mapping[str, float] | None]) -> dict[str, float]:
    if weights is not None and not isinstance(weights, Mapping):
        # `dict(weights)` raised "cannot convert dictionary update sequence element" for a list.
        raise TypeError(_MSG_WEIGHTS.format(names=list(named), got=weights))
    weights = dict(weights or {})
    if not all(_weight_ok(k, w, named) for k, w in weights.items()):
        raise ValueError(_MSG_WEIGHTS.format(names=list(named), got=weights))
    # Python floats: weak-typed, so the residual keeps the dtype of theta under strict promotion.
    return {
        name: float(np.sqrt(float(weights.get(name, 1.0)) / _count(name, points)))
        for name, (_, points) in named.items()
    }
