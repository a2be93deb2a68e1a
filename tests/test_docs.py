"""Every example we show runs: the README's and each public docstring's ```python block."""

import pathlib
import re
import textwrap

import pytest

import sciml_bridge as sb


_BLOCK = re.compile(r"```python\n(.*?)```", re.S)
_PRELUDE = """
import jax, jax.numpy as jnp, numpy as np, equinox as eqx, diffrax, optax
import sciml_bridge as sb
"""


def _public():
    for name in sorted(dir(sb)):
        obj = getattr(sb, name)
        doc = getattr(obj, "__doc__", None) or ""
        if not name.startswith("_") and "```python" in doc:
            yield pytest.param(obj, id=name)


def _run(code: str, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    exec(compile(_PRELUDE + code, "<example>", "exec"), {})


@pytest.mark.parametrize("obj", list(_public()))
def test_docstring_example_runs(obj, tmp_path, monkeypatch):
    for block in _BLOCK.findall(obj.__doc__):
        _run(textwrap.dedent(block), tmp_path, monkeypatch)


def test_readme_examples_run(tmp_path, monkeypatch):
    readme = pathlib.Path(__file__).parents[1] / "README.md"
    blocks = _BLOCK.findall(readme.read_text())
    assert blocks
    for block in blocks:
        _run(block, tmp_path, monkeypatch)


@pytest.mark.parametrize("page", sorted((pathlib.Path(__file__).parents[1] / "docs").rglob("*.md")),
                         ids=lambda p: p.name)
def test_docs_site_examples_run(page, tmp_path, monkeypatch):
    for block in _BLOCK.findall(page.read_text()):
        _run(block, tmp_path, monkeypatch)
