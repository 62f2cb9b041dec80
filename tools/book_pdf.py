"""The whole book as one PDF, offline: ``make pdf``.

Usage: python tools/book_pdf.py [HTML_DIR] [OUT.pdf]   (defaults: _build/html _build/pdf/book.pdf)

Each page of ``_toc.yml``, in reading order, is opened from the built HTML book (served
on 127.0.0.1; every request that leaves it is aborted) in the same headless Chromium the
browser test uses (``$CHROMIUM`` or ``/usr/bin/chromium``, driven by Playwright), with
its images loaded and its math typeset by the book's own MathJax, and printed to PDF.
For print, every PyTorch/TensorFlow tab is shown (both frameworks, each under its label)
and every dropdown (solutions, details) is opened. The pages are joined with pypdf into
one PDF whose outline has one bookmark per page of the book, the chapters under their
part's caption ("Chapters", "Reference").

tests/test_book_pdf.py builds the PDF from the test build of the book and checks its
bookmarks, titles and figures.
"""

from __future__ import annotations

import argparse
import functools
import http.server
import os
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                 "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync"]

# Shown in print only: both tabs of every tab-set, each under its label; dropdowns open;
# long code lines wrapped instead of cut at the page edge.
PRINT_CSS = """
@media print {
  .sd-tab-set { display: block !important; }
  .sd-tab-set > input { display: none !important; }
  .sd-tab-set > label.sd-tab-label {
    display: block !important; width: auto !important; border: none !important;
    padding: 0.4em 0 0.1em !important; margin: 0.6em 0 0 !important;
    font-weight: 700 !important; color: inherit !important; background: none !important;
  }
  .sd-tab-set > .sd-tab-content {
    display: block !important; box-shadow: none !important; padding-top: 0.2em !important;
  }
  details.sd-dropdown > .sd-summary-content, details > * { display: block !important; }
  pre { white-space: pre-wrap !important; word-break: break-all; }
  img { break-inside: avoid; }
}
"""

# After load: eager images decoded, MathJax done, dropdowns open; returns what the page
# holds (title without the heading's "#" link, images and formulas, problems).
PREPARE_JS = r"""async () => {
  document.querySelectorAll('details').forEach(d => { d.open = true; });
  const images = [...document.querySelectorAll('article img')];
  images.forEach(img => { img.loading = 'eager'; });
  await Promise.all(images.map(img => img.complete ? null : new Promise(done => {
    img.addEventListener('load', done, {once: true});
    img.addEventListener('error', done, {once: true});
  })));
  if (window.MathJax && MathJax.startup && MathJax.startup.promise) {
    await MathJax.startup.promise;
  }
  await document.fonts.ready;
  const h1 = document.querySelector('article h1');
  let title = document.title;
  if (h1) {
    const copy = h1.cloneNode(true);
    copy.querySelectorAll('.headerlink').forEach(a => a.remove());
    title = copy.textContent.replace(/\s+/g, ' ').trim();
  }
  const formulas = [...document.querySelectorAll('article .math')];
  return {
    title,
    images: images.length,
    brokenImages: images.filter(i => !(i.complete && i.naturalWidth > 0))
                        .map(i => i.getAttribute('src')),
    formulas: formulas.length,
    untypeset: formulas.filter(f => !f.querySelector('mjx-container')).length,
  };
}"""


@dataclass
class PrintedPage:
    docname: str
    title: str
    part: str | None      # the caption of its part in _toc.yml, if any
    depth: int            # 0: root or chapter; 1: a chapter's section; ...
    first_page: int       # 0-based index of its first page in the joined PDF
    pages: int
    images: int           # <img> in the page's article, all printed
    formulas: int


def toc_pages(toc_file: Path = REPO / "_toc.yml") -> list[tuple[str, int, str | None]]:
    """``(docname, depth, part caption)`` of every page of ``_toc.yml``, in reading order."""
    toc = yaml.safe_load(toc_file.read_text())
    pages = [(toc["root"], 0, None)]

    def walk(items, depth, part):
        for item in items or ():
            if "file" in item:
                pages.append((item["file"], depth, part))
                walk(item.get("sections"), depth + 1, part)
            else:
                walk(item.get("chapters"), depth, item.get("caption"))

    walk(toc.get("parts") or toc.get("chapters"), 0, None)
    walk(toc.get("sections"), 1, None)
    return [(str(Path(name).with_suffix("")) if Path(name).suffix in (".md", ".ipynb")
             else name, depth, part) for name, depth, part in pages]


def chromium_executable() -> str:
    path = os.environ.get("CHROMIUM") or "/usr/bin/chromium"
    if not (os.path.isfile(path) and os.access(path, os.X_OK)):
        raise SystemExit(f"Chromium not found at {path}: `sudo apt-get install chromium` "
                         "(Debian), or point $CHROMIUM at a Chromium or Chrome binary.")
    return path


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


def build_pdf(html_dir: Path, out: Path, chromium: str | None = None,
              log=print) -> list[PrintedPage]:
    """Print every page of the book built in ``html_dir`` into the one PDF ``out``."""
    from playwright.sync_api import sync_playwright
    from pypdf import PdfReader, PdfWriter

    html_dir, out = Path(html_dir), Path(out)
    chromium = chromium or chromium_executable()
    handler = functools.partial(_QuietHandler, directory=str(html_dir))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    base = f"http://127.0.0.1:{server.server_address[1]}/"
    outside, problems, printed = [], [], []
    writer = PdfWriter()
    try:
        with tempfile.TemporaryDirectory() as tmp, sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=chromium, headless=True,
                                                 args=CHROMIUM_ARGS)
            context = browser.new_context(service_workers="block")
            context.route("**/*", lambda route: route.continue_()
                          if route.request.url.startswith(base)
                          else (outside.append(route.request.url),
                                route.abort("blockedbyclient")))
            for number, (docname, depth, part) in enumerate(toc_pages()):
                start = time.perf_counter()
                page = context.new_page()
                page.on("pageerror", lambda exc, d=docname: problems.append(f"{d}: {exc}"))
                # "load" waits for the scripts (MathJax among them); PREPARE_JS for the
                # images, the typesetting and the fonts MathJax asked for.
                page.goto(base + f"{docname}.html", wait_until="load")
                page.add_style_tag(content=PRINT_CSS)
                state = page.evaluate(PREPARE_JS)
                if state["brokenImages"]:
                    problems.append(f"{docname}: images not loaded {state['brokenImages']}")
                if state["untypeset"]:
                    problems.append(f"{docname}: {state['untypeset']} formulas not typeset")
                path = Path(tmp) / f"{number:03d}.pdf"
                page.pdf(path=str(path), format="A4", print_background=True,
                         margin={"top": "15mm", "bottom": "15mm",
                                 "left": "12mm", "right": "12mm"})
                page.close()
                first = len(writer.pages)
                reader = PdfReader(path)
                writer.append(reader)
                printed.append(PrintedPage(docname, state["title"], part, depth, first,
                                           len(reader.pages), state["images"],
                                           state["formulas"]))
                log(f"{docname}: {len(reader.pages)} pages, {state['images']} figures, "
                    f"{state['formulas']} formulas ({time.perf_counter() - start:.1f} s)")
            browser.close()
    finally:
        server.shutdown()
        server.server_close()
    if outside:
        problems.append(f"requests that left 127.0.0.1 (blocked): {sorted(set(outside))}")
    if problems:
        raise RuntimeError("the book does not print cleanly:\n" + "\n".join(problems))

    # One bookmark per page of the book; chapters under their part's caption, sections
    # under their chapter. writer.append() added none (its outline is replaced here).
    writer._root_object.pop("/Outlines", None)
    parents: dict = {}
    for entry in printed:
        parent = None
        if entry.depth > 0:
            parent = parents.get(entry.depth - 1)
        elif entry.part is not None:
            if entry.part not in parents:
                parents[entry.part] = writer.add_outline_item(
                    title=entry.part, page_number=entry.first_page)
            parent = parents[entry.part]
        parents[entry.depth] = writer.add_outline_item(
            title=entry.title, page_number=entry.first_page, parent=parent)
    writer.page_mode = "/UseOutlines"
    root = printed[0]
    writer.add_metadata({"/Title": root.title, "/Producer": "tools/book_pdf.py"})
    out.parent.mkdir(parents=True, exist_ok=True)
    with open(out, "wb") as handle:
        writer.write(handle)
    return printed


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("html", nargs="?", default=REPO / "_build" / "html", type=Path)
    parser.add_argument("out", nargs="?", default=REPO / "_build" / "pdf" / "book.pdf",
                        type=Path)
    args = parser.parse_args(argv)
    if not (args.html / "index.html").is_file():
        sys.exit(f"no built book in {args.html}: run `make book` first")
    start = time.perf_counter()
    printed = build_pdf(args.html, args.out)
    pages = sum(entry.pages for entry in printed)
    print(f"{args.out.resolve()}: {pages} pages, {len(printed)} bookmarked parts of the "
          f"book, in {time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    main()
