"""Every `sb.least_squares` backend uses a residual's own Jacobian (`residual_and_jacobian`).

Without it, Optimistix and SciPy differentiated the whole residual vector: on the Burgers PINN
of `benchmarks/pinn_accuracy.py` `"lm"` asked for a 30 GB buffer and failed at step 0.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import sciml_bridge as sb
from sciml_bridge._solvers._own_jacobian import with_own_jacobian


_X = np.linspace(0.0, 1.0, 16)
_Y = 2.0 * np.exp(-_X)


def _numpy_residual(theta):
    theta = np.asarray(theta)
    return theta[0] * np.exp(theta[1] * _X) - _Y


class Opaque:
    """`theta[0] exp(theta[1] x) - y` computed by NumPy: autodiff cannot see through it, so
    only its own Jacobian can linearise it."""

    def __call__(self, theta):
        out = jax.ShapeDtypeStruct(_X.shape, theta.dtype)
        return jax.pure_callback(_numpy_residual, out, theta, vmap_method="sequential")

    def residual_and_jacobian(self, theta):
        e = jnp.exp(theta[1] * _X)
        return self(theta), jnp.stack([e, theta[0] * _X * e], axis=1)


@pytest.mark.parametrize("method", ["gauss-newton", "lm", "dogleg", "scipy:trf", "scipy:lm"])
def test_every_backend_linearises_the_residual_by_its_own_jacobian(method):
    res = sb.least_squares(Opaque(), jnp.array([1.0, 0.0]), method, max_steps=100,
                           tol=1e-12, progress=False)
    np.testing.assert_allclose(np.asarray(res.theta), [2.0, -1.0], rtol=1e-9)


def test_a_pinn_residual_differentiates_through_its_own_jacobian_in_both_modes():
    fm = sb.FlatMLP((1, 6, 1), key=jax.random.key(0), dtype=jnp.float64)
    problem = sb.pinn(fm, {
        "pde": (lambda u, x: -u.laplacian(x) - jnp.sin(x), jnp.linspace(0.1, 0.9, 7)[:, None]),
        "bc": (lambda u, x: u(x), jnp.array([[0.0], [1.0]])),
    })  # fmt: skip
    wrapped, theta = with_own_jacobian(problem.residual), fm.theta0
    ref = jax.jacfwd(problem.residual)(theta)
    for jac in (jax.jacfwd, jax.jacrev):
        np.testing.assert_allclose(np.asarray(jax.jit(jac(wrapped))(theta)), np.asarray(ref),
                                   rtol=1e-12, atol=1e-13)
    np.testing.assert_allclose(np.asarray(wrapped(theta)), np.asarray(problem.residual(theta)),
                               rtol=1e-14, atol=1e-15)
