"""The published book, built and read the way a reader with no network reads it.

The HTML book is built once per test run (``jupyter-book build --warningiserror``, as
``make book`` does, into a temporary folder so that a ``make book`` running at the same
time is not disturbed: the ``book_html`` fixture of tests/conftest.py, which
tests/test_book_pdf.py shares), and checked here in two ways:

* without a browser: every internal link and ``#fragment`` of every built page resolves,
  every chapter offers its ``.ipynb``, no launch button points outside the book, and the
  API reference documents every public name of the companion;
* in a real browser: Debian's Chromium (``/usr/bin/chromium``, or ``$CHROMIUM``), headless,
  driven by Playwright, opens every page of ``_toc.yml`` from a server on 127.0.0.1 and
  aborts every request that goes anywhere else. Each page must load with no console error
  and no failed request, show all its images, have all its math typeset by the book's own
  MathJax, need no horizontal scrolling in any code block (tabs and dropdowns opened),
  and offer a sidebar that reaches every page. The search page must find "clipping",
  and the PyTorch/TensorFlow tabs must switch together. A screenshot of each
  page's first screen is written to ``_build/screenshots/`` for a human to look at.

Without Chromium the browser tests are skipped with a message saying how to install it,
except in CI (``$CI`` set, as ``.ci/run`` does), where they fail instead.
"""

from __future__ import annotations

import functools
import html.parser
import http.server
import importlib
import inspect
import json
import os
import threading
from pathlib import Path
from urllib.parse import unquote, urldefrag, urlsplit

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
SCREENSHOTS = REPO / "_build" / "screenshots"
VIEWPORT = {"width": 1280, "height": 800}
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
INSTALL_CHROMIUM = (
    "Install it with `sudo apt-get install chromium` (Debian; .ci/run does this), or point "
    "$CHROMIUM at another Chromium or Chrome binary (e.g. after `python -m playwright "
    "install chromium`, at ~/.cache/ms-playwright/chromium-*/chrome-linux/chrome)."
)


# --------------------------------------------------------------------------- helpers


def in_ci() -> bool:
    """True when running in CI, where the browser tests must run, never skip."""
    return os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no")


def skip_or_fail(message: str):
    """Skip with ``message`` on a developer's machine; fail in CI."""
    if in_ci():
        pytest.fail(f"{message} (CI is set, so this fails instead of skipping)")
    pytest.skip(message)


def chromium_executable() -> str | None:
    """``$CHROMIUM`` or ``/usr/bin/chromium`` when that file is executable, else None."""
    path = os.environ.get("CHROMIUM") or "/usr/bin/chromium"
    return path if os.path.isfile(path) and os.access(path, os.X_OK) else None


def toc_entries() -> list[tuple[str, int]]:
    """``(docname, depth)`` of every document of ``_toc.yml``, in reading order.

    Depth 0 is the root and the chapters (listed directly, or under a part's caption);
    their sections have depth 1, and so on.
    """
    toc = yaml.safe_load((REPO / "_toc.yml").read_text())
    entries = [(toc["root"], 0)]

    def walk(items, depth):
        for item in items or ():
            if "file" in item:
                entries.append((item["file"], depth))
                walk(item.get("sections"), depth + 1)
            else:  # a part: a caption over chapters
                walk(item.get("chapters"), depth)

    walk(toc.get("parts") or toc.get("chapters"), 0)
    walk(toc.get("sections"), 1)
    return [(str(Path(name).with_suffix("")) if Path(name).suffix in (".md", ".ipynb")
             else name, depth) for name, depth in entries]


def toc_docnames() -> list[str]:
    """Every document of ``_toc.yml`` in reading order."""
    return [docname for docname, _ in toc_entries()]


def is_notebook(docname: str) -> bool:
    return (REPO / f"{docname}.ipynb").is_file()


class _PageParser(html.parser.HTMLParser):
    """Collects the ids (and anchor names) of a page and the URLs it links to or loads."""

    LINK_ATTRS = {"a": "href", "link": "href", "img": "src", "script": "src",
                  "source": "src", "iframe": "src", "video": "src", "audio": "src"}

    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.ids: set[str] = set()
        self.links: list[tuple[str, str]] = []  # (tag, url)

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        for key in ("id", "name") if tag == "a" else ("id",):
            if attrs.get(key):
                self.ids.add(attrs[key])
        url = attrs.get(self.LINK_ATTRS.get(tag, ""))
        if url:
            self.links.append((tag, url.strip()))


@functools.lru_cache(maxsize=None)
def parse_page(path: Path) -> _PageParser:
    parser = _PageParser()
    parser.feed(path.read_text(encoding="utf-8"))
    return parser


def _external(url: str) -> bool:
    scheme = urlsplit(url).scheme
    return bool(scheme) or url.startswith("//")


# --------------------------------------------------------------------------- fixtures


# book_html (the book built once per test run, shared with tests/test_book_pdf.py) is
# in tests/conftest.py.


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


@pytest.fixture(scope="module")
def base_url(book_html) -> str:
    """The built book served on 127.0.0.1 (a free port), as ``http://127.0.0.1:PORT/``."""
    handler = functools.partial(_QuietHandler, directory=str(book_html))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/"
    server.shutdown()
    server.server_close()


def require_chromium() -> str:
    """Chromium's path, once Chromium and Playwright are known to be there; the calling
    test is skipped (failed in CI) without them."""
    executable = chromium_executable()
    if executable is None:
        where = os.environ.get("CHROMIUM") or "/usr/bin/chromium"
        skip_or_fail(f"Chromium not found at {where}. {INSTALL_CHROMIUM}")
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        skip_or_fail("Playwright for Python is missing: pip install -r requirements.txt")
    return executable


@pytest.fixture(scope="module")
def browser():
    """Headless Chromium driven by Playwright; skipped (failed in CI) when missing."""
    executable = require_chromium()
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=executable, headless=True,
                                              args=CHROMIUM_ARGS)
        yield chromium
        chromium.close()


class OfflineContext:
    """A browser context that lets only requests to the book's server through.

    Every other request is aborted and recorded in ``outside``. ``open(path)`` opens a page
    of the book and records, on ``page.problems``, its console errors, uncaught
    exceptions, failed requests and HTTP errors.
    """

    def __init__(self, browser, base_url: str):
        self.base_url = base_url
        self.context = browser.new_context(viewport=VIEWPORT, service_workers="block")
        self.outside: list[str] = []
        self.context.route("**/*", self._route)

    def _route(self, route):
        url = route.request.url
        if url.startswith(self.base_url):
            route.continue_()
        else:
            self.outside.append(url)
            route.abort("blockedbyclient")

    def open(self, path: str, wait_for_math: bool = True, wait_for_idle: bool = True):
        page = self.context.new_page()
        page.problems = []
        page.on("console", lambda msg: msg.type == "error" and page.problems.append(
            f"console error: {msg.text} ({msg.location.get('url', '')})"))
        page.on("pageerror", lambda exc: page.problems.append(f"uncaught exception: {exc}"))
        page.on("requestfailed", lambda req: req.url.startswith(self.base_url)
                and page.problems.append(f"failed request: {req.url} ({req.failure})"))
        page.on("response", lambda resp: resp.status >= 400 and page.problems.append(
            f"HTTP {resp.status}: {resp.url}"))
        page.goto(self.base_url + path, wait_until="load")
        if wait_for_idle:
            page.wait_for_load_state("networkidle")
        if wait_for_math:
            page.evaluate(WAIT_FOR_MATHJAX_JS)
            page.wait_for_load_state("networkidle")  # the fonts MathJax asked for
        return page

    def close(self):
        self.context.close()


@pytest.fixture
def offline(browser, base_url):
    context = OfflineContext(browser, base_url)
    yield context
    context.close()


def page_path(docname: str) -> str:
    return f"{docname}.html"


# --------------------------------------------------------------------------- JavaScript

WAIT_FOR_MATHJAX_JS = """async () => {
  if (window.MathJax && MathJax.startup && MathJax.startup.promise) {
    await MathJax.startup.promise;
  }
}"""

# Everything the per-page check needs, measured after load and typesetting.
PAGE_STATE_JS = r"""async () => {
  // Images: load lazy ones too, then require a decoded bitmap.
  const images = [...document.images];
  images.forEach(img => { img.loading = 'eager'; });
  await Promise.all(images.map(img => img.complete ? null : new Promise(done => {
    img.addEventListener('load', done, {once: true});
    img.addEventListener('error', done, {once: true});
  })));
  const brokenImages = images.filter(img => !(img.complete && img.naturalWidth > 0))
                             .map(img => img.getAttribute('src'));

  // Math: Sphinx marks every formula with class "math"; MathJax replaces its TeX with
  // an <mjx-container>. Any TeX delimiters left in the text are unrendered math.
  const formulas = [...document.querySelectorAll('.math')];
  const untypeset = formulas.filter(el => !el.querySelector('mjx-container'))
                            .map(el => el.textContent.trim().slice(0, 80));
  const mathErrors = [...document.querySelectorAll('mjx-merror')]
                            .map(el => el.textContent.trim().slice(0, 80));
  const skip = 'pre, code, script, style, textarea, mjx-container, .highlight, kbd, samp';
  const walker = document.createTreeWalker(document.body, NodeFilter.SHOW_TEXT, {
    acceptNode: n => n.parentElement && n.parentElement.closest(skip)
      ? NodeFilter.FILTER_REJECT : NodeFilter.FILTER_ACCEPT,
  });
  const rawTex = [];
  const delimiters = /\$\$|\\\(|\\\)|\\\[|\\\]|\\begin\{|\$[^$\n]*\\[A-Za-z]+[^$\n]*\$/;
  for (let node = walker.nextNode(); node; node = walker.nextNode()) {
    if (delimiters.test(node.nodeValue)) rawTex.push(node.nodeValue.trim().slice(0, 80));
  }

  // Sidebar: every link of the primary sidebar, resolved, with its visibility.
  const sidebar = [...document.querySelectorAll('.bd-sidebar-primary a[href]')].map(a => ({
    url: a.href.split('#')[0],
    visible: a.checkVisibility(),
  }));

  // Code blocks and printed outputs: none may need horizontal scrolling. Every tab and
  // dropdown is opened for the measurement, so hidden code is checked too.
  const reveal = document.createElement('style');
  reveal.textContent = '.sd-tab-content { display: block !important; }';
  document.head.appendChild(reveal);
  const closed = [...document.querySelectorAll('details:not([open])')];
  closed.forEach(d => { d.open = true; });
  const overflowing = [...document.querySelectorAll('pre')]
    .filter(pre => pre.scrollWidth > pre.clientWidth + 1)
    .map(pre => pre.textContent.split('\n')
                   .reduce((a, b) => (a.length >= b.length ? a : b)).trim().slice(0, 90));
  closed.forEach(d => { d.open = false; });
  reveal.remove();

  return {
    title: document.title,
    mathjax: Boolean(window.MathJax && MathJax.version),
    formulas: formulas.length,
    typeset: document.querySelectorAll('mjx-container').length,
    untypeset, mathErrors, rawTex, brokenImages, images: images.length, sidebar,
    overflowing, codeBlocks: document.querySelectorAll('pre').length,
  };
}"""

TAB_STATE_JS = """(syncId) => {
  const labels = [...document.querySelectorAll(`label.sd-tab-label[data-sync-id="${syncId}"]`)];
  return labels.map(label => {
    const input = document.getElementById(label.getAttribute('for'));
    const content = label.nextElementSibling;
    return {checked: Boolean(input && input.checked),
            shown: Boolean(content && content.checkVisibility())};
  });
}"""


# --------------------------------------------------------------------------- tests: HTML


def test_toc_pages_are_built(book_html):
    missing = [d for d in toc_docnames() if not (book_html / page_path(d)).is_file()]
    assert not missing, f"pages of _toc.yml missing from the build: {missing}"


def test_internal_links_resolve(book_html):
    """An offline link check: every relative URL and #fragment of every page resolves.

    External links are not requested (tests make no outside request); they are only
    counted.
    """
    pages = sorted(p for p in book_html.rglob("*.html")
                   if not p.relative_to(book_html).parts[0] in ("_static", "_sources"))
    broken, external, checked = [], set(), 0
    for page in pages:
        for tag, url in parse_page(page).links:
            if _external(url):
                external.add(url)
                continue
            target_url, fragment = urldefrag(url)
            target_path = unquote(urlsplit(target_url).path)
            if not target_path:
                target = page
            elif target_path.startswith("/"):
                target = book_html / target_path.lstrip("/")
            else:
                target = (page.parent / target_path).resolve()
            if target.is_dir():
                target = target / "index.html"
            where = f"{page.relative_to(book_html)}: <{tag}> {url}"
            checked += 1
            if not target.is_file():
                broken.append(f"{where} (no such file)")
            elif fragment and target.suffix == ".html" \
                    and unquote(fragment) not in parse_page(target).ids:
                broken.append(f"{where} (no id {unquote(fragment)!r} in "
                              f"{target.relative_to(book_html)})")
    print(f"{checked} internal links checked in {len(pages)} pages; "
          f"{len(external)} external links not requested")
    assert checked > 0
    assert not broken, "broken internal links:\n" + "\n".join(broken)


def test_chapters_offer_their_notebook_and_no_outside_launch(book_html):
    """Each notebook page links its .ipynb (with outputs); no launch button leaves the book."""
    notebooks = [d for d in toc_docnames() if is_notebook(d)]
    assert notebooks, "no notebook chapters in _toc.yml"
    for docname in notebooks:
        page = book_html / page_path(docname)
        links = [url for _, url in parse_page(page).links]
        wanted = f"_sources/{docname}.ipynb"
        offered = [url for url in links if url.endswith(wanted)]
        assert offered, f"{docname}: no download link to {wanted}"
        notebook = json.loads((page.parent / offered[0]).resolve().read_text())
        assert notebook["cells"] and "nbformat" in notebook, f"{wanted} is not a notebook"
        launch = [url for url in links if any(host in url for host in (
            "mybinder.org", "colab.research.google.com", "deepnote.com", "/hub/user-redirect"))]
        assert not launch, f"{docname}: launch links to outside services: {launch}"


# Framework-neutral modules whose public names the back ends re-export or use.
# A name re-exported by several of them is documented in the first that holds it, so the
# modules that define names come before those that re-export them.
NEUTRAL_MODULES = tuple(f"companion.core.{name}" for name in (
    "checks", "batches", "runtime", "layout", "models", "training", "diagnostics",
    "clipping", "pruning", "distributed", "curvature", "obs", "diagonals", "schedules", "attention",
    "mask_io", "patterns", "layerwise", "structured")) + ("companion.experiments",)


def _public_names():
    """(name as a reader writes it, object, id of its entry on the API page)."""
    neutral = [importlib.import_module(name) for name in NEUTRAL_MODULES]
    seen = set()
    for module_name in ("companion.torch", "companion.tensorflow", "companion.data"):
        module = importlib.import_module(module_name)
        for name in module.__all__:
            obj = getattr(module, name)
            # Re-exported from a framework-neutral module (a class, a function or a
            # constant): documented once, there.
            home = next((m for m in neutral if getattr(m, name, None) is obj), None)
            anchor = f"{home.__name__}.{name}" if home else f"{module_name}.{name}"
            seen.add(anchor)
            yield f"{module_name}.{name}", obj, anchor
    # A framework-neutral module's public names: its __all__ if it has one, else every
    # function and class defined there whose name does not start with "_".
    for core in neutral:
        names = getattr(core, "__all__", None) or [
            name for name, obj in vars(core).items()
            if not name.startswith("_") and (inspect.isfunction(obj) or inspect.isclass(obj))
            and obj.__module__ == core.__name__]
        for name in names:
            anchor = f"{core.__name__}.{name}"
            if anchor not in seen:
                yield anchor, getattr(core, name), anchor


def test_api_reference_documents_every_public_name(book_html):
    """book/api.md documents every public name, each with a docstring."""
    ids = parse_page(book_html / "book" / "api.html").ids
    missing = [shown for shown, _, anchor in _public_names() if anchor not in ids]
    undocumented = [shown for shown, obj, _ in _public_names() if not inspect.getdoc(obj)]
    assert not missing, (
        "public names missing from the API reference (book/api.md; the comment at its top "
        "says where a name or a new topic section goes): " + ", ".join(missing))
    assert not undocumented, "public names without a docstring: " + ", ".join(undocumented)


# --------------------------------------------------------------------------- tests: browser


def test_every_page_in_a_browser_offline(offline, base_url):
    """Each page of the table of contents, as a reader with no network sees it."""
    docnames = toc_docnames()
    expected = {base_url + page_path(d) for d in docnames}
    top_level = {base_url + page_path(d) for d, depth in toc_entries() if depth == 0}
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    for old in SCREENSHOTS.glob("*.png"):
        old.unlink()
    report, failures = [], []
    for docname in docnames:
        already_outside = len(offline.outside)
        page = offline.open(page_path(docname))
        page.screenshot(path=str(SCREENSHOTS / f"{docname.replace('/', '_')}.png"))
        state = page.evaluate(PAGE_STATE_JS)
        problems = list(page.problems)
        if len(offline.outside) > already_outside:
            problems.append("requests that left 127.0.0.1 (blocked): "
                            f"{sorted(set(offline.outside[already_outside:]))}")
        if state["brokenImages"]:
            problems.append(f"images not loaded: {state['brokenImages']}")
        if state["formulas"] and not state["mathjax"]:
            problems.append(f"{state['formulas']} formulas but MathJax did not load")
        if state["untypeset"]:
            problems.append(f"formulas not typeset: {state['untypeset'][:5]}")
        if state["mathErrors"]:
            problems.append(f"MathJax errors: {state['mathErrors'][:5]}")
        if state["rawTex"]:
            problems.append(f"raw TeX left in the text: {state['rawTex'][:5]}")
        if state["overflowing"]:
            problems.append(f"{len(state['overflowing'])} code blocks need horizontal "
                            f"scrolling; their longest lines: {state['overflowing'][:5]}")
        links = {link["url"] for link in state["sidebar"]}
        visible = {link["url"] for link in state["sidebar"] if link["visible"]}
        if expected - links:
            problems.append(f"sidebar does not link {sorted(expected - links)}")
        if (top_level & links) - visible:
            problems.append(f"sidebar links not visible: {sorted((top_level & links) - visible)}")
        if is_notebook(docname):
            page.click(".dropdown-download-buttons > button")
            item = page.locator(f'a[href$="_sources/{docname}.ipynb"]')
            if not item.is_visible():
                problems.append("the download menu does not show the .ipynb")
        report.append(f"{docname}: {state['images']} images, {state['typeset']} formulas "
                      f"typeset, {state['codeBlocks']} code blocks, "
                      f"{len(state['sidebar'])} sidebar links, "
                      f"{len(problems)} problems")
        failures += [f"{docname}: {p}" for p in problems]
        page.close()
    print("\n".join(report))
    print(f"screenshots of each page's first screen: {SCREENSHOTS}")
    assert not failures, "\n".join(failures)


def test_search_finds_clipping(offline):
    page = offline.open("search.html?q=clipping", wait_for_math=False)
    page.wait_for_selector("#search-results .search-summary", timeout=20_000)
    results = page.eval_on_selector_all(
        "#search-results ul.search li a", "links => links.map(a => a.href.split('#')[0])")
    summary = page.inner_text("#search-results .search-summary")
    print(f"search for 'clipping': {summary} {sorted(set(results))}")
    assert results, f"search for 'clipping' found nothing: {summary}"
    assert not page.problems, page.problems
    assert not offline.outside, offline.outside


def test_framework_tabs_switch_in_sync(offline, base_url, book_html):
    """Choosing TensorFlow (or PyTorch) in one tab-set switches every tab-set, on every page."""
    synced = [d for d in toc_docnames()
              if 'data-sync-id="tensorflow"' in (book_html / page_path(d)).read_text()]
    assert any(is_notebook(d) for d in synced), "no chapter with synced framework tabs"
    assert "book/api" in synced, "the API reference has no synced framework tabs"
    most = 0
    for docname in synced:
        page = offline.open(page_path(docname), wait_for_math=False, wait_for_idle=False)
        for sync_id in ("tensorflow", "torch", "tensorflow"):
            labels = page.locator(f'label.sd-tab-label[data-sync-id="{sync_id}"]')
            most = max(most, labels.count())
            labels.last.click()  # the last tab-set drives all the others
            state = page.evaluate(TAB_STATE_JS, sync_id)
            assert all(s["checked"] and s["shown"] for s in state), (
                f"{docname}: after choosing '{sync_id}' in one tab-set, the others show "
                f"{state}")
        assert not page.problems, page.problems
        page.close()
    assert most >= 2, "no page has two synced tab-sets to switch together"
    # The choice is remembered: the next page opens on TensorFlow.
    page = offline.open(page_path(synced[0]), wait_for_math=False, wait_for_idle=False)
    state = page.evaluate(TAB_STATE_JS, "tensorflow")
    assert state and all(s["checked"] and s["shown"] for s in state), state
    page.close()
    assert not offline.outside, offline.outside
