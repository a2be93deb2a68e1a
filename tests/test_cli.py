"""The `sciml-bridge` console script: the demo writes its PNGs; bench finds its scripts."""


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
    for row in ("| Poisson 2-D PINN | adam |", "| Poisson 2-D PINN | ssbroyden |",
                "| Poisson 2-D PINN | natural-gradient |",
                "| Poisson 2-D PINN | natural-gradient, best of 2 starts |",
                "| neural ODE spiral |"):
        assert row in text


def test_bench_rejects_unknown_names():
    with pytest.raises(ValueError, match="unknown benchmark.*'no_such_bench'"):
        _cli.bench(["no_such_bench"])


def test_bench_lists_scripts_with_a_main():
    folder = _cli.ROOT / "benchmarks"
    names = sorted(p.stem for p in folder.glob("*.py") if not p.stem.startswith("_"))
    assert "pinn_accuracy" in names
    assert callable(_cli.load_script("benchmarks/pinn_accuracy.py", command="bench").main)


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
