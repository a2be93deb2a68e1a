"""What `fm.init_state()` is for Flax models: the state at flattening time, or none at all
(issue 13 #3: one state convention for every framework)."""

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import sciml_bridge as sb


nnx = pytest.importorskip("flax.nnx")
nn = pytest.importorskip("flax.linen")
XS = jnp.linspace(-1.0, 1.0, 24).reshape(8, 3)
XS32 = XS.astype(jnp.float32)


class _Linears(nnx.Module):
    def __init__(self, rngs):
        self.a = nnx.Linear(3, 2, rngs=rngs, param_dtype=jnp.float64)

    def __call__(self, x):
        return self.a(x)


class _Dropping(_Linears):
    def __init__(self, rngs):
        super().__init__(rngs)
        self.drop = nnx.Dropout(0.5, rngs=rngs)

    def __call__(self, x):
        return self.drop(self.a(x))


def test_a_model_without_state_has_none_in_every_framework():
    # A stateless NNX module gave an empty `nnx.State` where Equinox and Linen say "no state".
    x = XS[0]
    stateless = [
        sb.flat(_Linears(nnx.Rngs(0))),
        sb.flat(eqx.nn.Linear(3, 2, key=jax.random.key(0))),
    ]
    for fm in stateless:
        with pytest.raises(ValueError, match="found no state"):
            fm.init_state()
        assert fm(fm.theta0, x).shape == (2,)
    fm = sb.flat(_Dropping(nnx.Rngs(0, dropout=1)))
    y, state = fm(fm.theta0, x, state=fm.init_state())
    assert y.shape == (2,) and int(state["drop"]["rngs"]["count"][...]) == 1


class _Norm(nnx.Module):
    def __init__(self, rngs):  # NNX defaults: float32 (its statistics are float32 anyway)
        self.a = nnx.Linear(3, 2, rngs=rngs)
        self.bn = nnx.BatchNorm(2, rngs=rngs)
        self.drop = nnx.Dropout(0.5, rngs=rngs)

    def __call__(self, x):
        return self.drop(self.bn(self.a(x)))


class _LinenNorm(nn.Module):
    @nn.compact
    def __call__(self, x):
        return nn.BatchNorm(use_running_average=False)(x)  # float32, as its statistics


def _raw(a):
    return jax.random.key_data(a) if jnp.issubdtype(a.dtype, jax.dtypes.prng_key) else a


def test_init_state_is_the_state_at_flattening_time():
    # `nnx.split` hands out the module's own Variables: calling the original module in train
    # mode after flattening changed `fm.init_state()` (statistics and the RNG count).
    net = _Norm(nnx.Rngs(0, dropout=1))
    fm = sb.flat(net)
    before = [np.asarray(_raw(a)).copy() for a in jax.tree.leaves(fm.init_state())]
    before_mean = np.asarray(fm.init_state()["bn"]["mean"][...]).copy()
    net(XS32)
    after = [np.asarray(_raw(a)) for a in jax.tree.leaves(fm.init_state())]
    assert int(net.drop.rngs.count[...]) == 1  # the module did move on ...
    for a, b in zip(after, before):  # ... `fm` did not
        np.testing.assert_array_equal(a, b)
    # Linen variables are plain dicts: replacing a collection entry in place is not seen.
    variables = _LinenNorm().init(jax.random.key(0), XS32)
    fl = sb.flat(_LinenNorm().apply, variables)
    mean = variables["batch_stats"]["BatchNorm_0"]["mean"]
    variables["batch_stats"]["BatchNorm_0"]["mean"] = mean + 1.0
    np.testing.assert_array_equal(fl.init_state()["batch_stats"]["BatchNorm_0"]["mean"], mean)
    # A state handed out and changed in place (an NNX `State`'s Variable) is not `fm`'s either.
    state = fl.init_state()
    state["batch_stats"]["BatchNorm_0"]["mean"] = mean + 2.0
    handed = fm.init_state()
    handed["bn"]["mean"][...] = jnp.ones(2, jnp.float32)
    np.testing.assert_array_equal(fl.init_state()["batch_stats"]["BatchNorm_0"]["mean"], mean)
    np.testing.assert_array_equal(fm.init_state()["bn"]["mean"][...], before_mean)
