"""`batch_size=`, `key=` and `tol=` of `sb.minimize` / `sb.least_squares`: what they accept,
what they refuse (and how the message says so), and the stopping rule under minibatches.
Also the dtypes `theta0` may have per method, and the documented `Raises`."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import sciml_bridge as sb
from sciml_bridge._solvers._shuffle import batch_rows, shuffled


_X = jnp.array([0.0, 10.0])  # two rows: the full loss has its minimum at 5 (loss 25)
_SQ = lambda theta, x: jnp.mean((theta[0] - x) ** 2)
_RESIDUAL = lambda theta, x: theta[0] - x
_QUIET = dict(progress=False)


def _keyed(theta, x, *, key):
    return jnp.mean((theta[0] - x) ** 2) + 0.0 * jax.random.normal(key)


# --- tol with minibatches: a stopping rule on one minibatch's gradient ----------------


def test_tol_with_batch_size_is_refused():
    # It said "converged" at theta = 0 (loss 50) after 1 step: row 0's gradient vanished there.
    with pytest.raises(ValueError, match=r"(?s)`tol=1e-06` with `batch_size=1`.*drop `tol=`"):
        sb.minimize(_SQ, jnp.zeros(1), "adam", args=(_X,), batch_size=1,
                    key=jax.random.key(3), tol=1e-6, max_steps=500, learning_rate=0.1,
                    **_QUIET)  # fmt: skip
    with pytest.raises(ValueError, match="`sb.least_squares` got `tol=0.001` with `batch_size"):
        sb.least_squares(_RESIDUAL, jnp.zeros(1), args=(_X,), batch_size=1, tol=1e-3, **_QUIET)


def test_tol_with_a_key_the_loss_takes_is_refused():
    with pytest.raises(ValueError, match="(?s)a loss that takes `key`.*a fresh key"):
        sb.minimize(_keyed, jnp.zeros(1), "adam", args=(_X,), key=jax.random.key(0),
                    tol=1e-6, **_QUIET)  # fmt: skip


def test_tol_with_a_key_the_loss_ignores_still_stops():
    # No minibatches, a loss without `key`: one fixed loss, so `tol` means what it says.
    res = sb.minimize(_SQ, jnp.zeros(1), "lbfgs", args=(_X,), key=jax.random.key(0),
                      tol=1e-6, max_steps=50, **_QUIET)  # fmt: skip
    assert res.success and res.steps < 50 and float(res.theta[0]) == pytest.approx(5.0)


@pytest.mark.parametrize("method", ["lbfgs", "bfgs"])
def test_a_default_tolerance_never_stops_a_minibatch_run(method):
    # These methods have a default `tol` (not refused: the user gave none). At theta = 0 the
    # gradient on row 0 is 0, so the run "converged" there, loss 50, before any step.
    res = sb.minimize(_SQ, jnp.zeros(1), method, args=(_X,), batch_size=1,
                      key=jax.random.key(3), max_steps=6, **_QUIET)  # fmt: skip
    assert res.steps == 6 and res.success and "converged" not in res.message
    assert res.loss == pytest.approx(float(_SQ(res.theta, _X)), rel=1e-12)


@pytest.mark.parametrize("method", ["gauss-newton", "lm"])
def test_a_default_tolerance_never_stops_a_minibatch_least_squares_run(method):
    res = sb.least_squares(_RESIDUAL, jnp.zeros(1), method, args=(_X,), batch_size=1,
                           key=jax.random.key(3), max_steps=4, **_QUIET)  # fmt: skip
    assert res.steps == 4 and res.success and "converged" not in res.message


def test_without_minibatches_the_default_tolerance_still_stops():
    res = sb.least_squares(_RESIDUAL, jnp.zeros(1), args=(_X,), max_steps=50, **_QUIET)
    assert res.success and res.steps < 50 and "converged" in res.message


# --- key= -----------------------------------------------------------------------------


def test_a_batch_of_keys_is_refused_and_members_share_one_key():
    keys = jax.random.split(jax.random.key(0), 2)  # one per member: not supported
    with pytest.raises(ValueError, match=r"(?s)got 2 keys \(a key array of shape \(2,\)\).*"
                                         r"shares one `key`.*`key=keys\[0\]`"):  # fmt: skip
        sb.minimize(_keyed, jnp.zeros((2, 1)), "adam", args=(_X,), key=keys, batch_size=1,
                    **_QUIET)  # fmt: skip
    legacy = jax.vmap(jax.random.PRNGKey)(jnp.arange(2))  # shape (2, 2) uint32
    with pytest.raises(ValueError, match="got 2 keys"):
        sb.minimize(_SQ, jnp.zeros(1), "adam", args=(_X,), key=legacy, batch_size=1, **_QUIET)


@pytest.mark.parametrize("key", [0, 1.5, "seed", np.array([1, 2, 3], np.uint32)])
def test_a_key_that_is_not_a_prng_key_is_refused(key):
    # key=0 gave JAX's "invalid PRNG key data" from inside the run.
    seed = "0" if isinstance(key, str | float | np.ndarray) else str(key)
    with pytest.raises(TypeError, match=rf"(?s)expected `key` to be a JAX PRNG key.*"
                                        rf"`key=jax.random.key\({seed}\)`"):  # fmt: skip
        sb.minimize(_SQ, jnp.zeros(1), "adam", args=(_X,), key=key, batch_size=1, **_QUIET)


@pytest.mark.parametrize("key", [jax.random.key(5), jax.random.PRNGKey(5)])
def test_typed_and_legacy_keys_draw_the_same_batches(key):
    res = sb.minimize(_SQ, jnp.zeros(1), "sgd", args=(_X,), key=key, batch_size=1,
                      max_steps=4, learning_rate=0.1, **_QUIET)  # fmt: skip
    ref = sb.minimize(_SQ, jnp.zeros(1), "sgd", args=(_X,), key=jax.random.key(5),
                      batch_size=1, max_steps=4, learning_rate=0.1, **_QUIET)  # fmt: skip
    np.testing.assert_array_equal(np.asarray(res.history), np.asarray(ref.history))


def test_ensemble_members_share_the_batches_of_a_single_run():
    # Documented: one key for every member (same start, same batches: same losses).
    kw = dict(args=(_X,), batch_size=1, key=jax.random.key(1), max_steps=4, learning_rate=0.1,
              **_QUIET)  # fmt: skip
    single = sb.minimize(_SQ, jnp.zeros(1), "sgd", **kw)
    ensemble = sb.minimize(_SQ, jnp.zeros((2, 1)), "sgd", **kw)
    for member in ensemble:
        np.testing.assert_allclose(np.asarray(member.history), np.asarray(single.history),
                                   rtol=1e-14)  # fmt: skip


@pytest.mark.parametrize("batch_size", [None, 1])
def test_a_loss_that_requires_a_key_without_key_is_refused(batch_size):
    # It raised Python's "missing 1 required keyword-only argument: 'key'" from the trace.
    with pytest.raises(TypeError, match=r"(?s)requires a `key` argument, but no `key=`.*"
                                        r"key=jax.random.key\(0\)"):  # fmt: skip
        sb.minimize(_keyed, jnp.zeros(1), "adam", args=(_X,), batch_size=batch_size, **_QUIET)
    with pytest.raises(TypeError, match="requires a `key` argument"):
        sb.least_squares(lambda t, x, *, key: t[0] - x, jnp.zeros(1), args=(_X,),
                         batch_size=batch_size, **_QUIET)  # fmt: skip


def test_a_key_with_a_default_or_passed_in_args_is_not_required():
    def loss(theta, x, *, key=None):
        return jnp.mean((theta[0] - x) ** 2)

    assert sb.minimize(loss, jnp.zeros(1), "adam", args=(_X,), max_steps=2, **_QUIET).steps == 2

    def positional(theta, x, key):
        return jnp.mean((theta[0] - x) ** 2) + 0.0 * jax.random.normal(key)

    res = sb.minimize(positional, jnp.zeros(1), "adam", args=(_X, jax.random.key(0)),
                      max_steps=2, **_QUIET)  # fmt: skip
    assert res.steps == 2


# --- batch_size= ----------------------------------------------------------------------


def test_a_numpy_integer_batch_size_is_accepted():
    # It was refused with "expected a positive int ... but got np.int64(4)".
    x = jnp.arange(8.0)
    kw = dict(args=(x,), key=jax.random.key(0), max_steps=5, learning_rate=0.1, **_QUIET)
    res = sb.minimize(_SQ, jnp.zeros(1), "adam", batch_size=np.int64(4), **kw)
    ref = sb.minimize(_SQ, jnp.zeros(1), "adam", batch_size=4, **kw)
    np.testing.assert_array_equal(np.asarray(res.history), np.asarray(ref.history))
    ls = sb.least_squares(_RESIDUAL, jnp.zeros(1), "lm", args=(x,), batch_size=np.int32(4),
                          max_steps=3, **_QUIET)  # fmt: skip
    assert ls.steps == 3


@pytest.mark.parametrize(("batch_size", "error"), [
    (0, ValueError), (-1, ValueError), (4.0, TypeError), (True, TypeError), ("4", TypeError),
])  # fmt: skip
def test_a_batch_size_that_is_not_a_positive_int_is_refused(batch_size, error):
    # The wrong kind is a TypeError (it was a ValueError, against the library's rule).
    with pytest.raises(error, match=r"expected `batch_size` to be None or a positive int"):
        sb.minimize(_SQ, jnp.zeros(1), "adam", args=(jnp.arange(8.0),), batch_size=batch_size,
                    **_QUIET)  # fmt: skip


def test_a_batch_size_above_the_rows_is_refused():
    with pytest.raises(ValueError, match=r"no larger than the number of rows in\n`args` \(2\)"):
        sb.minimize(_SQ, jnp.zeros(1), "adam", args=(_X,), batch_size=np.int64(3), **_QUIET)


# --- half precision -------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [jnp.float16, jnp.bfloat16])
@pytest.mark.parametrize("method", ["gauss-newton", "natural-gradient"])
def test_half_precision_gauss_newton_is_refused_up_front(method, dtype):
    # It raised LAPACK's bare NotImplementedError("Unsupported dtype float16") mid-trace.
    name = jnp.dtype(dtype).name
    with pytest.raises(TypeError, match=rf"(?s)dtype {name}, but method='{method}' with "
                                        rf"solver='auto'.*astype\(jnp.float32\).*solver=\"cg\""):
        sb.least_squares(_RESIDUAL, jnp.zeros(1, dtype), method, args=(_X,), **_QUIET)
    with pytest.raises(TypeError, match=rf"dtype {name}"):
        sb.least_squares(_RESIDUAL, jnp.zeros((2, 1), dtype), method, args=(_X,), **_QUIET)


@pytest.mark.parametrize("method", ["lm", "dogleg", ("gauss-newton", "cg")])
def test_half_precision_runs_where_the_method_can(method):
    method, options = (method[0], dict(solver=method[1])) if isinstance(method, tuple) else (
        method, {})  # fmt: skip
    res = sb.least_squares(_RESIDUAL, jnp.zeros(1, jnp.float16), method,
                           args=(_X.astype(jnp.float16),), max_steps=20, **options,
                           **_QUIET)  # fmt: skip
    assert res.theta.dtype == jnp.float16 and float(res.theta[0]) == pytest.approx(5.0, abs=1e-2)


@pytest.mark.parametrize("method", ["adam", "lbfgs", "bfgs", "ssbroyden"])
def test_half_precision_minimize_methods_run(method):
    # Two parameters: "ssbroyden" divides by `1 - n` (a one-parameter run is another issue).
    loss = lambda theta, x: jnp.mean((theta[0] - x) ** 2) + theta[1] ** 2
    res = sb.minimize(loss, jnp.zeros(2, jnp.bfloat16), method, args=(_X.astype(jnp.bfloat16),),
                      max_steps=20, throw=False, **_QUIET)  # fmt: skip
    assert res.theta.dtype == jnp.bfloat16 and res.result in (sb.RESULTS.successful,
                                                              sb.RESULTS.max_steps_reached)


# --- documented Raises ----------------------------------------------------------------


def test_the_raises_sections_name_the_refusals():
    raises = sb.minimize.__doc__.split("**Raises:**")[1]
    for phrase in ("`bounds=`/`constraints=`", "sb.scipy_objective", "`tol=`", "batch of keys"):
        assert phrase in " ".join(raises.split()), phrase
    assert "float16/bfloat16" in sb.least_squares.__doc__.split("**Raises:**")[1]


@pytest.mark.parametrize("method", ["ssbfgs", "ssbroyden"])
def test_self_scaled_methods_refuse_minibatches(method):
    # Their line search starts from the previous step's loss and gradient: on a new batch
    # every step it stalled after two steps, advising a `tol=` that minibatches refuse.
    loss = lambda t, x: jnp.mean((t - x) ** 2)
    with pytest.raises(ValueError, match="carries the loss and gradient"):
        sb.minimize(loss, jnp.zeros(1), method, args=(jnp.arange(8.0),), batch_size=2,
                    progress=False)  # fmt: skip
    res = sb.minimize(loss, jnp.zeros(1), method, args=(jnp.arange(8.0),), progress=False)
    assert res.success and float(res.theta[0]) == pytest.approx(3.5, rel=1e-10)


# --- the shuffle ------------------------------------------------------------------------


def test_every_row_once_per_epoch_without_sorting_all_rows():
    # It drew `jax.random.permutation(key, N)` at every step: a sort of all N rows, 8 ms a
    # step for 10^4 rows and 0.87 s for 10^6 (a full-data step: 1.6 ms).
    batch = jax.jit(lambda k: batch_rows(jax.random.key(0), k, 12, 4))
    for epoch in range(2):
        seen = np.concatenate([batch(3 * epoch + i) for i in range(3)])
        np.testing.assert_array_equal(np.sort(seen), np.arange(12))
    assert not np.array_equal(np.concatenate([batch(i) for i in range(3)]),
                              np.concatenate([batch(3 + i) for i in range(3)]))  # fmt: skip
    assert "sort" not in str(jax.make_jaxpr(batch)(0))
    for rows in (1, 2, 5, 17):  # a permutation of every size, also for a legacy key
        got = shuffled(jax.random.PRNGKey(rows), rows, jnp.arange(rows))
        np.testing.assert_array_equal(np.sort(got), np.arange(rows))


def test_the_epoch_permutation_reaches_odd_permutations_where_rows_is_a_power_of_four():
    # A balanced Feistel network is always an even permutation: at 16 rows (no cycle walking)
    # every epoch's order was even, half the orders unreachable.
    orders = jax.jit(jax.vmap(lambda k: shuffled(k, 16, jnp.arange(16))))(
        jax.random.split(jax.random.key(1), 200))

    def odd(p):
        seen, parity = set(), 0
        for i in range(len(p)):
            j, length = i, 0
            while j not in seen:
                seen.add(j)
                j, length = int(p[j]), length + 1
            parity += max(length - 1, 0)
        return parity % 2

    fraction = np.mean([odd(np.asarray(p)) for p in orders])
    assert 0.35 < fraction < 0.65, fraction  # 0.0 before; 1/2 for a uniform permutation
