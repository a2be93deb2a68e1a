"""`sb.pinn`'s residual vector and its per-point Jacobian at their edges: complex residuals,
residual functions that return the wrong kind of value, and terms or points that would lose or
poison part of the loss without a word."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import sciml_bridge as sb


_NET = sb.FlatMLP((2, 5, "scalar"), key=jax.random.key(0), dtype=jnp.float64)
_X = sb.collocation_points((0.0, 0.0), (1.0, 1.0), 3, dtype=jnp.float64)  # 9 points


def test_a_complex_residual_is_its_real_and_imaginary_parts():
    # `0.5 * sum(r * r)` of the complex vector was a complex "loss", and the reverse-mode
    # Jacobian of a complex residual of a real theta kept only its real part (0.67 off).
    wave_fn = lambda u, x: jax.lax.complex(u(x) - x[0], 2.0 * u(x))  # (1 + 2i) u - x0
    problem = sb.pinn(_NET, {"wave": (wave_fn, _X),
                             "bc": (lambda u, x: u(x), _X[:2])})  # fmt: skip
    theta = _NET.theta0

    @jax.jit
    def run(theta):
        r = problem.residual(theta)
        return (r, problem.loss(theta), problem.term_losses(theta),
                problem.residual.residual_and_jacobian(theta), jax.jacfwd(problem.residual)(theta))

    r, loss, parts, (r_own, J), J_fwd = run(theta)
    u = jax.vmap(lambda x: _NET(theta, x))(_X)
    wave = ((1.0 + 2.0j) * np.asarray(u) - np.asarray(_X[:, 0])) / np.sqrt(9)
    want = np.concatenate([np.stack([wave.real, wave.imag], axis=1).ravel(), u[:2] / np.sqrt(2)])
    assert r.dtype == jnp.float64 and r.shape == (20,)
    np.testing.assert_allclose(r, want, rtol=1e-14, atol=1e-16)
    assert loss.dtype == jnp.float64
    np.testing.assert_allclose(parts["wave"], 0.5 * np.sum(np.abs(wave) ** 2), rtol=1e-14)
    np.testing.assert_allclose(loss, sum(parts.values()), rtol=1e-14)
    np.testing.assert_allclose(r_own, r, rtol=1e-14, atol=1e-16)  # vjp forward vs vmap
    assert J.shape == J_fwd.shape == (20, _NET.size) and J.dtype == jnp.float64
    np.testing.assert_allclose(J, J_fwd, rtol=1e-12, atol=1e-15)


def test_a_complex_network_trains_through_a_real_loss():
    # A complex model's PINN loss was complex: `sb.minimize` refused it.
    fm = sb.FlatMLP((1, 4, "scalar"), key=jax.random.key(1), dtype=jnp.complex128)
    x = jnp.linspace(0.0, 1.0, 5)[:, None]
    problem = sb.pinn(fm, {"fit": (lambda u, x: u(x) - jax.lax.complex(x[0], 1.0), x)})
    theta = fm.theta0
    loss = problem.loss(theta)
    u = jax.vmap(lambda x: fm(theta, x))(x)
    assert loss.dtype == jnp.float64
    want = 0.5 * np.mean(np.abs(np.asarray(u) - (1j + np.asarray(x[:, 0]))) ** 2)
    np.testing.assert_allclose(loss, want, rtol=1e-14)


@pytest.mark.parametrize(
    "fn, match",
    [
        (lambda u, x: (u(x), u(x)), r"(?s)returned a tuple.*jnp.concatenate"),
        (lambda u, x: u(x) > 0, r"(?s)returned an array of dtype bool.*no derivative"),
        (lambda u, x: jnp.round(u(x)).astype(jnp.int32), "dtype int32"),
    ],
    ids=["tuple", "bool", "int"],
)
def test_a_residual_that_is_not_one_floating_array_is_a_type_error(fn, match):
    # A tuple raised "'tuple' object has no attribute 'reshape'"; a boolean gave a constant
    # residual (zero gradient) without a word.
    problem = sb.pinn(_NET, {"pde": (fn, _X)})
    for call in (problem.residual, problem.residual.residual_and_jacobian):
        with pytest.raises(TypeError, match=r"`sb.pinn` term 'pde': expected `residual_fn"):
            call(_NET.theta0)
        with pytest.raises(TypeError, match=match):
            call(_NET.theta0)


def test_terms_whose_names_are_equal_as_strings_are_refused():
    # {0: ..., "0": ...} became one term "0": 9 residuals instead of 18.
    fn = lambda u, x: u(x)
    with pytest.raises(ValueError, match=r"(?s)distinct term names, but '0', 0 name.*one term"):
        sb.pinn(_NET, {0: (fn, _X), "0": (fn, _X)})


def test_a_model_that_is_not_callable_is_a_type_error_at_build_time():
    with pytest.raises(TypeError, match=r"(?s)`sb.pinn\(fm, terms\)` expected a flat model.*Array"):
        sb.pinn(_NET.theta0, {"pde": (lambda u, x: u(x), _X)})


def test_non_finite_points_or_data_are_refused_by_row():
    fn = lambda u, x: u(x)
    with pytest.raises(ValueError, match=r"(?s)term 'pde': expected finite `points`, but 1 of "
                                         r"its 9 rows.*row 4"):
        sb.pinn(_NET, {"pde": (fn, _X.at[4, 1].set(jnp.inf))})
    y = np.ones(9)
    y[[2, 7]] = np.nan
    with pytest.raises(ValueError, match=r"(?s)term 'data'.*2 of its 9 rows.*row 2"):
        sb.pinn(_NET, {"data": (lambda u, x, y: u(x) - y, (_X, y))})
    # Under a transform the points are tracers: nothing to check, nothing refused.
    loss = jax.jit(lambda x, t: sb.pinn(_NET, {"pde": (fn, x)}).loss(t))(_X, _NET.theta0)
    np.testing.assert_allclose(loss, sb.pinn(_NET, {"pde": (fn, _X)}).loss(_NET.theta0),
                               rtol=1e-14)


def test_weights_that_are_not_a_mapping_are_a_type_error():
    # A list raised "cannot convert dictionary update sequence element #0 to a sequence".
    with pytest.raises(TypeError, match=r"(?s)`weights` to map term names \(names among"):
        sb.pinn(_NET, {"pde": (lambda u, x: u(x), _X)}, weights=[2.0])  # type: ignore[arg-type]
