"""Data parallelism on JAX's own engine: shard the data, replicate theta, let XLA reduce.

No communication code of ours: committed `NamedSharding`s on the inputs of the fused `jit`
make XLA's SPMD partitioner split every per-point computation across the devices and insert
the all-reduce that a mean or sum over points needs. Because we never write a `shard_map`,
the PITFALLS.md trap (`check_vma=True` already sums a replicated input's gradient, so an
extra `lax.pmean` multiplies it by the device count) cannot occur.
"""

from typing import Any

import jax
import numpy as np
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec

from ._custom_types import Validated
from ._precision import check_x64


_MSG_MESH = """\
`{where}` expected `mesh` to be a `jax.sharding.Mesh`, but got {got}.
Fix: `mesh = jax.make_mesh((jax.device_count(),), ("data",))`."""


def _auto(mesh: Mesh) -> Mesh:
    # `jax.make_mesh` defaults to Explicit axes (sharding in types): every solver state then
    # carries shardings in its types, which Optimistix/Lineax operators reject ("matching input
    # and output structures"). Auto axes make the sharding a partitioner hint, as classic GSPMD.
    auto = (AxisType.Auto,) * len(mesh.axis_names)
    return Mesh(mesh.devices, mesh.axis_names, axis_types=auto)


def _data_sharding(mesh: Mesh) -> NamedSharding:
    # The leading axis is split over every axis of the mesh, so any mesh shape works.
    return NamedSharding(mesh, PartitionSpec(tuple(mesh.axis_names)))


def replicate(x: Any, mesh: Mesh) -> Any:
    """Put `x` (an array or pytree) whole on every device of `mesh`."""
    return jax.device_put(x, NamedSharding(_auto(mesh), PartitionSpec()))


def shard(args: Any, mesh: Validated[Mesh], *, where: str = "sb.shard") -> Any:
    """Split the leading axis of the data in `args` across the devices of `mesh`.

    Every array leaf whose leading axis divides evenly by the number of devices is split
    along it (collocation points, targets, batches of initial conditions); every other leaf is
    replicated. An array already committed to a `NamedSharding` on this mesh is left as it
    is, so a layout chosen by hand always wins.

    !!! example

        ```python
        mesh = jax.make_mesh((jax.device_count(),), ("data",))
        (x,) = sb.shard((jnp.zeros((1024, 2)),), mesh)
        x.sharding.shard_shape(x.shape)   # (1024 // jax.device_count(), 2)
        ```

    **Arguments:**

    - `args`: a pytree of arrays (typically the `args=` of `sb.minimize`).
    - `mesh`: a `jax.sharding.Mesh`.

    **Returns:**

    `args` with every array leaf placed on the mesh.

    **Raises:**

    `TypeError` if `mesh` is not a `Mesh`.
    """
    if not isinstance(mesh, Mesh):
        raise TypeError(_MSG_MESH.format(where=where, got=type(mesh).__name__))
    mesh = _auto(mesh)
    data, whole = _data_sharding(mesh), NamedSharding(mesh, PartitionSpec())

    def place(x):
        if not isinstance(x, jax.Array | np.ndarray):
            return x
        if isinstance(x, np.ndarray):
            check_x64(x.dtype, f"`{where}`", "NumPy data")
        sharding = getattr(x, "sharding", None)
        if isinstance(sharding, NamedSharding) and sharding.mesh == mesh:
            return x
        split = x.ndim >= 1 and x.shape[0] % mesh.size == 0
        return jax.device_put(x, data if split else whole)

    return jax.tree.map(place, args)


def place(theta0: jax.Array, args: tuple, mesh: Validated[Mesh | None],
          where: str) -> tuple[jax.Array, tuple]:
    """`mesh=` of `sb.minimize`: theta replicated, the data in `args` split across devices."""
    if mesh is None:
        return theta0, tuple(args)
    if not isinstance(mesh, Mesh):
        raise TypeError(_MSG_MESH.format(where=where, got=type(mesh).__name__))
    return replicate(theta0, mesh), shard(tuple(args), mesh, where=where)
