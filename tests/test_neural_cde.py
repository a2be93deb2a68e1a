"""`sb.NeuralCDE`: against closed forms of linear CDEs driven by interpolated data, gradients
against central differences, and the shape checks."""

import diffrax
import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import sciml_bridge as sb


TIGHT = diffrax.PIDController(rtol=1e-10, atol=1e-10)
TS = jnp.linspace(0.0, 1.0, 11)
# Two channels, both linear in t, so the cubic Hermite interpolation is exact: X(t) = (t, 2t).
XS = jnp.stack([TS, 2.0 * TS], axis=1)
COEFFS = diffrax.backward_hermite_coefficients(TS, XS)


def _linear(theta, z):
    # dz = diag(z) [a b] dX: z' = z (a + 2 b), so z(t) = z0 exp((a + 2 b) t).
    return z[:, None] * theta[None, :]


def test_linear_cde_matches_closed_form():
    cde = sb.NeuralCDE(_linear, stepsize_controller=TIGHT)
    theta = jnp.array([0.3, -0.4])
    zs = cde(theta, jnp.array([1.0, 2.0]), TS, COEFFS)
    expected = jnp.array([1.0, 2.0])[None, :] * jnp.exp(-0.5 * TS)[:, None]
    assert zs.shape == (11, 2) and np.allclose(zs, expected, rtol=1e-8)


def test_gradient_matches_central_differences_with_a_flat_mlp():
    fm = sb.FlatMLP((3, 8, 6), activation="softplus", final_activation="tanh",
                    key=jax.random.key(0), dtype=jnp.float64)  # fmt: skip
    xs = jnp.stack([TS, jnp.sin(3 * TS)], axis=1)
    coeffs = diffrax.backward_hermite_coefficients(TS, xs)
    cde = sb.NeuralCDE(lambda theta, z: fm(theta, z).reshape(3, 2), stepsize_controller=TIGHT,
                       saveat=diffrax.SaveAt(t1=True))  # fmt: skip
    loss = jax.jit(lambda theta: jnp.sum(cde(theta, jnp.ones(3), TS, coeffs) ** 2))
    grad = jax.grad(loss)(fm.theta0)
    e = jnp.zeros_like(fm.theta0).at[5].set(1e-6)
    fd = (loss(fm.theta0 + e) - loss(fm.theta0 - e)) / 2e-6
    assert np.isclose(grad[5], fd, rtol=1e-6, atol=1e-10)
    assert np.isfinite(grad).all() and np.abs(grad).max() > 0


@pytest.mark.parametrize("span", [1e-4, 0.01])
def test_two_knots_over_a_short_span_match_the_closed_form(span):
    # With a jump at `t1` Diffrax reached `t1` in one step, never saved there and said
    # success: `sb.NeuralCDE` returned `[inf, inf]` at `t1` under `throw=True`.
    ts = jnp.array([0.0, span])
    coeffs = diffrax.backward_hermite_coefficients(ts, jnp.stack([ts, 2.0 * ts], axis=1))
    theta = jnp.array([0.3, -0.4])
    zs = sb.NeuralCDE(_linear, stepsize_controller=TIGHT)(theta, jnp.array([1.0, 2.0]), ts,
                                                          coeffs)  # fmt: skip
    expected = jnp.array([1.0, 2.0])[None, :] * jnp.exp(-0.5 * ts)[:, None]
    np.testing.assert_allclose(np.asarray(zs), np.asarray(expected), rtol=1e-12)


def test_field_and_coeffs_of_the_wrong_shape_are_clear_errors():
    cde = sb.NeuralCDE(lambda theta, z: theta[0] * z)
    with pytest.raises(ValueError, match=r"float64\[2, 2\].*returned float64\[2\]"):
        cde(jnp.ones(2), jnp.ones(2), TS, COEFFS)
    with pytest.raises(ValueError, match="backward_hermite_coefficients"):
        sb.NeuralCDE(_linear)(jnp.ones(2), jnp.ones(2), TS[:-1], COEFFS)
    # A dict was iterated over its keys: JAX's raw "Value 'a' with dtype <U1 is not a valid".
    with pytest.raises(TypeError, match=r"expected `coeffs` from.*but got a dict"):
        sb.NeuralCDE(_linear)(jnp.ones(2), jnp.ones(2), TS, dict(enumerate(COEFFS)))


def test_failed_solve_saved_at_t1_is_non_finite():
    # z' = a z^2 (z0 = 1, X = (t, 2t)) blows up at t = 1; plain Diffrax returns the finite state
    # at the failure time as if it were z(t1).
    ts = jnp.linspace(0.0, 2.0, 5)
    coeffs = diffrax.backward_hermite_coefficients(ts, jnp.stack([ts, 2.0 * ts], axis=1))
    field = lambda theta, z: theta[0] * jnp.outer(z**2, jnp.array([1.0, 0.0]))
    raw = diffrax.diffeqsolve(
        diffrax.ControlTerm(lambda t, z, a: field(a, z), diffrax.CubicInterpolation(ts, coeffs))
        .to_ode(), diffrax.Tsit5(), 0.0, 2.0, None, jnp.ones(1), args=jnp.ones(1),
        saveat=diffrax.SaveAt(t1=True), stepsize_controller=diffrax.PIDController(rtol=1e-6,
        atol=1e-6), max_steps=64, throw=False)  # fmt: skip
    assert not diffrax.is_okay(raw.result) and np.isfinite(raw.ys).all()
    cde = sb.NeuralCDE(field, saveat=diffrax.SaveAt(t1=True), max_steps=64, throw=False)
    loss = lambda theta: jnp.sum(cde(theta, jnp.ones(1), ts, coeffs))
    value, grad = jax.value_and_grad(loss)(jnp.ones(1))
    assert np.isinf(value) and np.isnan(grad).all()


def test_implicit_adjoint_is_refused():
    # No steady state to differentiate: the implicit-function-theorem gradient was 7x off.
    with pytest.raises(ValueError, match="RecursiveCheckpointAdjoint"):
        sb.NeuralCDE(_linear, adjoint=diffrax.ImplicitAdjoint())


def test_a_saveat_that_saves_no_values_is_refused():
    # `SaveAt(dense=True)` alone made the call return `None` without a word.
    with pytest.raises(ValueError, match="saves no values"):
        sb.NeuralCDE(sb.FlatMLP((2, 4, 2), key=jax.random.key(0)),
                     saveat=diffrax.SaveAt(dense=True))  # fmt: skip


def test_coeffs_of_other_times_are_refused_not_solved():
    # `X(t)` built from `coeffs` of `TS` but knots at `2 TS` jumps at every knot: the call gave
    # a finite, wrong path (z1 = 1.29 for 1.58 on a small CDE), reversed `(a, b, c, d)` 27.7.
    cde = sb.NeuralCDE(_linear)
    theta, z0 = jnp.array([0.3, -0.4]), jnp.array([1.0, 2.0])
    for ts, coeffs in [(2.0 * TS, COEFFS), (TS, COEFFS[::-1])]:
        with pytest.raises(eqx.EquinoxRuntimeError, match="`coeffs` do not fit `ts`"):
            cde(theta, z0, ts, coeffs).block_until_ready()
    assert np.isnan(sb.NeuralCDE(_linear, throw=False)(theta, z0, 2.0 * TS, COEFFS)[1:]).all()
    # Float64 coefficients of late float64 times, both cast to float32: the knots' own rounding
    # (2e-3 of a step near 1e4) is not a mismatch.
    late = 1e4 + jnp.linspace(0.0, 50.0, 60)
    coeffs = diffrax.backward_hermite_coefficients(late, jnp.stack([jnp.sin(late)] * 2, axis=1))
    f32 = lambda x: jax.tree.map(lambda a: a.astype(jnp.float32), x)
    zs = sb.NeuralCDE(_linear)(f32(theta), f32(z0), f32(late), f32(coeffs))
    assert np.isfinite(zs).all()
