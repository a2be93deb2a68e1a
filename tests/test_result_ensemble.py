"""`sb.EnsembleSolution` answers the fields every `sb.Solution` has, member by member."""

import jax.numpy as jnp
import numpy as np

import sciml_bridge as sb


def test_an_ensemble_has_every_members_history_and_result():
    # `res.history` and `res.result` raised AttributeError on an ensemble, although the
    # design promises them on what both verbs return.
    loss = lambda t: jnp.where(t[0] > 2.5, jnp.nan, jnp.sum((t - 1.0) ** 2))
    theta0 = jnp.array([[0.0, 0.0], [2.4, 3.0]])
    res = sb.minimize(loss, theta0, "scipy:Nelder-Mead", max_steps=30, throw=False,
                      progress=False)  # fmt: skip
    assert len(res.history) == len(res.result) == 2
    assert all(h is m.history for h, m in zip(res.history, res.members))
    assert res.result == (sb.RESULTS.max_steps_reached, sb.RESULTS.nonfinite)
    assert np.array_equal([h[-1] for h in res.history], res.loss)
