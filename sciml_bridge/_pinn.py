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
"""

from collections.abc import Callable, Mapping, Sequence
from typing import Any, NamedTuple

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, PyTree

from ._custom_types import LossScalar, Theta, Validated
from ._laplacian import grad_x, laplacian
from ._precision import guard_x64, is_complex


_MSG_TERMS = """\
`sb.pinn(fm, terms)` expected `terms` to be a non-empty mapping `{{name: (residual_fn, points)}}`
(or a sequence of `(residual_fn, points)` pairs) where `residual_fn(u, x)` gives the residual at
one point and `points` has a leading axis of points, but got {got}.
Example: `sb.pinn(fm, {{"pde": (pde, x_interior), "bc": (lambda u, x: u(x), x_boundary)}})`."""

_MSG_POINTS = """\
`sb.pinn` term {name!r}: expected `points` whose array leaves all share one non-zero leading
axis (the points), but got leaf shapes {shapes}.
Fix: pass a `(points, dim)` array such as the output of `sb.collocation_points`."""

_MSG_WEIGHTS = """\
`sb.pinn` expected `weights` to map term names (names among {names}) to finite, non-negative
floats, but got {got!r}. Terms left out of `weights` weigh 1."""


class Field(eqx.Module):
    """The network `x -> fm(theta, x)` at fixed `theta`, with its input derivatives.

    Residual functions given to `sb.pinn` receive one as their first argument. Shapes follow
    `fm`: for `fm(theta, x)` of shape `out`, `u.grad(x)` has shape `out + x.shape`,
    `u.laplacian(x)` has shape `out`, and `u.hessian(x)` has shape `out + x.shape + x.shape`.

    !!! example

        ```python
        def pde(u, x):           # -u'' = f  ->  residual -u'' - f
            return -u.laplacian(x) - f(x)
        ```

    **Attributes:** `model` (the flat model) and `theta` (its parameters, held fixed).
    """

    model: Callable[..., Any]
    theta: Theta

    def __call__(self, x: Array) -> Array:
        return self.model(self.theta, x)

    def grad(self, x: Array) -> Array:
        """Jacobian of the output with respect to `x` (`sb.grad_x`)."""
        return grad_x(self.model)(self.theta, x)

    def laplacian(self, x: Array) -> Array:
        """Sum of the second derivatives over all input axes (`sb.laplacian`)."""
        return laplacian(self.model)(self.theta, x)

    def hessian(self, x: Array) -> Array:
        """All second input derivatives (forward mode over `sb.grad_x`), for mixed operators."""
        return jax.jacfwd(lambda y: grad_x(self.model)(self.theta, y))(x)

    def second_derivative(self, x: Array, axis: int | tuple[int, ...]) -> Array:
        """`d^2 u / dx_axis^2` alone (shape of `u(x)`), by forward over forward mode.

        Cheaper than `hessian(x)[..., axis, axis]` when one axis needs it (the `u_xx` of a
        space-time problem): two directional derivatives instead of the full Hessian. `axis`
        indexes the entries of `x`: an int for a 1-D `x`, `0` (or `-1`) for a scalar `x`, a
        tuple of `x.ndim` ints otherwise.
        """
        x = jnp.asarray(x)
        e = jnp.zeros_like(x).at[_entry(x.shape, axis)].set(1)
        first = lambda y: jax.jvp(lambda z: self.model(self.theta, z), (y,), (e,))[1]
        return jax.jvp(first, (x,), (e,))[1]


_MSG_AXIS = """\
`u.second_derivative(x, axis)` expected `axis` to pick one entry of `x` (shape {shape}): {want},
but got {axis!r}. Fix: e.g. `u.second_derivative(x, 0)`."""


def _entry(shape: tuple[int, ...], axis: Any) -> tuple[int, ...]:
    """`axis` as an index of one entry of an `x` of `shape`; JAX would drop an out-of-range
    `.at[...]` update without a word (and a zero direction gives a zero derivative)."""
    want = ("an int in [-1, 0] for a scalar `x`" if not shape else
            f"an int in [-{shape[0]}, {shape[0] - 1}]" if len(shape) == 1 else
            f"a tuple of {len(shape)} ints within the shape")  # fmt: skip
    index = (axis,) if isinstance(axis, int | np.integer) else axis
    ok = isinstance(index, tuple) and all(
        isinstance(i, int | np.integer) and not isinstance(i, bool) for i in index
    )
    if ok and not shape:
        ok = len(index) == 1 and index[0] in (0, -1)
        index = ()
    elif ok:
        ok = len(index) == len(shape) and all(-n <= i < n for i, n in zip(index, shape))
    if not ok:
        raise ValueError(_MSG_AXIS.format(shape=shape, want=want, axis=axis))
    return tuple(int(i) for i in index)


class PINN(NamedTuple):
    """A PINN problem in the two forms solvers want, made by `sb.pinn`.

    - `residual(theta)`: the 1-D vector of all scaled residuals, for `sb.least_squares`.
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
    fm: Callable[..., Any],
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

    - `ValueError`: empty or malformed `terms`, points without a common leading axis, unknown
        names or negative or non-finite values in `weights`.
    - `TypeError`: float64 NumPy points while JAX's x64 mode is off (JAX would truncate them).
    """
    named = _named_terms(terms)
    scales = _scales(named, weights)

    def term_residuals(theta: Theta) -> dict[str, Array]:
        u = Field(fm, theta)
        return {
            name: scales[name] * _evaluate(fn, u, points).reshape(-1)
            for name, (fn, points) in named.items()
        }

    residual = PointwiseResidual(fm, named, scales)

    def loss(theta: Theta) -> LossScalar:
        r = residual(theta)
        return 0.5 * jnp.sum(r * r)

    def term_losses(theta: Theta) -> dict[str, Array]:
        return {name: 0.5 * jnp.sum(r * r) for name, r in term_residuals(theta).items()}

    return PINN(residual, loss, term_losses)


class PointwiseResidual:
    """`residual(theta)`, the concatenated scaled residuals of a PINN, and its Jacobian.

    A PINN residual is a stack of small per-point functions of `theta`, and that is what makes
    its Jacobian cheap: `residual_and_jacobian` differentiates each point's residual (a few
    outputs) in reverse mode over its own forward pass (for `sb.FlatMLP`, the forward-Laplacian
    pass), vmapped over points. Differentiating the concatenated vector as a black box costs a
    full pass over all points per parameter (`jax.jacfwd`) or per residual (`jax.jacrev`):
    measured 317 ms and 3.7 s against 0.7 ms on the 2-D Poisson problem of issue 14 (129
    parameters, 1020 points). `sb.least_squares` uses it when present.
    """

    def __init__(self, fm: Callable[..., Any], named: dict, scales: dict):
        self._fm, self._named, self._scales = fm, named, scales

    def __call__(self, theta: Theta) -> Array:
        u = Field(self._fm, theta)
        parts = [
            self._scales[name] * _evaluate(fn, u, points).reshape(-1)
            for name, (fn, points) in self._named.items()
        ]
        return jnp.concatenate(parts)

    def residual_and_jacobian(self, theta: Theta) -> tuple[Array, Array]:
        """`(r, J)`: the residual vector and its `(residuals, parameters)` Jacobian."""
        pairs = [
            _term_jacobian(self._fm, fn, points, self._scales[name], theta)
            for name, (fn, points) in self._named.items()
        ]
        r = jnp.concatenate([p[0] for p in pairs])
        return r, jnp.concatenate([p[1] for p in pairs])


def _term_jacobian(fm, fn: Callable, points, scale: float, theta: Theta):
    def at_point(row):
        call = (lambda u: fn(u, *row)) if isinstance(points, tuple) else (lambda u: fn(u, row))
        g = lambda t: scale * jnp.ravel(call(Field(fm, t)))
        k = jax.eval_shape(g, theta).size
        if k <= theta.size:  # the cheaper mode by shape, per point: reverse for few outputs
            out, pullback = jax.vjp(g, theta)
            return out, jax.vmap(lambda e: pullback(e)[0])(jnp.eye(k, dtype=out.dtype))
        out, lin = jax.linearize(g, theta)
        return out, jax.vmap(lin, out_axes=1)(jnp.eye(theta.size, dtype=theta.dtype))

    r, J = jax.vmap(at_point)(points)
    return r.reshape(-1), J.reshape(-1, theta.size)


def _evaluate(fn: Callable, u: Field, points: PyTree[Array]) -> Array:
    if isinstance(points, tuple):
        return jax.vmap(lambda row: fn(u, *row))(points)
    return jax.vmap(lambda x: fn(u, x))(points)


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
    for name, (_, points) in items:
        guard_x64(points, "`sb.pinn`", f"points of term {name!r}")
        _count(name, points)
    return {str(name): (fn, points) for name, (fn, points) in items}


def _count(name: str, points: PyTree[Array]) -> int:
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
    weights = dict(weights or {})
    if not all(_weight_ok(k, w, named) for k, w in weights.items()):
        raise ValueError(_MSG_WEIGHTS.format(names=list(named), got=weights))
    # Python floats: weak-typed, so the residual keeps the dtype of theta under strict promotion.
    return {
        name: float(np.sqrt(float(weights.get(name, 1.0)) / _count(name, points)))
        for name, (_, points) in named.items()
    }


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

_MSG_COMPLEX_REFERENCE = """\
`sb.error_report` got a complex `reference` (dtype {dtype}) for a network with real output
({out}): its imaginary part would be dropped without a word.
Fix: compare real parts explicitly (`reference.real`), or use a complex-valued network."""


def error_report(
    fm: Callable[..., Any],
    theta: Theta,
    points: Array,
    reference: Array | np.ndarray | Callable[[Array], Any],
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
    - `points`: a `(points, dim)` array; `fm` is evaluated at each row.
    - `reference`: the reference values at `points`, or a function taking the whole `points`
        array (vectorised NumPy or JAX) and returning them, of shape `(points,) + out` (`out`
        the network's output shape); `(points,)` is accepted for output shape `(1,)` and
        `(points, 1)` for output shape `()`.

    **Returns:**

    An [`ErrorReport`][sciml_bridge.ErrorReport] (`rel_l2`, `max_abs`, `rms`, `prediction`,
    `reference`). A reference that is zero everywhere gives `rel_l2 = 0` for an exact
    prediction and `inf` otherwise (read `max_abs` or `rms` then).

    **Raises:**

    - `ValueError`: `reference` does not have the prediction's shape (`(points,) + out`,
        where a trailing output axis of size 1 may be left out).
    - `TypeError`: a complex `reference` for a real network; float64 NumPy `points` or
        `reference` while JAX's x64 mode is off.
    """
    guard_x64(points, "`sb.error_report`", "`points`")
    if not callable(reference):
        guard_x64(reference, "`sb.error_report`", "`reference`")
    prediction = np.asarray(jax.vmap(fm, in_axes=(None, 0))(theta, points))
    values = reference(points) if callable(reference) else reference
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
