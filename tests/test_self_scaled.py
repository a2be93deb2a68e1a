"""`"ssbfgs"` / `"ssbroyden"`: the update formulas, the strong-Wolfe search, convergence."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import sciml_bridge as sb
from sciml_bridge._solvers._self_scaled import self_scaled_update
from sciml_bridge._solvers._wolfe import strong_wolfe


def rosenbrock(t):
    return jnp.sum(100.0 * (t[1:] - t[:-1] ** 2) ** 2 + (1 - t[:-1]) ** 2)


def _pair(seed=0, n=6):
    rng = np.random.default_rng(seed)
    M = rng.normal(size=(n, n))
    H = M @ M.T + n * np.eye(n)
    s, g = rng.normal(size=n), rng.normal(size=n)
    y = (M.T @ M + np.eye(n)) @ s  # y^T s > 0, as a Wolfe step guarantees
    return H, s, y, g


def _ssbfgs_by_hand(H, s, y, g, alpha, first):
    """The SSBFGS update of Urban et al. (2025), written out with NumPy."""
    ys, Hy = y @ s, H @ y
    yHy = y @ Hy
    b = -alpha * (s @ g) / ys
    tau = yHy / ys if first else min(1.0, 1.0 / b)
    v = np.sqrt(yHy) * (s / ys - Hy / yHy)
    return (H - np.outer(Hy, Hy) / yHy + np.outer(v, v)) / tau + np.outer(s, s) / ys


@pytest.mark.parametrize("first", [True, False])
def test_ssbfgs_update_matches_the_formula_written_by_hand(first):
    H, s, y, g = _pair()
    g = -np.linalg.solve(H, s) / 0.5  # s = alpha * p with p = -H g, alpha = 0.5
    new = self_scaled_update(*map(jnp.asarray, (H, s, y, g)), jnp.asarray(0.5),
                             jnp.asarray(first), "ssbfgs")
    np.testing.assert_allclose(np.asarray(new), _ssbfgs_by_hand(H, s, y, g, 0.5, first),
                               rtol=1e-12)


@pytest.mark.parametrize("kind", ["ssbfgs", "ssbroyden"])
def test_updates_satisfy_the_secant_equation_and_stay_positive_definite(kind):
    for seed in range(4):
        H, s, y, g = _pair(seed)
        g = -np.linalg.solve(H, s)
        new = np.asarray(self_scaled_update(*map(jnp.asarray, (H, s, y, g)), jnp.asarray(1.0),
                                            jnp.asarray(False), kind))
        np.testing.assert_allclose(new @ y, s, rtol=1e-10)  # H_{k+1} y = s
        np.testing.assert_allclose(new, new.T, rtol=1e-14)
        assert np.linalg.eigvalsh(new).min() > 0


def test_update_is_skipped_without_positive_curvature():
    H, s, y, g = _pair()
    new = self_scaled_update(*map(jnp.asarray, (H, s, -y, g)), jnp.asarray(1.0),
                             jnp.asarray(False), "ssbroyden")
    np.testing.assert_array_equal(np.asarray(new), H)


@pytest.mark.parametrize("kind", ["ssbfgs", "ssbroyden"])
def test_update_keeps_a_symmetric_matrix_exactly_symmetric(kind):
    # The update has no symmetrising pass: entry (i, j) is computed from the same numbers as
    # (j, i), so symmetry holds to the bit, step after step.
    H, s, y, g = _pair(1, n=9)
    H = (H + H.T) / 2
    update = jax.jit(lambda H, s, y, g: self_scaled_update(H, s, y, g, jnp.asarray(0.7),
                                                          jnp.asarray(False), kind))
    H = jnp.asarray(H)
    for k in range(5):
        s_k, y_k = np.roll(s, k), np.roll(y, k)
        H = update(H, jnp.asarray(s_k), jnp.asarray(y_k), jnp.asarray(g))
        np.testing.assert_array_equal(np.asarray(H), np.asarray(H).T)


def test_update_is_skipped_when_not_applied_or_when_it_would_overflow():
    H, s, y, g = map(jnp.asarray, _pair())
    one, no = jnp.asarray(1.0), jnp.asarray(False)
    same = self_scaled_update(H, s, y, g, one, no, "ssbroyden", apply=jnp.asarray(False))
    np.testing.assert_array_equal(np.asarray(same), np.asarray(H))
    # (H y)(H y)^T overflows although y^T s > 0 and every input is finite.
    big = 1e300 * jnp.eye(H.shape[0])
    huge = self_scaled_update(big, s, y, g, one, no, "ssbfgs")
    np.testing.assert_array_equal(np.asarray(huge), np.asarray(big))


def test_strong_wolfe_conditions_hold_at_the_returned_step():
    f = lambda t: jnp.sum(t**4) + jnp.sum((t - 1.0) ** 2)
    theta = jnp.array([2.0, -3.0])
    f0, g0 = jax.value_and_grad(f)(theta)
    p = -g0
    c1, c2 = 1e-4, 0.9
    run = jax.jit(lambda a0: strong_wolfe(lambda a: jax.value_and_grad(f)(theta + a * p),
                                          f0, g0, p, a0, c1=c1, c2=c2))
    for alpha0 in (1e-4, 1.0, 10.0):  # too short (expands), too long (zooms)
        alpha, fa, ga, found = run(jnp.asarray(alpha0))
        assert bool(found)
        assert float(fa) <= float(f0 + c1 * alpha * (g0 @ p))
        assert abs(float(ga @ p)) <= -c2 * float(g0 @ p)
        np.testing.assert_allclose(float(fa), float(f(theta + alpha * p)), rtol=1e-14)


@pytest.mark.parametrize("method", ["ssbfgs", "ssbroyden"])
def test_reaches_the_rosenbrock_minimum_to_1e_10(method):
    x0 = jnp.array([-1.2, 1.0, -1.2, 1.0, 0.5])
    res = sb.minimize(rosenbrock, x0, method, max_steps=300, tol=1e-12, progress=False)
    assert res.success
    np.testing.assert_allclose(np.asarray(res.theta), np.ones(5), atol=1e-10)
    assert res.theta.dtype == jnp.float64


def test_self_scaling_beats_plain_bfgs_in_steps_on_an_ill_conditioned_quadratic():
    n = 20
    Q, _ = jnp.linalg.qr(jax.random.normal(jax.random.key(1), (n, n)))
    A = (Q * jnp.logspace(0, 6, n)) @ Q.T  # condition number 1e6
    quad = lambda t: 0.5 * t @ A @ t
    steps = {}
    for method in ("bfgs", "ssbfgs", "ssbroyden"):
        res = sb.minimize(quad, jnp.ones(n), method, max_steps=1000, tol=1e-8, progress=False)
        assert res.success and res.loss < 1e-12, (method, res.loss)
        steps[method] = res.steps
    assert steps["ssbfgs"] < steps["bfgs"] / 2, steps
    assert steps["ssbroyden"] < steps["bfgs"] / 2, steps


@pytest.mark.parametrize("method", ["ssbfgs", "ssbroyden"])
def test_one_parameter(method):
    # SSBroyden's scaling raised ZeroDivisionError for n = 1 (sigma ** (1 / (1 - n))).
    loss = lambda t: jnp.sum((t - 3.0) ** 4 + (t - 3.0) ** 2)
    res = sb.minimize(loss, jnp.array([0.5]), method, tol=1e-12, progress=False)
    assert res.success
    np.testing.assert_allclose(np.asarray(res.theta), [3.0], rtol=0, atol=1e-9)


@pytest.mark.parametrize("method", ["ssbfgs", "ssbroyden"])
def test_a_nan_gradient_at_a_finite_loss_is_nonfinite_not_a_stall(method):
    loss = lambda t: jnp.sum(jnp.sqrt(jnp.abs(t)))  # NaN gradient at t[0] = 0, loss 1
    res = sb.minimize(loss, jnp.array([0.0, 1.0]), method, throw=False, progress=False)
    assert res.result is sb.RESULTS.nonfinite and res.steps == 0, res.message
    np.testing.assert_array_equal(np.asarray(res.theta), [0.0, 1.0])
    with pytest.raises(sb.OptimizationError):
        sb.minimize(loss, jnp.array([0.0, 1.0]), method, progress=False)
