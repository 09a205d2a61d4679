"""MkDocs hooks: the site builds from the repository alone.

* ``benchmarks/results/*.png`` (the measured figures the pages show) are added to the
  site under the same path. A page links them as ``../benchmarks/results/NAME.png``, which
  is right when the page is read on GitHub; the hook makes the link relative to the site.
* ``docs/benchmarks.md`` holds ``<!-- include: benchmarks/README.md -->`` ... ``<!-- end
  include -->`` around a link for GitHub readers; in the site the file itself replaces
  them, its links into ``docs/`` made relative to the page and its headings one level
  down, so the benchmark notes have one source.
"""

from __future__ import annotations

import re
from pathlib import Path

from mkdocs.structure.files import File

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"
MARKER = re.compile(r"<!--\s*include:\s*(benchmarks/README\.md)\s*-->.*?<!--\s*end include\s*-->",
                    re.DOTALL)


def on_files(files, config):
    for png in sorted(RESULTS.glob("*.png")):
        files.append(File(f"benchmarks/results/{png.name}", str(ROOT), config["site_dir"],
                          config["use_directory_urls"]))
    return files


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
    return MARKER.sub(lambda m: _included(m.group(1)), markdown)
