"""Citations of the documentation resolve: every cited section of a page in docs/ or a README exists.

The code, the tests, the configs and the READMEs cite the mathematics as
``docs/theory.md, "Gradient flow"`` (in Markdown as a link with that text to the
section's anchor, ``[docs/theory.md, "Gradient flow"](docs/theory.md#gradient-flow)``,
or ``(theory.md#gradient-flow)`` from a page of docs/) and the interface by the page of the
documentation site that describes it, ``docs/reliability.md, "The run file"``. A renamed or
removed heading breaks them silently; these tests find that. They also keep the
internal design document, which users of the repository never see, out of
what they do see.
"""

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
THEORY = ROOT / "docs" / "theory.md"

# Where citations live: the package, the tests, benchmarks, configs and every Markdown file.
SOURCES = ("wflow/**/*.py", "tests/**/*.py", "benchmarks/**/*.py", "benchmarks/**/*.md",
           "configs/**/*.toml", "docs/**/*.md", "README.md")

THEORY_CITATION = re.compile(r'docs/theory\.md, "([^"\n]+)"')
# any Markdown file cited by path: docs/<page>.md, README.md, benchmarks/README.md (a bare
# "README" is the top-level one)
DOC_CITATION = re.compile(r'(?<![\w/.-])((?:[\w-]+/)*[\w-]+\.md|README), "([^"\n]+)"')
THEORY_LINK = re.compile(r'\]\((?:\.\./)*(?:docs/)?theory\.md#([^)\s]*)\)')
LABELLED_LINK = re.compile(r'\[docs/theory\.md, "([^"\n]+)"\]\((?:\.\./)*(?:docs/)?theory\.md#([^)\s]*)\)')
# [docs/<page>.md, "Section"](<page>.md#anchor) on any page
LABELLED_PAGE_LINK = re.compile(
    r'\[docs/([\w/-]+\.md), "([^"\n]+)"\]\((?:\.\./)*(?:docs/)?([\w/-]+\.md)#([^)\s]*)\)')
INTERNAL_LINK = re.compile(r'\]\(#([^)\s]*)\)')


def _headings(path: Path) -> list[str]:
    """The Markdown headings of a file (ATX style, outside fenced code blocks), in order."""
    names, fenced = [], False
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.lstrip().startswith("```"):
            fenced = not fenced
            continue
        m = re.match(r"#{1,6}\s+(.+?)\s*#*\s*$", line)
        if m and not fenced:
            names.append(m.group(1))
    return names


def _anchor(heading: str) -> str:
    """GitHub's anchor of a heading: lower case, punctuation dropped, spaces -> '-'."""
    text = heading.strip().lower()
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def _anchors(path: Path) -> set[str]:
    """Every anchor of a file; repeated headings get -1, -2, ... as on GitHub."""
    seen: dict[str, int] = {}
    out = set()
    for h in _headings(path):
        a = _anchor(h)
        n = seen.get(a, 0)
        out.add(a if n == 0 else f"{a}-{n}")
        seen[a] = n + 1
    return out


def _files():
    out = []
    for pattern in SOURCES:
        out += [p for p in ROOT.glob(pattern) if ".venv" not in p.parts]
    return sorted(set(out))


def _citations(regex):
    """(file, line number, cited name) for every match of ``regex`` in the sources."""
    found = []
    for path in _files():
        text = path.read_text(encoding="utf-8")
        for m in regex.finditer(text):
            line = text.count("\n", 0, m.start()) + 1
            found.append((str(path.relative_to(ROOT)), line, *m.groups()))
    return found


def test_the_theory_document_has_its_sections():
    """The sections others cite by name (common.md) are headings of docs/theory.md."""
    names = set(_headings(THEORY))
    for section in ("Conventions", "Model", "Continuum limit", "Gradient flow",
                    "Discretizations", "Closed form: linear, d = 1", "Degenerate start", "Rates",
                    "References"):
        assert section in names, section
    assert _anchor("Closed form: linear, d = 1") == "closed-form-linear-d--1"


def test_every_cited_theory_section_exists():
    names = set(_headings(THEORY))
    cited = _citations(THEORY_CITATION)
    assert len(cited) >= 30  # the regex does find the citations
    missing = [c for c in cited if c[2] not in names]
    assert not missing, f"cited sections that are not headings of docs/theory.md: {missing}"


def test_every_cited_section_of_a_page_exists():
    """``docs/<page>.md, "Section"`` and ``<dir>/README.md, "Section"`` name headings of that file.

    The package's docstrings, the tests and the configs cite the documentation site this way
    (e.g. ``docs/configuration.md, "Configuration reference"``), so moving a section breaks the
    test, not the reader.
    """
    cited = _citations(DOC_CITATION)
    pages = [c for c in cited if c[2].startswith("docs/") and c[2] != "docs/theory.md"]
    assert len(pages) >= 10, pages  # the regex does find the citations of the site's pages
    assert any(c[0].startswith("wflow/") for c in pages)
    missing = []
    for path, line, target, section in cited:
        file = ROOT / ("README.md" if target == "README" else target)
        if not file.is_file():
            missing.append((path, line, target, "no such file"))
        elif section not in _headings(file):
            missing.append((path, line, target, section))
    assert not missing, f"cited sections that are not headings of the cited file: {missing}"


def test_labelled_links_to_pages_point_at_their_section():
    """A labelled link to a page goes to the page and section its text names."""
    links = _citations(LABELLED_PAGE_LINK)
    assert links
    wrong = [c for c in links
             if c[2] != c[4] or _anchor(c[3]) != c[5] or c[5] not in _anchors(ROOT / "docs" / c[2])]
    assert not wrong, f"link text and target disagree: {wrong}"


def test_links_into_the_theory_document_resolve():
    anchors = _anchors(THEORY)
    links = _citations(THEORY_LINK)
    assert links
    broken = [c for c in links if c[2] not in anchors]
    assert not broken, f"links to anchors docs/theory.md does not have: {broken}"
    # a labelled link points at the section its text names
    wrong = [c for c in _citations(LABELLED_LINK) if _anchor(c[2]) != c[3]]
    assert not wrong, f"link text and anchor disagree: {wrong}"
    # the document's own table of contents and cross-references
    text = THEORY.read_text(encoding="utf-8")
    internal = set(INTERNAL_LINK.findall(text))
    assert internal and internal <= anchors, internal - anchors


@pytest.mark.parametrize("needle", ["SPEC" + " §", "shared/SPEC" + ".md"])
def test_no_citations_of_the_internal_design_document(needle):
    """What users see (package, tests, configs, READMEs, docs) cites docs/theory.md, not SPEC."""
    hits = []
    for path in _files():
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            if needle in line:
                hits.append(f"{path.relative_to(ROOT)}:{number}")
    assert not hits, hits
