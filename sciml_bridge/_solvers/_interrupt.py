"""Ctrl-C as data: one SIGINT asks the run to stop at the next chunk boundary.

PITFALLS.md: SIGINT reaches Python only between dispatches, and a `KeyboardInterrupt` raised
while a chunk is in flight loses the chunk. So while a run is driven, SIGINT
only sets a flag; the host loop (or the SciPy callback) checks it between chunks/iterations
and returns the partial result with `result=interrupted`. A second SIGINT raises
`KeyboardInterrupt` as usual (for a loss that hangs). The previous handler is restored
afterwards. Nothing is installed outside the main thread (where Python delivers no signals)
or where SIGINT is ignored (a job started in the background by a shell): as Python itself,
such a process keeps ignoring it.

Across processes (`jax.distributed`), for a run whose arrays span them, the flag is asked of
every process at each check (the host loops run in lock step): a SIGINT that reaches one
process, or reaches them between different chunks (`python -m sciml_bridge.launch` passes
Ctrl-C on to every process), stops all of them at the same chunk boundary. A process that
stopped alone would leave the others waiting in the next chunk's collectives forever.
"""

import contextlib
import signal
import threading

from .._distributed import any_process


class Interrupt:
    """`flag.set` after the first SIGINT; `bool(flag)` asks whether to stop. For a run whose
    arrays span several processes (`spans`), asking is a collective (every process asks at
    the same points); a run of one process's own arrays asks only itself."""

    def __init__(self, spans: bool = False):
        self.set, self.spans = False, spans
        self._agreed = False  # some process stopped: every process knows, ask no more

    def __bool__(self) -> bool:
        if not self.spans:
            return self.set
        if not self._agreed:
            self._agreed = any_process(self.set)
        return self._agreed

    def _handler(self, signum, frame):
        if self.set:
            raise KeyboardInterrupt
        self.set = True


@contextlib.contextmanager
def catch_sigint(spans: bool = False):
    """An `Interrupt` set by SIGINT while the block runs (`spans`: see `Interrupt`)."""
    flag = Interrupt(spans)
    if (threading.current_thread() is not threading.main_thread()
            or signal.getsignal(signal.SIGINT) is signal.SIG_IGN):
        yield flag
        return
    previous = signal.signal(signal.SIGINT, flag._handler)
    try:
        yield flag
    finally:
        signal.signal(signal.SIGINT, previous)
