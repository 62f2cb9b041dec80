"""Open the book's chapters in JupyterLab, from the project's venv: ``make lab``.

Usage: python tools/lab.py [extra JupyterLab options, e.g. --no-browser --port=8890]

It registers the venv's Python as the kernel ``python3`` (the name every chapter's
notebook declares, and the one ``make outputs`` and nbval's current-env kernel run),
under the display name "Exploding gradients book (PyTorch + TensorFlow)", in the venv's
own ``share/jupyter`` (``--sys-prefix``: nothing is written to the user's home). Then it
starts JupyterLab on 127.0.0.1 with the repository as its root, opened on ``book/``.
With jupytext installed, saving a chapter's ``.ipynb`` also updates its paired text
source ``chNN_*.md``, and the ``.md`` opens as a notebook (right click, Open With,
Notebook). JupyterLab asks nothing of the network: no news feed, no update check.

tests/test_lab.py starts JupyterLab with the same options (``lab_command``) and runs
Chapter 1's first cells in a browser.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
KERNEL_NAME = "python3"
KERNEL_DISPLAY_NAME = "Exploding gradients book (PyTorch + TensorFlow)"


def register_kernel(prefix: str | os.PathLike = sys.prefix) -> Path:
    """Register this Python as kernel ``python3`` under the book's display name.

    ``prefix`` is the venv (``sys.prefix``, as ``ipykernel install --sys-prefix``) or
    any folder whose ``share/jupyter`` is on ``JUPYTER_PATH``. Returns the kernel's folder.
    """
    from ipykernel.kernelspec import install

    return Path(install(kernel_name=KERNEL_NAME, display_name=KERNEL_DISPLAY_NAME,
                        prefix=str(prefix)))


def lab_command(root: str | os.PathLike = REPO, *, open_on: str = "book",
                port: int | None = None, token: str | None = None,
                open_browser: bool = True, extra=()) -> list[str]:
    """The command line that starts JupyterLab on 127.0.0.1 with ``root`` as its root.

    ``open_on`` is the folder (or notebook) shown first, relative to ``root``. With
    ``port`` given, that port or failure (no retries); with ``token`` given, that token.
    """
    command = [
        sys.executable, "-m", "jupyterlab",
        "--ServerApp.ip=127.0.0.1",
        f"--ServerApp.root_dir={Path(root).resolve()}",
        f"--LabApp.default_url=/lab/tree/{open_on}",
        # Offline: no announcements feed and no update check from the server.
        "--LabApp.news_url=None",
        "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate",
    ]
    if port is not None:
        command += [f"--ServerApp.port={port}", "--ServerApp.port_retries=0"]
    if token is not None:
        command.append(f"--IdentityProvider.token={token}")
    if not open_browser:
        command.append("--no-browser")
    if hasattr(os, "geteuid") and os.geteuid() == 0:  # containers, CI: Jupyter refuses root
        command.append("--allow-root")
    return command + list(extra)


def main(argv: list[str]) -> None:
    # As in the Makefile: TensorFlow's start-up log lines stay out of the notebooks.
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")
    os.environ.setdefault("PYDEVD_DISABLE_FILE_VALIDATION", "1")
    kernel = register_kernel()
    print(f'kernel "{KERNEL_DISPLAY_NAME}" ({KERNEL_NAME}): {kernel}', flush=True)
    command = lab_command(extra=argv)
    os.execv(command[0], command)


if __name__ == "__main__":
    main(sys.argv[1:])
