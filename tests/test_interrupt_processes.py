"""Ctrl-C across processes: the launcher passes it on, and the processes stop together.

`python -m sciml_bridge.launch` starts every process in a session of its own, so a terminal's
Ctrl-C reaches the launcher alone; it passes it on (before, it stopped every process with
SIGTERM: the partial results were lost). The processes then get SIGINT at slightly different
moments, possibly between different chunks: they agree on the chunk boundary to stop at
(tested in `_dist_worker.py`, `check_sigint_on_one_process`).
"""

import os
import pathlib
import signal
import subprocess
import sys
import textwrap


TESTS = pathlib.Path(__file__).parent

# Started by the launcher: a test runner may have left SIGINT ignored, so handle it as Python
# does by default.
_LAUNCHER = """
import signal, sys
signal.signal(signal.SIGINT, signal.default_int_handler)
from sciml_bridge.launch import main
sys.exit(main(sys.argv[1:]))
"""

_WAITS_FOR_SIGINT = """
import os, signal, sys, time
signal.signal(signal.SIGINT, signal.default_int_handler)
try:
    print("ready", flush=True)
    time.sleep(60)
except KeyboardInterrupt:
    print("got Ctrl-C", flush=True)
    sys.exit(0)
sys.exit(5)
"""


def _launcher(tmp_path, code: str, *options: str) -> subprocess.Popen:
    script = tmp_path / "script.py"
    script.write_text(textwrap.dedent(code))
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(TESTS.parent), env.get("PYTHONPATH", "")])
    cmd = [sys.executable, "-c", _LAUNCHER, *options, str(script)]
    return subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True)  # fmt: skip


def test_the_launcher_passes_ctrl_c_on_to_every_process(tmp_path):
    proc = _launcher(tmp_path, _WAITS_FOR_SIGINT, "--processes", "2", "--timeout", "60")
    assert proc.stdout is not None
    lines = []
    while sum("ready" in x for x in lines) < 2:
        lines.append(proc.stdout.readline())
        assert lines[-1], "".join(lines)
    proc.send_signal(signal.SIGINT)
    out, _ = proc.communicate(timeout=60)
    out = "".join(lines) + out
    assert proc.returncode == 0, out
    assert "[0] got Ctrl-C" in out and "[1] got Ctrl-C" in out, out
    assert "passed on to every process" in out



def test_a_process_killed_by_a_signal_gives_the_shells_status(tmp_path):
    # Popen reports -9; `sys.exit(-9)` made it 247, which names no signal.
    code = "import os, signal\nos.kill(os.getpid(), signal.SIGKILL)\n"
    proc = _launcher(tmp_path, code, "--processes", "2", "--timeout", "60")
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 128 + signal.SIGKILL, out
