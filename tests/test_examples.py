"""The notebooks in examples/ run, write their figures, and render as pages of the site.

* Every ``examples/0*.py`` runs as a script (``python examples/NAME.py`` from the repository
  root, outputs in ``$WFLOW_EXAMPLES_OUT``) and exits 0: the checks inside the notebooks
  (SGD equals the Euler flow, a block with h = 1 equals the neuron, the width exponent's
  interval holds 1/2, the grid's mass and the particles' M^-1/2 rate) are assertions, so a
  broken result fails here. It writes exactly the figures its page shows (``docs/hooks.py``
  finds them by their ``savefig(OUT / "name.png")`` / ``.save(OUT / "name.gif")`` calls);
  the animation has more than one frame.
* Every figure a page embeds is committed in docs/figures/examples, and every figure there
  is embedded by a page.
"""

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
FIGURES = ROOT / "docs" / "figures" / "examples"


def _hooks():
    spec = importlib.util.spec_from_file_location("wflow_docs_hooks", ROOT / "docs" / "hooks.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


hooks = _hooks()
NOTEBOOKS = hooks.example_notebooks()


def _figures(notebook: Path) -> list[str]:
    """The figures the notebook's page embeds, in order."""
    cells = hooks.notebook_cells(notebook.read_text(encoding="utf-8"))
    return [name for kind, code in cells if kind == "code" for name in hooks.saved_figures(code)]


def test_there_are_four_notebooks():
    assert [p.name for p in NOTEBOOKS] == [
        "01_check_the_limit.py", "02_grid_vs_particles.py", "03_finite_vs_mean_field.py",
        "04_bring_your_own_block.py"]


@pytest.mark.parametrize("notebook", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_the_notebook_runs_and_writes_the_figures_its_page_shows(notebook, tmp_path):
    out = tmp_path / "out"
    default = ROOT / "examples" / "out"
    existed = default.exists()
    env = {**os.environ, "WFLOW_EXAMPLES_OUT": str(out)}
    proc = subprocess.run([sys.executable, str(notebook.relative_to(ROOT))], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=240, check=False)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-6000:]
    written = sorted(p.name for p in out.iterdir() if p.suffix in (".png", ".gif"))
    assert written and written == sorted(_figures(notebook))
    for name in written:
        with Image.open(out / name) as image:
            assert image.size[0] >= 300 and image.size[1] >= 150, (name, image.size)
            if name.endswith(".gif"):
                assert image.n_frames > 1, name
    assert default.exists() == existed  # everything went to $WFLOW_EXAMPLES_OUT


def test_every_embedded_figure_is_committed_and_every_committed_one_embedded():
    embedded = {name for notebook in NOTEBOOKS for name in _figures(notebook)}
    committed = {p.name for p in FIGURES.iterdir() if p.suffix in (".png", ".gif")}
    assert embedded == committed, (sorted(embedded - committed), sorted(committed - embedded))
    gifs = [name for name in embedded if name.endswith(".gif")]
    assert gifs  # the grid notebook's animation
    for name in gifs:
        with Image.open(FIGURES / name) as image:
            assert image.n_frames > 1


@pytest.mark.parametrize("notebook", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_the_page_of_a_notebook(notebook):
    """A title, the Markdown cells as Markdown, the code fenced, each figure after its cell."""
    page = hooks.notebook_page(notebook)
    assert page.startswith("# ") and "\n# %%" not in page
    assert f"`python examples/{notebook.name}`" in page
    cells = hooks.notebook_cells(notebook.read_text(encoding="utf-8"))
    assert cells[0][0] == "markdown" and {kind for kind, _ in cells} == {"markdown", "code"}
    assert page.count("```python\n") == sum(kind == "code" for kind, _ in cells)
    for name in _figures(notebook):
        image = f"![{name}](../figures/examples/{name})"
        assert page.count(image) == 1
        code_before = page[:page.index(image)].rstrip()
        assert code_before.endswith("```") or code_before.endswith(")"), name
    assert "](../docs/" not in page  # links into docs/ point at the site's pages
