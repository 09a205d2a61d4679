"""MkDocs hooks: the site builds from the repository alone.

* ``benchmarks/results/*.png`` (the measured figures the pages show) are added to the
  site under the same path. A page links them as ``../benchmarks/results/NAME.png``, which
  is right when the page is read on GitHub; the hook makes the link relative to the site.
* ``docs/benchmarks.md`` holds ``<!-- include: benchmarks/README.md -->`` ... ``<!-- end
  include -->`` around a link for GitHub readers; in the site the file itself replaces
  them, its links into ``docs/`` made relative to the page and its headings one level
  down, so the benchmark notes have one source.
* Every ``examples/0*.py`` (a notebook in jupytext's percent format: ``# %% [markdown]``
  cells of ``# ``-prefixed Markdown, ``# %%`` code cells) becomes the page
  ``examples/<name>.md``: the Markdown cells as Markdown, the code cells as fenced Python,
  and after each code cell the figures it saves. A figure is found by its call, written
  exactly so: ``savefig(OUT / "name.png")`` or ``.save(OUT / "name.gif", ...)`` (``OUT``
  is the notebook's output folder, ``$WFLOW_EXAMPLES_OUT``); the page shows
  ``docs/figures/examples/name.png``, the committed output of one run of the notebook
  (``WFLOW_EXAMPLES_OUT=docs/figures/examples python examples/<name>.py`` regenerates it;
  tests/test_examples.py checks that the figures a notebook writes are those its page
  shows). A page links a notebook as ``../examples/<name>.py``, a notebook links a page as
  ``../docs/<page>.md`` (both right on GitHub); in the site the links go to the pages.
"""

from __future__ import annotations

import re
from pathlib import Path

from mkdocs.structure.files import File

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"
EXAMPLES = ROOT / "examples"
EXAMPLE_FIGURES = "figures/examples"  # under docs/
SAVED = re.compile(r"""(?:savefig|\.save)\(\s*OUT\s*/\s*["']([\w.-]+\.(?:png|gif))["']""")
CELL = re.compile(r"^# %%(?P<kind> \[markdown\])?[^\n]*$", re.MULTILINE)
MARKER = re.compile(r"<!--\s*include:\s*(benchmarks/README\.md)\s*-->.*?<!--\s*end include\s*-->",
                    re.DOTALL)


def on_files(files, config):
    for png in sorted(RESULTS.glob("*.png")):
        files.append(File(f"benchmarks/results/{png.name}", str(ROOT), config["site_dir"],
                          config["use_directory_urls"]))
    for notebook in example_notebooks():
        files.append(File.generated(config, f"examples/{notebook.stem}.md",
                                    content=notebook_page(notebook)))
    return files


def example_notebooks() -> list[Path]:
    return sorted(EXAMPLES.glob("0*.py"))


def notebook_cells(text: str) -> list[tuple[str, str]]:
    """The cells of a percent-format notebook: ("markdown" | "code", source), in order; the
    Markdown without its ``# `` prefixes, the code without blank lines at its ends."""
    marks = list(CELL.finditer(text))
    cells = []
    for mark, end in zip(marks, [*marks[1:], None], strict=True):
        body = text[mark.end():end.start() if end else len(text)]
        if mark.group("kind"):
            lines = [line[2:] if line.startswith("# ") else line.lstrip("#")
                     for line in body.strip("\n").splitlines()]
            cells.append(("markdown", "\n".join(lines).strip("\n")))
        elif body.strip():
            cells.append(("code", body.strip("\n")))
    return cells


def saved_figures(code: str) -> list[str]:
    """The figure files a code cell writes (``savefig(OUT / "x.png")``, ``.save(OUT / "x.gif"``)."""
    return SAVED.findall(code)


def notebook_page(path: Path) -> str:
    """The Markdown page of a notebook: its cells, with each code cell's figures after it."""
    rel = path.relative_to(ROOT).as_posix()
    parts = []
    text = path.read_text(encoding="utf-8").replace("](../docs/", "](../")  # from examples/
    for i, (kind, source) in enumerate(notebook_cells(text)):
        if kind == "markdown" and i == 0 and source.startswith("# "):
            title, _, rest = source.partition("\n")  # the page's title, then where it comes from
            parts += [title, f"*This page is the notebook `{rel}` (jupytext percent format): "
                      f"`python {rel}` runs it top to bottom and writes its files to "
                      "`$WFLOW_EXAMPLES_OUT` (default `examples/out/`); jupytext opens it in "
                      "Jupyter. The figures are the output of one run.*", rest.strip("\n")]
        elif kind == "markdown":
            parts.append(source)
        else:
            parts.append(f"```python\n{source}\n```")
            parts += [f"![{name}](../{EXAMPLE_FIGURES}/{name})" for name in saved_figures(source)]
    return "\n\n".join(parts) + "\n"


def _included(relpath: str) -> str:
    text = (ROOT / relpath).read_text(encoding="utf-8")
    text = re.sub(r"\]\((?:\.\./)+docs/", "](", text)  # ../docs/theory.md -> theory.md
    lines, fenced = [], False
    for line in text.splitlines():
        if line.lstrip().startswith("```"):
            fenced = not fenced
        elif not fenced and re.match(r"#+ ", line):
            line = "#" + line  # headings one level below the page's title
        lines.append(line)
    return "\n".join(lines) + "\n"


def on_page_markdown(markdown, page, config, files):
    markdown = markdown.replace("](../benchmarks/results/", "](benchmarks/results/")
    markdown = re.sub(r"\]\(\.\./examples/(0[\w-]*)\.py\)", r"](examples/\1.md)", markdown)
    return MARKER.sub(lambda m: _included(m.group(1)), markdown)
