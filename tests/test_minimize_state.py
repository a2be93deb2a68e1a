"""`sb.minimize` beyond real, stateless losses (issue 13): complex `theta` with Optax, stateful
losses (`state=`), and Optax objects that compile once however often they are rebuilt."""

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from helpers import TraceCounter, assert_ulp_close

import sciml_bridge as sb
from sciml_bridge._solvers._optax import Transformation


nnx = pytest.importorskip("flax.nnx")

# A complex least-squares problem, min |A z - b|^2, with its closed-form minimiser.
A = jnp.array([[1 + 1j, 2.0], [0.5j, 1 - 1j], [1.0, 1j]])
B = jnp.array([1.0, 2j, -1 + 0.5j])
Z_STAR = jnp.linalg.lstsq(A, B)[0]


def complex_loss(z, a, b):
    return jnp.sum(jnp.abs(a @ z - b) ** 2)


@pytest.mark.parametrize(("dtype", "tol"), [(jnp.complex128, 1e-13), (jnp.complex64, 1e-5)])
def test_complex_least_squares_reaches_the_closed_form(dtype, tol):
    # Optax's convention (the update is fed the conjugate of `jax.grad`) makes it descend.
    args = (A.astype(dtype), B.astype(dtype))
    res = sb.minimize(complex_loss, jnp.zeros(2, dtype), optax.sgd(0.1), args=args,
                      max_steps=300, progress=False)  # fmt: skip
    assert res.theta.dtype == dtype and res.success
    np.testing.assert_allclose(res.theta, Z_STAR.astype(dtype), rtol=0, atol=tol)


@pytest.mark.parametrize("method", ["lbfgs", "bfgs", "ssbfgs", "scipy:L-BFGS-B"])
def test_complex_theta_is_refused_by_methods_that_are_not_first_order_optax(method):
    with pytest.raises(TypeError, match=r"complex `theta0`[\s\S]*train the real view"):
        sb.minimize(complex_loss, jnp.zeros(2, jnp.complex128), method, args=(A, B))


def _quadratic(theta):
    return jnp.sum((theta - jnp.arange(3.0)) ** 2)


def test_a_rebuilt_optax_object_reuses_the_compiled_loop():
    counter = TraceCounter(_quadratic)
    first = sb.minimize(counter, jnp.zeros(3), optax.adam(1e-3), max_steps=4, progress=False)
    traced = counter.count
    again = sb.minimize(counter, jnp.zeros(3), optax.adam(1e-3), max_steps=4, progress=False)
    assert counter.count == traced  # no new trace, so no new compile
    np.testing.assert_array_equal(again.theta, first.theta)  # the same program, same inputs
    # Other hyperparameters are another program, with their own constants.
    other = sb.minimize(counter, jnp.zeros(3), optax.adam(1e-2), max_steps=4, progress=False)
    assert counter.count > traced
    opt, theta = optax.adam(1e-2), jnp.zeros(3)
    state = opt.init(theta)
    for _ in range(4):
        with jax.numpy_dtype_promotion("standard"):  # Optax's `decay ** count`
            updates, state = opt.update(jax.grad(_quadratic)(theta), state, theta)
        theta = optax.apply_updates(theta, updates)
    assert_ulp_close(other.theta, theta)
    assert not np.allclose(other.theta, first.theta)


def test_transformations_are_equal_when_they_compute_the_same():
    chain = lambda lr: optax.chain(optax.clip_by_global_norm(1.0), optax.adamw(lr))
    assert Transformation(chain(1e-3)) == Transformation(chain(1e-3))
    assert hash(Transformation(chain(1e-3))) == hash(Transformation(chain(1e-3)))
    assert Transformation(chain(1e-3)) != Transformation(chain(2e-3))
    assert Transformation(optax.sgd(1)) != Transformation(optax.sgd(1.0))  # int vs float
    # A closure over an array is compared by identity: never wrongly shared.
    schedule = lambda lr: optax.sgd(lambda count: jnp.asarray(lr) * 0.5**count)
    lr = jnp.asarray(0.1)
    assert Transformation(schedule(lr)) == Transformation(schedule(lr))
    assert Transformation(schedule(lr)) != Transformation(schedule(jnp.asarray(0.1)))


class _Drop(nnx.Module):
    def __init__(self, rngs):
        self.lin = nnx.Linear(3, 2, rngs=rngs, param_dtype=jnp.float64)
        self.drop = nnx.Dropout(0.5, rngs=rngs)

    def __call__(self, x):
        return self.drop(self.lin(x))


XS = jnp.linspace(-1.0, 1.0, 12).reshape(4, 3)
FM = sb.flat(_Drop(nnx.Rngs(0, dropout=1)))


def drop_loss(theta, state, x):
    y, state = FM(theta, x, state=state)
    return jnp.mean((y - 1.0) ** 2), state


def _count(state):
    return int(state["drop"]["rngs"]["count"][...])


def test_a_stateful_ensemble_checkpoints_and_resumes_its_states(tmp_path):
    # One state per member, stacked; the PRNG streams (typed keys) go through the file.
    path, thetas = tmp_path / "run.npz", jnp.stack([FM.theta0, 0.5 * FM.theta0])
    kw = dict(args=(XS,), state=FM.init_state(), progress=False, learning_rate=0.1,
              chunk_size=3)  # fmt: skip
    sb.minimize(drop_loss, thetas, "sgd", max_steps=3, checkpoint=path, **kw)
    resumed = sb.minimize(drop_loss, thetas, "sgd", max_steps=6, checkpoint=path, **kw)
    whole = sb.minimize(drop_loss, thetas, "sgd", max_steps=6, **kw)
    counts = resumed.state["drop"]["rngs"]["count"][...]
    assert counts.shape == (2,) and np.all(counts == 6) and _count(whole[1].state) == 6
    # The same masks after the resume: the same curves and parameters (one program).
    for r, w in zip(resumed, whole):
        np.testing.assert_array_equal(r.history, w.history)
        np.testing.assert_array_equal(r.theta, w.theta)
    assert not np.array_equal(whole[0].history, whole[1].history)


def test_state_is_refused_by_line_searches_and_a_bad_return_is_named():
    kw = dict(args=(XS,), state=FM.init_state(), progress=False)
    for method in ("lbfgs", "bfgs", "scipy:BFGS"):
        with pytest.raises(NotImplementedError, match="trial points"):
            sb.minimize(drop_loss, FM.theta0, method, **kw)
    with pytest.raises(TypeError, match=r"`\(value, new_state\)`[\s\S]*one array of shape"):
        sb.minimize(lambda t, s, x: drop_loss(t, s, x)[0], FM.theta0, "sgd", **kw)


def test_bfloat16_theta_trains_and_stays_bfloat16():
    # NumPy calls bfloat16 kind "V": the checks use `jnp.issubdtype(..., jnp.floating)`.
    target = jnp.array([1.0, -0.5, 0.25], jnp.bfloat16)
    loss = lambda t: jnp.sum((t - target) ** 2)
    res = sb.minimize(loss, jnp.zeros(3, jnp.bfloat16), "adam", max_steps=100,
                      learning_rate=0.05, progress=False)  # fmt: skip
    assert res.theta.dtype == jnp.bfloat16 and res.loss < 1e-3 < res.history[0]


class _Norm(nnx.Module):
    def __init__(self, rngs):
        self.a, self.bn = nnx.Linear(3, 4, rngs=rngs), nnx.BatchNorm(4, rngs=rngs)

    def __call__(self, x):
        return self.bn(self.a(x))


def test_an_nnx_call_with_state_leaves_the_callers_state_and_module_alone():
    # `nnx.merge` adopted the caller's Variables: a train-mode call changed `state`, the
    # original module and `fm.init_state()` in place, and `jax.grad` through it failed
    # ("Cannot mutate BatchStat from a different trace level").
    module, xs = _Norm(nnx.Rngs(0)), XS.astype(jnp.float32)
    fm = sb.flat(module)
    state = fm.init_state()
    before = np.asarray(module.bn.mean[...]).copy()
    y1, new = fm(fm.theta0, xs, state=state)
    y2, _ = fm(fm.theta0, xs, state=state)
    np.testing.assert_array_equal(np.asarray(y1), np.asarray(y2))
    np.testing.assert_array_equal(np.asarray(module.bn.mean[...]), before)
    assert not np.array_equal(np.asarray(new["bn"]["mean"][...]), before)  # it did update
    loss = lambda t, s: (jnp.mean(fm(t, xs, state=s)[0] ** 2), fm(t, xs, state=s)[1])
    grad = jax.grad(lambda t: loss(t, state)[0])(fm.theta0)
    step = 1e-2 * jnp.eye(fm.size, dtype=jnp.float32)[0]
    fd = (loss(fm.theta0 + step, state)[0] - loss(fm.theta0 - step, state)[0]) / 2e-2
    np.testing.assert_allclose(float(grad[0]), float(fd), rtol=2e-2, atol=1e-4)


def test_a_state_the_loss_widens_or_holds_as_python_numbers_trains():
    # Flax keeps BatchNorm statistics float32 under float64 parameters and returns them
    # float64 after one step: the run was refused (with a fix the loss already followed).
    # A Python number in the state crashed the check of the loss's output.
    nn = pytest.importorskip("flax.linen")

    class Net(nn.Module):
        @nn.compact
        def __call__(self, x, train):
            h = nn.Dense(4, param_dtype=jnp.float64)(x)
            return nn.BatchNorm(use_running_average=not train, param_dtype=jnp.float64)(h)

    def loss(t, s, x):
        y, s = fm(t, x, train=True, state=s)
        return jnp.mean(y**2), s

    x = jnp.arange(24.0).reshape(8, 3) / 10
    with jax.numpy_dtype_promotion("standard"):  # Flax mixes the float32 statistics in
        variables = Net().init(jax.random.key(0), x, train=False)
        fm = sb.flat(Net().apply, variables)
        assert jax.tree.leaves(fm.init_state())[0].dtype == jnp.float32
        res = sb.minimize(loss, fm.theta0, "adam", args=(x,), state=fm.init_state(),
                          max_steps=3, progress=False)  # fmt: skip
    assert res.steps == 3 and all(a.dtype == jnp.float64 for a in jax.tree.leaves(res.state))
    counter = lambda t, s: (jnp.sum((t - 1.0) ** 2) + 0 * s["n"], {"n": s["n"] + 1})
    res = sb.minimize(counter, jnp.zeros(2), "sgd", state={"n": 0.0}, max_steps=3,
                      progress=False)  # fmt: skip
    assert float(res.state["n"]) == 3.0


def test_flattening_with_a_wider_dtype_widens_the_models_state_too():
    # A float32 BatchNorm flattened with `dtype=float64` computes float64 statistics, which
    # its float32 `eqx.nn.State` refused inside Equinox ("different dtypes").
    class Net(eqx.Module):
        lin: eqx.nn.Linear
        bn: eqx.nn.BatchNorm

        def __init__(self, key):
            self.lin = eqx.nn.Linear(3, 4, key=key, dtype=jnp.float32)
            self.bn = eqx.nn.BatchNorm(4, "batch", mode="ema", dtype=jnp.float32)

        def __call__(self, x, state):
            return self.bn(self.lin(x), state)

    model, state = eqx.nn.make_with_state(Net)(jax.random.key(0))
    fm = sb.flat(model, state=state, dtype=jnp.float64)
    floats = [a for a in jax.tree.leaves(fm.init_state()) if jnp.issubdtype(a.dtype, jnp.floating)]
    assert floats and all(a.dtype == jnp.float64 for a in floats)
    batch = jax.vmap(lambda x, s: fm(fm.theta0, x, state=s), (0, None), (0, None),
                     axis_name="batch")  # fmt: skip
    y, new = batch(XS, fm.init_state())
    assert y.dtype == jnp.float64 and jax.tree.structure(new) == jax.tree.structure(state)


def test_a_state_leaf_jax_cannot_carry_is_named():
    # Was JAX's "Error interpreting argument ... as an abstract array" from deep in the run.
    loss = lambda theta, state: (jnp.sum(theta**2), state)
    with pytest.raises(TypeError, match=r"(?s)`sb.minimize\(..., state=state\)`.*\['a'\].*str"):
        sb.minimize(loss, jnp.ones(2), "adam", state={"a": "x"}, max_steps=2, progress=False)
