"""The model zoo (issue 13): models as their libraries' docs build them, through `sb.flat`.

Every row: outputs equal the nested model's, the theta-gradient equals the nested model's
gradient mapped through the layout, a jitted `fm` never retraces for a new `theta`, and a short
`sb.minimize` lowers the loss. Then rows for modes, keyword inputs, state and dtypes.
All layers are tiny: compilation, not arithmetic, is the cost here.
"""

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import TraceCounter

import sciml_bridge as sb


nn = pytest.importorskip("flax.linen")
nnx = pytest.importorskip("flax.nnx")
KEY = jax.random.key(0)
K1, K2, K3 = jax.random.split(KEY, 3)


class _GRU(eqx.Module):
    cell: eqx.nn.GRUCell

    def __call__(self, xs):
        def step(h, x):
            h = self.cell(x, h)
            return h, h

        return jax.lax.scan(step, jnp.zeros(self.cell.hidden_size), xs)[1][-1]


class _CNN(eqx.Module):
    conv: eqx.nn.Conv2d
    head: eqx.nn.Linear

    def __call__(self, x):
        return self.head(jnp.ravel(jnp.tanh(self.conv(x))))


class _Attention(eqx.Module):
    attn: eqx.nn.MultiheadAttention
    norm: eqx.nn.LayerNorm

    def __call__(self, x):
        return jnp.sum(jax.vmap(self.norm)(self.attn(x, x, x)), axis=0)


class _Embed(eqx.Module):
    embed: eqx.nn.Embedding
    head: eqx.nn.Linear

    def __call__(self, tokens):
        return self.head(jnp.sum(jax.vmap(self.embed)(tokens), axis=0))


class _Tied(eqx.Module):
    shared: eqx.nn.Shared

    def __init__(self, key):
        a, b = (eqx.nn.Linear(3, 3, key=k) for k in jax.random.split(key))
        self.shared = eqx.nn.Shared((a, b), lambda m: m[1].weight, lambda m: m[0].weight)

    def __call__(self, x):
        a, b = self.shared()
        return b(jnp.tanh(a(x)))


class _Dense(nn.Module):
    @nn.compact
    def __call__(self, x):
        dense = lambda n: nn.Dense(n, param_dtype=jnp.float64)
        return dense(2)(jnp.tanh(dense(4)(x)))


class _NNXStack(nnx.Module):
    def __init__(self, rngs):
        self.a = nnx.Linear(3, 4, rngs=rngs, param_dtype=jnp.float64)
        self.b = nnx.Linear(4, 2, rngs=rngs, param_dtype=jnp.float64)

    def __call__(self, x):
        return self.b(jnp.tanh(self.a(x)))


class Row:
    """One zoo model: `fm`, and `call(tree)` running the nested model from what
    `fm.restructure(theta)` gives back (the model, Linen variables, NNX states)."""

    def __init__(self, fm, call, x, spec=None):
        self.fm, self.call, self.x, self.spec = fm, call, x, spec


def _eqx(model, x):
    return Row(sb.flat(model), lambda m: m(x), x)


X3 = jnp.linspace(-1.0, 1.0, 3)


def _linen():
    dense = _Dense()
    variables = dense.init(K1, jnp.ones(3))
    return Row(sb.flat(dense.apply, variables), lambda v: dense.apply(v, X3), X3)


def _nnx():
    net = _NNXStack(nnx.Rngs(0))
    graphdef = nnx.split(net)[0]
    call = lambda states: nnx.merge(graphdef, *states)(X3)
    return Row(sb.flat(net), call, X3, spec=(True, False))


ZOO = {
    "mlp (fast path)": lambda: _eqx(eqx.nn.MLP(3, 2, 4, 2, activation=jnp.tanh, key=K1), X3),
    "mlp scan=True": lambda: _eqx(eqx.nn.MLP(3, 2, 4, 3, activation=jax.nn.gelu, scan=True,
                                             key=K1), X3),
    "conv2d cnn": lambda: _eqx(_CNN(eqx.nn.Conv2d(1, 2, 2, key=K1),
                                    eqx.nn.Linear(2 * 3 * 3, 1, key=K2)),
                               jnp.linspace(0.0, 1.0, 16).reshape(1, 4, 4)),
    "gru under scan": lambda: _eqx(_GRU(eqx.nn.GRUCell(2, 3, key=K1)),
                                   jnp.linspace(-1.0, 1.0, 8).reshape(4, 2)),
    "attention + layernorm": lambda: _eqx(_Attention(eqx.nn.MultiheadAttention(2, 4, key=K1),
                                                     eqx.nn.LayerNorm(4)),
                                          jnp.linspace(-1.0, 1.0, 12).reshape(3, 4)),
    "embedding": lambda: _eqx(_Embed(eqx.nn.Embedding(5, 3, key=K1),
                                     eqx.nn.Linear(3, 1, key=K2)), jnp.array([0, 3, 4])),
    "eqx.nn.Shared": lambda: _eqx(_Tied(K3), X3),
    "flax linen": _linen,
    "flax nnx": _nnx,
}


ROWS = {name: make() for name, make in ZOO.items()}


@pytest.mark.parametrize("name", list(ZOO))
def test_zoo_outputs_gradients_and_no_retrace(name):
    row = ROWS[name]
    fm, theta = row.fm, row.fm.theta0
    assert fm.is_fast == name.startswith("mlp")
    tree = fm.restructure(theta)
    loss = lambda t: jnp.sum(fm(t, row.x) ** 2)
    counter = TraceCounter(lambda t: (fm(t, row.x), jax.grad(loss)(t)))
    jitted = jax.jit(counter)
    y, grad = jitted(theta)
    # Outputs: the flat model against the nested model (two programs: equal to a few ulps).
    np.testing.assert_allclose(y, row.call(tree), rtol=1e-13, atol=1e-14)
    # Gradient: the nested model's own gradient, flattened through the same layout.
    nested = eqx.filter_jit(eqx.filter_grad(lambda m: jnp.sum(row.call(m) ** 2)))(tree)
    want = sb.destructure(nested, params=row.spec)[0]
    np.testing.assert_allclose(grad, want, rtol=1e-12, atol=1e-14)
    # No retrace for a new theta of the same shape and dtype.
    jitted(theta + 0.01)
    assert counter.count == 1


def test_a_short_minimize_lowers_every_zoo_loss():
    # One run over all rows side by side (one compilation): each row's loss must drop.
    rows = list(ROWS.values())
    sizes = np.cumsum([0] + [r.fm.size for r in rows])
    parts = lambda theta: [theta[a:b] for a, b in zip(sizes[:-1], sizes[1:])]
    losses = lambda theta: jnp.stack([jnp.sum(r.fm(t, r.x) ** 2)
                                      for r, t in zip(rows, parts(theta))])
    theta0 = jnp.concatenate([r.fm.theta0 for r in rows])
    res = sb.minimize(lambda t: jnp.sum(losses(t)), theta0, "adam", max_steps=5,
                      learning_rate=1e-2, progress=False)
    before, after = np.asarray(losses(theta0)), np.asarray(losses(res.theta))
    assert np.all(after < before), dict(zip(ROWS, zip(before, after)))


# --- modes, keyword inputs, state (issue 13 #1-#3) ----------------------------------------------


class _BNDrop(eqx.Module):
    lin: eqx.nn.Linear
    bn: eqx.nn.BatchNorm
    drop: eqx.nn.Dropout

    def __init__(self, key):
        self.lin = eqx.nn.Linear(3, 4, key=key)
        self.bn = eqx.nn.BatchNorm(4, "batch", mode="ema")
        self.drop = eqx.nn.Dropout(0.5)

    def __call__(self, x, state, *, key=None):
        h, state = self.bn(self.lin(x), state)
        return self.drop(h, key=key), state


XS = jnp.linspace(-1.0, 1.0, 24).reshape(8, 3)


def _batch(f):
    """`f(x, state)` over the batch XS, BatchNorm's axis named "batch", state shared."""
    return jax.vmap(f, in_axes=(0, None), out_axes=(0, None), axis_name="batch")


def test_equinox_modes_keys_and_state_match_the_nested_model():
    model, state = eqx.nn.make_with_state(_BNDrop)(K1)
    fm = sb.flat(model, state=state)
    assert fm.inference is not None and not fm.inference and fm.init_state() is not state
    assert all(a is b for a, b in zip(jax.tree.leaves(fm.init_state()), jax.tree.leaves(state)))
    key = jax.random.key(7)
    y, new = _batch(lambda x, s: fm(fm.theta0, x, state=s, key=key))(XS, fm.init_state())
    y_ref, new_ref = _batch(lambda x, s: model(x, s, key=key))(XS, state)
    np.testing.assert_allclose(y, y_ref, rtol=1e-13, atol=1e-14)
    means = [s.get(model.bn.ema_state_index)[0] for s in (state, new, new_ref)]
    assert not np.allclose(means[0], means[1])  # the running mean moved ...
    np.testing.assert_allclose(means[1], means[2], rtol=1e-13)  # ... as the nested one's did
    # Inference mode switches BatchNorm (running statistics) and Dropout (identity).
    fi = eqx.nn.inference_mode(fm)
    mi = eqx.nn.inference_mode(model)
    y_inf, _ = _batch(lambda x, s: fi(fi.theta0, x, state=s))(XS, new)
    np.testing.assert_allclose(y_inf, _batch(lambda x, s: mi(x, s))(XS, new_ref)[0],
                               rtol=1e-13, atol=1e-14)
    assert not np.allclose(y_inf, y)
    back = fi.inference_mode(False)
    y_back, _ = _batch(lambda x, s: back(back.theta0, x, state=s, key=key))(XS, state)
    np.testing.assert_allclose(y_back, y, rtol=1e-13, atol=1e-14)


def test_equinox_stateful_training_matches_the_nested_model():
    model, state = eqx.nn.make_with_state(_BNDrop)(K2)
    model = eqx.nn.inference_mode(model, False)
    fm = eqx.nn.inference_mode(sb.flat(model, state=state), False)
    key = jax.random.key(3)

    def flat_loss(theta, s):
        y, s = _batch(lambda x, s: fm(theta, x, state=s, key=key))(XS, s)
        return jnp.sum(y**2), s

    def nested_loss(m, s):
        y, s = _batch(lambda x, s: m(x, s, key=key))(XS, s)
        return jnp.sum(y**2), s

    theta, s_flat, m, s_nested = fm.theta0, fm.init_state(), model, state
    flat_grad = jax.jit(jax.grad(flat_loss, has_aux=True))
    nested_grad = eqx.filter_jit(eqx.filter_grad(nested_loss, has_aux=True))
    for _ in range(2):
        g, s_flat = flat_grad(theta, s_flat)
        theta = theta - 0.1 * g
        gm, s_nested = nested_grad(m, s_nested)
        m = eqx.apply_updates(m, jax.tree.map(lambda d: -0.1 * d, gm))
    np.testing.assert_allclose(theta, sb.destructure(m)[0], rtol=1e-12)
    for a, b in zip(jax.tree.leaves(s_flat), jax.tree.leaves(s_nested)):
        np.testing.assert_allclose(a, b, rtol=1e-12)


class _LinenBN(nn.Module):
    @nn.compact
    def __call__(self, x, train: bool):
        h = nn.Dense(4)(x)  # Linen's defaults: float32 parameters and statistics
        h = nn.BatchNorm(use_running_average=not train)(h)
        return nn.Dropout(0.5, deterministic=not train)(h)


XS32 = XS.astype(jnp.float32)
F32 = dict(rtol=1e-6, atol=1e-6)  # two float32 programs (flat vs nested): a few ulps


def test_linen_keywords_and_batch_stats_state():
    XS = XS32
    net = _LinenBN()
    variables = net.init(K1, XS, train=False)
    fm = sb.flat(net.apply, variables)
    assert fm.size == sum(x.size for x in jax.tree.leaves(variables["params"]))
    rngs = {"dropout": jax.random.key(4)}
    y, state = fm(fm.theta0, XS, train=True, rngs=rngs, state=fm.init_state())
    y_ref, upd = net.apply(variables, XS, train=True, rngs=rngs, mutable=["batch_stats"])
    np.testing.assert_allclose(y, y_ref, **F32)
    mean = lambda s: s["batch_stats"]["BatchNorm_0"]["mean"]
    assert not np.allclose(mean(state), mean(fm.init_state()))
    np.testing.assert_allclose(mean(state), mean(upd), **F32)
    y_eval = fm(fm.theta0, XS, train=False)
    np.testing.assert_allclose(y_eval, net.apply(variables, XS, train=False), **F32)
    with pytest.raises(TypeError, match="call argument"):
        eqx.nn.inference_mode(fm)(fm.theta0, XS, train=False)


class _NNXDrop(nnx.Module):
    def __init__(self, rngs):
        self.lin = nnx.Linear(3, 4, rngs=rngs)  # NNX defaults: float32
        self.bn = nnx.BatchNorm(4, rngs=rngs)
        self.drop = nnx.Dropout(0.5, rngs=rngs)

    def __call__(self, x):
        return self.drop(self.bn(self.lin(x)))


def test_nnx_state_threads_rng_streams_and_batch_statistics():
    XS = XS32
    net = _NNXDrop(nnx.Rngs(0, dropout=1))
    fm = sb.flat(net)
    assert fm.inference is not None and not fm.inference and fm.size == 3 * 4 + 4 + 4 + 4
    step = jax.jit(lambda t, s: fm(t, XS, state=s))
    y1, s1 = step(fm.theta0, fm.init_state())
    y2, _ = step(fm.theta0, s1)
    assert np.any((y1 == 0) != (y2 == 0))  # a new dropout mask on every step
    bn_mean = lambda s: s["bn"]["mean"][...]
    assert not np.allclose(bn_mean(s1), bn_mean(fm.init_state()))
    # Same statistics as the nested module after the same call.
    ref = _NNXDrop(nnx.Rngs(0, dropout=1))
    y_ref = ref(XS)
    np.testing.assert_allclose(y1, y_ref, **F32)
    np.testing.assert_allclose(bn_mean(s1), ref.bn.mean[...], **F32)
    # Inference mode: `.eval()` semantics (running statistics, no dropout).
    fe = eqx.nn.inference_mode(fm)
    ref.eval()
    np.testing.assert_allclose(fe(fe.theta0, XS, state=s1)[0], ref(XS), **F32)


def test_complex_parameters_flatten_exactly():
    lin = eqx.nn.Linear(2, 2, key=K1, dtype=jnp.complex128)
    fm = sb.flat(lin, fast=False)
    x = jnp.array([1.0 + 0.5j, -0.25j])
    assert fm.theta0.dtype == jnp.complex128
    np.testing.assert_allclose(fm(fm.theta0, x), lin(x), rtol=1e-14)


# --- training through `sb.minimize`: state (issue 13 #3) and complex parameters (#5) -----------


def test_minimize_trains_equinox_batchnorm_like_optax_on_the_nested_model():
    model, state = eqx.nn.make_with_state(_BNDrop)(K2)
    model = eqx.nn.inference_mode(model, False)
    fm = eqx.nn.inference_mode(sb.flat(model, state=state), False)
    key = jax.random.key(5)

    def flat_loss(theta, s, xs):
        y, s = _batch(lambda x, s: fm(theta, x, state=s, key=key))(xs, s)
        return jnp.sum(y**2), s

    res = sb.minimize(flat_loss, fm.theta0, "sgd", args=(XS,), state=fm.init_state(),
                      max_steps=2, learning_rate=0.1, progress=False)  # fmt: skip
    # The same Optax steps done by hand on the nested model and its `eqx.nn.State`.
    nested = lambda m, s: jnp.sum(_batch(lambda x, s: m(x, s, key=key))(XS, s)[0] ** 2)
    grad = eqx.filter_jit(eqx.filter_grad(
        lambda m, s: (nested(m, s), _batch(lambda x, s: m(x, s, key=key))(XS, s)[1]),
        has_aux=True))  # fmt: skip
    m, s = model, state
    for _ in range(2):
        g, s = grad(m, s)
        m = eqx.apply_updates(m, jax.tree.map(lambda d: -0.1 * d, g))
    np.testing.assert_allclose(res.theta, sb.destructure(m)[0], rtol=1e-12, atol=1e-14)
    mean = lambda s: s.get(model.bn.ema_state_index)[0]
    assert not np.allclose(mean(res.state), mean(state))  # the running mean moved ...
    np.testing.assert_allclose(mean(res.state), mean(s), rtol=1e-12)  # ... as by hand


def test_minimize_updates_linen_batch_stats():
    net = _LinenBN()
    variables = net.init(K1, XS32, train=False)
    fm = sb.flat(net.apply, variables)
    rngs = {"dropout": jax.random.key(4)}

    def loss(theta, s, xs):
        y, s = fm(theta, xs, train=True, rngs=rngs, state=s)
        return jnp.mean(y**2), s

    res = sb.minimize(loss, fm.theta0, "sgd", args=(XS32,), state=fm.init_state(),
                      max_steps=2, learning_rate=0.1, progress=False)  # fmt: skip
    mean = lambda s: s["batch_stats"]["BatchNorm_0"]["mean"]
    params, stats = variables["params"], {"batch_stats": variables["batch_stats"]}

    @jax.jit
    def by_hand(params, stats):
        def f(p):
            y, upd = net.apply({"params": p, **stats}, XS32, train=True, rngs=rngs,
                               mutable=["batch_stats"])  # fmt: skip
            return jnp.mean(y**2), upd

        g, upd = jax.grad(f, has_aux=True)(params)
        return jax.tree.map(lambda p, d: p - jnp.float32(0.1) * d, params, g), upd

    for _ in range(2):
        params, stats = by_hand(params, stats)
    assert res.theta.dtype == jnp.float32 and not np.allclose(mean(res.state),
                                                              mean(variables))  # fmt: skip
    np.testing.assert_allclose(mean(res.state), mean(stats), **F32)
    np.testing.assert_allclose(res.theta, sb.destructure(params)[0], **F32)


def test_minimize_draws_new_nnx_dropout_masks_every_step():
    net = _NNXDrop(nnx.Rngs(0, dropout=1))
    fm = sb.flat(net)

    def loss(theta, s, xs):
        y, s = fm(theta, xs, state=s)
        return jnp.mean((y - 1.0) ** 2), s

    # learning_rate=0: theta stays put, so the losses differ only through the masks.
    res = sb.minimize(loss, fm.theta0, "sgd", args=(XS32,), state=fm.init_state(),
                      max_steps=3, learning_rate=0.0, progress=False)  # fmt: skip
    assert len(set(res.history[:3].tolist())) == 3
    # The nested module called three times draws the same masks and statistics.
    ref = _NNXDrop(nnx.Rngs(0, dropout=1))
    want = [float(jnp.mean((ref(XS32) - 1.0) ** 2)) for _ in range(3)]
    np.testing.assert_allclose(res.history[:3], want, **F32)
    np.testing.assert_allclose(res.state["bn"]["mean"][...], ref.bn.mean[...], **F32)


def test_minimize_trains_complex_parameters_to_the_exact_fit():
    truth = eqx.nn.Linear(2, 2, key=K2, dtype=jnp.complex128)
    fm = sb.flat(eqx.nn.Linear(2, 2, key=K1, dtype=jnp.complex128), fast=False)
    xs = jnp.array([[1.0, 0.5j], [-0.25j, 1.0], [0.5, -1.0], [1j, 1j]])
    ys = jax.vmap(truth)(xs)
    loss = lambda t, xs, ys: jnp.sum(jnp.abs(jax.vmap(fm, (None, 0))(t, xs) - ys) ** 2)
    res = sb.minimize(loss, fm.theta0, "adam", args=(xs, ys), max_steps=2500,
                      learning_rate=1e-2, progress=False)  # fmt: skip
    assert res.theta.dtype == jnp.complex128 and res.loss < 1e-20
    np.testing.assert_allclose(res.theta, sb.destructure(truth)[0], rtol=0, atol=1e-10)


class _NNXBN(nnx.Module):
    def __init__(self, rngs):
        self.lin = nnx.Linear(2, 4, rngs=rngs)  # NNX defaults: float32
        self.bn = nnx.BatchNorm(4, rngs=rngs)

    def __call__(self, x):
        return self.bn(self.lin(x))


class _LinenDenseBN(nn.Module):
    @nn.compact
    def __call__(self, x):
        return nn.BatchNorm(use_running_average=True)(nn.Dense(4)(x))


def test_params_callable_narrows_within_the_trained_parameters():
    # `params=` narrows what the framework trains; batch statistics never become parameters.
    biases = lambda leaf: leaf.ndim == 1
    net = _NNXBN(nnx.Rngs(0))
    fm = sb.flat(net, params=biases)
    ones = [p for p in jax.tree.leaves(nnx.state(net, nnx.Param)) if p.ndim == 1]
    assert fm.size == sum(p.size for p in ones) == 12
    assert not any("mean" in p or "var" in p for p in fm.restructure.paths)
    np.testing.assert_allclose(fm(fm.theta0, XS32[:, :2]), net(XS32[:, :2]), **F32)
    variables = _LinenDenseBN().init(K1, XS32[:, :2])
    for spec in (biases, {"params": biases, "batch_stats": True}):
        fl = sb.flat(_LinenDenseBN().apply, variables, params=spec)
        assert fl.size == 12 and all(p.startswith("['params']") for p in fl.restructure.paths)


def test_fm_passed_as_a_jit_argument_never_traces_its_mode():
    # `fm.inference` is part of the tree structure, not a leaf that `jax.jit` would trace.
    x = jnp.array([0.5, -0.25])
    seq = eqx.nn.Sequential([eqx.nn.Linear(2, 3, key=K1), eqx.nn.Dropout(0.5)])
    dense = nn.Dense(3, param_dtype=jnp.float64)
    lin = nnx.Linear(2, 3, rngs=nnx.Rngs(0), param_dtype=jnp.float64)
    cases = [
        (eqx.nn.inference_mode(sb.flat(seq), True), eqx.nn.inference_mode(seq, True)),
        (sb.flat(dense.apply, v := dense.init(K2, x)), lambda x: dense.apply(v, x)),
        (sb.flat(lin), lin),
    ]
    for fm, model in cases:
        counted = TraceCounter(lambda fm, theta, x: fm(theta, x))
        run = jax.jit(counted)
        np.testing.assert_allclose(run(fm, fm.theta0, x), model(x), rtol=1e-13)
        run(fm, 2.0 * fm.theta0, x)
        assert counted.count == 1
    fi = eqx.nn.inference_mode(sb.flat(seq), True)
    assert fi.inference and eqx.nn.inference_mode(fi, False).inference is not None
    assert not eqx.nn.inference_mode(fi, False).inference
    assert hash(fi) == hash(sb.flat(seq).inference_mode(True))
