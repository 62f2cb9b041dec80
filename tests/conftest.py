"""Shared fixtures: `backend` runs a unit test in both frameworks; `book_html` is the
HTML book, built once per test run for the browser tests (test_book_html.py) and the PDF
test (test_book_pdf.py)."""

import fcntl
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from companion import tensorflow as companion_tf
from companion import torch as companion_torch

BACKENDS = {"torch": companion_torch, "tensorflow": companion_tf}


@pytest.fixture(params=sorted(BACKENDS))
def backend(request):
    """The back end module (`companion.torch` or `companion.tensorflow`), seeded."""
    module = BACKENDS[request.param]
    module.seed_everything(0)
    return module


@pytest.fixture
def rng():
    return np.random.default_rng(1234)



REPO = Path(__file__).resolve().parents[1]
MATHJAX = REPO / "book" / "_static" / "mathjax" / "tex-chtml.js"


def _build_book(out: Path) -> str | None:
    """Build the book as ``make book`` does into ``out``; None, or why it failed."""
    if not MATHJAX.is_file():  # `make` vendors MathJax; a plain `pytest` may come first
        subprocess.run([sys.executable, "tools/vendor_mathjax.py", str(MATHJAX.parent)],
                       cwd=REPO, check=True, capture_output=True)
    start = time.perf_counter()
    result = subprocess.run(
        [sys.executable, "-c", "import sys; from jupyter_book.cli.main import main; "
         "sys.exit(main())", "build", str(REPO), "--path-output", str(out),
         "--warningiserror", "--keep-going"],
        cwd=REPO, capture_output=True, text=True, timeout=600,
    )
    if result.returncode != 0:
        output = re.sub(r"\x1b\[[0-9;]*m", "", result.stdout + result.stderr)
        warnings = [line for line in output.splitlines()
                    if "WARNING" in line or "ERROR" in line or "Exception" in line]
        return (f"the book does not build with --warningiserror (exit "
                f"{result.returncode}):\n" + "\n".join(warnings or [output[-6000:]]))
    print(f"book built in {time.perf_counter() - start:.1f} s")
    return None


@pytest.fixture(scope="session")
def book_html(tmp_path_factory) -> Path:
    """The book built as ``make book`` does, into a fresh folder: its ``html`` folder.

    Built once per test run: with pytest-xdist the first worker that asks builds it under
    a lock in the run's shared temporary folder, and the others wait and reuse it (or
    its failure).
    """
    shared = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        shared = shared.parent  # the folder above the workers' own (popen-gwN)
    out, built, failed = shared / "book", shared / "book.built", shared / "book.failed"
    with open(shared / "book.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes
        if not built.exists() and not failed.exists():
            shutil.rmtree(out, ignore_errors=True)  # what an interrupted build left
            out.mkdir()
            failure = _build_book(out)
            (failed if failure else built).write_text(failure or "")
    if failed.exists():
        pytest.fail(failed.read_text())
    return out / "_build" / "html"
