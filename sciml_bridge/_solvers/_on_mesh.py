"""Per-member kernels on a CPU mesh: members one at a time, never batched across devices.

Members split over a `"members"` mesh axis run in a `jax.shard_map` manual over that axis
(`_manual`), each device mapping over its own (`per_device`): no collective crosses it, so an
`eqx.error_if` that fires on one device raises there alone (a `vmap` over a sharded device axis
made its predicate an all-reduce that the other devices never joined, and XLA aborted the
process after 40 s). A single run or one member on such a mesh (`Whole`) runs whole on every
device of that axis the same way: left to the partitioner, the callback `eqx.error_if` raises
from runs on the first device only and is broadcast by an all-reduce, with the same abort.
Data axes beside `"members"` stay automatic: a raise inside a member whose points are split
over devices still aborts (see the README).
"""

import dataclasses

import equinox as eqx
import jax
import jax.extend
import jax.tree_util as jtu
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from .._sharding import MEMBERS
from ._failures import in_callback


def one_by_one(fn, in_axes):
    """`fn` mapped over the leading member axis with `lax.map`: one member at a time."""

    def mapped(*xs):
        def one(rows):
            it = iter(rows)
            return fn(*[x if a is None else next(it) for x, a in zip(xs, in_axes)])

        return jax.lax.map(one, [x for x, a in zip(xs, in_axes) if a is not None])

    return mapped


def _manual(mesh: Mesh, fn, xs, in_specs, out_spec):
    """`fn(*xs)` in a `jax.shard_map` manual over the `"members"` axis of `mesh` only (any data
    axes stay automatic), with one `PartitionSpec` per argument (`P()` or `P("members")`),
    every output laid out as `out_spec`. No collective runs across that axis.

    `fn` is traced once outside the `shard_map` (`jax.make_jaxpr`, on the per-device shapes),
    and only its jaxpr is evaluated inside: traced inside, every shape it builds carries the
    manual mesh, and Lineax finds an operator's structure (kept in the solver state) unequal
    to the sharding-free shapes its own `linear_solve` compares it with (Levenberg-Marquardt's
    QR fails). Traced outside, the state's static part is the one a vmapped run has.
    `check_vma=False`: the body is per-device code that no varying-axis check applies to."""
    devices = mesh.shape[MEMBERS]

    def local(x, spec):  # the part of `x` one device sees
        split = tuple(spec) == (MEMBERS,)
        shape = (x.shape[0] // devices, *x.shape[1:]) if split else x.shape
        return jax.ShapeDtypeStruct(shape, x.dtype)

    local_xs = [jtu.tree_map(lambda y, p=p: local(y, p), x) for x, p in zip(xs, in_specs)]
    closed, out_shape = jax.make_jaxpr(fn, return_shape=True)(*local_xs)
    body, consts = _consts_as_inputs(closed)
    leaves = [*consts, *jtu.tree_leaves(xs)]
    out_tree = jtu.tree_structure(out_shape)
    specs = [PartitionSpec()] * len(consts)
    specs += [spec for x, spec in zip(xs, in_specs) for _ in jtu.tree_leaves(x)]

    out = jax.shard_map(jax.extend.core.jaxpr_as_fun(body), mesh=mesh, in_specs=tuple(specs),
                        out_specs=[out_spec] * out_tree.num_leaves, axis_names={MEMBERS},
                        check_vma=False)(*leaves)  # fmt: skip
    return jtu.tree_unflatten(out_tree, out)


def _consts_as_inputs(closed):
    """`closed` with its constants (what `fn` closed over: the data in `args`, traced by the
    enclosing `jit`) turned into leading inputs, and those constants. Closed over by the
    `shard_map` body, data placed on the mesh's (automatic) axes met the body's manual arrays
    in one operation, and JAX refused it ("Mesh for all inputs should be equal"): a single
    run on a members mesh with `args` failed at its end. As inputs they are replicated
    (`PartitionSpec()`) like any other."""
    jaxpr, info = closed.jaxpr, closed.jaxpr.debug_info
    names = None if info.arg_names is None else \
        ("<constant>",) * len(jaxpr.constvars) + tuple(info.arg_names)  # fmt: skip
    body = jaxpr.replace(constvars=[], invars=[*jaxpr.constvars, *jaxpr.invars],
                         debug_info=info._replace(arg_names=names))  # one name per input
    return jax.extend.core.ClosedJaxpr(body, []), list(closed.consts)


def per_device(mesh: Mesh, fn, in_axes):
    """`fn` over members split over the `"members"` axis of `mesh`: each device maps over its
    own members, one at a time (`one_by_one`), in a `shard_map` (`_manual`). Nothing is
    batched over devices, so an `eqx.error_if` that fires on one device's member raises there
    alone; a `vmap` over a sharded device axis reduced its predicate with an all-reduce that
    the other devices, still looping, never joined (XLA aborted the process)."""
    specs = [PartitionSpec() if a is None else PartitionSpec(MEMBERS) for a in in_axes]
    mapped = one_by_one(fn, in_axes)
    return lambda *xs: _manual(mesh, mapped, xs, specs, PartitionSpec(MEMBERS))


@dataclasses.dataclass(frozen=True)
class Whole:
    """One member (or one run) whose arrays lie on `mesh`, a CPU mesh with a `"members"` axis of
    several devices: run whole on each of them (`on_every_device`), never by the partitioner."""

    mesh: Mesh


def on_every_device(mesh: Mesh, fn, xs):
    """`fn` run whole, and alone, on every device along the `"members"` axis of `mesh`. Left
    to the partitioner, a replicated computation runs a `pure_callback` (the one `eqx.error_if`
    raises from) on the first device only and broadcasts its result with an all-reduce: when it
    raises, the other devices wait in that all-reduce and XLA aborts the process."""
    return _manual(mesh, fn, xs, [PartitionSpec()] * len(xs), PartitionSpec())


def whole_layout(layout, *trees):
    """`layout`, or `Whole(mesh)` for a single run or one member (`layout=None`) whose
    arrays lie on a CPU mesh with a `"members"` axis of several devices."""
    if layout is not None:
        return layout
    for x in jtu.tree_leaves(trees):
        sharding = getattr(x, "sharding", None)
        mesh = getattr(sharding, "mesh", None) if isinstance(x, jax.Array) else None
        if (isinstance(mesh, Mesh) and mesh.shape.get(MEMBERS, 1) > 1
                and all(d.platform == "cpu" for d in mesh.devices.flat)):  # fmt: skip
            return Whole(mesh)
    return None


def _is_whole(x) -> bool:
    return isinstance(x, Whole)


def _drain(mesh: Mesh) -> None:
    """After a kernel on `mesh` raised: the devices that raised too (all of them for `Whole`)
    JAX did not report; their last runtime tokens still hold the error, and JAX would raise it
    again at every `jax.effects_barrier()` (and at exit: "Exception ignored in atexit").
    A program with a host callback on every device of `mesh` replaces those tokens."""

    if any(d.process_index != jax.process_index() for d in mesh.devices.flat):
        return  # every process would have to run it

    def settle(x):
        jax.debug.callback(lambda: None)
        return x

    jax.block_until_ready(jax.jit(settle)(jax.device_put(0, NamedSharding(mesh, PartitionSpec()))))


def single(layout) -> bool:
    return layout is None or isinstance(layout, Whole)


class Kernel:
    """A kernel (`eqx.filter_jit`) whose `layout` is first made `Whole` where it has to be
    (`whole_layout`); every other attribute is the jitted function's (its caches)."""

    def __init__(self, jitted, relayout):
        self._jitted, self._relayout = jitted, relayout
        self.__doc__ = jitted.__doc__

    def __call__(self, *xs):
        xs = self._relayout(*xs)
        try:
            return self._jitted(*xs)
        except (eqx.EquinoxRuntimeError, jax.errors.JaxRuntimeError, ValueError) as e:
            callback = isinstance(e, ValueError) and in_callback(e)
            if isinstance(e, ValueError) and not callback:
                raise  # a trace-time error of the loss: the caller's to see
            for x in jtu.tree_leaves(xs, is_leaf=_is_whole):
                if isinstance(x, Whole | Mesh):
                    _drain(x.mesh if isinstance(x, Whole) else x)
                    break
            if callback:
                # An exception raised in a host callback of the loss reaches us as a
                # `ValueError` ("INTERNAL: CpuCallback error ...") when the chunk fails at
                # dispatch, as a `JaxRuntimeError` when later: one kind, a runtime failure.
                raise jax.errors.JaxRuntimeError(str(e)) from e
            raise

    def __getattr__(self, name):
        return getattr(self._jitted, name)


def rerun_alone(layout) -> bool:
    """Whether the members of a kernel that raised can be run again one by one (`_recover`):
    vmapped, or split over a members mesh (each device in its own `shard_map` body). Not one
    run, nor members mapped on every device of a mesh: a raise there stopped them all."""
    return layout == "vmap" or isinstance(layout, Mesh)
