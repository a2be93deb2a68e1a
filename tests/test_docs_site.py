"""The documentation site builds strictly (no broken link, no missing reference) and its API
reference covers every public name. The build runs without executing the examples (`make docs`
runs them); mkdocstrings reads the sources statically, so this takes seconds."""

import ast
import os
import pathlib
import re
import subprocess
import sys


ROOT = pathlib.Path(__file__).parents[1]


def _public_names() -> set[str]:
    tree = ast.parse((ROOT / "sciml_bridge" / "__init__.py").read_text())
    names = set()
    for node in tree.body:
        if isinstance(node, ast.ImportFrom) and node.level == 1:
            names |= {a.asname for a in node.names if a.asname and not a.asname.startswith("_")}
    return names


def test_every_public_name_is_in_the_api_reference():
    pages = "\n".join(p.read_text() for p in (ROOT / "docs").rglob("*.md"))
    documented = set(re.findall(r"^::: sciml_bridge\.(\w+)", pages, flags=re.M))
    missing = _public_names() - documented
    assert not missing, f"public names missing from docs/api/*.md: {sorted(missing)}"


def test_mkdocs_strict_build(tmp_path):
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}
    env.pop("SB_DOCS_EXAMPLES", None)
    out = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "-d", str(tmp_path / "site")],
        cwd=ROOT, capture_output=True, text=True, env=env, timeout=300,
    )
    assert out.returncode == 0, out.stdout + out.stderr
    assert (tmp_path / "site" / "api" / "optimise" / "index.html").is_file()
