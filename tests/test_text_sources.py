"""Every chapter's text source (jupytext MyST markdown) and its .ipynb hold the same cells.

The ``.md`` is the file people edit and review; the ``.ipynb`` holds the outputs that the
book shows and nbval compares. ``make outputs`` writes the cells of the ``.md`` into the
``.ipynb`` before executing it; this test fails when the two have drifted apart.
"""

from pathlib import Path

import jupytext
import nbformat
import pytest

BOOK = Path(__file__).resolve().parent.parent / "book"
NOTEBOOKS = sorted(BOOK.glob("*.ipynb"))


def _cells(notebook) -> list:
    """What must agree: each cell's type, source and tags."""
    return [(cell.cell_type, cell.source.strip(), sorted(cell.metadata.get("tags", [])))
            for cell in notebook.cells]


def test_every_chapter_has_a_text_source():
    assert NOTEBOOKS, f"no notebooks in {BOOK}"
    missing = [p.name for p in NOTEBOOKS if not p.with_suffix(".md").exists()]
    assert not missing, f"notebooks without a paired .md text source: {missing}"
    orphans = [p.name for p in (*BOOK.glob("ch*.md"), *BOOK.glob("guide_*.md"))
               if not p.with_suffix(".ipynb").exists()]
    assert not orphans, f"text sources without a notebook (run make outputs): {orphans}"


@pytest.mark.parametrize("notebook_path", NOTEBOOKS, ids=lambda p: p.stem)
def test_text_source_and_notebook_agree(notebook_path):
    text = jupytext.read(notebook_path.with_suffix(".md"))
    notebook = nbformat.read(notebook_path, as_version=4)
    assert notebook.metadata.get("jupytext", {}).get("formats") == "ipynb,md:myst", (
        f"{notebook_path.name} is not paired with its text source "
        "(jupytext --set-formats ipynb,md:myst)")
    text_cells, notebook_cells = _cells(text), _cells(notebook)
    for index, (in_text, in_notebook) in enumerate(zip(text_cells, notebook_cells)):
        assert in_text == in_notebook, (
            f"{notebook_path.name}, cell {index}: the .md and the .ipynb differ; edit the "
            f".md and run `make outputs CHAPTERS=book/{notebook_path.stem}`")
    assert len(text_cells) == len(notebook_cells), (
        f"{notebook_path.name}: {len(text_cells)} cells in the .md, "
        f"{len(notebook_cells)} in the .ipynb; run make outputs")
