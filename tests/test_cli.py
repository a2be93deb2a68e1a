"""The `sciml-bridge` console script: the demo writes its PNGs; bench finds its scripts."""

import importlib.util
import sys

import jax.numpy as jnp
import pytest
from helpers import run_python

from sciml_bridge import _cli


@pytest.mark.slow
def test_demo_quick_writes_the_pngs_prints_the_summary_and_each_example_meets_its_claim(
    tmp_path, capsys
):
    # One test, not three sharing a fixture: under xdist a shared fixture can run once per
    # worker, and this run is the most expensive in the suite. The quick demo runs the Poisson
    # and spiral examples in their reduced settings, so their claims are checked on this run.
    out = tmp_path / "demo"
    result = _cli.demo(out_dir=str(out), quick=True, progress=False)
    pngs = sorted(p.name for p in out.glob("*.png"))
    assert pngs == ["neural_ode_spiral.png", "poisson_2d.png"], pngs
    assert all((out / name).stat().st_size > 10_000 for name in pngs)
    text = capsys.readouterr().out
    assert "| problem | method | error / loss | time (s) |" in text
    for row in ("| Poisson 2-D PINN | adam |", "| Poisson 2-D PINN | ssbroyden |",
                "| Poisson 2-D PINN | natural-gradient |",
                "| Poisson 2-D PINN | natural-gradient+ssbroyden |",
                "| Poisson 2-D PINN | natural-gradient, best of 2 starts as one ensemble on ",
                "separate runs: ", "| neural ODE spiral | adam+bfgs | loss "):
        assert row in text, row
    assert len(result["rows"]) == 6

    # Poisson (10x10 grid): natural gradient beats Adam by orders of magnitude.
    poisson = result["poisson"]
    adam, ng = poisson["methods"]["adam"], poisson["methods"]["natural-gradient"]
    assert set(poisson["methods"]) == {"adam", "ssbroyden", "natural-gradient",
                                       "natural-gradient+ssbroyden"}
    # The chained run starts where natural gradient stopped; a line search only descends.
    both = poisson["methods"]["natural-gradient+ssbroyden"]
    assert both["loss"] <= ng["loss"] and both["steps"] >= ng["steps"]
    assert both["history"][ng["steps"]] == ng["loss"]
    assert ng["rel_l2"] < 1e-3, ng["rel_l2"]
    assert ng["rel_l2"] < adam["rel_l2"] / 100
    ms = poisson["multi_start"]
    assert ms["rel_l2"] < 1e-2 and ms["starts"] == 2
    assert ms["devices"] in (1, 2)  # the starts split evenly over the CPU devices found
    assert ms["time"] > 0 and ms["separate_time"] > 0  # both ways timed
    assert ms["losses"].shape == ms["separate_losses"].shape == (2,)
    assert poisson["n_params"] == 2 * 32 + 32 + 32 + 1

    # Spiral (width 16, 150 + 150 steps): 5e-4..1.5e-3 depending on how XLA compiled it (the
    # fit is chaotic in the last bits; the full run ~2e-6); Adam alone stays > 1e-1.
    spiral = result["spiral"]
    assert f"loss {spiral['loss']:.3e}" in text and "BFGS" in text
    assert spiral["loss"] < 5e-3 and spiral["adam_loss"] > 1e-1
    assert spiral["theta"].dtype == jnp.float64


def test_bench_rejects_unknown_names():
    with pytest.raises(ValueError, match="unknown benchmark.*'no_such_bench'"):
        _cli.bench(["no_such_bench"])


def test_unknown_bench_name_is_a_usage_error_without_traceback(capsys):
    with pytest.raises(SystemExit) as info:
        _cli.main(["bench", "no_such_bench"])
    err = capsys.readouterr().err
    assert info.value.code == 2 and "unknown benchmark(s) ['no_such_bench']" in err
    assert "pinn_accuracy" in err and "Traceback" not in err
    out = run_python(
        """
        import runpy, sys
        sys.argv = ["sciml_bridge", "bench", "no_such_bench"]
        runpy.run_module("sciml_bridge", run_name="__main__")
        """
    )
    assert out.returncode == 2 and "no_such_bench" in out.stderr
    assert "Traceback" not in out.stderr


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


def test_demo_out_that_is_a_file_is_a_usage_error(tmp_path, capsys):
    path = tmp_path / "taken"
    path.write_text("")
    with pytest.raises(SystemExit) as e:
        _cli.main(["demo", "--out", str(path), "--quick"])
    assert e.value.code == 2 and "is a file" in capsys.readouterr().err


def test_a_second_ctrl_c_ends_the_command_with_130(monkeypatch, capsys):
    def interrupted(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(_cli, "bench", interrupted)
    assert _cli.main(["bench", "--quick"]) == 130
    assert "interrupted" in capsys.readouterr().err
