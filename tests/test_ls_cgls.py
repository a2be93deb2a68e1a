"""CGLS (`solver="cg"`) on a rank-deficient Jacobian whose residual is mostly unfittable."""

import jax.numpy as jnp
import numpy as np

import sciml_bridge as sb


def test_cgls_on_a_rank_deficient_residual_dominated_by_its_unfittable_part_in_float32():
    # 40 x 8 of rank 3, columns scaled 1..1e2, the unfittable part 1e3x the fittable one. A
    # CGLS that measured its rounding stop against `|J d|` iterated on the rounding noise of
    # `J^T r` along the null space (`|d|` ~ 3e7): the line search refused the step and the run
    # said "converged after 0 steps" at `theta0`.
    rng = np.random.default_rng(3)
    J = rng.standard_normal((40, 3)) @ rng.standard_normal((3, 8)) * np.logspace(0, 2, 8)
    Q = np.linalg.svd(J, full_matrices=False)[0][:, :3]
    rest = rng.standard_normal(40)
    rest -= Q @ (Q.T @ rest)
    fit = J @ rng.standard_normal(8)
    b = fit + rest * 1e3 * np.linalg.norm(fit) / np.linalg.norm(rest)
    best = 0.5 * np.sum((J @ np.linalg.lstsq(J, b, rcond=None)[0] - b) ** 2)
    A, y = jnp.asarray(J, jnp.float32), jnp.asarray(b, jnp.float32)
    res = sb.least_squares(lambda t: A @ t - y, jnp.zeros(8, jnp.float32), solver="cg",
                           max_steps=20, progress=False, throw=False)  # fmt: skip
    theta = np.asarray(res.theta, np.float64)
    assert res.steps >= 1 and np.abs(theta).max() < 10
    assert 0.5 * np.sum((J @ theta - b) ** 2) <= best * (1 + 1e-5)
