"""Several processes on JAX's distributed runtime: start it, read global arrays, write once.

With `jax.distributed` every process runs the same program on its own devices and a `Mesh`
may span all of them. The compiled chunks need nothing from us (XLA inserts the collectives),
but the host side does:

- reading a value back (`np.asarray`) works only for arrays this process holds whole: a
  replicated one (theta, losses under data parallelism) or one gathered from every process
  first (`multihost_utils.process_allgather`, a collective: every process calls it, in the
  same order, which the driver's lock-step loop guarantees);
- files are written by process 0 alone, and the others wait for the write to finish
  (`sync_global_devices`), so a run that resumes right after sees the same file everywhere;
- a decision taken on the host (does a checkpoint exist?) must be the same on every process,
  else they run different programs and wait for each other forever: `agree` checks it.

PITFALLS.md ("Scale-out"): on CPU the cross-process collectives are gloo's, switched on by
`jax_cpu_collectives_implementation` before the backend starts.
"""

import os
import zlib

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import Mesh


# Set by `python -m sciml_bridge.launch` for every process it starts.
ENV_COORDINATOR = "SCIML_BRIDGE_COORDINATOR"
ENV_NUM_PROCESSES = "SCIML_BRIDGE_NUM_PROCESSES"
ENV_PROCESS_ID = "SCIML_BRIDGE_PROCESS_ID"

_MSG_NOT_INITIALISED = """\
`{where}` got a mesh for {expected} processes, but this process runs alone: {why}.
Every process would train on its own and the results would silently differ.
Fix: call `sb.distributed_init()` (or `jax.distributed.initialize(...)`) at the top of the
script, before any JAX computation, in every process."""

_MSG_DISAGREE = """\
`{where}`: the processes disagree about {what} (process {pid} says {mine}; the values over
all processes are {values}). They would run different programs and wait for each other.
Fix: put the file on a filesystem every process sees (the same path on every host), or
pass a path that is local to each host only when running one process."""


_MSG_NOT_GLOBAL = """\
`{where}` expected every process to pass the same, whole {what} (the arrays differ between
processes: checksums {values}, one row per process). Each process would take its devices'
part of its own copy, and the run would mix them without an error.
Fix: if each process holds only its own rows of the data, pass them with
`sb.shard(args, mesh, process_local=True)`; make `theta0` the same everywhere (the same key
on every process, not one derived from `jax.process_index()`)."""


def distributed_init() -> bool:
    """Join JAX's distributed runtime when started by `python -m sciml_bridge.launch`.

    Reads the coordinator address, process count and process id that the launcher puts in
    the environment (`SCIML_BRIDGE_COORDINATOR`, `SCIML_BRIDGE_NUM_PROCESSES`,
    `SCIML_BRIDGE_PROCESS_ID`), turns on gloo collectives for CPU devices and calls
    `jax.distributed.initialize`. Without those variables it does nothing, so the same script
    runs unchanged as one process. Call it first, before any JAX computation.

    ```python
    import sciml_bridge as sb

    sb.distributed_init()  # False here: not started by the launcher
    mesh = jax.make_mesh((jax.device_count(),), ("data",))  # every process's devices
    ```

    On a cluster, call `jax.distributed.initialize()` yourself instead (it detects SLURM and
    Open MPI on its own); the rest of the script is the same.

    **Returns:** `True` if the distributed runtime was started, `False` if there was nothing
    to do.
    """
    if ENV_COORDINATOR not in os.environ or jax.distributed.is_initialized():
        return False
    # Gloo gives CPU devices cross-process collectives; the setting is ignored by GPUs/TPUs.
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(
        coordinator_address=os.environ[ENV_COORDINATOR],
        num_processes=int(os.environ[ENV_NUM_PROCESSES]),
        process_id=int(os.environ[ENV_PROCESS_ID]),
    )
    return True


def is_main() -> bool:
    """Process 0: the one that writes files and draws progress bars."""
    return jax.process_index() == 0


def _several() -> bool:
    return jax.process_count() > 1


def check_mesh(mesh: Mesh, where: str) -> None:
    """A mesh spanning other processes needs the distributed runtime in this one."""
    expected = int(os.environ.get(ENV_NUM_PROCESSES, "1"))
    if expected > 1 and jax.process_count() == 1:
        why = f"`{ENV_NUM_PROCESSES}={expected}` is set but `jax.distributed` is not initialised"
        raise RuntimeError(_MSG_NOT_INITIALISED.format(where=where, expected=expected, why=why))
    foreign = {d.process_index for d in mesh.devices.flat} - {jax.process_index()}
    if foreign and not jax.distributed.is_initialized():
        why = f"the mesh holds devices of processes {sorted(foreign)}"
        raise RuntimeError(_MSG_NOT_INITIALISED.format(where=where, expected=len(foreign) + 1,
                                                       why=why))  # fmt: skip


def _readable(x) -> bool:
    return not isinstance(x, jax.Array) or x.is_fully_addressable or x.is_fully_replicated


def host(tree):
    """NumPy copies of every leaf, global arrays included (the same on every process)."""
    if not _several():
        return jax.device_get(tree)
    gather = [x for x in jax.tree.leaves(tree) if not _readable(x)]
    if not gather:
        return jax.device_get(tree)
    return jax.tree.map(lambda x: np.asarray(x) if _readable(x)
                        else multihost_utils.process_allgather(x, tiled=True), tree)  # fmt: skip


def local(x):
    """`x` itself when this process can read it, else a process-local copy (for callbacks)."""
    return x if _readable(x) else jnp.asarray(host(x))


def barrier(name: str) -> None:
    """Wait until every process gets here (no-op in a single process)."""
    if _several():
        multihost_utils.sync_global_devices(name)


def _checksum(x) -> int:
    data = np.ascontiguousarray(np.asarray(x))
    return zlib.crc32(data.tobytes(), zlib.crc32(repr((data.shape, data.dtype.str)).encode()))


def check_same_everywhere(leaves: list, what: str, where: str) -> None:
    """Arrays that every process must hold whole and equal (replicated or global data)."""
    # An array spread over several processes is global already: nothing to compare.
    leaves = [x for x in leaves if not isinstance(x, jax.Array) or x.is_fully_addressable]
    if not _several() or not leaves:
        return
    # int32 bit patterns: gathered the same with x64 on or off.
    sums = np.array([_checksum(x) for x in leaves], dtype=np.uint32).view(np.int32)
    everyone = np.asarray(multihost_utils.process_allgather(sums))
    if (everyone != everyone[0]).any():
        raise ValueError(_MSG_NOT_GLOBAL.format(where=where, what=what,
                                                values=everyone.tolist()))  # fmt: skip


def agree_callbacks(raised: tuple[int, int, Exception] | None,
                    stops: list[bool]) -> tuple[tuple[int, int, Exception] | None, list[bool]]:
    """What every process's callbacks said, made one answer (a collective, for a run whose
    arrays span processes; a process going on alone would wait for the others in the next
    chunk's collectives forever): `raised` (this process's `(member, step, error)` or None)
    becomes the first process's raise, wherever it was; each member's stop is set if set on
    any process."""
    mine = (-1, -1) if raised is None else raised[:2]
    rows = np.asarray(multihost_utils.process_allgather(np.array([*mine, *stops], np.int32)))
    stops = [bool(s) for s in np.any(rows[:, 2:], axis=0).reshape(-1)]
    failed = np.flatnonzero(rows[:, 0] >= 0)
    if failed.size == 0:
        return None, stops
    k = int(failed[0])
    i, step = (int(v) for v in rows[k, :2])
    if raised is not None and k == jax.process_index():
        return raised, stops
    return (i, step, RuntimeError(f"it raised on process {k} (see that process's output)")), stops


def spans_processes(tree) -> bool:
    """Whether a run on `tree` (its `theta0` and `args`) spans processes: some array is global,
    with devices of another process. Only such runs agree with the others at each chunk;
    a run on one process's own arrays (`if jax.process_index() == 0: sb.minimize(...)`)
    must not wait for processes that never run it."""
    return _several() and any(isinstance(x, jax.Array) and not x.is_fully_addressable
                              for x in jax.tree.leaves(tree))  # fmt: skip


def any_process(flag: bool) -> bool:
    """Whether `flag` is set on any process (a collective: every process calls it, in the
    same order; no-op in a single process)."""
    if not _several():
        return flag
    return bool(np.asarray(multihost_utils.process_allgather(np.asarray(flag))).any())


def agree(value: bool, what: str, where: str) -> bool:
    """`value`, after checking that every process has the same one."""
    if not _several():
        return value
    values = np.asarray(multihost_utils.process_allgather(np.asarray(value))).tolist()
    if len(set(values)) > 1:
        raise RuntimeError(_MSG_DISAGREE.format(where=where, what=what, pid=jax.process_index(),
                                                mine=value, values=values))  # fmt: skip
    return value
