"""Data parallelism and sharded ensembles on JAX's own engine: place the inputs, let XLA split.

No communication code of ours: committed `NamedSharding`s on the inputs of the fused `jit`
make XLA's SPMD partitioner split every per-point computation across the devices and insert
the all-reduce that a mean or sum over points needs. Our one `shard_map`
(`_solvers/_on_mesh.py`) is manual over the `"members"` axis alone, runs no collective and is
never differentiated through, so the PITFALLS.md trap (`check_vma=True` already sums a
replicated input's gradient, so an extra `lax.pmean` multiplies it by the device count)
cannot occur.

Mesh axes have one convention: an axis named `"members"` splits the members of an ensemble
(the rows of a `(members, n)` `theta0`, with their optimiser states); every other axis splits
the data. The same holds across processes (`jax.distributed`): the mesh then spans every
process's devices, and each process may feed only its own part of the data
(`process_local=True`, `jax.make_array_from_process_local_data`).
"""

import math
from typing import Any

import jax
import numpy as np
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec

from ._custom_types import Validated
from ._distributed import check_mesh, check_same_everywhere
from ._precision import guard_x64


MEMBERS = "members"

_MSG_MESH = """\
`{where}` expected `mesh` to be a `jax.sharding.Mesh`, but got {got}.
Fix: `mesh = jax.make_mesh((jax.device_count(),), ("data",))`."""

_MSG_MEMBERS = """\
`{where}` expected the {members} ensemble members to split evenly over the mesh axis
"members" of size {size}, but {members} % {size} = {rest}. Members are not padded (a padded
member would train and cost like a real one).
Fix: use a multiple of {size} members (e.g. {fix}), or a mesh whose "members" axis divides
{members}: `jax.make_mesh((m, jax.device_count() // m), ("members", "data"))`."""

_MSG_LOCAL = """\
`{where}` could not build a global array from this process's data (a leaf of shape
{shape}): {err}
Fix: give every process the same number of rows, a multiple of its devices along the
data axes ({devices} here)."""


def _auto(mesh: Mesh) -> Mesh:
    # `jax.make_mesh` defaults to Explicit axes (sharding in types): every solver state then
    # carries shardings in its types, which Optimistix/Lineax operators reject ("matching input
    # and output structures"). Auto axes make the sharding a partitioner hint, as classic GSPMD.
    auto = (AxisType.Auto,) * len(mesh.axis_names)
    return Mesh(mesh.devices, mesh.axis_names, axis_types=auto)


def _data_axes(mesh: Mesh) -> tuple:
    return tuple(a for a in mesh.axis_names if a != MEMBERS)


def _data_sharding(mesh: Mesh) -> NamedSharding:
    # The leading axis is split over every data axis of the mesh, so any mesh shape works.
    axes = _data_axes(mesh)
    return NamedSharding(mesh, PartitionSpec(axes) if axes else PartitionSpec())


def replicate(x: Any, mesh: Mesh) -> Any:
    """Put `x` (an array or pytree) whole on every device of `mesh`."""
    return jax.device_put(x, NamedSharding(_auto(mesh), PartitionSpec()))


def _same_mesh(a: Any, b: Mesh) -> bool:
    """The same devices under the same axis names and shape, whatever the axis types: `_auto`
    turns `jax.make_mesh`'s Explicit axes into Auto ones, and an array the user committed to
    the original mesh must still count as placed on it (a hand-chosen layout wins)."""
    devices = getattr(a, "devices", None)
    if not isinstance(devices, np.ndarray) or a.axis_names != b.axis_names:
        return False
    if devices.shape != b.devices.shape:
        return False
    return all(d.id == e.id for d, e in zip(devices.flat, b.devices.flat))


def _check(mesh, where: str) -> Mesh:
    if not isinstance(mesh, Mesh):
        raise TypeError(_MSG_MESH.format(where=where, got=type(mesh).__name__))
    check_mesh(mesh, where)
    return _auto(mesh)


def _from_process(x, sharding: NamedSharding, where: str):
    """One process's rows of a global array (`jax.make_array_from_process_local_data`)."""
    x = np.asarray(x)
    if x.ndim == 0:
        return jax.device_put(x, NamedSharding(sharding.mesh, PartitionSpec()))
    try:
        return jax.make_array_from_process_local_data(sharding, x)
    except ValueError as e:
        devices = len({d.id for d in sharding.addressable_devices})
        raise ValueError(_MSG_LOCAL.format(where=where, shape=x.shape, err=e,
                                           devices=devices)) from e  # fmt: skip


def shard(
    args: Any, mesh: Validated[Mesh], *, process_local: bool = False, where: str = "sb.shard"
) -> Any:
    """Split the leading axis of the data in `args` across the devices of `mesh`.

    Every array leaf whose leading axis divides evenly by the number of devices along the
    data axes (every mesh axis except `"members"`) is split along it (collocation points,
    targets, batches of initial conditions); every other leaf is replicated. An array already
    committed to a `NamedSharding` on this mesh is left as it is, so a layout chosen by hand
    always wins.

    !!! example

        ```python
        mesh = jax.make_mesh((jax.device_count(),), ("data",))
        (x,) = sb.shard((jnp.zeros((1024, 2)),), mesh)
        x.sharding.shard_shape(x.shape)   # (1024 // jax.device_count(), 2)
        ```

    Several processes (`jax.distributed`, e.g. started by `python -m sciml_bridge.launch`):
    by default every process passes the same, whole data. With `process_local=True` each
    process passes only its own rows instead (say 512 of 1024 points each on 2 processes),
    and the global array is their concatenation in process order
    (`jax.make_array_from_process_local_data`).

    **Arguments:**

    - `args`: a pytree of arrays (typically the `args=` of `sb.minimize`).
    - `mesh`: a `jax.sharding.Mesh`, possibly spanning several processes.
    - `process_local`: every array leaf is this process's share of the global data along
        its leading axis (scalars are replicated as they are).

    **Returns:**

    `args` with every array leaf placed on the mesh.

    **Raises:**

    `TypeError` if `mesh` is not a `Mesh`, or for float64 NumPy data (arrays or scalars)
    while JAX's x64 mode is off (JAX would truncate it silently); `RuntimeError` if the mesh spans
    processes that `jax.distributed` does not connect; `ValueError` if process-local rows
    do not split over this process's devices.
    """
    mesh = _check(mesh, where)
    data, whole = _data_sharding(mesh), NamedSharding(mesh, PartitionSpec())
    split_over = math.prod(mesh.shape[a] for a in _data_axes(mesh))

    def placed(x) -> bool:
        sharding = getattr(x, "sharding", None)
        on_mesh = isinstance(sharding, NamedSharding) and _same_mesh(sharding.mesh, mesh)
        return on_mesh or not isinstance(x, jax.Array | np.ndarray | np.generic)

    # NumPy arrays and scalars (`np.float64(...)`) alike: JAX would truncate them silently.
    guard_x64(args, f"`{where}`", "NumPy data")
    if not process_local:
        check_same_everywhere([x for x in jax.tree.leaves(args) if not placed(x)], "data", where)

    def place(x):
        if placed(x):
            return x
        if process_local:
            return _from_process(x, data, where)
        split = x.ndim >= 1 and x.shape[0] % split_over == 0
        return jax.device_put(x, data if split else whole)

    return jax.tree.map(place, args)


def _auto_axes(x: Any) -> Any:
    """`x` itself, or, if it lies on a mesh with Explicit axes (`jax.make_mesh`'s default),
    the same layout on Auto axes (see `_auto`): a `theta0` put there by hand could not even be
    indexed (JAX asks for an `out_sharding=` on every gather)."""
    sharding = getattr(x, "sharding", None)
    if not isinstance(x, jax.Array) or not isinstance(sharding, NamedSharding):
        return x
    mesh = sharding.mesh
    if not isinstance(mesh, Mesh) or AxisType.Explicit not in tuple(mesh.axis_types):
        return x
    return jax.device_put(x, NamedSharding(_auto(mesh), sharding.spec))


def place(theta0: jax.Array, args: tuple, mesh: Validated[Mesh | None],
          where: str) -> tuple[jax.Array, tuple]:
    """`mesh=` of `sb.minimize`: theta replicated (an ensemble's members split over a
    `"members"` axis), the data in `args` split across the data axes."""
    if mesh is None:
        return _auto_axes(theta0), jax.tree.map(_auto_axes, tuple(args))
    mesh = _check(mesh, where)
    check_same_everywhere([theta0], "`theta0`", where)
    if theta0.ndim == 2 and MEMBERS in mesh.axis_names:
        size, members = mesh.shape[MEMBERS], theta0.shape[0]
        if members % size:
            fix = size * -(-members // size)
            raise ValueError(_MSG_MEMBERS.format(where=where, members=members, size=size,
                                                 rest=members % size, fix=fix))  # fmt: skip
        theta0 = jax.device_put(theta0, NamedSharding(mesh, PartitionSpec(MEMBERS)))
    else:
        theta0 = replicate(theta0, mesh)
    return theta0, shard(tuple(args), mesh, where=where)


def members_sharding(theta) -> NamedSharding | None:
    """The sharding that splits a member axis like `theta`'s, if `theta` is split so."""
    sharding = getattr(theta, "sharding", None)
    if isinstance(sharding, NamedSharding) and theta.ndim == 2 and sharding.spec[:1] == (MEMBERS,):
        return NamedSharding(sharding.mesh, PartitionSpec(MEMBERS))
    return None


def member_layout(theta0) -> str | Mesh | None:
    """How the driver runs the members of `theta0` (static, chosen once per run).

    `None` for one run (1-D `theta0`); `"vmap"` for an ensemble on one device or on an
    accelerator; on a CPU mesh of several devices, members one after another on each device:
    `"map"` when every device holds all of them, or the mesh itself when they are split over
    its `"members"` axis (each device maps over its own members). CPU devices
    must not batch: jaxlib's batched LAPACK kernels (`eigh`, `qr`, `lu`, triangular solves,
    `svd`) spread a batch over the same intra-op thread pool the devices run on, and with as
    many devices as threads every thread waits for work none is free to do (measured with
    jax 0.10.2 on 2 CPU devices and 2 cores: natural gradient, Levenberg-Marquardt and dogleg
    on a 4-member ensemble never finished a step)."""
    if theta0.ndim != 2:
        return None
    devices = getattr(getattr(theta0, "sharding", None), "device_set", set())
    if len(devices) < 2 or any(d.platform != "cpu" for d in devices):
        return "vmap"
    split = members_sharding(theta0)
    mesh = None if split is None else split.mesh
    return mesh if isinstance(mesh, Mesh) else "map"
