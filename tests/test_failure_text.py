"""A failure's own message reaches the result whole (clipped only when absurdly long)."""

import equinox as eqx
import jax.numpy as jnp
import pytest

import sciml_bridge as sb


def _loss_raising(message):
    def loss(theta):
        theta = eqx.error_if(theta, theta[0] > 1.0, message)
        return jnp.sum((theta - 3.0) ** 2)

    return loss


def test_a_long_runtime_error_message_is_kept_whole():
    # Diffrax's failures with our fix run to ~450 characters; they used to be cut at 300
    # ("... or pass `throw=False` so t.").
    message = "the solve failed. " * 25 + "Fix: the end of the advice."
    with pytest.raises(sb.OptimizationError) as info:
        sb.minimize(_loss_raising(message), jnp.array([0.9, 0.0]), "adam", learning_rate=0.05,
                    max_steps=50, progress=False)
    assert message in str(info.value)
    assert info.value.result.theta[0] <= 1.0  # the last good theta


def test_an_absurdly_long_message_is_clipped():
    message = "x" * 5000
    res = sb.minimize(_loss_raising(message), jnp.array([0.9, 0.0]), "adam", learning_rate=0.05,
                      max_steps=50, progress=False, throw=False)
    assert "x" * 900 in res.message and "x" * 1000 not in res.message
    assert " [...]" in res.message
