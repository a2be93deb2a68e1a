"""Flax NNX modes through `fm.inference`: nothing changes until the user switches the mode."""

import jax.numpy as jnp
import pytest
from helpers import assert_ulp_close

import sciml_bridge as sb


nnx = pytest.importorskip("flax.nnx")


class _Attention(nnx.Module):
    def __init__(self, rngs):
        # `deterministic=None` (the default): decided per call, not by a stored mode.
        self.att = nnx.MultiHeadAttention(num_heads=2, in_features=4, qkv_features=4,
                                          dropout_rate=0.5, decode=False, rngs=rngs)  # fmt: skip
        self.drop = nnx.Dropout(0.1, rngs=rngs)

    def __call__(self, x):
        return self.drop(self.att(x))


def test_an_unset_mode_flag_is_left_alone():
    # `fm.inference` read the unset flag as False, and `.train()` then ran attention dropout
    # where the nested module refuses to guess ("No `deterministic` argument").
    x = jnp.linspace(-1.0, 1.0, 12, dtype=jnp.float32).reshape(3, 4)
    net = _Attention(nnx.Rngs(0, dropout=1))
    fm = sb.flat(net)
    assert fm.inference == None and not fm.inference  # noqa: E711 (unset, see `sb.FlatModel`)
    for call in (lambda: net(x), lambda: fm(fm.theta0, x)):
        with pytest.raises(ValueError, match="deterministic"):
            call()
    fe = fm.inference_mode(True)  # an explicit switch sets every flag, as `.eval()` does
    net.eval()
    assert_ulp_close(fe(fe.theta0, x), net(x))
