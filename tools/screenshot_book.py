"""Look at the built book the way a reader with no network would, and take screenshots.

Usage (after ``make book``)::

    python tools/screenshot_book.py [--html _build/html] [--out /tmp/book_screens]

It serves the built HTML on 127.0.0.1, opens every page of the book in headless Chromium
(driven by Playwright), blocks every request that does not go to 127.0.0.1, and for each
page prints how many formulas MathJax rendered, how many it left unrendered or in error,
and which outside requests the page tried to make. A full-page screenshot of each page is
written to ``--out/<page>.png``. The exit status is 1 when any page made an outside request
or has unrendered or broken math, else 0.

Chromium: ``--chromium`` or ``$CHROMIUM``, else ``/usr/bin/chromium`` when it exists, else
Playwright's own download (``playwright install chromium``).
"""

from __future__ import annotations

import argparse
import functools
import http.server
import os
import shutil
import sys
import threading
from pathlib import Path

from playwright.sync_api import sync_playwright

CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]

# Counts formulas after MathJax has finished typesetting the page.
MATH_STATE_JS = """async () => {
  if (window.MathJax && MathJax.startup && MathJax.startup.promise) {
    await MathJax.startup.promise;
  }
  const math = [...document.querySelectorAll('.math')];
  return {
    mathjax: Boolean(window.MathJax && MathJax.version),
    rendered: document.querySelectorAll('mjx-container').length,
    unrendered: math.filter(el => !el.querySelector('mjx-container')).length,
    errors: document.querySelectorAll('mjx-merror').length,
  };
}"""


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):  # keep the report readable
        pass


def serve(root: Path) -> http.server.ThreadingHTTPServer:
    """Serve root on 127.0.0.1 at a free port, in a daemon thread."""
    handler = functools.partial(_QuietHandler, directory=str(root))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def chromium_path(explicit: str | None) -> str | None:
    """The Chromium binary to use; None means Playwright's bundled one."""
    candidate = explicit or os.environ.get("CHROMIUM")
    if candidate:
        return candidate
    return "/usr/bin/chromium" if shutil.which("/usr/bin/chromium") else None


def check_pages(html: Path, out: Path, chromium: str | None) -> bool:
    """Open each page of the book, screenshot it, print a report; True when all is well."""
    pages = sorted(p.relative_to(html) for p in (html / "book").rglob("*.html"))
    if not pages:
        raise SystemExit(f"no pages under {html / 'book'}: run `make book` first")
    out.mkdir(parents=True, exist_ok=True)
    server = serve(html)
    base = f"http://127.0.0.1:{server.server_address[1]}/"
    ok = True
    try:
        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=chromium, args=CHROMIUM_ARGS)
            context = browser.new_context(viewport={"width": 1280, "height": 900})
            outside: list[str] = []

            def route(r):
                if r.request.url.startswith(base):
                    r.continue_()
                else:
                    outside.append(r.request.url)
                    r.abort()

            context.route("**/*", route)
            page = context.new_page()
            for rel in pages:
                outside.clear()
                page.goto(base + rel.as_posix(), wait_until="networkidle")
                state = page.evaluate(MATH_STATE_JS)
                page.wait_for_load_state("networkidle")  # fonts MathJax asked for
                shot = out / (rel.with_suffix("").as_posix().replace("/", "_") + ".png")
                page.screenshot(path=str(shot), full_page=True)
                bad = bool(outside) or state["unrendered"] or state["errors"]
                ok &= not bad
                print(
                    f"{'FAIL' if bad else 'ok  '} {rel}: MathJax {'loaded' if state['mathjax'] else 'not loaded'}, "
                    f"{state['rendered']} rendered, {state['unrendered']} unrendered, "
                    f"{state['errors']} errors, {len(outside)} outside requests -> {shot}"
                )
                for url in sorted(set(outside)):
                    print(f"       blocked: {url}")
            browser.close()
    finally:
        server.shutdown()
    return ok


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--html", type=Path, default=Path("_build/html"), help="built book")
    parser.add_argument("--out", type=Path, default=Path("/tmp/book_screens"), help="screenshots")
    parser.add_argument("--chromium", help="Chromium executable (default: see module doc)")
    args = parser.parse_args(argv)
    return 0 if check_pages(args.html, args.out, chromium_path(args.chromium)) else 1


if __name__ == "__main__":
    sys.exit(main())
