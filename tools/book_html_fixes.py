"""A Sphinx extension that fixes three bugs of the book's pinned stack seen in the browser.

``_config.yml`` loads it (``sphinx: local_extensions``). The first two print errors in a
reader's browser console, and the browser test (tests/test_book_html.py) fails on any
console error, so they are fixed here rather than ignored there.

1. **Inline scripts written twice.** Sphinx 7.4 keeps an inline script (``add_js_file(None,
   body=...)``) that an extension adds after the builder has started under the file name
   ``None``, then adds it again from its registry as ``''`` before writing, so every page
   carries it twice. sphinx-thebe adds ``const THEBE_JS_URL = ...`` that way, and declaring
   a ``const`` twice throws "Identifier 'THEBE_JS_URL' has already been declared" on every
   page. Fix: before each page is written, drop the second copy of any script.
2. **A missing secondary sidebar.** sphinx-book-theme hides the right-hand sidebar while a
   ``full-width`` (or margin) element is on screen, and throws "Cannot read properties of
   null (reading 'classList')" when the page has removed that sidebar
   (``html_theme.sidebar_secondary.remove: true``, as the errata page does). Fix: such a
   page gets an empty, hidden placeholder for the theme to toggle.
3. **A second, empty header.** pydata-sphinx-theme 0.17 puts a search field in a top
   navigation bar unless ``navbar_persistent`` is set, and sphinx-book-theme 1.3 leaves it
   unset, so every page opens with a 4 rem bar holding only a second search field (the
   sidebar has one). Fix: set it to nothing unless ``html_theme_options`` sets it; the
   article header keeps its search button, also on narrow screens.
"""

from __future__ import annotations

from sphinx.application import Sphinx

# Runs before the theme's observer first reports (observers report after the
# DOMContentLoaded handlers have run), so the theme always finds the element.
SIDEBAR_PLACEHOLDER_JS = """document.addEventListener("DOMContentLoaded", () => {
  if (!document.querySelector("div.bd-sidebar-secondary")) {
    const placeholder = document.createElement("div");
    placeholder.className = "bd-sidebar-secondary";
    placeholder.hidden = true;
    document.body.appendChild(placeholder);
  }
});"""


def _script_key(script) -> tuple:
    attributes = getattr(script, "attributes", {}) or {}
    return (getattr(script, "filename", script) or "", getattr(script, "priority", 500),
            tuple(sorted((k, str(v)) for k, v in attributes.items())))


def drop_duplicate_scripts(app: Sphinx, pagename: str, templatename: str, context: dict,
                           doctree) -> None:
    """Keep the first of scripts that are equal but for ``None`` versus ``''``."""
    scripts = context.get("script_files")
    if not scripts:
        return
    seen: set = set()
    unique = []
    for script in scripts:
        key = _script_key(script)
        if key not in seen:
            seen.add(key)
            unique.append(script)
    # In place: this is the builder's list, which it restores after writing the page.
    scripts[:] = unique


def no_navbar_search(app: Sphinx, config) -> None:
    """Leave pydata-sphinx-theme's top bar empty (hence out) unless configured."""
    if config.html_theme_options is None:
        config.html_theme_options = {}
    config.html_theme_options.setdefault("navbar_persistent", [])


def setup(app: Sphinx) -> dict:
    app.connect("config-inited", no_navbar_search)
    app.add_js_file(None, body=SIDEBAR_PLACEHOLDER_JS)
    # Late, so that scripts other extensions add to this page are seen too.
    app.connect("html-page-context", drop_duplicate_scripts, priority=900)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
