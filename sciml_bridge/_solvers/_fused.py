"""The compiled side of the driver: a few steps of a stepper per dispatch, members vmapped.

The driver (`_run.py`) calls three kernels: `init_members`, `run_chunk` and `final_members`,
each one `eqx.filter_jit`. A chunk is a `lax.while_loop` of at most `n` steps (a traced
scalar, so the last, shorter chunk never retraces) that stops at the first step that is not
`RESULTS.successful` or says `done`. For an ensemble the loop is `jax.vmap`ped over members: a
batched `while_loop` runs while any member runs and freezes the carry of the others, so each
member keeps its own last good `theta` and a failing member leaves the others untouched. On a
CPU mesh of several devices the members run one after another on each device instead (see
`member_layout`): each keeps its own loop, and no batched LAPACK call can deadlock the devices.
Members split over a `"members"` mesh axis run in a `jax.shard_map`, and a single run on such
a mesh whole on each device (`_on_mesh.py`), so that a raise on one device cannot abort XLA.

Solver states may hold jaxprs next to arrays (Optimistix linearisations): only the array part
crosses the `jit` boundary; the static part is computed once at `init` and handed back
unchanged to every chunk, exactly as `optimistix/_iterate.py` carries its `while_loop` state.
Every kernel takes and returns arrays with a leading member axis; a single run (N = 1) runs
the plain, un-vmapped loop and adds that axis inside the `jit`, where it costs nothing.
"""

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.tree_util as jtu
from jax.sharding import Mesh

from ._on_mesh import Kernel, Whole, on_every_device, one_by_one, per_device, single, whole_layout
from ._stepper import RESULTS


def _tree_where(pred, new, old):
    return jtu.tree_map(lambda a, b: jnp.where(pred, a, b), new, old)


def _loop(stepper, args, static, dynamic, good_theta, good_loss, active, n, chunk):
    hist = jnp.full((chunk,), jnp.nan, dtype=good_loss.dtype)
    init = (dynamic, good_theta, good_loss, RESULTS.successful, ~active, jnp.asarray(0), hist)

    def cond(carry):
        _, _, _, result, done, i, _ = carry
        return (i < n) & (result == RESULTS.successful) & ~done

    def body(carry):
        dynamic, good_theta, good_loss, _, _, i, hist = carry
        state = eqx.combine(dynamic, static)
        theta = stepper.theta(state)
        new_state, loss, done, result = stepper.step(state, args)
        # In `value`'s dtype: a line search may carry the loss in `theta`'s precision.
        loss = jnp.asarray(loss).astype(good_loss.dtype)
        # A NaN gradient at a finite loss can leave a NaN `theta` beside a line search's
        # stored (finite) value (Optax L-BFGS), or beside a loss that is finite there
        # (`jnp.where`): such a point is not a good one, nor a point of the loss curve.
        finite = jnp.isfinite(loss) & jnp.all(jnp.isfinite(theta))
        loss = jnp.where(finite, loss, jnp.nan)
        result = RESULTS.where(finite, result, RESULTS.nonfinite)
        apply = result == RESULTS.successful
        dynamic = _tree_where(apply, eqx.filter(new_state, eqx.is_array), dynamic)
        good_theta = jnp.where(finite, theta, good_theta)
        good_loss = jnp.where(finite, loss, good_loss)
        done = jnp.asarray(done) & apply
        return dynamic, good_theta, good_loss, result, done, i + 1, hist.at[i].set(loss)

    dynamic, good_theta, good_loss, result, done, i, hist = jax.lax.while_loop(cond, body, init)
    return dynamic, (good_theta, good_loss, result._value, done, i, hist)


def _member_axis(layout: str | Mesh | None, fn, in_axes):
    """`fn` over members as `layout` says (`member_layout`): vmapped, mapped, mapped on each
    device of a members mesh, or (`None`) called plainly with a member axis added."""
    if layout == "vmap":
        return jax.vmap(fn, in_axes=in_axes)
    if layout == "map":
        return one_by_one(fn, in_axes)
    if isinstance(layout, Mesh):
        return per_device(layout, fn, in_axes)

    def plain(*xs):
        xs = [x if a is None else jtu.tree_map(lambda y: y[0], x) for x, a in zip(xs, in_axes)]
        return jtu.tree_map(lambda y: y[None], fn(*xs))

    if isinstance(layout, Whole):
        return lambda *xs: on_every_device(layout.mesh, plain, xs)
    return plain


def _strong(tree):
    # Optax inits hold weak-typed scalars that come back strong from the first chunk, and a
    # weak/strong flip is a new `jit` signature, i.e. one retrace: strong-type every leaf.
    return jtu.tree_map(lambda x: jax.lax.convert_element_type(x, x.dtype), tree)


def _init_one(stepper, args, theta):
    state = stepper.init(theta, args)
    struct = jax.eval_shape(lambda t: stepper.value(t, args), theta)
    return state, jnp.full((), jnp.nan, dtype=struct.dtype)


@eqx.filter_jit
def _init_members(stepper, args, theta0, layout: str | Mesh | None):
    """`(dynamic, static, good_theta, nan_losses)` for `theta0` (`(members, n)` for an
    ensemble, one `(n,)` run when `layout` is `None`): the array part of every member's state
    (leading member axis), the static part shared by all, the start as the first "last good"
    point (a fresh buffer, not the user's `theta0`), and "no good loss yet" placeholders."""
    static_box = []

    def one(t):
        state, nan = _init_one(stepper, args, t)
        dynamic, static = eqx.partition(state, eqx.is_array)
        static_box.append(static)
        return _strong(dynamic), nan, t

    thetas = theta0[None] if single(layout) else theta0
    dynamic, nan, good = _member_axis(layout, one, (0,))(thetas)
    return dynamic, static_box[0], good, nan


def _chunk(keep, dynamic):
    stepper, args, static, good_theta, good_loss, active, n, chunk, layout = keep

    def one(dynamic, good_theta, good_loss, active):
        return _loop(stepper, args, static, dynamic, good_theta, good_loss, active, n, chunk)

    return _member_axis(layout, one, (0, 0, 0, 0))(dynamic, good_theta, good_loss, active)


@eqx.filter_jit
def _run_chunk(keep, dynamic):
    """At most `n` steps for every active member. Nothing is donated: the state at the start
    of the chunk survives a runtime error raised in it (`eqx.error_if` fires for the whole
    vmapped batch), so the driver can run the chunk again, member by member, up to the step
    that raised (`_recover.py`)."""
    return _chunk(keep, dynamic)


@eqx.filter_jit
def _final_members(stepper, args, static, dynamic, layout: str | Mesh | None):
    """The current `theta` of every member, the loss there and the model state (`None`
    unless the loss is stateful). For a single run `theta` and the model state are returned
    without the member axis, ready to hand back as `res.theta` and `res.state`."""

    def one(dynamic):
        state = eqx.combine(dynamic, static)
        return stepper.theta(state), stepper.value_of(state, args), stepper.model_state(state)

    theta, loss, model = _member_axis(layout, one, (0,))(dynamic)
    if single(layout):
        theta, model = theta[0], jtu.tree_map(lambda x: x[0], model)
    return theta, loss, model


@eqx.filter_jit
def model_states(stepper, static, dynamic):
    """A copy of the model state in `dynamic` (e.g. the rows of members a raise stopped)."""
    return jtu.tree_map(jnp.copy, stepper.model_state(eqx.combine(dynamic, static)))


@eqx.filter_jit
def _values_at(stepper, args, thetas, layout: str | Mesh | None):
    """The loss of every member at `thetas` (for a run whose setup raised)."""
    return _member_axis(layout, lambda t: stepper.value(t, args), (0,))(thetas)


@eqx.filter_jit
def _good_values(stepper, args, static, dynamic, thetas, layout: str | Mesh | None):
    """The loss of every member at `thetas`, its last good points, evaluated as there
    (`AbstractStepper.value_at_good`: with the model state of that evaluation)."""

    def one(dynamic, theta):
        return stepper.value_at_good(eqx.combine(dynamic, static), theta, args)

    return _member_axis(layout, one, (0, 0))(dynamic, thetas)


# Each kernel finds the `Whole` layout its arrays need before its `jit` (it is static).
def _init_layout(stepper, args, theta0, layout):
    return stepper, args, theta0, whole_layout(layout, theta0)


def _chunk_layout(keep, dynamic):
    return (*keep[:8], whole_layout(keep[8], keep[3], dynamic)), dynamic


def _final_layout(stepper, args, static, dynamic, layout):
    return stepper, args, static, dynamic, whole_layout(layout, dynamic)


def _values_layout(stepper, args, thetas, layout):
    return stepper, args, thetas, whole_layout(layout, thetas)


def _good_layout(stepper, args, static, dynamic, thetas, layout):
    return stepper, args, static, dynamic, thetas, whole_layout(layout, dynamic, thetas)


init_members = Kernel(_init_members, _init_layout)
run_chunk = Kernel(_run_chunk, _chunk_layout)
final_members = Kernel(_final_members, _final_layout)
values_at = Kernel(_values_at, _values_layout)
good_values = Kernel(_good_values, _good_layout)
