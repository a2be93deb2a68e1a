"""A loss JAX cannot differentiate: gradient methods say so and name the derivative-free ones.

JAX's own words ("Pure callbacks do not support JVP") came from deep inside the first traced
step, with nothing pointing at `method="scipy:Nelder-Mead"`, which runs such a loss.
"""

import jax
import jax.numpy as jnp
import numpy as np
import optimistix as optx
import pytest

import sciml_bridge as sb


def _host(theta):
    return np.asarray(np.sum((np.asarray(theta) - 1.0) ** 2), np.float64)


def _callback_loss(theta, vmap_method="sequential"):  # a host function without a JVP rule
    out = jax.ShapeDtypeStruct((), jnp.float64)
    return jax.pure_callback(_host, out, theta, vmap_method=vmap_method)


@pytest.mark.parametrize("method", ["adam", "bfgs", "scipy:L-BFGS-B"])
def test_gradient_method_on_a_loss_without_derivative(method):
    match = r"(?s)needs the gradient of `loss`.*support JVP.*Fix: a derivative-free.*Nelder"
    with pytest.raises(TypeError, match=match) as err:
        sb.minimize(_callback_loss, jnp.zeros(3), method, max_steps=2, progress=False)
    assert f"method={method!r}" in str(err.value)
    assert "Pure callbacks" in str(err.value.__cause__)


@pytest.mark.parametrize("method", ["gauss-newton", "lm", "scipy:trf"])
def test_least_squares_on_a_residual_without_derivative_points_to_minimize(method):
    host = lambda t: np.asarray(t) - 1.0
    residual = lambda t: jax.pure_callback(host, jax.ShapeDtypeStruct((3,), jnp.float64), t,
                                           vmap_method="sequential")  # fmt: skip
    match = (r"(?s)needs the Jacobian of `residual`.*support JVP.*Fix: minimise the sum of "
             r"squares.*sb.minimize.*scipy:Nelder-Mead")
    with pytest.raises(TypeError, match=match) as err:
        sb.least_squares(residual, jnp.zeros(3), method, max_steps=2, progress=False)
    assert "Pure callbacks" in str(err.value.__cause__)


def test_derivative_free_method_runs_it_and_other_trace_errors_stay_jax_s():
    # The methods the message names run the same loss (SciPy's: an ensemble, one by one).
    res = sb.minimize(_callback_loss, jnp.zeros((2, 2)), "scipy:Nelder-Mead", max_steps=400,
                      progress=False)  # fmt: skip
    np.testing.assert_allclose(np.asarray(res.theta), 1.0, atol=1e-3)
    res = sb.minimize(_callback_loss, jnp.zeros(2), optx.NelderMead(rtol=1e-8, atol=1e-8),
                      max_steps=400, progress=False)  # fmt: skip
    np.testing.assert_allclose(np.asarray(res.theta), 1.0, atol=1e-3)
    # A loss that does not even trace is not called "not differentiable".
    with pytest.raises(TypeError, match="dot_general") as err:
        sb.minimize(lambda t: jnp.sum(t @ jnp.ones(5)), jnp.zeros(3), "adam", max_steps=2,
                    progress=False)  # fmt: skip
    assert "derivative-free" not in str(err.value)
    # Nor a callback that cannot be vmapped (`vmap_method=None`), which Nelder-Mead's simplex
    # needs: its gradient fails too, but with another error.
    with pytest.raises(NotImplementedError, match="vmap_method") as err:
        sb.minimize(lambda t: _callback_loss(t, None), jnp.zeros(2), optx.NelderMead(1e-8, 1e-8),
                    max_steps=2, progress=False)  # fmt: skip
    assert "derivative-free" not in str(err.value)


@jax.custom_vjp
def _reverse_only(theta):  # as Diffrax's default adjoint: no forward mode
    return jnp.sum((theta - 1.0) ** 2) + jnp.sum(theta**4)


def _reverse_only_fwd(theta):
    return _reverse_only(theta), theta


def _reverse_only_bwd(theta, ct):
    return (ct * (2 * (theta - 1.0) + 4 * theta**3),)


_reverse_only.defvjp(_reverse_only_fwd, _reverse_only_bwd)


def test_dense_hessian_of_a_loss_without_forward_mode():
    # `jax.hessian` (forward over reverse) raised "can't apply forward-mode autodiff (jvp) to
    # a custom_vjp function" out of "scipy:trust-exact"/"scipy:dogleg".
    x = np.array([0.0, 1.0, 2.0])
    hess = sb.scipy_objective(_reverse_only).hess(x)
    np.testing.assert_allclose(hess, np.diag(2.0 + 12.0 * x**2), rtol=1e-15)
    res = sb.minimize(_reverse_only, jnp.zeros(2), "scipy:trust-exact", tol=1e-12,
                      progress=False)  # fmt: skip
    root = np.roots([4.0, 0.0, 2.0, -2.0])  # the gradient's real root: 4 t^3 + 2 t - 2 = 0
    expected = root[np.abs(root.imag) < 1e-12].real
    assert res.success
    np.testing.assert_allclose(np.asarray(res.theta), np.repeat(expected, 2), rtol=1e-10)


def test_a_residual_only_reverse_mode_cannot_take_keeps_jax_s_words():
    # A `lax.while_loop` (Diffrax's `ForwardMode()` solve) has a forward derivative: "dogleg"
    # needs reverse mode, and was told the residual cannot be differentiated at all.
    def residual(t):
        body = lambda c: (c[0] + 1, 0.5 * c[1] + t)
        return jax.lax.while_loop(lambda c: c[0] < 3, body, (0, jnp.zeros_like(t)))[1] - 1.0

    with pytest.raises(ValueError, match="Reverse-mode differentiation does not work"):
        sb.least_squares(residual, jnp.zeros(2), "dogleg", max_steps=2, progress=False)
