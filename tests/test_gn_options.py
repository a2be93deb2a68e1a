"""Option checks (`_option_checks.py`): plain Python values, wrong kinds
are `TypeError`, values out of range `ValueError`, and a JAX array never reaches a static field."""

import jax.numpy as jnp
import numpy as np
import pytest

import sciml_bridge as sb


_X = jnp.linspace(0.0, 1.0, 8)


def _fit(theta, x):
    return theta[0] * x + theta[1] - (2.0 * x - 1.0)


def _quadratic(theta):
    return jnp.sum((theta - 1.0) ** 2)


def test_array_cutoffs_are_plain_floats_and_leave_later_runs_working():
    # A JAX-array `rcond` sat in a static field: every later run of the process failed in
    # `jit`'s cache ("static arguments should be comparable using __eq__").
    kw = dict(args=(_X,), progress=False)
    for rcond in (jnp.asarray(1e-7), np.array([1e-7, 1e-8]), [1e-7], 0):
        res = sb.least_squares(_fit, jnp.zeros(2), rcond=rcond, **kw)
        assert res.success
    res = sb.least_squares(_fit, jnp.zeros(2), **kw)
    assert res.success
    np.testing.assert_allclose(np.asarray(res.theta), [2.0, -1.0], rtol=1e-12)


@pytest.mark.parametrize(
    "options, error, match",
    [
        (dict(rcond="1e-7"), TypeError, r"`rcond` to be a real number, got '1e-7'"),
        (dict(rcond=True), TypeError, r"`rcond` to be a real number"),
        (dict(rcond=(1e-7, float("nan"))), ValueError, r"`rcond` in \[0, 1\).*nan"),
        (dict(geodesic="yes"), TypeError, r"`geodesic` to be True or False"),
        (dict(line_search_steps=2.5), TypeError, r"`line_search_steps` to be an int >= 0"),
        (dict(line_search_steps=-1), ValueError, r"`line_search_steps` to be an int >= 0"),
        (dict(line_search_batch=True), TypeError, r"`line_search_batch` to be an int >= 0"),
        (dict(solver="cg", cg_steps=0), ValueError, r"`cg_steps` to be an int >= 1"),
        (dict(solver="cg", cg_tol=-1.0), ValueError, r"`cg_tol` in \[0, 1\)"),
        (dict(solver="Kernel"), ValueError, r'Did you mean "kernel"\?'),
        (dict(solver=None), TypeError, r"`solver` to be a string"),
    ],
)
def test_gauss_newton_options_of_the_wrong_kind_or_range_are_refused(options, error, match):
    # Before: strings and floats were taken (`line_search_steps=2.5` ran a 3-trial grid),
    # `cg_steps=0` or `cg_tol=-1` stopped at `theta0` as a "stall", `-1` a raw argmin error.
    with pytest.raises(error, match=r"(?s)`sb.least_squares`.*" + match):
        sb.least_squares(_fit, jnp.zeros(2), "gauss-newton", args=(_X,), progress=False,
                         **options)  # fmt: skip


@pytest.mark.parametrize(
    "options, error, match",
    [
        (dict(c1=-1.0), ValueError, r"`c1` in \(0, 1\)"),
        (dict(c2=float("nan")), ValueError, r"`c2` in \(0, 1\)"),
        (dict(c1=0.95), ValueError, r"`c1 < c2`"),
        (dict(c1="1e-4"), TypeError, r"`c1` to be a real number"),
        (dict(line_search_steps=0), ValueError, r"`line_search_steps` to be an int >= 1"),
    ],
)
def test_self_scaled_line_search_options_are_checked(options, error, match):
    # Before: `c1 < 0` accepted steps that raise the loss; `c1 >= c2` and no trials stopped
    # at `theta0` as a "stall".
    with pytest.raises(error, match=r"(?s)`sb.minimize`.*" + match):
        sb.minimize(_quadratic, jnp.zeros(2), "ssbfgs", progress=False, **options)
