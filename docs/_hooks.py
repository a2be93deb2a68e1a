"""MkDocs hooks: the examples page shows each script's source and, when the site is built with
`SB_DOCS_EXAMPLES=1` (what `make docs` does), the figures and table the demo really produced.

A strict build without running the examples (the one `make test` checks) shows the sources
only: nothing on the page claims a figure that was not made by this build.
"""

import os
import re
import subprocess
import sys
from pathlib import Path


_DIRECTIVE = re.compile(r"<!-- sb-example: (\S+)(?: (\S+))? -->")
_ROOT = Path(__file__).resolve().parent.parent
_GENERATED = _ROOT / "docs" / "generated"


def on_pre_build(config, **kwargs):
    if os.environ.get("SB_DOCS_EXAMPLES") != "1":
        return
    _GENERATED.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "sciml_bridge", "demo", "--no-progress", "--out", str(_GENERATED)]
    out = subprocess.run(cmd, cwd=_ROOT, capture_output=True, text=True, check=True)
    (_GENERATED / "demo.txt").write_text(out.stdout)


def _example(match: re.Match) -> str:
    script, figure = match.group(1), match.group(2)
    source = (_ROOT / script).read_text()
    parts = [f'??? example "`{script}`"\n\n    ```python\n'
             + "".join(f"    {line}\n" if line else "\n" for line in source.splitlines())
             + "    ```\n"]
    if figure and (_GENERATED / figure).is_file():
        parts.append(f"![{figure}](generated/{figure})\n")
    elif figure:
        parts.append(f"Run `python {script}` (or `make docs`, which runs the demo) to draw "
                     f"`{figure}`.\n")
    return "\n".join(parts)


def on_page_markdown(markdown: str, page, config, files, **kwargs) -> str:
    markdown = _DIRECTIVE.sub(_example, markdown)
    if "<!-- sb-demo-table -->" in markdown:
        table = _GENERATED / "demo.txt"
        text = ("```\n" + table.read_text() + "```\n") if table.is_file() else (
            "Built without running the demo: `make docs` runs it and prints its table here.\n")
        markdown = markdown.replace("<!-- sb-demo-table -->", text)
    return markdown
