"""`sb.laplacian` / `sb.grad_x`: forward Laplacian equals `trace(jax.hessian)`, and composes."""

import textwrap

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import TraceCounter, assert_ulp_close

import sciml_bridge as sb
from sciml_bridge import _pinn_derivative_checks as _checks


def _random(build, seed=0):
    """`build()`'s model with random float64 weights, without compiling Equinox's initialisers."""
    shapes = eqx.filter_eval_shape(build)
    rng = np.random.default_rng(seed)
    fill = lambda s: jnp.asarray(rng.uniform(-0.9, 0.9, s.shape), jnp.float64)
    return jax.tree.map(lambda s: fill(s) if isinstance(s, jax.ShapeDtypeStruct) else s, shapes)


def _mlp(in_size, out_size, width, depth, activation, **kwargs):
    key = jax.random.key(0)
    return _random(lambda: eqx.nn.MLP(in_size, out_size, width, depth, activation=activation,
                                      key=key, **kwargs))


def _points(in_size, n=5):
    shape = (n,) if in_size == "scalar" else (n, in_size)
    return jax.random.normal(jax.random.key(7), shape, jnp.float64)


def _hessian_trace(model, x):
    """Reference: the Hessian by reverse-over-forward AD, then its trace over input entries."""
    flat_x = jnp.reshape(x, -1)
    hess = jax.jacrev(jax.jacfwd(lambda v: model(v.reshape(jnp.shape(x)))))(flat_x)
    return jnp.trace(hess, axis1=-2, axis2=-1)


def _softsign(z):  # not in the table: derivatives come from nested AD
    return z / (1 + jnp.abs(z) + z * z)


CASES = [
    (1, 1, 10, 3, jnp.tanh),
    (2, 1, 8, 2, jnp.sin),
    (3, 2, 6, 1, jax.nn.softplus),
    (4, "scalar", 5, 2, jax.nn.sigmoid),
    (5, 1, 7, 1, jax.nn.silu),
    (6, 3, 6, 2, jax.nn.gelu),
    (7, 1, 5, 2, _softsign),
    (8, "scalar", 9, 1, jnp.cos),
    ("scalar", 2, 6, 2, jnp.tanh),
]


def _both_paths(case):
    in_size, out_size, width, depth, activation = case
    mlp = _mlp(in_size, out_size, width, depth, activation)
    fast, general = sb.flat(mlp), sb.flat(mlp, fast=False)
    assert fast.is_fast and not general.is_fast
    return fast, general, _points(in_size)


def _assert_all_close(got, want):
    for a, b in zip(got, want):
        assert a.shape == b.shape
        np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("case", CASES, ids=lambda c: f"in{c[0]}-{c[4].__name__}")
def test_forward_laplacian_matches_the_general_path(case):
    # The general path is `trace(jax.hessian)` and `jax.jacfwd` of the rebuilt Equinox model.
    fast, general, xs = _both_paths(case)

    @jax.jit
    def run(theta):
        return [(jax.vmap(sb.laplacian(fm), in_axes=(None, 0))(theta, xs),
                 jax.vmap(sb.grad_x(fm), in_axes=(None, 0))(theta, xs))
                for fm in (fast, general)]

    got, want = run(fast.theta0)
    assert got[0].shape == jax.vmap(fast, in_axes=(None, 0))(fast.theta0, xs).shape
    _assert_all_close(got, want)


# Differentiating trace(hessian) once more is the costly compile: a few cases suffice here
# (theta-gradients of outputs are compared for every input dim in test_fast.py).
@pytest.mark.slow
@pytest.mark.parametrize("case", [CASES[0], CASES[2], CASES[7]], ids=lambda c: f"in{c[0]}")
def test_pinn_loss_gradients_match_the_general_path(case):
    fast, general, xs = _both_paths(case)

    @jax.jit
    def run(theta):
        grads = []
        for fm in (fast, general):
            lap = jax.vmap(sb.laplacian(fm), in_axes=(None, 0))
            grads.append(jax.grad(lambda t: jnp.mean((lap(t, xs) + 1.0) ** 2))(theta))
        return grads

    got, want = run(fast.theta0)
    _assert_all_close([got], [want])


def test_laplacian_is_the_trace_of_the_hessian():
    mlp = _mlp(3, 2, 6, 2, jnp.tanh)
    xs = _points(3)
    model = mlp
    expect = jax.jit(jax.vmap(lambda x: _hessian_trace(model, x)))(xs)
    for fm in (sb.flat(mlp), sb.flat(mlp, fast=False)):
        got = jax.jit(jax.vmap(sb.laplacian(fm), in_axes=(None, 0)))(fm.theta0, xs)
        np.testing.assert_allclose(got, expect, rtol=1e-12, atol=1e-12)


def test_closed_form_one_hidden_layer():
    # u(x) = sum_j a_j sin(w_j . x + b_j)  =>  Laplacian u = -sum_j a_j |w_j|^2 sin(w_j . x + b_j)
    mlp = _mlp(3, "scalar", 6, 1, jnp.sin, use_final_bias=False)
    w, b, a = mlp.layers[0].weight, mlp.layers[0].bias, mlp.layers[1].weight[0]
    x = jnp.array([0.2, -0.4, 0.9])
    expect = -jnp.sum(a * jnp.sum(w * w, axis=1) * jnp.sin(w @ x + b))
    fm = sb.flat(mlp)
    np.testing.assert_allclose(sb.laplacian(fm)(fm.theta0, x), expect, rtol=1e-13)


def test_user_supplied_derivatives_are_used():
    f, df = (lambda z: z * z * z), (lambda z: 3 * z * z)
    right, wrong = (lambda z: 6 * z), (lambda z: 0 * z)
    x = jnp.array([0.3, 0.8])
    laps = []
    for d2f in (right, wrong):
        fm = sb.FlatMLP((2, 4, 1), (f, df, d2f), key=jax.random.key(0), dtype=jnp.float64)
        laps.append(jax.jit(sb.laplacian(fm))(fm.theta0, x))
    model = fm.restructure(fm.theta0)
    expect = jax.jit(lambda x: _hessian_trace(model, x))(x)
    np.testing.assert_allclose(laps[0], expect, rtol=1e-13)
    assert not np.allclose(laps[1], expect)


def test_relu_is_a_clear_error_for_laplacian_but_fine_for_grad_x():
    fm = sb.flat(_mlp(2, 1, 5, 2, jax.nn.relu))
    with pytest.raises(ValueError, match=r"(?s)`relu` is not twice\sdifferentiable.*sb.grad_x"):
        sb.laplacian(fm)
    first_only = sb.FlatMLP((2, 3, 1), (jnp.sin, jnp.cos), key=jax.random.key(0))
    with pytest.raises(ValueError, match=r"\(f, df\)` without its second derivative"):
        sb.laplacian(first_only)
    x = jnp.array([0.3, -0.2])
    np.testing.assert_allclose(sb.grad_x(first_only)(first_only.theta0, x),
                               jax.jacfwd(first_only.restructure(first_only.theta0))(x),
                               rtol=1e-13)
    np.testing.assert_allclose(sb.grad_x(fm)(fm.theta0, x),
                               jax.jacfwd(fm.restructure(fm.theta0))(x), rtol=1e-13)


def test_general_path_any_input_shape_and_extra_args():
    def f(theta, x, scale):
        return scale * jnp.sum(jnp.sin(theta[0] * x) * x)

    theta, scale = jnp.array([1.3]), 2.0
    lap, jac = jax.jit(sb.laplacian(f)), jax.jit(sb.grad_x(f))
    for x in (np.array(0.4), np.array([[0.1, 0.2], [0.3, 0.4]])):
        # d^2/dx^2 [x sin(t x)] = 2 t cos(t x) - t^2 x sin(t x), summed over the entries
        expect = scale * np.sum(2 * 1.3 * np.cos(1.3 * x) - 1.3**2 * x * np.sin(1.3 * x))
        np.testing.assert_allclose(lap(theta, x, scale), expect, rtol=1e-13)
        assert jac(theta, x, scale).shape == x.shape


def test_pinn_loss_gradient_never_retraces():
    fm = sb.flat(_mlp(2, "scalar", 8, 2, jnp.tanh))
    xs = _points(2, n=16)
    lap = jax.vmap(sb.laplacian(fm), in_axes=(None, 0))
    counter = TraceCounter(lambda t: jnp.mean((lap(t, xs) - 1.0) ** 2))
    step = jax.jit(jax.value_and_grad(counter))
    loss0, _ = step(fm.theta0)
    loss1, _ = step(fm.theta0 * 1.1)
    assert counter.count == 1 and float(loss0) != float(loss1)


def test_not_callable_is_a_type_error():
    with pytest.raises(TypeError, match="`sb.laplacian\\(fm\\)` expected a flat model"):
        sb.laplacian(jnp.ones(3))
    with pytest.raises(TypeError, match="`sb.grad_x\\(fm\\)` expected a flat model"):
        sb.grad_x(None)


@pytest.mark.parametrize("fn, name, shape", [(sb.laplacian, "g", (1185,)), (sb.grad_x, "g", (3,))])
def test_docstring_examples_run(fn, name, shape):
    code = fn.__doc__.split("```python")[1].split("```")[0]
    namespace: dict = {}
    exec(textwrap.dedent(code), namespace)
    assert namespace[name].shape == shape


# ---- the batched kernel: `sb.laplacian(fm, batched=True)` -----------------------------------

def _linear_first():
    """A `Sequential` whose first `Linear` has no activation: the Jacobian stays `(width, d)`."""
    key = jax.random.key(0)
    lin = lambda i, o: eqx.nn.Linear(i, o, key=key, dtype=jnp.float64)
    return _random(lambda: eqx.nn.Sequential([lin(3, 4), lin(4, 5), eqx.nn.Lambda(jnp.tanh),
                                              lin(5, 6), eqx.nn.Lambda(jnp.sin), lin(6, 2)]))


BATCHED = [CASES[3], CASES[8], "linear-first"]


@pytest.mark.parametrize("case", BATCHED, ids=lambda c: c if isinstance(c, str) else
                         f"in{c[0]}-out{c[1]}-depth{c[3]}")
def test_batched_kernel_matches_per_point_and_hessian_trace(case):
    # Another program than `jax.vmap` of the per-point pass (points-last layout, the first
    # layer's Jacobian folded into the second matmul): equal up to rounding, in value, in the
    # theta-gradient of a PINN loss (reverse mode) and in a theta-tangent (forward mode).
    mlp = _linear_first() if case == "linear-first" else _mlp(*case)
    fast, general = sb.flat(mlp), sb.flat(mlp, fast=False)
    assert fast.is_fast
    xs = _points(3 if case == "linear-first" else case[0], n=6)
    per_point = jax.vmap(sb.laplacian(fast), in_axes=(None, 0))
    batched = sb.laplacian(fast, batched=True)
    tangent = jnp.cos(jnp.arange(fast.size, dtype=jnp.float64))

    @jax.jit
    def run(theta):
        out = []
        for lap in (batched, per_point):
            loss = lambda t: jnp.mean((lap(t, xs) + 1.0) ** 2)
            out.append((lap(theta, xs), jax.grad(loss)(theta),
                        jax.jvp(lambda t: lap(t, xs), (theta,), (tangent,))[1]))
        return out, sb.laplacian(general, batched=True)(theta, xs)

    (got, want), hessian_trace = run(fast.theta0)
    assert got[0].shape == want[0].shape == jax.vmap(fast, in_axes=(None, 0))(fast.theta0, xs).shape
    for a, b in zip(got, want):
        assert_ulp_close(a, b, ulps=16)
    np.testing.assert_allclose(got[0], hessian_trace, rtol=1e-12, atol=1e-12)


def test_batched_kernel_widens_like_the_model_and_checks_the_batch_shape():
    mlp64 = _mlp(2, "scalar", 5, 1, jnp.tanh)
    cast = lambda tree, dtype: jax.tree.map(
        lambda a: a.astype(dtype) if eqx.is_array(a) else a, tree)
    mlp32 = cast(mlp64, jnp.float32)
    fm32, fm64 = sb.flat(mlp32), sb.flat(cast(mlp32, jnp.float64))
    xs = np.linspace(-1, 1, 8).reshape(4, 2)  # float64 points into float32 weights: widened
    lap = sb.laplacian(fm32, batched=True)
    got = lap(fm32.theta0, xs)
    assert got.shape == (4,) and got.dtype == jnp.float64
    assert_ulp_close(got, sb.laplacian(fm64, batched=True)(fm64.theta0, xs))
    for bad in (xs[0], xs.reshape(2, 2, 2), xs[:, :1]):
        with pytest.raises(ValueError, match=r"(?s)batched=True\)\(theta, xs\)`.*expected a batch"):
            lap(fm32.theta0, bad)


def test_batched_general_path_shares_extra_args():
    def f(theta, x, scale):
        return scale * jnp.sum(jnp.sin(theta[0] * x))

    theta, xs = jnp.array([1.3]), jnp.array([[0.1, 0.2], [0.3, 0.4], [-0.5, 0.6]])
    got = jax.jit(sb.laplacian(f, batched=True))(theta, xs, 2.0)
    expect = -2.0 * 1.3**2 * jnp.sum(jnp.sin(1.3 * xs), axis=1)
    np.testing.assert_allclose(got, expect, rtol=1e-13)


def test_general_path_laplacian_of_a_float32_point_with_float64_weights_is_float64():
    # Reverse mode differentiates in the dtype of `x`: the general path's Laplacian came back
    # float32 (3.5e-9 off), while the model, `grad_x` and the fast path give float64.
    mlp = eqx.nn.MLP(2, "scalar", 16, 2, activation=jnp.tanh, key=jax.random.key(0),
                     dtype=jnp.float64)  # fmt: skip
    fast, general = sb.flat(mlp), sb.flat(mlp, fast=False)
    x32 = jnp.array([0.3, -0.7], jnp.float32)
    want = sb.laplacian(general)(general.theta0, x32.astype(jnp.float64))
    got = sb.laplacian(general)(general.theta0, x32)
    assert got.dtype == jnp.float64 and float(got) == float(want)
    np.testing.assert_allclose(float(sb.laplacian(fast)(fast.theta0, x32)), float(want),
                               rtol=1e-13)  # fmt: skip


@pytest.mark.parametrize("final", ["sin", None], ids=["final-activation", "linear"])
def test_batched_kernel_with_no_hidden_layer(final):
    # One layer: the Jacobian never leaves the `(width, d)` shape shared by all points (and the
    # Laplacian of a linear model is zero), with vector outputs.
    fm = sb.FlatMLP((3, 2), final_activation=final, key=jax.random.key(0), dtype=jnp.float64)
    xs = _points(3)
    got = jax.jit(sb.laplacian(fm, batched=True))(fm.theta0, xs)
    model = fm.restructure(fm.theta0)
    expect = jax.jit(jax.vmap(lambda x: _hessian_trace(model, x)))(xs)
    assert got.shape == expect.shape == (5, 2)
    np.testing.assert_allclose(got, expect, rtol=1e-12, atol=1e-13)
    assert (final is None) == bool(np.all(got == 0))


def test_general_path_laplacian_of_a_pytree_output_as_grad_x_takes_it():
    # `grad_x` took any pytree of outputs; `laplacian` read `.dtype` off the tuple
    # (AttributeError). Each leaf is the trace of its own Hessian; a complex leaf stays complex.
    mlp = _mlp(2, 3, 6, 1, jnp.tanh)

    def f(theta, x):
        y = mlp(x) * theta[0]
        return y[0], {"rest": jax.lax.complex(y[1:], y[:2])}

    theta, xs = jnp.array([1.5]), _points(2, n=3)

    @jax.jit
    def run(theta):
        got = jax.vmap(sb.laplacian(f), in_axes=(None, 0))(theta, xs)
        return got, sb.laplacian(f, batched=True)(theta, xs)

    (first, rest), (b_first, b_rest) = (jax.tree.leaves(t) for t in run(theta))
    model = lambda x: 1.5 * mlp(x)
    want = np.asarray(jax.jit(jax.vmap(lambda x: _hessian_trace(model, x)))(xs))
    assert first.shape == (3,) and rest.shape == (3, 2) and rest.dtype == jnp.complex128
    np.testing.assert_allclose(first, want[:, 0], rtol=1e-12, atol=1e-13)
    np.testing.assert_allclose(rest, want[:, 1:] + 1j * want[:, :2], rtol=1e-12, atol=1e-13)
    np.testing.assert_allclose(b_first, first, rtol=1e-15, atol=1e-300)
    np.testing.assert_allclose(b_rest, rest, rtol=1e-15, atol=1e-300)


def test_the_general_path_of_a_relu_network_refuses_the_laplacian_as_the_fast_path_does():
    # `sb.flat(relu_mlp)` raised, `sb.flat(relu_mlp, fast=False)` returned trace(hessian) = 0
    # (autodiff's second derivative of relu), alone or inside an `sb.HardConstraint`.
    mlp = _mlp(2, 1, 5, 2, jax.nn.relu)
    general, x = sb.flat(mlp, fast=False), jnp.array([0.3, -0.2])
    box = sb.HardConstraint(general, lambda x: 1 - x[0] ** 2)
    for fm in (general, box):
        with pytest.raises(ValueError, match=r"`relu` is not twice\sdifferentiable"):
            sb.laplacian(fm)(general.theta0, x)
    np.testing.assert_allclose(sb.grad_x(general)(general.theta0, x), jax.jacfwd(mlp)(x),
                               rtol=1e-13)  # fmt: skip
    smooth = sb.flat(_mlp(2, 1, 5, 2, jnp.tanh), fast=False)  # recognised, smooth: allowed
    assert sb.laplacian(smooth)(smooth.theta0, x).shape == (1,)


def test_batched_laplacian_never_narrows_a_wider_later_layer():
    # `precision="model"`, a float32 first layer and float64 later ones, float32 points: the
    # batched pass cast every layer to float32 (1.5e-8 off the per-point Laplacian, which
    # promotes layer by layer as the nested `eqx.nn.Linear` does).
    mlp = _mlp(2, 1, 3, 1, jnp.tanh)
    first = jax.tree.map(lambda a: a.astype(jnp.float32), mlp.layers[0])
    fm = sb.flat(eqx.tree_at(lambda m: m.layers[0], mlp, first), precision="model")
    xs = _points(2, n=5).astype(jnp.float32)
    with pytest.warns(sb.PrecisionLossWarning):  # float64 theta read into the float32 layer
        batched = sb.laplacian(fm, batched=True)(fm.theta0, xs)
        one = jax.vmap(sb.laplacian(fm), in_axes=(None, 0))(fm.theta0, xs)
    assert batched.dtype == one.dtype == jnp.float64
    assert_ulp_close(batched, one, ulps=64)


def test_the_smoothness_check_recognises_a_network_once_then_remembers(monkeypatch):
    # It rebuilt and recognised the model at every eager call (~0.8 ms each).
    calls, real = [], _checks.recognise
    monkeypatch.setattr(_checks, "recognise", lambda *a: calls.append(1) or real(*a))
    relu = sb.flat(_mlp(2, 1, 4, 2, jax.nn.relu), fast=False)
    x = jnp.array([0.3, -0.2])
    for _ in range(3):  # refused every time, recognised once
        with pytest.raises(ValueError, match=r"`relu` is not twice\sdifferentiable"):
            sb.laplacian(relu)(relu.theta0, x)
    assert len(calls) <= 1
