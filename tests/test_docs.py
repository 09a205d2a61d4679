"""Citations of the documentation resolve: every cited section of docs/theory.md or README.md exists.

The code, the tests, the configs and the READMEs cite the mathematics as
``docs/theory.md, "Gradient flow"`` (in Markdown as a link with that text to the
section's anchor, ``[docs/theory.md, "Gradient flow"](docs/theory.md#gradient-flow)``)
and the interface as ``README.md, "The run file"``. A renamed or removed
heading breaks them silently; these tests find that. They also keep the
internal design document, which users of the repository never see, out of
what they do see.
"""

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
THEORY = ROOT / "docs" / "theory.md"
README = ROOT / "README.md"

# Where citations live: the package, the tests, benchmarks, configs and every Markdown file.
SOURCES = ("wflow/**/*.py", "tests/**/*.py", "benchmarks/**/*.py", "benchmarks/**/*.md",
           "configs/**/*.toml", "docs/**/*.md", "README.md")

THEORY_CITATION = re.compile(r'docs/theory\.md, "([^"\n]+)"')
README_CITATION = re.compile(r'\bREADME(?:\.md)?, "([^"\n]+)"')
THEORY_LINK = re.compile(r'\]\((?:\.\./)*docs/theory\.md#([^)\s]*)\)')
LABELLED_LINK = re.compile(r'\[docs/theory\.md, "([^"\n]+)"\]\((?:\.\./)*docs/theory\.md#([^)\s]*)\)')
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


def test_every_cited_readme_section_exists():
    names = set(_headings(README))
    cited = _citations(README_CITATION)
    assert len(cited) >= 5
    missing = [c for c in cited if c[2] not in names]
    assert not missing, f"cited sections that are not headings of README.md: {missing}"


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
