"""The formulations `benchmarks/pinn_accuracy.py` measures, checked against autodiff."""

import jax
import jax.numpy as jnp
import numpy as np

import sciml_bridge as sb
from sciml_bridge import _cli


bench = _cli.load_script("benchmarks/pinn_accuracy.py", command="bench")


def test_the_hard_boundary_helmholtz_residual_is_the_pde_of_the_constrained_field():
    # The product rule in `_helmholtz_hard_pde` against the trace of `jax.hessian` of
    # u = (1 - x^2)(1 - y^2) N, on a 5 x 5 grid (edges included), each residual / sqrt(25).
    model, problem, theta0, _, exact = bench.helmholtz_hard(0, n_points=5)
    theta = theta0 + 0.1 * jax.random.normal(jax.random.key(1), theta0.shape, jnp.float64)
    x = bench._grid(-1, 1, 5)
    u = lambda p: model(theta, p)[0]
    lap = jax.vmap(lambda p: jnp.trace(jax.hessian(u)(p)))(x)
    k, a1, a2 = bench.K, bench.A1, bench.A2
    q = (k**2 - (a1 * jnp.pi) ** 2 - (a2 * jnp.pi) ** 2) * exact(x)
    expected = (lap + k**2 * jax.vmap(u)(x) - q) / 5
    np.testing.assert_allclose(problem.residual(theta), expected, rtol=1e-12, atol=1e-11)
    edges = bench._square_boundary(-1.0, 1.0, 7)
    assert bool(jnp.all(jax.vmap(u)(edges) == 0))


def test_sb_hard_constraint_gives_the_benchmarks_hand_written_residual_and_jacobian():
    # The measured row writes the product rule by hand; `sb.HardConstraint` is the library's
    # form of the same field, with the plain Helmholtz residual.
    model, problem, theta0, _, exact = bench.helmholtz_hard(0, n_points=5)
    theta = theta0 + 0.1 * jax.random.normal(jax.random.key(1), theta0.shape, jnp.float64)
    u = sb.HardConstraint(model.fm, bench._edge_factor)
    k, a1, a2 = bench.K, bench.A1, bench.A2
    q = lambda x: (k**2 - (a1 * jnp.pi) ** 2 - (a2 * jnp.pi) ** 2) * exact(x)
    pde = lambda u, x: u.laplacian(x)[0] + k**2 * u(x)[0] - q(x)
    library = sb.pinn(u, {"pde": (pde, bench._grid(-1, 1, 5))})
    r, J = library.residual.residual_and_jacobian(theta)
    r0, J0 = problem.residual.residual_and_jacobian(theta)
    np.testing.assert_allclose(r, r0, rtol=1e-12, atol=1e-11)
    np.testing.assert_allclose(J, J0, rtol=1e-10, atol=1e-11)


def test_the_table_spells_runs_of_seeds_as_ranges_and_keeps_gaps():
    # The seeds column must still say exactly which seeds a median is over.
    row = dict(problem="poisson", method="natural-gradient", params=129, rel_l2=1e-7,
               steps=300, cpu=3.0, wall=None)
    rows = [dict(row, seed=s) for s in (0, 1, 2, 3, 4, 7, 9, 10)]
    assert "| natural-gradient | 0-4,7,9,10 |" in bench.table(rows)
