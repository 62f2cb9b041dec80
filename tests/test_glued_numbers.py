"""Every result quoted in a chapter's prose comes from the cell that computed it.

A number in a chapter's markdown is either *glued* (myst-nb: ``glue("name", value)`` in a
cell, ``{glue:text}`name:.3f``` in the text), so the HTML shows what the run produced, or a
constant the text chooses or quotes. Constants are written as math or code (``$\\eta =
0.05$``, ```lr=0.05```) or listed, each with the reason it is typed, in the chapter's own
metadata (the YAML header of its text source)::

    typed_constants:
      90%: a sparsity the sweep sets
      0.05: the learning rate chosen in the text

What counts as a typed result, in plain prose: a decimal number (``0.615``), a percentage
(``66%``), a number in scientific notation (``3e-4``), a factor (``4.5x``, ``200×``,
"a factor of 200"). Whole numbers on their own are not flagged: they count seeds, layers,
steps and chapters far more often than they report results.
"""

import re
from pathlib import Path

import jupytext
import pytest

BOOK = Path(__file__).resolve().parent.parent / "book"
CHAPTERS = sorted([*BOOK.glob("ch[0-9]*.md"), *BOOK.glob("guide_*.md")])

# Removed before scanning: they hold constants (math, code), references (roles, links,
# labels) or markup, never a typed result.
# Fenced blocks that hold code or math, not prose. Other directives (exercise, solution,
# admonition, dropdown, ...) hold prose and are scanned.
_CODE_INFO = re.compile(r"^\s*(\{(code-cell|code-block|code|literalinclude|math|eval-rst|raw)\}"
                        r"|[\w+-]*\s*$)")
_FENCE = re.compile(r"^(`{3,}|:{3,})(.*)$")


def _without_code_blocks(markdown: str) -> str:
    """``markdown`` with its code and math fences removed, and the fence lines of prose
    directives (their content stays)."""
    kept, stack = [], []  # stack: (fence, holds code)
    for line in markdown.splitlines():
        fence = _FENCE.match(line.strip())
        if fence and stack and fence.group(1) == stack[-1][0] and not fence.group(2).strip():
            stack.pop()
            continue
        if fence and (not stack or not stack[-1][1]):
            stack.append((fence.group(1), bool(_CODE_INFO.match(fence.group(2)))))
            continue
        if not any(code for _, code in stack):
            kept.append(line)
    return "\n".join(kept)


_NOT_PROSE = [
    re.compile(r"\$\$.*?\$\$", re.S),               # display math
    re.compile(r"(?<!\\)\$[^$\n]+?(?<!\\)\$"),      # inline math
    re.compile(r"\{[\w:-]+\}`[^`]*`"),              # roles: glue, cite, ref, eq, numref
    re.compile(r"`[^`]*`"),                         # code spans (may wrap a line)
    re.compile(r"<!--.*?-->", re.S),                # comments
    re.compile(r"\]\([^)]*\)"),                     # link targets
    re.compile(r"^\s*\([\w.:-]+\)=\s*$", re.M),     # MyST labels
    re.compile(r"^\s*:[\w-]+:.*$", re.M),           # directive options
]
_TYPED_RESULT = re.compile(
    r"(?<![\w.])(?:"
    r"\d+(?:\.\d+)?\s?%"                              # 66%, 4.5 %
    r"|\d+(?:\.\d+)?[eE][-+]?\d+"                     # 3e-4
    r"|\d+(?:\.\d+)?\s?[×x](?![\w])"                  # 4.5x, 200×
    r"|(?:factor|ratio) of (?:about |roughly )?\d+(?:[.,]\d+)*"  # a factor of 200
    r"|\d*\.\d+"                                      # 0.615
    r")")


def typed_results(markdown: str) -> list:
    """The typed numeric results in ``markdown``, in order."""
    markdown = _without_code_blocks(markdown)
    for pattern in _NOT_PROSE:
        markdown = pattern.sub(" ", markdown)
    return [match.group(0).strip() for match in _TYPED_RESULT.finditer(markdown)]


def test_scanner_finds_typed_results_and_ignores_constants():
    text = ("Magnitude keeps 0.615 at 50% sparsity, a factor of 200 and 4.5x better, "
            "at lr 1e-3. Constants: $\\eta = 0.05$, `lr=0.05`, {glue:text}`acc:.3f`, "
            "{cite}`lecun1990optimal`, [link](ch2.ipynb#v1.2).\n\n```{math}\n0.5\n```\n"
            "Chapter 3 uses 5 seeds and 30 layers.")
    assert typed_results(text) == ["0.615", "50%", "factor of 200", "4.5x", "1e-3"]
    solution = ("````{solution} ch1-ex\n:class: dropdown\n\nIt reaches 0.62.\n\n"
                "```python\nlr = 0.05\n```\n````\n")
    assert typed_results(solution) == ["0.62"]


@pytest.mark.parametrize("chapter", CHAPTERS, ids=lambda p: p.stem)
def test_every_result_in_the_prose_is_glued(chapter):
    notebook = jupytext.read(chapter)
    allowed = {str(k): v for k, v in notebook.metadata.get("typed_constants", {}).items()}
    unexplained = [number for number, reason in allowed.items()
                   if not isinstance(reason, str) or not reason.strip()]
    assert not unexplained, f"{chapter.name}: typed_constants without a reason: {unexplained}"
    typed = [(index, number) for index, cell in enumerate(notebook.cells)
             if cell.cell_type == "markdown"
             for number in typed_results(cell.source) if number not in allowed]
    assert not typed, (
        f"{chapter.name}: numbers typed into the prose (cell index, text): {typed}. Glue "
        "each result from the cell that computes it ({glue:text}`name:.3f`); write a "
        "setting as math ($0.05$) or code, or list a constant with its reason under "
        "typed_constants in the chapter's YAML header")


NOTEBOOKS = sorted([*BOOK.glob("ch[0-9]*.ipynb"), *BOOK.glob("guide_*.ipynb")])


@pytest.mark.parametrize("notebook_path", NOTEBOOKS, ids=lambda p: p.stem)
def test_glued_values_are_plain_numbers_or_text(notebook_path):
    """myst-nb formats a glued value from its stored repr with ``ast.literal_eval``: a NumPy
    scalar's repr (``np.float64(3.4)``) cannot be formatted and breaks the book's build.
    Glue ``float(x)`` or ``int(x)``."""
    import ast
    import json

    cells = json.loads(notebook_path.read_text())["cells"]
    bad = []
    for cell in cells:
        for output in cell.get("outputs", []):
            name = output.get("metadata", {}).get("scrapbook", {}).get("name")
            text = output.get("data", {}).get("application/papermill.record/text/plain")
            if name is None or text is None:
                continue
            try:
                value = ast.literal_eval(text)
            except (ValueError, SyntaxError):
                bad.append((name, text))
                continue
            if not isinstance(value, (int, float, str)):
                bad.append((name, text))
    assert not bad, f"{notebook_path.name}: glued values that are not plain numbers or " \
                    f"text: {bad}"
