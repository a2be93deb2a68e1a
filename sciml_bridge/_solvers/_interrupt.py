"""Ctrl-C as data: one SIGINT asks the run to stop at the next chunk boundary.

PITFALLS.md: SIGINT reaches Python only between dispatches, and a `KeyboardInterrupt` raised
while a chunk is in flight loses the chunk. So while a run is driven, SIGINT
only sets a flag; the host loop (or the SciPy callback) checks it between chunks/iterations
and returns the partial result with `result=interrupted`. A second SIGINT raises
`KeyboardInterrupt` as usual (for a loss that hangs). The previous handler is restored
afterwards. Nothing is installed outside the main thread (where Python delivers no signals)
or where SIGINT is ignored (a job started in the background by a shell): as Python itself,
such a process keeps ignoring it.
"""

import contextlib
import signal
import threading


class Interrupt:
    """`flag.set` after the first SIGINT; `bool(flag)` asks whether to stop."""

    def __init__(self):
        self.set = False

    def __bool__(self) -> bool:
        return self.set

    def _handler(self, signum, frame):
        if self.set:
            raise KeyboardInterrupt
        self.set = True


@contextlib.contextmanager
def catch_sigint():
    flag = Interrupt()
    if (threading.current_thread() is not threading.main_thread()
            or signal.getsignal(signal.SIGINT) is signal.SIG_IGN):
        yield flag
        return
    previous = signal.signal(signal.SIGINT, flag._handler)
    try:
        yield flag
    finally:
        signal.signal(signal.SIGINT, previous)
