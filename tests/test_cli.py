"""The `sciml-bridge` console script: the demo writes its PNGs; bench finds its scripts."""

import importlib.util
import sys

import jax.numpy as jnp
import pytest
from helpers import run_python

from sciml_bridge import _cli


@pytest.mark.slow
def test_demo_quick_writes_the_pngs_and_prints_the_summary(tmp_path, capsys):
    out = tmp_path / "demo"
    assert _cli.main(["demo", "--quick", "--no-progress", "--out", str(out)]) == 0
    pngs = sorted(p.name for p in out.glob("*.png"))
    assert "poisson_2d.png" in pngs and len(pngs) >= 2, pngs
    assert all((out / name).stat().st_size > 10_000 for name in pngs)
    text = capsys.readouterr().out
    assert "| problem | method | error / loss | time (s) |" in text
    # `--quick` skips the multi-start (tests/test_examples_pinn.py runs it on the example).
    for row in ("| Poisson 2-D PINN | adam |", "| Poisson 2-D PINN | ssbroyden |",
                "| Poisson 2-D PINN | natural-gradient |", "| neural ODE spiral |"):
        assert row in text


def test_bench_rejects_unknown_names():
    with pytest.raises(ValueError, match="unknown benchmark.*'no_such_bench'"):
        _cli.bench(["no_such_bench"])


def test_bench_lists_scripts_with_a_main():
    folder = _cli.ROOT / "benchmarks"
    names = sorted(p.stem for p in folder.glob("*.py") if not p.stem.startswith("_"))
    assert "pinn_accuracy" in names
    assert callable(_cli.load_script("benchmarks/pinn_accuracy.py", command="bench").main)


def test_bench_scripts_import_their_private_timing_module_by_path():
    # `benchmarks/_timing.py` is not part of the package; loading a script by path must still
    # resolve its sibling import (as `python benchmarks/laplacian.py` does).
    assert importlib.util.find_spec("sciml_bridge._benchmark") is None
    module = _cli.load_script("benchmarks/laplacian.py", command="bench")
    assert module.per_call.__module__ == "_timing"
    assert str(_cli.ROOT / "benchmarks") in sys.path


def test_a_missing_peer_is_a_row_that_says_so(monkeypatch):
    # `make test` never installs the `bench` extra: a benchmark must then print the peer's row
    # as "not installed" rather than drop it, and still time everything else.
    module = _cli.load_script("benchmarks/laplacian.py", command="bench")
    peers = sys.modules["_peers"]
    monkeypatch.setattr(peers, "optional", lambda name: (None, peers.INSTALL))
    # Timing is not under test here: skip compiling the gradients.
    monkeypatch.setattr(module, "per_call", lambda calls, *_: dict.fromkeys(calls, 1e-3))
    rows = module._rows(2, 4, 1, 8, jnp.float64, 0, number=1, repeats=1)
    folx_rows = [row for row in rows if "folx" in row]
    assert len(folx_rows) == 1 and "not installed" in folx_rows[0] and "make bench" in folx_rows[0]
    timed = [row for row in rows if "folx" not in row]
    assert len(timed) == 4 and all("| 1.00 | 1.00x |" in row for row in timed)


def test_missing_script_says_how_to_fix():
    with pytest.raises(FileNotFoundError, match="pip install -e"):
        _cli.load_script("examples/pinn/no_such_example.py")


def test_parser_requires_a_subcommand(capsys):
    with pytest.raises(SystemExit):
        _cli.main([])
    assert "demo" in capsys.readouterr().err


def test_call_main_passes_only_the_keywords_main_takes():
    class Script:
        @staticmethod
        def main(repeats=5):
            return repeats

    assert _cli._call_main(Script, repeats=2, quick=True) == 2


def test_python_dash_m_runs_the_same_entry_point():
    out = run_python(
        """
        import runpy, sys
        sys.argv = ["sciml_bridge", "--help"]
        runpy.run_module("sciml_bridge", run_name="__main__")
        """
    )
    assert out.returncode == 0, out.stderr
    assert "demo" in out.stdout and "bench" in out.stdout
