"""A warning before a run that can hang: batched LAPACK on as many CPU devices as pool threads.

jaxlib (0.10.2) runs a batched `eigh`, `lu`, `qr`, `cholesky`, `svd` or triangular solve on a
CPU device by splitting the batch over XLA's intra-op thread pool and waiting for the pieces.
The CPU devices themselves execute on that same pool (one thread per core unless the
environment variable `NPROC` says otherwise). When every thread is a device waiting for its
pieces, no thread is left to run them, and the run hangs without using the CPU: measured with a
loss that `vmap`s `jnp.linalg.solve` over data split across 2 CPU devices on 2 cores. The
driver's own ensembles avoid it (`member_layout`); a loss can still batch a factorisation
itself, and only XLA's pool size (`NPROC`, read when JAX starts) fixes that.
"""

import os
import warnings
from collections.abc import Iterator

import equinox as eqx
import jax

from ._stepper import AbstractStepper


# Primitives that jaxlib lowers to its batched LAPACK kernels on CPU.
_LAPACK = frozenset({"cholesky", "eig", "eigh", "geqp3", "geqrf", "hessenberg",
                     "householder_product", "lu", "ormqr", "schur", "svd", "triangular_solve",
                     "tridiagonal", "tridiagonal_solve"})  # fmt: skip

_MSG = """\
`{where}` runs on {devices} CPU devices in this process, and XLA's CPU thread pool has {threads}
threads (one per core, or `NPROC`); the loss calls `{primitive}` on a batch of matrices. jaxlib
{version} splits such a batch over that same pool while every device waits in it, so this run
can hang without using the CPU. Fix: start Python with the environment variable
`NPROC={fix}` (XLA sizes its pool by it when JAX starts), or run on fewer CPU devices than
{threads}."""


def pool_threads() -> int:
    """The threads of XLA's CPU intra-op pool: `PORTABLE_NPROC` or `NPROC` if set (as XLA reads
    them), else the CPUs this process may run on."""
    for name in ("PORTABLE_NPROC", "NPROC"):
        value = os.environ.get(name, "")
        if value.strip().isdigit():
            return int(value)
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def _jaxprs(params: dict) -> Iterator:
    stack = list(params.values())
    while stack:
        value = stack.pop()
        if isinstance(value, tuple | list):
            stack.extend(value)
        elif hasattr(value, "eqns"):
            yield value
        elif hasattr(getattr(value, "jaxpr", None), "eqns"):
            yield value.jaxpr


def batched_lapack(jaxpr) -> str | None:
    """The first primitive in `jaxpr` (or any jaxpr inside it) that jaxlib computes with a
    batched LAPACK kernel on CPU: a factorisation of a stack of matrices."""
    stack = [jaxpr]
    while stack:
        for eqn in stack.pop().eqns:
            if eqn.primitive.name in _LAPACK and any(
                getattr(v.aval, "ndim", 0) > 2 for v in eqn.invars
            ):
                return eqn.primitive.name
            stack.extend(_jaxprs(eqn.params))
    return None


def warn_if_pool_starves(stepper: AbstractStepper, theta0, args: tuple, where: str) -> None:
    """Warn (`RuntimeWarning`) when `theta0` lives on at least as many CPU devices of this
    process as XLA's pool has threads and the loss batches a LAPACK factorisation."""
    sharding = getattr(theta0, "sharding", None)
    devices = [d for d in getattr(sharding, "device_set", ())
               if d.platform == "cpu" and d.process_index == jax.process_index()]  # fmt: skip
    threads = pool_threads()
    if len(devices) < max(threads, 2):
        return
    member = theta0[0] if theta0.ndim == 2 else theta0
    closed = eqx.filter_make_jaxpr(stepper.value)(member, args)[0]
    primitive = batched_lapack(closed.jaxpr)
    if primitive is not None:
        message = _MSG.format(where=where, devices=len(devices), threads=threads,
                              primitive=primitive, version=jax.__version__,
                              fix=len(devices) + threads)  # fmt: skip
        warnings.warn(message, RuntimeWarning, stacklevel=4)
