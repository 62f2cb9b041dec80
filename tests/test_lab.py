"""The reader's loop: open a chapter in JupyterLab and run its first cells in a browser.

``make lab`` (tools/lab.py) starts JupyterLab from the project's venv. This test starts it
the same way (``lab.lab_command``), headless, on a free port of 127.0.0.1 with a random
token, on a copy of Chapter 1's notebook in a temporary folder (so nothing the browser
does can change the book), with JupyterLab's settings, workspaces and runtime files in
that folder too, and the book's kernel registered there (``lab.register_kernel``).

Debian's Chromium, driven by Playwright, opens the notebook with every request that
leaves 127.0.0.1 aborted, clears the stored outputs (Edit menu), and runs the cells from
the top with Shift+Enter, as a reader does, up to the first code cell that draws a
figure. Each of those code cells must then show what the stored notebook shows (the same
printed text, unless the cell is tagged ``nbval-ignore-output``, and its figures), and no
error. The server (and with it the kernel) is always shut down.

Without Chromium the test is skipped with install instructions, except in CI.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from test_book_html import CHROMIUM_ARGS, require_chromium

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tools"))
import lab  # noqa: E402  (tools/lab.py, what `make lab` runs)

CHAPTER = Path("book/ch01_exploding_gradients.ipynb")
MAX_CODE_CELLS = 8  # "the first few": up to the first figure, at most this many
SERVER_START_S = 60
RUN_TIMEOUT_MS = 150_000


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _cells_to_run(notebook: dict) -> list[int]:
    """Indices (among all cells) of the code cells the test runs."""
    chosen = []
    for index, cell in enumerate(notebook["cells"]):
        if cell["cell_type"] != "code":
            continue
        chosen.append(index)
        if any("image/png" in out.get("data", {}) for out in cell["outputs"]):
            break
        if len(chosen) == MAX_CODE_CELLS:
            break
    return chosen


def _settings(folder: Path) -> None:
    """User settings of the test's JupyterLab: no autosave, no news, all cells drawn."""
    for plugin, values in {
        "@jupyterlab/docmanager-extension/plugin": {"autosave": False},
        # Every cell in the page (no virtual scrolling), so the test can read them all.
        "@jupyterlab/notebook-extension/tracker": {"windowingMode": "none"},
        "@jupyterlab/apputils-extension/notification": {"fetchNews": "false",
                                                        "checkForUpdates": False},
    }.items():
        path = folder / f"{plugin}.jupyterlab-settings"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(values))


@pytest.fixture(scope="module")
def chromium() -> str:
    """Chromium's path, checked before JupyterLab starts; skipped (failed in CI) without."""
    return require_chromium()


@pytest.fixture(scope="module")
def lab_server(chromium, tmp_path_factory):
    """JupyterLab on 127.0.0.1 over a copy of the chapter: yields (base URL, token)."""
    tmp = tmp_path_factory.mktemp("lab")
    root = tmp / "root"
    (root / CHAPTER.parent).mkdir(parents=True)
    shutil.copy(REPO / CHAPTER, root / CHAPTER)
    _settings(tmp / "settings")
    lab.register_kernel(tmp / "kernel")  # as `make lab` does into the venv
    env = dict(os.environ,
               JUPYTER_CONFIG_DIR=str(tmp / "config"),
               JUPYTER_DATA_DIR=str(tmp / "data"),
               JUPYTER_RUNTIME_DIR=str(tmp / "runtime"),
               JUPYTER_PATH=str(tmp / "kernel" / "share" / "jupyter"),
               JUPYTERLAB_SETTINGS_DIR=str(tmp / "settings"),
               JUPYTERLAB_WORKSPACES_DIR=str(tmp / "workspaces"),
               TF_CPP_MIN_LOG_LEVEL="3", TF_ENABLE_ONEDNN_OPTS="0",
               PYDEVD_DISABLE_FILE_VALIDATION="1")
    env.pop("PYTEST_CURRENT_TEST", None)  # the kernel runs as a reader's would
    port, token = _free_port(), secrets.token_hex(16)
    log = open(tmp / "jupyterlab.log", "w")
    server = subprocess.Popen(
        lab.lab_command(root, port=port, token=token, open_browser=False,
                        extra=["--LabApp.extension_manager=readonly"]),
        env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + SERVER_START_S
        while True:
            if server.poll() is not None:
                pytest.fail(f"JupyterLab exited with {server.returncode}:\n"
                            + (tmp / "jupyterlab.log").read_text()[-3000:])
            try:
                urllib.request.urlopen(f"{base}/api/status?token={token}", timeout=2)
                break
            except OSError:
                if time.monotonic() > deadline:
                    pytest.fail(f"JupyterLab did not answer within {SERVER_START_S} s:\n"
                                + (tmp / "jupyterlab.log").read_text()[-3000:])
                time.sleep(0.25)
        yield base, token, tmp / "jupyterlab.log"
    finally:
        server.send_signal(signal.SIGTERM)  # JupyterLab shuts its kernels down
        try:
            server.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)  # the group this fixture started
            server.wait()
        log.close()


# Per code cell (by index among all cells): execution prompt, outputs shown, errors.
CELL_STATE_JS = r"""(indices) => {
  const cells = [...document.querySelectorAll('.jp-NotebookPanel .jp-Notebook .jp-Cell')];
  return indices.map(i => {
    const cell = cells[i];
    if (!cell) return null;
    const outputs = [...cell.querySelectorAll('.jp-OutputArea-output')];
    return {
      prompt: (cell.querySelector('.jp-InputPrompt') || {}).textContent || '',
      stdout: outputs.filter(o => o.dataset.mimeType === 'application/vnd.jupyter.stdout')
                     .map(o => o.textContent).join(''),
      stderr: outputs.filter(o => o.dataset.mimeType === 'application/vnd.jupyter.stderr')
                     .map(o => o.textContent.slice(0, 2000)),
      images: cell.querySelectorAll('.jp-OutputArea-output img').length,
      outputs: outputs.length,
    };
  });
}"""


DONE_JS = r"""([indices, want]) => {
  const cells = [...document.querySelectorAll('.jp-NotebookPanel .jp-Notebook .jp-Cell')];
  const prompt = cells[indices[indices.length - 1]].querySelector('.jp-InputPrompt');
  const failed = [...document.querySelectorAll(
      '.jp-OutputArea-output[data-mime-type="application/vnd.jupyter.stderr"]')]
    .some(o => /Traceback|Error\b/.test(o.textContent));
  return failed || (prompt && prompt.textContent.trim() === want);
}"""


def test_run_chapter_1_in_jupyterlab(chromium, lab_server):
    from playwright.sync_api import sync_playwright

    executable = chromium
    base, token, log = lab_server
    notebook = json.loads((REPO / CHAPTER).read_text())
    indices = _cells_to_run(notebook)
    stored = [notebook["cells"][i] for i in indices]
    start = time.perf_counter()
    outside, problems = [], []

    def route(request_route):
        url = request_route.request.url
        if url.startswith(base + "/"):
            request_route.continue_()
        else:
            outside.append(url)
            request_route.abort("blockedbyclient")

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=executable, headless=True,
                                             args=CHROMIUM_ARGS)
        page = None
        try:
            context = browser.new_context(viewport={"width": 1280, "height": 900},
                                          service_workers="block")
            context.route("**/*", route)
            page = context.new_page()
            page.on("pageerror", lambda exc: problems.append(f"uncaught exception: {exc}"))
            page.goto(f"{base}/lab/tree/{CHAPTER.as_posix()}?token={token}")
            # The notebook is open and its kernel (the book's) is idle.
            page.wait_for_selector(".jp-NotebookPanel .jp-Notebook .jp-Cell",
                                   timeout=60_000)
            page.wait_for_function(
                "(name) => { const k = document.querySelector('.jp-NotebookPanel "
                ".jp-Toolbar-kernelName'); return k && k.textContent.trim() === name; }",
                arg=lab.KERNEL_DISPLAY_NAME, timeout=60_000)
            page.wait_for_selector(
                '.jp-NotebookPanel .jp-Notebook-ExecutionIndicator[data-status="idle"]',
                timeout=60_000)

            # Edit > Clear Outputs of All Cells: what appears next comes from this run.
            page.click('.lm-MenuBar-item:has-text("Edit")')
            page.click('.lm-Menu-item:has-text("Clear Outputs of All Cells")')
            page.wait_for_function(
                "() => document.querySelectorAll('.jp-NotebookPanel "
                ".jp-OutputArea-output').length === 0", timeout=10_000)

            # From the top, Shift+Enter as a reader does, through the last chosen cell.
            page.locator(".jp-NotebookPanel .jp-Notebook .jp-Cell").first.click()
            page.keyboard.press("Escape")  # command mode
            for _ in range(indices[-1] + 1):
                page.keyboard.press("Shift+Enter")

            # Every chosen code cell has run ([n] in order), or one failed (JupyterLab
            # then drops the queued cells); and the kernel is idle again.
            page.wait_for_function(DONE_JS, arg=[indices, f"[{len(indices)}]:"],
                                   timeout=RUN_TIMEOUT_MS)
            page.wait_for_selector(
                '.jp-NotebookPanel .jp-Notebook-ExecutionIndicator[data-status="idle"]',
                timeout=30_000)
            page.wait_for_timeout(500)  # the last outputs drawn
            shown = page.evaluate(CELL_STATE_JS, indices)
        finally:
            if page is not None:  # what the browser showed last, beside the server's log
                page.screenshot(path=str(log.parent / "jupyterlab.png"))
                print(f"screenshot: {log.parent / 'jupyterlab.png'}; log: {log}")
            browser.close()

    elapsed = time.perf_counter() - start
    print(f"{len(indices)} code cells of {CHAPTER} run in JupyterLab in {elapsed:.1f} s")
    failures = list(problems)
    if outside:
        failures.append(f"requests that left 127.0.0.1 (blocked): {sorted(set(outside))}")
    for number, (cell, state) in enumerate(zip(stored, shown), start=1):
        where = f"code cell {number} ({''.join(cell['source']).splitlines()[0][:50]!r})"
        if state is None:
            failures.append(f"{where}: not found in the page")
            continue
        if state["prompt"].strip() != f"[{number}]:":
            failures.append(f"{where}: prompt {state['prompt']!r}, expected [{number}]:")
        errors = [text for text in state["stderr"]
                  if re.search(r"Traceback|Error\b|Exception", text)]
        if errors:
            failures.append(f"{where}: error output:\n{errors[0]}")
        stdout = "".join(
            "".join(out["text"]) for out in cell["outputs"]
            if out["output_type"] == "stream" and out["name"] == "stdout")
        if "nbval-ignore-output" not in cell["metadata"].get("tags", []) \
                and state["stdout"].strip() != stdout.strip():
            failures.append(f"{where}: printed {state['stdout']!r}, the stored notebook "
                            f"shows {stdout!r}")
        figures = sum("image/png" in out.get("data", {}) for out in cell["outputs"])
        if state["images"] < figures:
            failures.append(f"{where}: {state['images']} figures shown, {figures} stored")
    assert not failures, "\n".join(failures)
