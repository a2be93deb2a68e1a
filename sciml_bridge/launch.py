"""Start a script as several local processes on JAX's distributed runtime (for testing).

```
python -m sciml_bridge.launch --processes 2 --devices-per-process 2 train.py --lr 1e-3
```

Every process gets the coordinator address (a free local port), the process count and its
id in the environment, which `sb.distributed_init()` reads; `--devices-per-process N` adds
`--xla_force_host_platform_device_count=N` to `XLA_FLAGS` (CPU devices). Output is streamed
line by line with a `[i]` prefix. If any process fails, or `--timeout` passes, the others
are stopped; the exit status is the first failure's (124 on a timeout), else 0.

Ctrl-C is passed on to every process, as a terminal passes it to one script: each
`sb.minimize` returns its partial result (the processes agree on the chunk to stop at) and
the scripts go on to their end. A second Ctrl-C stops every process.

This is the local stand-in for a cluster launcher (`srun`, `mpirun`): the script does not
change between the two.
"""

import argparse
import contextlib
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from typing import Any

from ._distributed import ENV_COORDINATOR, ENV_NUM_PROCESSES, ENV_PROCESS_ID


def free_port() -> int:
    """A TCP port that was free on 127.0.0.1 a moment ago (bind to port 0, let the OS pick)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _env(i: int, n: int, address: str, devices: int | None) -> dict:
    env = dict(os.environ)
    env.update({ENV_COORDINATOR: address, ENV_NUM_PROCESSES: str(n), ENV_PROCESS_ID: str(i)})
    env.setdefault("PYTHONUNBUFFERED", "1")  # lines stream as printed, not at exit
    if devices is not None:
        flag = f"--xla_force_host_platform_device_count={devices}"
        env["XLA_FLAGS"] = f"{env.get('XLA_FLAGS', '')} {flag}".strip()
    return env


def _pump(i: int, stream, out, lock: threading.Lock) -> None:
    for line in stream:
        with lock:
            out.write(f"[{i}] {line}")
            out.flush()


def _stop(procs: list) -> None:
    """SIGTERM to every process group still running, SIGKILL to any alive 5 s later."""
    for p in procs:
        if p.poll() is None:
            try:
                os.killpg(p.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
    deadline = time.monotonic() + 5.0
    for p in procs:
        try:
            p.wait(timeout=max(deadline - time.monotonic(), 0.01))
        except subprocess.TimeoutExpired:
            try:
                os.killpg(p.pid, signal.SIGKILL)
            except ProcessLookupError:  # it ended between the wait and the kill
                pass
            p.wait()


@contextlib.contextmanager
def _pass_sigint_on(procs: list, out: Any, lock: threading.Lock) -> Iterator[None]:
    """The first SIGINT goes to every process still running (their own sessions do not get
    the terminal's); a second raises `KeyboardInterrupt` here, and `launch` stops them all.
    Nothing is installed off the main thread, or where SIGINT is ignored."""
    if (threading.current_thread() is not threading.main_thread()
            or signal.getsignal(signal.SIGINT) is signal.SIG_IGN):  # fmt: skip
        yield
        return
    seen = []

    def handler(signum, frame):
        if seen:
            raise KeyboardInterrupt
        seen.append(signum)
        for p in procs:
            if p.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(p.pid, signal.SIGINT)
        with lock:
            out.write("sciml_bridge.launch: Ctrl-C passed on to every process; press it "
                      "again to stop them\n")  # fmt: skip
            out.flush()

    previous = signal.signal(signal.SIGINT, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


def _watch(procs: list, timeout: float | None) -> int:
    deadline = None if timeout is None else time.monotonic() + timeout
    while True:
        codes = [p.poll() for p in procs]
        failed = [c for c in codes if c not in (None, 0)]
        if failed:  # killed by signal N: 128 + N, as a shell says (Popen gives -N)
            return 128 - failed[0] if failed[0] < 0 else failed[0]
        if all(c == 0 for c in codes):
            return 0
        if deadline is not None and time.monotonic() > deadline:
            return 124
        time.sleep(0.05)


def launch(script: str, script_args=(), *, processes: int = 2, devices: int | None = None,
           timeout: float | None = None, out=None) -> int:  # fmt: skip
    """Run `python script *script_args` as `processes` processes; the exit status."""
    out = sys.stdout if out is None else out
    address, lock = f"127.0.0.1:{free_port()}", threading.Lock()
    procs, pumps = [], []
    try:  # a Ctrl-C while starting them stops those started: their sessions are their own
        with _pass_sigint_on(procs, out, lock):
            for i in range(processes):
                p = subprocess.Popen([sys.executable, script, *script_args], text=True,
                                     bufsize=1, env=_env(i, processes, address, devices),
                                     stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                     start_new_session=True)  # fmt: skip
                procs.append(p)
                pumps.append(threading.Thread(target=_pump, args=(i, p.stdout, out, lock),
                                              daemon=True))  # fmt: skip
                pumps[-1].start()
            code = _watch(procs, timeout)
    finally:
        _stop(procs)
        for p, t in zip(procs, pumps):
            t.join(timeout=5.0)
            p.stdout.close()
    if code == 124:
        out.write(f"sciml_bridge.launch: timed out after {timeout} s; stopped every process\n")
    return code


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m sciml_bridge.launch", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--processes", type=int, default=2, help="processes to start (2)")
    parser.add_argument("--devices-per-process", type=int, default=None,
                        help="CPU devices per process (sets XLA_FLAGS)")  # fmt: skip
    parser.add_argument("--timeout", type=float, default=None, help="seconds before stopping")
    parser.add_argument("script", help="the Python script every process runs")
    parser.add_argument("args", nargs=argparse.REMAINDER, help="arguments for the script")
    ns = parser.parse_args(argv)
    if ns.processes < 1:
        parser.error(f"--processes must be at least 1, got {ns.processes}")
    return launch(ns.script, ns.args, processes=ns.processes, devices=ns.devices_per_process,
                  timeout=ns.timeout)  # fmt: skip


if __name__ == "__main__":
    sys.exit(main())
