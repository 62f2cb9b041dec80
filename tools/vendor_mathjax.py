"""Copy the parts of MathJax 3 that the book needs into DEST, so math renders offline.

Usage::

    python tools/vendor_mathjax.py book/_static/mathjax

The files come from the installed ``django-static-mathjax`` package (the ``mathjax``
module, ``static/mathjax/es5/``); nothing is downloaded. ``_config.yml`` points Sphinx's
``mathjax_path`` at ``DEST/tex-chtml.js``.

What is copied, relative to ``es5/`` (about 8 MB of the package's 24 MB):

- ``tex-chtml.js``: the combined TeX-input, CommonHTML-output component the book loads;
- ``output/``: the CHTML web fonts (``chtml/fonts/woff-v2``) that ``tex-chtml.js`` fetches
  on first render, and the SVG renderer that the MathJax menu can switch to;
- ``input/tex/extensions/``: TeX packages that ``autoload``/``\\require`` fetch on demand
  (``\\boldsymbol``, ``\\cancel``, ``\\color``, ...);
- ``a11y/`` and ``sre/``: the accessibility components the MathJax menu loads when a reader
  turns on the expression explorer or speech.

Running it again is cheap and safe: a file is copied only when it is missing or its
content differs, and nothing else in DEST is touched. ``tex-chtml.js`` is copied last and
its modification time is refreshed on every run, so a Makefile rule that targets it is
satisfied only by a complete copy, and stays satisfied afterwards.
"""

from __future__ import annotations

import argparse
import filecmp
import importlib.util
import json
import shutil
import sys
from pathlib import Path

# Paths relative to MathJax's es5/ folder; folders are copied recursively.
PARTS = ("output", "input/tex/extensions", "a11y", "sre", "tex-chtml.js")


def mathjax_root() -> Path:
    """The ``es5`` folder of the installed MathJax 3 distribution."""
    spec = importlib.util.find_spec("mathjax")
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit("MathJax not found: pip install django-static-mathjax")
    for location in spec.submodule_search_locations:
        root = Path(location) / "static" / "mathjax" / "es5"
        if (root / "tex-chtml.js").is_file():
            return root
    raise SystemExit(f"no static/mathjax/es5/tex-chtml.js under {spec.submodule_search_locations}")


def mathjax_version(root: Path) -> str:
    """The version recorded in the distribution's package.json ('?' when absent)."""
    try:
        return json.loads((root.parent / "package.json").read_text())["version"]
    except (OSError, KeyError, ValueError):
        return "?"


def _copy_file(src: Path, dst: Path) -> bool:
    """Copy src to dst unless an identical copy is there; True when copied.

    The copy gets a fresh modification time, so `make` sees it as newer than the venv.
    """
    if dst.is_file() and filecmp.cmp(src, dst, shallow=False):
        return False
    dst.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(src, dst)
    return True


def vendor(dest: Path) -> tuple[int, int]:
    """Copy PARTS into dest; returns (files copied, files already up to date)."""
    root = mathjax_root()
    copied = kept = 0
    for part in PARTS:
        src = root / part
        files = sorted(p for p in src.rglob("*") if p.is_file()) if src.is_dir() else [src]
        if not files or not files[0].exists():
            raise SystemExit(f"missing in the MathJax package: {src}")
        for f in files:
            if _copy_file(f, dest / f.relative_to(root)):
                copied += 1
            else:
                kept += 1
    # Mark the copy complete, even when nothing changed, so `make` sees it as up to date.
    (dest / "tex-chtml.js").touch()
    return copied, kept


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("dest", type=Path, help="target folder, e.g. book/_static/mathjax")
    args = parser.parse_args(argv)
    copied, kept = vendor(args.dest)
    print(
        f"MathJax {mathjax_version(mathjax_root())} -> {args.dest}: "
        f"{copied} files copied, {kept} up to date"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
