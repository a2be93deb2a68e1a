"""`sb.error_report` with points given as a nested list, as a user types them."""

import jax.numpy as jnp
import numpy as np

import sciml_bridge as sb


def test_points_as_a_nested_list_are_rows():
    # `jax.vmap` took the list as a pytree of Python floats and raised "vmap was requested to
    # map its argument along axis 0, which implies that its rank should be at least 1".
    fm = lambda theta, x: theta[0] * x[0]
    report = sb.error_report(fm, jnp.array([2.0]), [[0.5], [1.0], [1.5]], np.array([1.0, 2.0, 4.0]))
    np.testing.assert_array_equal(report.prediction, [1.0, 2.0, 3.0])
    assert report.max_abs == 1.0
    np.testing.assert_allclose(report.rel_l2, 1.0 / np.sqrt(21.0), rtol=1e-14)
