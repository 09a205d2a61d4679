"""The documentation site builds strictly, offline, and holds everything the README used to.

``mkdocs build --strict`` (mkdocs.yml: links, anchors and files are validated, so a broken link,
a missing page or a docstring reference mkdocstrings cannot resolve fails the build) runs here
in a temporary directory. The README is short: what wflow is, the Quickstart, one figure and
links; every section it had before the site existed is a heading of a page in docs/.
"""

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from test_docs import _headings  # the Markdown headings of a file

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
README = ROOT / "README.md"

# The `##` sections of the README before it became the site (git show b4fe6d0~1:README.md).
OLD_README_SECTIONS = (
    "The mathematics in ten lines",
    "Quickstart",
    "Using it from Python",
    "Bring your own block",
    "Command line",
    "Configuration reference",
    "Random embedding and readout",
    "Theory studies: `wflow study`",
    "The run file",
    "Reliability: what a run file guarantees",
    "Reading the figures",
    "The grid solver",
    "Many devices",
    "Memory at scale",
    "Benchmarks",
    "Finite networks side by side: `wflow compare`",
    "Residual scale alpha: mean-field vs lazy training",
    "Held-out data",
    "Shallow ensemble and block reordering (Lu et al. 2020)",
)
# ... and its subsections, which pages cite.
OLD_README_SUBSECTIONS = (
    "`wflow study limit`: finite networks against the mean-field limit",
    "`wflow study zero-loss`: does the flow reach zero loss?",
    "Multi-node GPU jobs",
)

# The two commands .ci/run executes: the README shows them exactly so.
QUICKSTART = (
    "```bash\n"
    "python3 -m venv .venv && .venv/bin/pip install -e '.[test]' && "
    ".venv/bin/wflow run configs/quickstart.toml\n"
    ".venv/bin/python -m pytest -q -n auto\n"
    "```\n"
)


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    """The site, built once: ``mkdocs build --strict`` into a temporary directory."""
    out = tmp_path_factory.mktemp("site")
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}
    proc = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--config-file",
         str(ROOT / "mkdocs.yml"), "--site-dir", str(out)],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=300, check=False)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-8000:]
    return out


def test_the_site_builds_strictly(site):
    for page in ("index.html", "getting-started/index.html", "theory/index.html",
                 "configuration/index.html", "grid/index.html", "studies/index.html",
                 "compare/index.html", "devices/index.html", "reliability/index.html",
                 "blocks/index.html", "api/index.html", "benchmarks/index.html"):
        assert (site / page).is_file(), page


def test_the_site_needs_no_network(site):
    """No web fonts or other remote assets: the pages read offline."""
    for html in site.rglob("*.html"):
        text = html.read_text(encoding="utf-8")
        assert "fonts.googleapis.com" not in text and "fonts.gstatic.com" not in text, html
        assert not re.search(r'<(?:script|link)[^>]+(?:src|href)="https?://', text), html


def test_the_api_reference_covers_the_public_surface(site):
    """Every name of ``wflow.__all__`` and ``wflow.study.__all__`` has an entry, rendered."""
    import wflow
    import wflow.study

    entries = re.findall(r"^::: ([\w.]+)\s*$", (DOCS / "api.md").read_text(encoding="utf-8"),
                         re.MULTILINE)
    documented = {e.rsplit(".", 1)[-1] for e in entries}
    public = (set(wflow.__all__) | set(wflow.study.__all__)) - {"__version__"}
    assert public <= documented, sorted(public - documented)
    html = (site / "api" / "index.html").read_text(encoding="utf-8")
    for name in ("integrate", "Problem", "AbstractFeatureMap", "train_network", "run_limit"):
        assert re.search(rf'id="[\w.]*\b{name}"', html), name


def test_the_benchmarks_page_includes_the_benchmark_notes(site):
    html = (site / "benchmarks" / "index.html").read_text(encoding="utf-8")
    assert "include: benchmarks/README.md" not in html
    assert "The benchmarked computation" in html
    assert (site / "benchmarks" / "results" / "study_limit_teacher_L.png").is_file()


def test_the_example_pages_show_their_figures(site):
    """Every examples/0*.py is a page (docs/hooks.py) with its code and its figures."""
    notebooks = sorted((ROOT / "examples").glob("0*.py"))
    assert len(notebooks) == 4
    nav = (ROOT / "mkdocs.yml").read_text(encoding="utf-8")
    for notebook in notebooks:
        assert f"examples/{notebook.stem}.md" in nav, notebook.name
        html = (site / "examples" / notebook.stem / "index.html").read_text(encoding="utf-8")
        # the code cells, highlighted as Python; no cell markers left
        assert '<div class="highlight"><pre><span></span><code><span class="kn">import' in html
        assert "# %%" not in html
        images = re.findall(r'<img alt="[^"]*" src="\.\./\.\./(figures/examples/[^"]+)"', html)
        assert images, notebook.name
        for src in images:
            assert (site / src).is_file(), src
    assert (site / "figures" / "examples" / "rho_over_training.gif").is_file()
    studies = (site / "studies" / "index.html").read_text(encoding="utf-8")
    assert 'href="../examples/01_check_the_limit/"' in studies  # ../examples/*.py, rewritten


def test_the_readme_is_short():
    text = README.read_text(encoding="utf-8")
    assert text.count("\n") <= 200
    assert QUICKSTART in text
    assert re.search(r"!\[[^\]]*\]\([^)]+\.png\)", text)  # one figure


def test_the_quickstart_is_what_ci_runs():
    ci = (ROOT / ".ci" / "run").read_text(encoding="utf-8")
    for command in QUICKSTART.splitlines()[1:-1]:
        assert command in ci


@pytest.mark.parametrize("section", OLD_README_SECTIONS + OLD_README_SUBSECTIONS)
def test_every_former_readme_section_lives_in_the_site(section):
    pages = [p for p in sorted(DOCS.glob("*.md")) if section in _headings(p)]
    assert pages, f"README section {section!r} is a heading of no page in docs/"


def test_the_readme_links_to_every_page():
    text = README.read_text(encoding="utf-8")
    nav = re.findall(r"^\s+- [^:]+: ([\w-]+\.md)\s*$",
                     (ROOT / "mkdocs.yml").read_text(encoding="utf-8"), re.MULTILINE)
    assert len(nav) >= 12
    for page in nav:
        if page in ("index.md", "benchmarks.md"):
            continue  # the README is the home page; benchmarks/README.md is linked directly
        assert f"(docs/{page})" in text, page
    for target in re.findall(r"\]\(([^)#\s]+)", text):
        if not target.startswith("http"):
            assert (ROOT / target).exists(), target
