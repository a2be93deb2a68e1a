"""The `"gauss-newton"` / `"natural-gradient"` stepper: one step against a hand-written step,
stopping, solver forms and cutoff options."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import sciml_bridge as sb
from sciml_bridge._solvers._gauss_newton import GaussNewtonStepper


_X = jnp.linspace(0.0, 1.0, 16)


def exp_fit(theta, x):
    return theta[0] * jnp.exp(theta[1] * x) - 2.0 * jnp.exp(-x)


def test_one_step_equals_the_hand_written_engd_step():
    theta = jnp.array([1.0, 0.5])
    stepper = GaussNewtonStepper(exp_fit, "fwd", 1e-14, rcond=1e-7)
    new, loss, _ = jax.jit(lambda t: stepper.step(t, (_X,)))(theta)[:3]
    # By hand: numpy Jacobian, lstsq with a 1e-7 relative cutoff, best of 2^-k, k = 0..30.
    J = np.asarray(jax.jacfwd(exp_fit)(theta, _X))
    r = np.asarray(exp_fit(theta, _X))
    d = -np.linalg.lstsq(J, r, rcond=1e-7)[0]
    value = lambda t: 0.5 * float(np.sum(np.asarray(exp_fit(jnp.asarray(t), _X)) ** 2))
    trials = [(value(np.asarray(theta) + 0.5**k * d), k) for k in range(31)]
    best_k = min(trials)[1]
    np.testing.assert_allclose(np.asarray(new), np.asarray(theta) + 0.5**best_k * d, rtol=1e-12)
    np.testing.assert_allclose(float(loss), 0.5 * np.sum(r**2), rtol=1e-14)


def test_both_names_run_the_same_method_and_stop_at_an_exact_fit():
    kw = dict(args=(_X,), progress=False)
    gn = sb.least_squares(exp_fit, jnp.array([1.0, 0.0]), "gauss-newton", **kw)
    ng = sb.least_squares(exp_fit, jnp.array([1.0, 0.0]), "natural-gradient", **kw)
    for res in (gn, ng):
        assert res.success and res.steps < 30 and res.loss < 1e-20
        np.testing.assert_allclose(np.asarray(res.theta), [2.0, -1.0], rtol=1e-10)
    np.testing.assert_allclose(gn.history, ng.history, rtol=1e-12, atol=1e-30)


@pytest.mark.parametrize("options", [dict(solver="cg"), dict(solver="kernel"),
                                     dict(rcond=(1e-6, 1e-9)), dict(solver="svd", geodesic=True)])
def test_other_solver_forms_and_cutoff_sets_reach_the_same_fit(options):
    res = sb.least_squares(exp_fit, jnp.array([1.0, 0.0]), "natural-gradient", args=(_X,),
                           progress=False, **options)
    assert res.success and res.loss < 1e-20
    np.testing.assert_allclose(np.asarray(res.theta), [2.0, -1.0], rtol=1e-10)


def test_bad_option_values_say_what_is_accepted():
    with pytest.raises(ValueError, match="rcond"):
        sb.least_squares(exp_fit, jnp.zeros(2), "gauss-newton", args=(_X,), rcond=2.0,
                         progress=False)
    with pytest.raises(ValueError, match="geodesic=True"):
        sb.least_squares(exp_fit, jnp.zeros(2), "gauss-newton", args=(_X,), solver="cg",
                         geodesic=True, progress=False)


def test_a_residual_that_knows_its_jacobian_is_linearised_by_its_own_method():
    # `sb.least_squares` wraps every residual in an output check; the structured Jacobian of
    # an `sb.pinn` residual must still be found behind it (else: the black-box Jacobian, ~9x
    # the cost per step on a 2751-parameter PINN).
    A = jnp.array([[2.0, 0.0], [1.0, 1.0], [0.0, 3.0]])
    b = jnp.array([1.0, 2.0, 3.0])
    traced = []

    class Known:
        def __call__(self, theta):
            return A @ theta - b

        def residual_and_jacobian(self, theta):
            traced.append(True)
            return self(theta), A

    res = sb.least_squares(Known(), jnp.zeros(2), "natural-gradient", max_steps=3,
                           progress=False)
    assert traced
    np.testing.assert_allclose(np.asarray(res.theta), np.linalg.lstsq(A, b, rcond=None)[0],
                               rtol=1e-12)


def test_a_residual_that_knows_its_jacobian_gets_it_with_its_args():
    # A PINN residual that takes its collocation points as `args` (resampled between runs
    # without recompiling) keeps its structured Jacobian: it is called with the same args.
    b = jnp.array([1.0, 2.0, 3.0])
    seen = []

    class KnownWithArgs:
        def __call__(self, theta, A):
            return A @ theta - b

        def residual_and_jacobian(self, theta, A):
            seen.append(A.shape)
            return self(theta, A), A

    A = jnp.array([[2.0, 0.0], [1.0, 1.0], [0.0, 3.0]])
    res = sb.least_squares(KnownWithArgs(), jnp.zeros(2), "natural-gradient", args=(A,),
                           max_steps=3, progress=False)
    assert seen and all(shape == (3, 2) for shape in seen)  # traced with the args
    np.testing.assert_allclose(np.asarray(res.theta), np.linalg.lstsq(A, b, rcond=None)[0],
                               rtol=1e-12)


def test_a_residual_that_draws_its_points_from_a_key_keeps_its_own_jacobian():
    # `key=` resampling wraps the residual (the key rides in `args`); its own Jacobian must
    # still be found and called with the same key as the residual, else every step pays the
    # black-box Jacobian (8x on the Helmholtz PINN).
    b = jnp.array([1.0, 2.0, 3.0, 4.0])
    seen = []

    def design(key):  # rows drawn from the key: a different full-rank fit at every step
        return jnp.ones((4, 2)) + 0.1 * jax.random.normal(key, (4, 2))

    class Keyed:
        def __call__(self, theta, scale, *, key):
            return scale * (design(key) @ theta - b)

        def residual_and_jacobian(self, theta, scale, *, key):
            seen.append(scale)
            return self(theta, scale, key=key), scale * design(key)

    res = sb.least_squares(Keyed(), jnp.zeros(2), "natural-gradient", args=(2.0,),
                           key=jax.random.key(0), max_steps=3, progress=False, throw=False)
    assert seen and res.steps == 3  # traced with the args and the key; a new fit each step
    # The same run through the black-box Jacobian of the same keyed residual:
    plain = sb.least_squares(lambda t, s, *, key: Keyed()(t, s, key=key), jnp.zeros(2),
                             "natural-gradient", args=(2.0,), key=jax.random.key(0),
                             max_steps=3, progress=False, throw=False)
    np.testing.assert_allclose(np.asarray(res.theta), np.asarray(plain.theta), rtol=1e-10)

    class KeylessJacobian(Keyed):  # its Jacobian would not see the step's points: not used
        def residual_and_jacobian(self, theta, scale):
            raise AssertionError("called without the key")

    other = sb.least_squares(KeylessJacobian(), jnp.zeros(2), "natural-gradient", args=(2.0,),
                             key=jax.random.key(0), max_steps=3, progress=False, throw=False)
    np.testing.assert_allclose(np.asarray(other.theta), np.asarray(plain.theta), rtol=1e-10)


def _fine_directions_wrong(theta):
    # At theta = 0: J = diag(1, 1e-5), r = (-1, 1). The cutoff 1e-7 keeps theta[1]'s direction:
    # the step is 1e5 long there and its quadratic term raises the loss at every 2^-k,
    # k = 0..30, by more than theta[0] lowers it (at 2^-30: +7.7e-9 against -9.3e-10). The
    # fallback cutoff 1e-4 drops that direction, leaving the exact step theta[0] -> 1.
    return jnp.stack([theta[0] - 1.0, 1e-5 * theta[1] + theta[1] ** 2 + 1.0])


@pytest.mark.parametrize("members", [1, 2])
def test_coarse_cutoffs_take_the_step_when_no_fine_step_lowers_the_loss(members):
    theta0 = jnp.zeros(2) if members == 1 else jnp.array([[0.0, 0.0], [0.5, 0.0]])
    kw = dict(progress=False, throw=False)
    res = sb.least_squares(_fine_directions_wrong, theta0, "natural-gradient", **kw)
    for sol in res if members > 1 else [res]:
        # One full coarse step to (1, 0), loss 0.5 (all of it in r[1]); from there the only
        # descent is theta[1]'s 1e5-long step again, and the coarse direction is 0: a stall.
        np.testing.assert_allclose(np.asarray(sol.theta), [1.0, 0.0], atol=1e-15)
        assert sol.result is sb.RESULTS.stalled and sol.steps == 1, sol.message
        np.testing.assert_allclose(sol.loss, 0.5, rtol=1e-15)
    # Without the fallback the same run cannot move at all.
    fine_only = sb.least_squares(_fine_directions_wrong, jnp.zeros(2), "natural-gradient",
                                 fallback_rcond=(), **kw)
    assert fine_only.result is sb.RESULTS.stalled and fine_only.steps == 0
    np.testing.assert_array_equal(np.asarray(fine_only.theta), [0.0, 0.0])


def _two_regions(theta):
    # theta[1] <= 5: `_fine_directions_wrong` (the fine step fails at theta = 0). theta[1] > 5:
    # linear, J = diag(1, 1e-5), solved exactly by the fine cutoffs; the coarse 1e-4 would drop
    # theta[1]'s direction and stop at loss 8e-10 after one step.
    r1 = jnp.where(theta[1] > 5, 1e-5 * (theta[1] - 10.0), 1e-5 * theta[1] + theta[1] ** 2 + 1)
    return jnp.stack([theta[0] - 1.0, r1])


def test_in_an_ensemble_only_the_members_that_need_the_coarse_cutoffs_take_them():
    # At step 1 member 0 needs the fallback and member 1 does not: the branch runs for the
    # ensemble, and each member must still equal its single run (member 1 keeps its fine step).
    theta0 = jnp.array([[0.0, 0.0], [0.0, 6.0]])
    kw = dict(progress=False, throw=False)
    res = sb.least_squares(_two_regions, theta0, "natural-gradient", **kw)
    for i in range(2):
        single = sb.least_squares(_two_regions, theta0[i], "natural-gradient", **kw)
        np.testing.assert_allclose(np.asarray(res[i].theta), np.asarray(single.theta),
                                   rtol=1e-12, atol=1e-15)
        assert res[i].steps == single.steps and res[i].result == single.result
    np.testing.assert_allclose(np.asarray(res[1].theta), [1.0, 10.0], rtol=1e-12)
    assert res[0].result is sb.RESULTS.stalled and res[1].loss < 1e-20


def test_an_ensemble_that_needs_no_fallback_never_evaluates_it():
    # Under `vmap` a `cond` on a per-member predicate becomes a `select` that evaluates both
    # branches: the coarse line search would run at every step (1.6x the time of separate
    # runs on an 8-start Poisson ensemble). Count the residual's evaluations instead of timing.
    calls = []

    def counted(theta, x):
        jax.debug.callback(lambda: calls.append(1))
        return exp_fit(theta, x)

    thetas = jnp.array([[0.5, 0.5], [1.5, -0.5]])
    kw = dict(args=(_X,), max_steps=3, progress=False, throw=False)
    counts = []
    for fallback in ((), (1e-4, 1e-2)):
        calls.clear()
        res = sb.least_squares(counted, thetas, "natural-gradient", fallback_rcond=fallback, **kw)
        jax.block_until_ready(res.theta)
        assert all(m.steps == 3 for m in res)  # every fine step lowered the loss
        counts.append(len(calls))
    assert counts[0] > 0 and counts[1] == counts[0], counts


def test_fallback_cutoffs_are_checked_like_rcond():
    with pytest.raises(ValueError, match=r"(?s)`fallback_rcond` in \[0, 1\).*got \(1\.5,\)"):
        sb.least_squares(exp_fit, jnp.zeros(2), "gauss-newton", args=(_X,),
                         fallback_rcond=1.5, progress=False)


def test_a_null_truncated_step_is_a_stall_not_convergence():
    # Every cutoff removes the direction the residual lies along (singular value 1e-3 of
    # 1e6): the model predicts no decrease, which made the relative rule say "converged" at
    # theta0 with gradient 1e3. `numpy.linalg.lstsq` solves it exactly.
    J, y = jnp.diag(jnp.array([1e6, 1e-3])), jnp.array([0.0, 1e6])
    res = sb.least_squares(lambda t: J @ t - y, jnp.zeros(2), "gauss-newton", max_steps=5,
                           throw=False, progress=False)  # fmt: skip
    assert res.result is sb.RESULTS.stalled and not res.success
    assert "converged" not in res.message


def test_a_float64_residual_of_float32_parameters_trains_in_float32():
    # The float64 step broke the float32 carry (a raw while_loop TypeError).
    target = jnp.array([10.0, 1.0])  # float64
    residual = lambda t: t.astype(target.dtype) - target
    res = sb.least_squares(residual, jnp.zeros(2, jnp.float32), "gauss-newton", max_steps=5,
                           progress=False)  # fmt: skip
    assert res.success and res.theta.dtype == jnp.float32
    np.testing.assert_allclose(np.asarray(res.theta), np.asarray(target), rtol=1e-6)


@pytest.mark.parametrize("solver", ["gramian", "cg"])
def test_a_nan_jacobian_at_a_finite_residual_is_nonfinite(solver):
    # `sqrt` at 0: the residual is finite, its Jacobian not. It said "solver_failed" (dense)
    # or "stalled" (CGLS); the contract calls a NaN gradient at a finite loss non-finite.
    residual = lambda t: jnp.sqrt(t) - 1.0
    res = sb.least_squares(residual, jnp.array([0.0, 4.0]), "gauss-newton", solver=solver,
                           throw=False, progress=False)  # fmt: skip
    assert res.result is sb.RESULTS.nonfinite and res.steps == 0
    np.testing.assert_array_equal(np.asarray(res.theta), [0.0, 4.0])
