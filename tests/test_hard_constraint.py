"""`sb.HardConstraint`: the product-rule derivatives against autodiff of the composed field,
exact boundary values, and a PINN trained through it."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import sciml_bridge as sb


def _box(x):  # zero on the edges of [-1, 1]^2
    return (1 - x[0] ** 2) * (1 - x[1] ** 2)


def _lift(x):  # boundary values sin(x) + y, extended inside
    return jnp.sin(x[0]) + x[1]


_NET = sb.FlatMLP((2, 8, 8, "scalar"), key=jax.random.key(0), dtype=jnp.float64)
_POINTS = jax.random.uniform(jax.random.key(1), (6, 2), jnp.float64, -1.0, 1.0)


def _models():
    vector = sb.FlatMLP((2, 8, 1), key=jax.random.key(2), dtype=jnp.float64)
    generic = lambda theta, x: jnp.tanh(theta[:2] @ x + theta[2]) * theta[3]  # not a FlatMLP
    return [
        (sb.HardConstraint(_NET, _box, _lift), _NET.theta0),
        (sb.HardConstraint(vector, _box), vector.theta0),
        (sb.HardConstraint(generic, _box, _lift), jnp.array([0.7, -1.2, 0.3, 2.0])),
    ]


@pytest.mark.parametrize("index", [0, 1, 2], ids=["flat-mlp+lift", "vector-output", "generic"])
def test_derivatives_match_autodiff_of_the_composed_field(index):
    u, theta = _models()[index]
    lift = (lambda x: 0.0) if u.lift is None else _lift
    composed = lambda x: lift(x) + _box(x) * u.model(theta, x)
    # Every point at once (`jax.vmap`: one trace per quantity, not one per point).
    each = lambda f: jax.vmap(f)(_POINTS)
    np.testing.assert_allclose(each(lambda x: u(theta, x)), each(composed), rtol=1e-14)
    np.testing.assert_allclose(each(lambda x: sb.grad_x(u)(theta, x)), each(jax.jacfwd(composed)),
                               rtol=1e-12, atol=1e-14)
    hessian = each(jax.hessian(composed))
    lap = jnp.trace(hessian, axis1=-2, axis2=-1)
    one_by_one = each(lambda x: sb.laplacian(u)(theta, x))
    np.testing.assert_allclose(one_by_one, lap, rtol=1e-12, atol=1e-13)
    np.testing.assert_allclose(each(sb.Field(u, theta).hessian), hessian, rtol=1e-12, atol=1e-13)
    batched = sb.laplacian(u, batched=True)(theta, _POINTS)
    np.testing.assert_allclose(batched, one_by_one, rtol=1e-14, atol=1e-15)


def test_the_boundary_values_hold_for_every_theta():
    u = sb.HardConstraint(_NET, _box, _lift)
    side = jnp.linspace(-1.0, 1.0, 9)
    edges = jnp.concatenate([jnp.stack([side, jnp.full(9, s)], 1) for s in (-1.0, 1.0)]
                            + [jnp.stack([jnp.full(9, s), side], 1) for s in (-1.0, 1.0)])
    on_edges = jax.jit(jax.vmap(u, in_axes=(None, 0)))
    first = on_edges(jnp.zeros(_NET.size), edges)
    np.testing.assert_allclose(first, jax.vmap(_lift)(edges), rtol=1e-15, atol=1e-15)
    for seed in range(3):  # the distance is exactly 0 there: theta cannot change a bit
        theta = jax.random.normal(jax.random.key(seed), (_NET.size,), jnp.float64)
        np.testing.assert_array_equal(on_edges(theta, edges), first)


def test_a_pinn_through_it_needs_no_boundary_term_and_trains_to_the_exact_solution():
    # -u'' = pi^2 sin(pi x) on [0, 1], u(0) = u(1) = 0: exact sin(pi x).
    net = sb.FlatMLP((1, 16, "scalar"), key=jax.random.key(3), dtype=jnp.float64)
    u = sb.HardConstraint(net, lambda x: x[0] * (1 - x[0]))
    x = jnp.linspace(0.0, 1.0, 64)[:, None]
    pde = lambda u, x: -u.laplacian(x) - jnp.pi**2 * jnp.sin(jnp.pi * x[0])
    problem = sb.pinn(u, {"pde": (pde, x)})
    # The per-point Jacobian sb.pinn builds goes through the product rule too.
    r, J = problem.residual.residual_and_jacobian(u.theta0)
    np.testing.assert_allclose(J, jax.jacfwd(problem.residual)(u.theta0), rtol=1e-10,
                               atol=1e-12)
    # Converges in 17-31 steps (with and without the test suite's XLA flags).
    res = sb.least_squares(problem.residual, u.theta0, "natural-gradient", max_steps=100,
                           progress=False, throw=False)
    assert res.success, res.message
    test = jnp.linspace(0.0, 1.0, 101)[:, None]
    report = sb.error_report(u, res.theta, test, lambda x: jnp.sin(jnp.pi * x[..., 0]))
    assert report.rel_l2 < 1e-6, report.rel_l2


def test_bad_inputs_say_what_was_expected():
    with pytest.raises(TypeError, match="expected a flat model"):
        sb.HardConstraint(_NET, 1.0)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"(?s)`distance\(x\)` to return a scalar.*\(2,\)"):
        sb.HardConstraint(_NET, lambda x: 1 - x**2)(_NET.theta0, jnp.zeros(2))
    with pytest.raises(AttributeError, match="has none. Fix: pass your own initial"):
        _ = sb.HardConstraint(lambda theta, x: theta[0] * x[0], _box).theta0
    assert sb.HardConstraint(_NET, _box).size == _NET.size == _NET.theta0.size
    with pytest.raises(ValueError, match=r"one point `x` of shape \(d,\)"):
        sb.laplacian(sb.HardConstraint(_NET, _box))(_NET.theta0, jnp.zeros((3, 2)))
    # A batch passed as a point is named as such, not blamed on `distance`.
    with pytest.raises(ValueError, match=r"one point `x` of shape \(d,\), but got shape \(3, 2\)"):
        sb.HardConstraint(_NET, _box)(_NET.theta0, jnp.zeros((3, 2)))


def test_a_lift_of_the_wrong_shape_is_refused_not_broadcast():
    # (3,) + the scalar network's () would silently give every point three outputs.
    wide = sb.HardConstraint(_NET, _box, lambda x: jnp.ones(3) * x[0])
    x = _POINTS[0]
    with pytest.raises(ValueError, match=r"(?s)output shape \(\).*got shape \(3,\).*to \(3,\)"):
        wide(_NET.theta0, x)
    with pytest.raises(ValueError, match=r"(?s)output shape \(\).*got shape \(3,\)"):
        sb.laplacian(wide)(_NET.theta0, x)
    # A scalar lift for a one-output network broadcasts without changing the shape: allowed.
    vector = sb.FlatMLP((2, 8, 1), key=jax.random.key(2), dtype=jnp.float64)
    u = sb.HardConstraint(vector, _box, _lift)
    assert u(vector.theta0, x).shape == (1,)
    np.testing.assert_allclose(u(vector.theta0, x), _lift(x) + _box(x) * vector(vector.theta0, x),
                               rtol=1e-14)


def test_a_float32_or_integer_point_is_differentiated_in_the_networks_dtype():
    # The distance and lift were differentiated in the dtype of `x`: a float32 point with
    # float64 weights gave a float64 Laplacian 1.4e-9 off (value 2.2e-9), where the bare network
    # is exact; an integer point raised "jacfwd requires real-valued inputs".
    u = sb.HardConstraint(_NET, _box, _lift)
    theta = _NET.theta0
    x32, xi = jnp.array([0.3, -0.4], jnp.float32), jnp.array([0, 1])
    composed = lambda x: _lift(x) + _box(x) * _NET(theta, x)

    @jax.jit
    def run(theta, x):
        return u(theta, x), sb.grad_x(u)(theta, x), sb.laplacian(u)(theta, x)

    reference = jax.jit(lambda x: (composed(x), jax.jacfwd(composed)(x),
                                   jnp.trace(jax.hessian(composed)(x))))
    for x in (x32, xi):
        for got, want in zip(run(theta, x), reference(x.astype(jnp.float64))):
            assert got.dtype == jnp.float64
            np.testing.assert_allclose(got, want, rtol=1e-13, atol=1e-15)
