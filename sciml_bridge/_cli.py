"""The `sciml-bridge` console script: `demo` (the main job) and `bench`.

`sciml-bridge demo` trains the 2-D Poisson PINN (Adam baseline, SSBroyden, natural gradient,
natural gradient then SSBroyden) and the neural-ODE spiral, writes their PNGs into `out/` and
prints one summary table. `sciml-bridge bench` runs the scripts in `benchmarks/` and prints
their tables. Both run the scripts of the source checkout (the examples and benchmarks are not
part of the installed wheel), through each script's public `main(...)`.
"""

import argparse
import importlib.util
import inspect
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from types import ModuleType
from typing import Any

import jax


ROOT = Path(__file__).resolve().parent.parent

_MSG_NO_MATPLOTLIB = """\
`sciml-bridge demo` draws its figures with matplotlib, which is not installed (the library
itself does not need it). Fix: `pip install "sciml_bridge[demo]"` (or `make demo`, which installs
it for you)."""

_MSG_NO_SCRIPT = """\
`sciml-bridge {command}` runs the scripts of the source checkout, but {path} does not exist.
Fix: run it from a clone of the repository installed in editable mode (`pip install -e .`,
which `make demo` / `make bench` do for you)."""

# Reduced settings for `--quick` (a smoke run: seconds, not the accuracy story). Small as they
# are, natural gradient already beats Adam by orders of magnitude here and BFGS finishes the
# spiral below 2e-3; the test suite checks both on this very run.
_QUICK_POISSON = dict(n_points=10, adam_steps=300, ssbroyden_steps=100, ng_steps=150, starts=2,
                      multi_start_steps=60)
_QUICK_SPIRAL = dict(width=16, steps=150, bfgs_steps=150)
_QUICK_REPEATS = 2


def load_script(relative: str, command: str = "demo") -> ModuleType:
    """Import one script of the checkout (e.g. `"examples/pinn/poisson_2d.py"`) by its path.

    Its folder goes on `sys.path`, as `python path/to/script.py` does, so the script's private
    siblings (`benchmarks/_timing.py`) import the same way in both cases."""
    path = ROOT / relative
    if not path.is_file():
        raise FileNotFoundError(_MSG_NO_SCRIPT.format(command=command, path=path))
    if str(path.parent) not in sys.path:
        sys.path.insert(0, str(path.parent))
    name = "sciml_bridge_scripts." + relative.removesuffix(".py").replace("/", ".")
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None  # a `.py` path always has a source loader
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        del sys.modules[name]
        raise
    return module


def _call_main(module: Any, **kwargs):  # a module, or anything with a `main`
    """Call `module.main`, passing only the keywords it accepts."""
    params = inspect.signature(module.main).parameters
    takes_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
    return module.main(**{k: v for k, v in kwargs.items() if takes_any or k in params})


def _spiral_row(out: dict, seconds: float) -> tuple[str, str, str, float]:
    """One summary row from the dict `spiral.main` returns (`method`, `loss`, `time`)."""
    method = str(out.get("method", "-"))
    seconds = float(out.get("time", seconds))
    loss = f"loss {float(out['loss']):.2e}" if "loss" in out else "-"
    return ("neural ODE spiral", method, loss, seconds)


def _table(rows: Sequence[tuple[str, str, str, float]]) -> str:
    lines = ["| problem | method | error / loss | time (s) |", "|---|---|---|---:|"]
    lines += [f"| {p} | {m} | {e} | {t:.1f} |" for p, m, e, t in rows]
    return "\n".join(lines)


def demo(out_dir: str = "out", quick: bool = False, progress: bool = True) -> dict[str, Any]:
    """Run the Poisson PINN and the neural-ODE spiral; print the summary table and return its
    `rows` with each example's own result (`poisson`, `spiral`)."""
    Path(out_dir).mkdir(parents=True, exist_ok=True)
    poisson = load_script("examples/pinn/poisson_2d.py")
    spiral = load_script("examples/neural_ode/spiral.py")
    settings = dict(_QUICK_POISSON) if quick else {}
    print("== 2-D Poisson PINN: Adam baseline vs SSBroyden and natural gradient (then "
          "SSBroyden) ==", flush=True)
    result = _call_main(poisson, out_dir=out_dir, plot=True, progress=progress, **settings)
    rows = [
        ("Poisson 2-D PINN", method, f"rel. L2 {r['rel_l2']:.2e}", r["time"])
        for method, r in result["methods"].items()
    ]
    if "multi_start" in result:
        ms = result["multi_start"]
        rows.append(("Poisson 2-D PINN", f"natural-gradient, best of {ms['starts']} starts "
                     f"as one ensemble on {ms['devices']} CPU device(s) ({ms['starts']} "
                     f"separate runs: {ms['separate_time']:.1f} s)",
                     f"rel. L2 {ms['rel_l2']:.2e}", ms["time"]))
    print("== Neural ODE spiral ==", flush=True)
    start = time.perf_counter()
    out = _call_main(
        spiral, out_dir=out_dir, plot=True, progress=progress, **(_QUICK_SPIRAL if quick else {})
    )
    rows.append(_spiral_row(out if isinstance(out, dict) else {}, time.perf_counter() - start))
    print("\n" + _table(rows))
    print(f"\nPNGs written to {Path(out_dir).resolve()}")
    return dict(rows=rows, poisson=result, spiral=out)


def benchmark_names(names: Sequence[str] = ()) -> list[str]:
    """The benchmarks `bench(names)` runs: `names`, or all of them; `ValueError` naming the
    available ones for an unknown name."""
    folder = ROOT / "benchmarks"
    if not folder.is_dir():
        raise FileNotFoundError(_MSG_NO_SCRIPT.format(command="bench", path=folder))
    available = sorted(p.stem for p in folder.glob("*.py") if not p.stem.startswith("_"))
    unknown = [n for n in names if n not in available]
    if unknown:
        raise ValueError(
            f"`sciml-bridge bench` got unknown benchmark(s) {unknown}; available: {available}."
        )
    return list(names) or available


def bench(names: Sequence[str] = (), quick: bool = False) -> list[str]:
    """Run `benchmarks/<name>.py` (all of them by default); each prints its own table."""
    names = benchmark_names(names)
    ran = []
    for name in names:
        print(f"== benchmarks/{name}.py ==", flush=True)
        module = load_script(f"benchmarks/{name}.py", command="bench")
        _call_main(module, **({"repeats": _QUICK_REPEATS, "quick": True} if quick else {}))
        ran.append(name)
    return ran


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="sciml-bridge",
                                     description=(__doc__ or "").split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p_demo = sub.add_parser("demo", help="train the Poisson PINN and the neural-ODE spiral")
    p_demo.add_argument("--out", default="out", help="folder for the PNGs (default: out)")
    p_demo.add_argument("--quick", action="store_true", help="tiny settings, a smoke run")
    p_demo.add_argument("--no-progress", action="store_true", help="hide the progress bars")
    p_bench = sub.add_parser("bench", help="run the benchmarks and print their tables")
    p_bench.add_argument("names", nargs="*", help="benchmark script names (default: all)")
    p_bench.add_argument("--quick", action="store_true", help="small repeat counts")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `sciml-bridge` console script and of `python -m sciml_bridge`."""
    parser = _parser()
    args = parser.parse_args(argv)
    if args.command == "bench":
        try:  # a wrong name is a usage error (message, exit status 2), not a traceback
            benchmark_names(args.names)
        except (ValueError, FileNotFoundError) as e:
            parser.error(str(e))
    if args.command == "demo" and Path(args.out).exists() and not Path(args.out).is_dir():
        parser.error(f"--out {args.out!r} is a file; the demo writes its PNGs into a folder. "
                     "Pass a folder (it is created), e.g. --out out")  # fmt: skip
    try:
        return _run(args)
    except KeyboardInterrupt:  # a second Ctrl-C (the first one ends a run with its result)
        print(f"sciml-bridge {args.command}: interrupted", file=sys.stderr)
        return 130


def _run(args: argparse.Namespace) -> int:
    # The examples and benchmarks measure float64 accuracy (1e-5 and below).
    jax.config.update("jax_enable_x64", True)
    if args.command == "demo":
        if importlib.util.find_spec("matplotlib") is None:
            print(_MSG_NO_MATPLOTLIB, file=sys.stderr)
            return 2
        # One CPU device per core: the Poisson multi-start splits its starts over them. JAX
        # takes this only before its first operation, so here and not in `demo`.
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None
        jax.config.update("jax_num_cpu_devices", cores or os.cpu_count() or 1)
        demo(out_dir=args.out, quick=args.quick, progress=not args.no_progress)
    else:
        bench(args.names, quick=args.quick)
    return 0
