"""The book as one PDF (``make pdf``, tools/book_pdf.py), checked against the HTML book.

The PDF is printed from the test build of the book (the ``book_html`` fixture of
conftest.py, shared with test_book_html.py) by Debian's Chromium, offline, and read back
with pypdf. Independently of the tool, from the built HTML and the PDF alone:

* the outline has one bookmark per page of ``_toc.yml``, in reading order, titled as the
  page's heading, chapters under their part's caption;
* each page's first PDF page shows its title;
* each page prints at least as many images as its HTML article holds (the figures);
* each page with math prints it in MathJax's fonts (the tool itself fails on a formula
  that MathJax did not typeset);
* both framework tabs are printed: every tab label of a page appears in its PDF text.

Without Chromium the test is skipped with install instructions, except in CI.
"""

from __future__ import annotations

import re
import sys
import unicodedata
from pathlib import Path


from test_book_html import require_chromium

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tools"))
import book_pdf  # noqa: E402  (tools/book_pdf.py, what `make pdf` runs)

ARTICLE = re.compile(r"<article\b.*?</article>", re.S)


def _text(value: str) -> str:
    """NFKC (ligatures such as "ﬀ" undone), one space between words."""
    return re.sub(r"\s+", " ", unicodedata.normalize("NFKC", value)).strip()


def _html_facts(html_file: Path) -> dict:
    """Title, images, math and tab labels of a built page, read from its HTML."""
    html = html_file.read_text(encoding="utf-8")
    article = ARTICLE.search(html).group(0)
    h1 = re.search(r"<h1[^>]*>(.*?)</h1>", article, re.S).group(1)
    h1 = re.sub(r'<a class="headerlink".*?</a>', "", h1, flags=re.S)
    title = _text(re.sub(r"<[^>]+>", "", h1).replace("&#8217;", "’"))
    labels = {_text(re.sub(r"<[^>]+>", "", label)) for label in re.findall(
        r'<label class="sd-tab-label"[^>]*>(.*?)</label>', article, re.S)}
    return {"title": title,
            "images": len(re.findall(r"<img\b", article)),
            "math": 'class="math' in article,
            "labels": labels}


def _outline(reader) -> list[tuple[str, int, int]]:
    """(title, first page, depth) of every bookmark, in order."""
    entries = []

    def walk(items, depth):
        for item in items:
            if isinstance(item, list):
                walk(item, depth + 1)
            else:
                entries.append((item.title, reader.get_destination_page_number(item), depth))

    walk(reader.outline, 0)
    return entries


def _font_names(page) -> set[str]:
    fonts = page.get("/Resources", {}).get_object().get("/Font", {})
    names = set()
    for font in fonts.values():
        font = font.get_object()
        descriptor = font.get("/FontDescriptor")
        name = descriptor.get_object().get("/FontName") if descriptor else font.get("/BaseFont")
        names.add(str(name))
    return names


def _image_count(page) -> int:
    """Image XObjects drawn by a page, in its resources and in forms it draws."""
    def count(resources, seen):
        total = 0
        for ref in resources.get_object().get("/XObject", {}).values():
            xobject = ref.get_object()
            if id(xobject) in seen:
                continue
            seen.add(id(xobject))
            if xobject.get("/Subtype") == "/Image":
                total += 1
            elif xobject.get("/Subtype") == "/Form" and "/Resources" in xobject:
                total += count(xobject["/Resources"], seen)
        return total

    return count(page.get("/Resources", {}), set())


def test_book_as_one_pdf(book_html, tmp_path):
    executable = require_chromium()
    from pypdf import PdfReader

    out = tmp_path / "book.pdf"
    book_pdf.build_pdf(book_html, out, chromium=executable, log=print)
    reader = PdfReader(out)
    outline = _outline(reader)
    toc = book_pdf.toc_pages()
    facts = {docname: _html_facts(book_html / f"{docname}.html") for docname, _, _ in toc}

    # Bookmarks: the part captions, and one per page, in the order of _toc.yml.
    captions = [part for part in dict.fromkeys(part for _, _, part in toc) if part]
    pages = [(title, first, depth) for title, first, depth in outline if title not in captions]
    assert [title for title, _, _ in pages] == [facts[d]["title"] for d, _, _ in toc], outline
    assert {title for title, _, _ in outline} >= set(captions), outline
    starts = [first for _, first, _ in pages]
    assert starts == sorted(set(starts)) and starts[0] == 0, outline
    for (title, _, depth), (docname, toc_depth, part) in zip(pages, toc):
        assert depth == toc_depth + (part is not None), (title, depth)

    failures = []
    ends = starts[1:] + [len(reader.pages)]
    for (docname, _, _), start, end in zip(toc, starts, ends):
        fact = facts[docname]
        first_page = _text(reader.pages[start].extract_text())
        bare_title = re.sub(r"^[\d.]+\s+", "", fact["title"])
        if bare_title not in first_page:
            failures.append(f"{docname}: title {bare_title!r} not on its first PDF page")
        images = sum(_image_count(reader.pages[i]) for i in range(start, end))
        if images < fact["images"]:
            failures.append(f"{docname}: {images} images printed, {fact['images']} in the HTML")
        if fact["math"]:
            fonts = set().union(*(_font_names(reader.pages[i]) for i in range(start, end)))
            if not any("MathJax" in name for name in fonts):
                failures.append(f"{docname}: math not printed in MathJax's fonts ({fonts})")
        # Tab labels: read the pages until every label was seen (text extraction is slow).
        missing, text = set(fact["labels"]), first_page
        for i in range(start, end):
            if not missing:
                break
            text = _text(reader.pages[i].extract_text()) if i > start else first_page
            missing = {label for label in missing if label not in text}
        if missing:
            failures.append(f"{docname}: tab labels not printed: {sorted(missing)}")
        print(f"{docname}: pages {start + 1}-{end}, {images} images "
              f"({fact['images']} in the HTML)")
    assert not failures, "\n".join(failures)
