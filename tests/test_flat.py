import diffrax
import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax
import optimistix as optx
import pytest
import scipy.optimize
from helpers import TraceCounter, assert_ulp_close
from jax.sharding import NamedSharding, PartitionSpec

import sciml_bridge as sb


@pytest.fixture(scope="module")
def mlp():
    return eqx.nn.MLP(2, 2, 8, 2, activation=jnp.tanh, key=jax.random.key(3))


@pytest.fixture(scope="module")
def fm(mlp):
    return sb.flat(mlp, fast=False)


def test_flat_equinox_matches_model(mlp, fm):
    x = jnp.array([0.2, -0.4])
    assert fm.size == 2 * 8 + 8 + 8 * 8 + 8 + 8 * 2 + 2 and not fm.is_fast
    # Flat model vs the module itself: different programs, equal up to ulps (tests/README.md).
    assert_ulp_close(fm(fm.theta0, x), mlp(x))
    assert_ulp_close(fm.restructure(fm.theta0)(x), mlp(x))
    assert isinstance(fm, sb.AbstractFlatModel)


def test_jitted_flat_model_never_retraces(fm):
    counted = TraceCounter(fm)
    f = jax.jit(counted)
    x = jnp.ones(2)
    for k in range(3):
        f(fm.theta0 + k, x)
    assert counted.count == 1
    g = jax.jit(jax.grad(lambda th, x: jnp.sum(fm(th, x) ** 2)))
    g(fm.theta0, x)
    assert g._cache_size() == 1
    g(fm.theta0 * 2, x)
    assert g._cache_size() == 1


def test_flax_linen_apply_fn_form():
    nn = pytest.importorskip("flax.linen")

    class Net(nn.Module):
        @nn.compact
        def __call__(self, x, train: bool = False):
            x = nn.Dense(4)(x)
            x = nn.BatchNorm(use_running_average=not train)(x)
            return nn.Dense(1)(jnp.tanh(x))

    net = Net()
    variables = net.init(jax.random.key(0), jnp.ones((3, 2), jnp.float32))
    fm = sb.flat(net.apply, variables)
    # Only the "params" collection is trained; batch statistics ride along.
    assert fm.size == (2 * 4 + 4) + (4 + 4) + (4 + 1)
    x = jnp.arange(6.0, dtype=jnp.float32).reshape(3, 2)  # Flax stores float32 params
    assert fm.theta0.dtype == jnp.float32
    assert_ulp_close(fm(fm.theta0, x), net.apply(variables, x))  # flat vs Linen: two programs
    grad = jax.grad(lambda th: jnp.sum(fm(th, x)))(fm.theta0)
    assert grad.shape == (fm.size,) and jnp.all(jnp.isfinite(grad))


def test_flax_nnx_module_form():
    nnx = pytest.importorskip("flax.nnx")

    class Net(nnx.Module):
        def __init__(self, rngs):
            self.lin = nnx.Linear(2, 3, rngs=rngs)
            self.bn = nnx.BatchNorm(3, use_running_average=True, rngs=rngs)

        def __call__(self, x):
            return self.bn(self.lin(x))

    net = Net(nnx.Rngs(0))
    fm = sb.flat(net)
    assert fm.size == 2 * 3 + 3 + 3 + 3
    x = jnp.ones((4, 2), jnp.float32)
    # jit of the flat model vs eager NNX: differently compiled, so ulps, not bits (issue 10).
    assert_ulp_close(jax.jit(fm)(fm.theta0, x), net(x))
    shifted = fm(fm.theta0.at[6].add(1.0), x)  # the first bias entry: column 0 moves
    assert not np.allclose(shifted[:, 0], net(x)[:, 0])
    assert_ulp_close(shifted[:, 1:], net(x)[:, 1:])


def test_consumers_take_a_flat_model_as_is(fm):
    x = jnp.array([0.5, -1.0])
    target = jnp.array([0.3, -0.2])
    residual = lambda th, args: fm(th, args[0]) - args[1]
    sol = optx.least_squares(residual, optx.LevenbergMarquardt(1e-10, 1e-10), fm.theta0,
                             args=(x, target), max_steps=200)
    np.testing.assert_allclose(fm(sol.value, x), target, atol=1e-8)

    loss = jax.jit(lambda th: jnp.sum(residual(th, (x, target)) ** 2))
    grad = jax.jit(jax.grad(lambda th: jnp.sum(residual(th, (x, target)) ** 2)))
    res = scipy.optimize.minimize(lambda th: float(loss(th)), np.asarray(fm.theta0),
                                  jac=lambda th: np.asarray(grad(th)), method="BFGS")
    assert res.fun < 1e-10

    opt = optax.adam(1e-2)
    theta, state = fm.theta0, opt.init(fm.theta0)
    with jax.numpy_dtype_promotion("standard"):  # optax 0.2.8 is not strict-promotion clean
        for _ in range(5):
            updates, state = opt.update(grad(theta), state)
            theta = optax.apply_updates(theta, updates)
    assert loss(theta) < loss(fm.theta0)

    term = diffrax.ODETerm(lambda t, y, th: fm(th, y))
    sol = diffrax.diffeqsolve(term, diffrax.Tsit5(), 0.0, 0.1, 0.01, x, args=fm.theta0)
    assert sol.ys.shape == (1, 2) and jnp.all(jnp.isfinite(sol.ys))


def test_flat_argument_errors(mlp):
    with pytest.raises(ValueError, match="fast"):
        sb.flat(mlp, fast="sometimes")
    with pytest.raises(TypeError, match="fast=True"):
        sb.flat({"w": jnp.ones(2)}, fast=True)


def test_batched_input_on_the_general_path_is_a_clear_error():
    mlp = eqx.nn.MLP(2, 1, 4, 1, key=jax.random.key(0))
    fm = sb.flat(mlp, fast=False)
    with pytest.raises(ValueError, match=r"(?s)expects one point `x`\nof shape \(2,\), but got "
                                         r"shape \(5, 2\).*jax.vmap"):
        fm(fm.theta0, jnp.ones((5, 2)))
    assert jax.vmap(fm, in_axes=(None, 0))(fm.theta0, jnp.ones((5, 2))).shape == (5, 1)


def test_shard_keeps_a_hand_chosen_layout_on_an_explicit_mesh():
    # `jax.make_mesh` gives Explicit axes; `sb.shard` works on an Auto copy of the mesh, and an
    # array committed by hand to the user's own mesh must still be left as it is.
    mesh = jax.make_mesh((1,), ("data",))
    hand = jax.device_put(jnp.ones((4, 2)), NamedSharding(mesh, PartitionSpec(None, "data")))
    (out,) = sb.shard((hand,), mesh)
    assert out is hand and out.sharding.spec == PartitionSpec(None, "data")
    (moved,) = sb.shard((np.ones((4, 2)),), mesh)
    assert moved.sharding.spec == PartitionSpec("data")


def test_dtype_widens_the_state_as_it_widens_the_parameters_real_stays_real():
    # `dtype=jnp.complex128` on a real float32 model: the rebuilt parameters are float64 (real
    # leaves stay real); the state was made complex128, so the model's outputs turned complex.
    model = eqx.nn.Linear(2, 2, key=jax.random.key(0), dtype=jnp.float32)
    state = {"r": jnp.ones(2, jnp.float32), "c": jnp.ones(2, jnp.complex64),
             "n": jnp.zeros((), jnp.int32)}
    fm = sb.flat(model, state=state, dtype=jnp.complex128, fast=False)
    assert fm.restructure(fm.theta0).weight.dtype == jnp.float64
    dtypes = {k: v.dtype for k, v in fm.init_state().items()}
    assert dtypes == {"r": jnp.float64, "c": jnp.complex128, "n": jnp.int32}
    fm = sb.flat(model, state=state, dtype=jnp.float64, fast=False)
    dtypes = {k: v.dtype for k, v in fm.init_state().items()}
    assert dtypes == {"r": jnp.float64, "c": jnp.complex128, "n": jnp.int32}
