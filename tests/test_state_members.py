"""An ensemble's stacked `res.state` given back as the one `state=` every member starts from:
refused where the loss cannot take it, warned about where it would broadcast (shapes only)."""

import warnings

import jax
import jax.numpy as jnp
import pytest

import sciml_bridge as sb
from sciml_bridge._state_members import StackedStateWarning, check_not_stacked


nnx = pytest.importorskip("flax.nnx")
XS = jnp.linspace(-1.0, 1.0, 24, dtype=jnp.float32).reshape(8, 3)


class _Drop(nnx.Module):
    def __init__(self, rngs):
        self.lin = nnx.Linear(3, 4, rngs=rngs)
        self.bn = nnx.BatchNorm(4, rngs=rngs)
        self.drop = nnx.Dropout(0.5, rngs=rngs)

    def __call__(self, x):
        return self.drop(self.bn(self.lin(x)))


FM = sb.flat(_Drop(nnx.Rngs(0, dropout=1)))


def _nnx_loss(theta, state, xs):
    y, state = FM(theta, xs, state=state)
    return jnp.mean(y**2), state


def _ema_loss(theta, state, xs):  # Linen BatchNorm's update: broadcasts a stacked mean
    mean = 0.9 * state["mean"] + 0.1 * jnp.mean(xs @ theta.reshape(3, 4), axis=0)
    return jnp.sum(theta**2), {"mean": mean}


def _stack(tree, n):
    return jax.tree.map(lambda a: jnp.stack([a] * n), tree)


def test_a_stacked_state_the_loss_cannot_take_is_refused():
    # NNX: each member would have been handed both RNG keys ("fold_in accepts a single key").
    stacked = _stack(FM.init_state(), 2)
    with pytest.raises(ValueError, match=r"leading axis of 2[\s\S]*a\[i\], *\n?res.state"):
        check_not_stacked(_nnx_loss, FM.theta0, stacked, (XS,), 2, "sb.minimize")


def test_a_stacked_state_the_loss_would_broadcast_warns():
    # Linen-style statistics: every member would have carried both members' rows.
    theta, state = jnp.ones(12, jnp.float32), {"mean": jnp.zeros(4, jnp.float32)}
    with pytest.warns(StackedStateWarning, match="mixing the members"):
        check_not_stacked(_ema_loss, theta, _stack(state, 3), (XS,), 3, "sb.minimize")


def test_one_shared_state_passes():
    theta = jnp.ones(12, jnp.float32)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        # Four features and four members: one row is not a state of the loss (shapes differ).
        check_not_stacked(_ema_loss, theta, {"mean": jnp.zeros(4, jnp.float32)}, (XS,), 4,
                          "sb.minimize")  # fmt: skip
        check_not_stacked(_nnx_loss, FM.theta0, FM.init_state(), (XS,), 2, "sb.minimize")
        # A single run, and a state with a scalar leaf, are never read as stacked.
        stacked = _stack(FM.init_state(), 2)
        check_not_stacked(_nnx_loss, FM.theta0, stacked, (XS,), 1, "sb.minimize")
        check_not_stacked(_ema_loss, theta, {"mean": jnp.zeros((2, 4), jnp.float32),
                                             "n": jnp.asarray(0)}, (XS,), 2, "sb.minimize")


def test_sb_minimize_refuses_a_stacked_state_before_the_model_does():
    # Through the front door: before, NNX's raw "fold_in accepts a single key" from deep inside.
    theta0 = jnp.stack([FM.theta0, FM.theta0 + 0.01])
    with pytest.raises(ValueError, match=r"`sb\.minimize` got a `state` whose every array"):
        sb.minimize(_nnx_loss, theta0, "adam", args=(XS,), state=_stack(FM.init_state(), 2),
                    max_steps=2, progress=False)  # fmt: skip
