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
