"""A progress bar updated between chunks, never inside compiled code.

Training runs thousands of steps per dispatch (PITFALLS.md, "Dispatch cost": ~29 us/step in
one `lax.scan` against ~55 us/step for a jitted step in a Python loop), so the bar is fed
only when a chunk returns to Python: it costs nothing per step.
"""

import sys

import tqdm

from ._distributed import is_main


def _is_terminal() -> bool:
    isatty = getattr(sys.stderr, "isatty", None)
    return bool(isatty is not None and isatty())


class Progress:
    """`with Progress(total, enabled, desc) as bar: bar.update(done, loss)`.

    Disabled when `enabled=False` or when stderr is not a terminal (CI logs, notebooks that
    redirect stderr), so no stray output reaches logs; across processes (`jax.distributed`)
    only process 0 draws it.
    """

    def __init__(self, total: int, enabled: bool, desc: str):
        self._bar = None
        self._done = 0
        if enabled and _is_terminal() and is_main():
            self._bar = tqdm.tqdm(total=total, desc=desc, unit="step", leave=False)

    def update(self, done: int, loss: float) -> None:
        if self._bar is not None:
            self._bar.update(max(done - self._done, 0))
            self._bar.set_postfix(loss=f"{loss:.4e}", refresh=False)
        self._done = done

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None

    def __enter__(self) -> "Progress":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
