"""The errata page keeps its promise: every error of every article is shown, by running code
or by a derivation, at a place in the book that exists, and the counts at the top of the
page are the counts of its tables.

Each row of a chapter's table ends with a cell ``**run** · [§ title](#label)`` or
``**derived** · [§ title](#label)``; that the labels resolve is checked on the built book
(tests/test_book_html.py, every internal link and anchor).
"""

import re
from pathlib import Path

ERRATA = Path(__file__).resolve().parent.parent / "book" / "errata.md"
KINDS = ("run", "derived")
_SECTION = re.compile(r"^## Chapter (\d+):.*\(article (\d{3})\)\s*$", re.M)
_LINK = r"\[[^\]]+\]\(#[\w.-]+\)"
_SHOWN_BY = re.compile(rf"^\*\*(\w+)\*\* · {_LINK}(, {_LINK})*$")


def _rows(section: str) -> list:
    """The list-table rows of a section, each a list of its cells' texts."""
    table = section.split("```{list-table}", 1)[1].split("\n```", 1)[0]
    rows = re.split(r"^\* - ", table, flags=re.M)[1:]
    return [[" ".join(cell.split()) for cell in re.split(r"^  - ", row, flags=re.M)]
            for row in rows]


def _sections(text: str) -> dict:
    """``{article: rows without the header}``."""
    parts = _SECTION.split(text)
    return {parts[i + 1]: _rows(parts[i + 2])[1:] for i in range(1, len(parts), 3)}


def _summary(text: str) -> dict:
    """The counts table at the top: ``{article: (errors, run, derived, neither)}``."""
    counts = {}
    for line in text.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) == 6 and re.fullmatch(r"\d{3}", cells[0]):
            counts[cells[0]] = tuple(int(c) for c in cells[2:])
    return counts


def test_every_error_is_shown_by_code_or_derivation():
    sections = _sections(ERRATA.read_text())
    assert sorted(sections) == ["000", "001", "002", "003", "004"]
    unshown = [(article, row[0][:60]) for article, rows in sections.items() for row in rows
               if not _SHOWN_BY.match(row[-1]) or
               _SHOWN_BY.match(row[-1]).group(1) not in KINDS]
    assert not unshown, f"rows whose last cell is not '**run** · [§ ...](#label)' or " \
                        f"'**derived** · [§ ...](#label)': {unshown}"


def test_the_counts_at_the_top_are_the_tables_counts():
    text = ERRATA.read_text()
    summary = _summary(text)
    for article, rows in _sections(text).items():
        kinds = [_SHOWN_BY.match(row[-1]).group(1) for row in rows]
        expected = (len(rows), kinds.count("run"), kinds.count("derived"),
                    len(rows) - kinds.count("run") - kinds.count("derived"))
        assert summary.get(article) == expected, (
            f"article {article}: the table has {expected} (errors, run, derived, neither), "
            f"the summary says {summary.get(article)}")
        assert expected[3] == 0, f"article {article}: {expected[3]} errors not shown"


def test_every_link_names_a_label_of_the_book():
    labels = {match for path in ERRATA.parent.glob("*.md")
              for match in re.findall(r"^\(([\w.-]+)\)=$", path.read_text(), re.M)}
    text = ERRATA.read_text()
    links = set(re.findall(r"\]\(#([\w.-]+)\)", text))
    assert links, "the errata page links to no label"
    missing = sorted(links - labels)
    assert not missing, f"errata links to labels that no page defines: {missing}"
