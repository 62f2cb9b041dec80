"""Execute notebooks and store their outputs exactly as `pytest --nbval` will see them.

Usage: python tools/store_outputs.py book/ch01_exploding_gradients.ipynb [...]

Each notebook runs in a fresh kernel of the current environment, with the notebook's
folder as the working directory (as nbval does). The kernel is told it runs under pytest:
ipykernel then leaves C-level stderr alone, as it does during nbval, so the stored outputs
hold exactly what nbval will compare.
"""

import os
import sys
import time
from pathlib import Path

import nbformat
from nbclient import NotebookClient

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")
os.environ["PYTEST_CURRENT_TEST"] = "tools/store_outputs.py"


def as_displayed(outputs: list) -> list:
    """Merge consecutive stream outputs and apply carriage returns, as Jupyter displays them.

    A progress bar redraws its line with ``\r`` many times; a reader should see the last
    drawing, not every intermediate one.
    """
    merged = []
    for output in outputs:
        if (output.output_type == "stream" and merged and merged[-1].output_type == "stream"
                and merged[-1].name == output.name):
            merged[-1].text += output.text
        else:
            merged.append(output)
    for output in merged:
        if output.output_type == "stream":
            lines = output.text.split("\n")
            output.text = "\n".join(
                next((part for part in reversed(line.split("\r")) if part), "") for line in lines)
    return merged


def store_outputs(path: Path) -> float:
    """Execute ``path`` in place; return the seconds it took."""
    notebook = nbformat.read(path, as_version=4)
    client = NotebookClient(notebook, timeout=900, kernel_name="python3",
                            resources={"metadata": {"path": str(path.parent)}})
    start = time.perf_counter()
    client.execute()
    for cell in notebook.cells:
        if cell.cell_type == "code":
            cell.outputs = as_displayed(cell.outputs)
    nbformat.write(notebook, path)
    return time.perf_counter() - start


def main(paths) -> None:
    if not paths:
        sys.exit("usage: python tools/store_outputs.py NOTEBOOK.ipynb [...]")
    for path in map(Path, paths):
        print(f"{path}: executed in {store_outputs(path):.0f} s", flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
