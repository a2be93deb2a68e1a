"""Front-door inputs of `sb.minimize` / `sb.least_squares` that ran silently wrong or failed
deep inside a backend (probe wave 5): each is now a clear error, refused before compiling."""

import jax.numpy as jnp
import numpy as np
import optax
import optimistix as optx
import pytest

import sciml_bridge as sb


_SQ = lambda t: jnp.sum((t - 1.0) ** 2)
_QUIET = dict(max_steps=3, progress=False)


@pytest.mark.parametrize("method", ["adam", "sgd"])
def test_learning_rate_none_is_refused_not_gradient_ascent(method):
    # optax.scale_by_learning_rate(None) is the identity: the raw update was added, so the loss
    # climbed (2 -> 68 in 5 Adam steps) while the run said success=True.
    with pytest.raises(TypeError, match=r"(?s)`learning_rate=None` for method=.*goes up.*Fix"):
        sb.minimize(_SQ, jnp.zeros(2), method, learning_rate=None, **_QUIET)


def test_learning_rate_none_is_lbfgs_own_default():
    res = sb.minimize(_SQ, jnp.zeros(2), "lbfgs", learning_rate=None, **_QUIET)
    assert res.loss < 2.0


@pytest.mark.parametrize(
    ("lr", "error"),
    [("0.1", TypeError), (True, TypeError), (0.1j, TypeError), (jnp.ones(2), TypeError),
     (-0.1, ValueError), (float("inf"), ValueError), (float("nan"), ValueError),
     (np.float64(-1.0), ValueError)],
)  # fmt: skip
def test_learning_rate_of_the_wrong_kind_or_sign_is_refused(lr, error):
    # A string failed inside Optax ("Only integer scalar arrays can be converted to a scalar
    # index"); True ran as 1.0; a negative rate climbed the loss with success=True.
    match = r"(?s)`sb.minimize` expected `learning_rate` to be a finite real number >= 0.*Fix"
    with pytest.raises(error, match=match):
        sb.minimize(_SQ, jnp.zeros(2), "adam", learning_rate=lr, **_QUIET)


def test_learning_rate_as_a_schedule_or_an_array_still_runs():
    a = sb.minimize(_SQ, jnp.zeros(2), "sgd", learning_rate=jnp.asarray(0.1), **_QUIET)
    b = sb.minimize(_SQ, jnp.zeros(2), "sgd", learning_rate=optax.constant_schedule(0.1),
                    **_QUIET)  # fmt: skip
    assert a.loss == pytest.approx(b.loss, rel=1e-12) and a.loss < 2.0


@pytest.mark.parametrize(
    ("method", "near"),
    [("Adam", r'"adam"; names are case-sensitive'), ("ssbfsg", '"ssbfgs"')],
)
def test_an_unknown_method_names_the_nearest_and_every_method_of_ours(method, near):
    match = rf'(?s)did you mean {near}\?.*"ssbfgs", "ssbroyden"'
    with pytest.raises(ValueError, match=match):
        sb.minimize(_SQ, jnp.zeros(2), method, **_QUIET)


def test_an_unknown_least_squares_method_names_the_nearest_and_a_wrong_kind_is_a_type_error():
    with pytest.raises(ValueError, match='Did you mean "gauss-newton"'):
        sb.least_squares(lambda t: t - 1.0, jnp.zeros(2), "gaus-newton", **_QUIET)
    with pytest.raises(TypeError, match="expected `method` to be a string.*got int"):
        sb.least_squares(lambda t: t - 1.0, jnp.zeros(2), 3, **_QUIET)


@pytest.mark.parametrize("shape", [(0,), (2, 0)])
def test_a_theta0_without_parameters_is_a_value_error(shape):
    # Ran "successfully": Adam reported 5 steps at loss 0 on zero parameters.
    with pytest.raises(ValueError, match=rf"(?s)shape \({shape[0]},.*no parameters.*Fix"):
        sb.minimize(_SQ, jnp.zeros(shape), **_QUIET)
    with pytest.raises(ValueError, match="no parameters"):
        sb.least_squares(lambda t: t - 1.0, jnp.zeros(shape), **_QUIET)


@pytest.mark.parametrize("method", ["adam", "bfgs", "scipy:BFGS"])
def test_an_infinite_tol_is_a_value_error(method):
    # Adam said "converged" after one step at the start, SciPy after none, and Optimistix's
    # BFGS ran out its budget: every point meets tol=inf.
    with pytest.raises(ValueError, match="positive finite number, but got inf"):
        sb.minimize(_SQ, jnp.zeros(2), method, tol=float("inf"), **_QUIET)
    with pytest.raises(ValueError, match="positive finite number, but got inf"):
        sb.least_squares(lambda t: t - 1.0, jnp.zeros(2), tol=np.inf, **_QUIET)


@pytest.mark.parametrize("method", ["gauss-newton", "scipy:trf"])
def test_an_empty_residual_is_a_value_error(method):
    # Failed inside the backend: "zero-size array to reduction operation max".
    with pytest.raises(ValueError, match=r"(?s)at least one residual.*shape \(0,\)"):
        sb.least_squares(lambda t: t[:0], jnp.zeros(2), method, **_QUIET)


def test_checkpoint_every_without_a_checkpoint_file_is_a_value_error():
    # Was ignored: the run went on and saved nothing.
    with pytest.raises(ValueError, match=r"(?s)`checkpoint_every=2` without `checkpoint=`.*Fix"):
        sb.minimize(_SQ, jnp.zeros(2), checkpoint_every=2, **_QUIET)
    with pytest.raises(ValueError, match="without `checkpoint=`"):
        sb.least_squares(lambda t: t - 1.0, jnp.zeros(2), checkpoint_every=2, **_QUIET)


def test_tol_with_an_optimistix_solver_object_is_refused_not_ignored():
    # `tol=1e-12` was ignored: the run said "converged" at the object's rtol = atol = 1e-2.
    with pytest.raises(ValueError, match=r"(?s)`tol=1e-12` with the Optimistix solver object "
                                         r"BFGS.*\(0.01/0.01\).*Fix"):
        sb.minimize(_SQ, jnp.zeros(2), optx.BFGS(rtol=1e-2, atol=1e-2), tol=1e-12, **_QUIET)
    with pytest.raises(ValueError, match="object LevenbergMarquardt"):
        sb.least_squares(lambda t: t - 1.0, jnp.zeros(2), optx.LevenbergMarquardt(1e-2, 1e-2),
                         tol=1e-12, **_QUIET)  # fmt: skip


@pytest.mark.parametrize(("kw", "error", "match"), [
    (dict(max_steps=2.0), TypeError, r"(?s)`max_steps` to be an int >= 1, got 2.0 .*Fix"),
    (dict(chunk_size="4"), TypeError, r"(?s)`chunk_size` to be an int >= 1.*Fix"),
    (dict(max_steps=0), ValueError, r"`max_steps` to be an int >= 1, got 0\. Fix"),
    (dict(throw="no"), TypeError, r"`throw` to be True or False, got 'no'.*Fix"),
    (dict(progress="no"), TypeError, r"`progress` to be True or False, got 'no'.*Fix"),
    (dict(tol=0.0), ValueError, r"(?s)`tol` to be None or a positive.*Fix: a positive tolerance"),
    (dict(tol="1e-6"), TypeError, r"(?s)`tol` to be None.*Fix: `tol=1e-6` \(a number, not a str"),
])  # fmt: skip
def test_counts_and_flags_of_the_wrong_kind_are_type_errors(kw, error, match):
    # `max_steps=2.0` was a ValueError without a fix; `throw="no"` and `progress="no"`
    # counted as True (an int, `progress=verbose`, still counts); `max_steps=0` had no fix;
    # `tol=0` was told "a number, not a string".
    with pytest.raises(error, match=match):
        sb.minimize(_SQ, jnp.zeros(2), "adam", **{**_QUIET, **kw})
    assert sb.minimize(_SQ, jnp.zeros(2), "adam", max_steps=3, progress=0).steps == 3


def test_a_zero_dimensional_array_tol_is_a_number():
    # `tol=jnp.asarray(1e-6)` was refused as not a number.
    res = sb.minimize(_SQ, jnp.zeros(2), "adam", tol=jnp.asarray(1e-3), **_QUIET)
    same = sb.minimize(_SQ, jnp.zeros(2), "adam", tol=1e-3, **_QUIET)
    assert res.steps == same.steps and res.message == same.message


@pytest.mark.parametrize("value", [3.0, 1, 1j])
def test_a_python_number_returned_as_the_loss_is_named_a_constant(value):
    # It got the `(loss, aux)` advice; a residual returning 1.0 got "Concatenate the pieces".
    with pytest.raises(TypeError, match=r"(?s)returned a \w+\..*computed from `theta`"):
        sb.minimize(lambda t: value, jnp.zeros(2), "adam", **_QUIET)
    with pytest.raises(TypeError, match=r"(?s)returned a \w+\..*computed from `theta`"):
        sb.least_squares(lambda t: value, jnp.zeros(2), "lm", **_QUIET)
