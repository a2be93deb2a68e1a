"""An Equinox model's `eqx.nn.State` through `fm`: beside `theta`'s precision, in eager calls,
and through the x64 guard on `sb.flat(..., state=)` (issue 13 #3: one state convention)."""

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import assert_ulp_close

import sciml_bridge as sb


XS = jnp.linspace(-1.0, 1.0, 24).reshape(8, 3)


class _Norm(eqx.Module):
    lin: eqx.nn.Linear
    bn: eqx.nn.BatchNorm

    def __init__(self, key, dtype):
        self.lin = eqx.nn.Linear(3, 4, key=key, dtype=dtype)
        self.bn = eqx.nn.BatchNorm(4, "batch", mode="ema", dtype=dtype)

    def __call__(self, x, state):
        return self.bn(self.lin(x), state)


def _assert_states_close(a, b):
    assert jax.tree.structure(a) == jax.tree.structure(b)
    for u, v in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
        if jnp.issubdtype(v.dtype, jnp.floating):
            assert_ulp_close(u, v)
        else:  # BatchNorm's "first call" flag
            np.testing.assert_array_equal(u, v)


def _batch(f):
    return jax.vmap(f, in_axes=(0, None), out_axes=(0, None), axis_name="batch")


def _cast(tree, dtype):
    floating = lambda a: jnp.issubdtype(a.dtype, jnp.floating)
    return jax.tree.map(lambda a: a.astype(dtype) if floating(a) else a, tree)


def test_an_equinox_state_is_widened_to_theta_and_never_narrowed():
    # `theta`'s precision wins (precision="vector"), so its BatchNorm writes statistics in that
    # precision: Equinox refused the stored state ("Old and new values have different
    # ... dtypes"). A wider state is not narrowed silently (a raw `lax.select` error before).
    big, state64 = eqx.nn.make_with_state(_Norm)(jax.random.key(0), jnp.float64)
    fm = sb.flat(big, state=state64)
    with pytest.raises(TypeError, match=r"float64 `state` for a model computed in float32"):
        _batch(lambda x, s: fm(fm.theta0.astype(jnp.float32), x, state=s))(
            XS.astype(jnp.float32), fm.init_state())
    stored, wanted = jnp.float32, jnp.float64
    model, state = eqx.nn.make_with_state(_Norm)(jax.random.key(0), stored)
    fm = sb.flat(model, state=state)
    theta, xs = fm.theta0.astype(wanted), XS.astype(wanted)
    y, new = _batch(lambda x, s: fm(theta, x, state=s))(xs, fm.init_state())
    # The nested model at `theta` with the state cast by hand: Equinox's own arithmetic.
    nested = fm.restructure(theta)
    y_ref, new_ref = _batch(nested)(xs, _cast(state, wanted))
    assert_ulp_close(y, y_ref)
    _assert_states_close(new, new_ref)


def test_training_a_float32_model_in_float64_widens_its_state_and_a_narrowing_is_named():
    model, state = eqx.nn.make_with_state(_Norm)(jax.random.key(1), jnp.float32)
    fm = sb.flat(model, state=state)

    def loss(theta, s, xs):
        y, s = _batch(lambda x, s: fm(theta, x, state=s))(xs, s)
        return jnp.mean((y - 1.0) ** 2), s

    kw = dict(args=(XS,), max_steps=3, learning_rate=0.1, progress=False)
    res = sb.minimize(loss, fm.theta0.astype(jnp.float64), "sgd", state=fm.init_state(), **kw)
    # The same as flattening the model in float64 from the start (which widens the state).
    wide = sb.flat(model, state=state, dtype=jnp.float64)
    ref = sb.minimize(loss, wide.theta0, "sgd", state=wide.init_state(), **kw)
    assert_ulp_close(res.theta, ref.theta)
    _assert_states_close(res.state, ref.state)
    # A float64 state cannot be carried by a loss that computes it in float32: say how.
    model, state = eqx.nn.make_with_state(_Norm)(jax.random.key(1), jnp.float64)
    fm = sb.flat(model, state=state)
    with pytest.raises(TypeError, match=r"in float32[\s\S]*cannot be narrowed[\s\S]*astype"):
        sb.minimize(loss, fm.theta0.astype(jnp.float32), "sgd", state=fm.init_state(),
                    args=(XS.astype(jnp.float32),), max_steps=1, progress=False)  # fmt: skip


def test_a_float64_numpy_state_is_refused_when_x64_is_off():
    # The state was kept as given and truncated to float32 at its first use.
    model, state = eqx.nn.make_with_state(_Norm)(jax.random.key(0), jnp.float32)
    wide = jax.tree.map(lambda a: np.asarray(a, np.float64), state)
    with jax.enable_x64(False):
        with pytest.raises(TypeError, match=r"`sb.flat` got `state`[\s\S]*jax_enable_x64"):
            sb.flat(model, state=wide)


class _Counted(eqx.Module):
    lin: eqx.nn.Linear
    calls: eqx.nn.StateIndex

    def __init__(self, key):
        self.lin = eqx.nn.Linear(3, 2, key=key)
        self.calls = eqx.nn.StateIndex(jnp.asarray(0))

    def __call__(self, x, state):
        return self.lin(x), state.set(self.calls, state.get(self.calls) + 1)


def test_an_eager_call_leaves_the_callers_state_and_init_state_usable():
    # `eqx.nn.State.set` invalidates the object it is called on: an eager (un-jitted) call
    # consumed `fm.init_state()` itself, and every later use raised "Attempted to use old state".
    model, state = eqx.nn.make_with_state(_Counted)(jax.random.key(2))
    fm = sb.flat(model, state=state)
    y1, s1 = fm(fm.theta0, XS[0], state=fm.init_state())
    y2, s2 = fm(fm.theta0, XS[0], state=fm.init_state())
    y3, s3 = fm(fm.theta0, XS[0], state=s2)
    np.testing.assert_array_equal(y1, y2)
    assert_ulp_close(y1, model(XS[0], jax.tree.map(lambda a: a, state))[0])
    counts = [int(s.get(model.calls)) for s in (fm.init_state(), s1, s2, s3)]
    assert counts == [0, 1, 1, 2]
