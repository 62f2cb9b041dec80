"""Re-run chapters with every literal seed shifted, and report the cells that fail.

Usage: python tools/shift_seeds.py [book/ch03_gradient_pruning.md ...] [--offsets 1 2]

A chapter's conclusions must not rest on one lucky draw: its asserts must hold when every
seed in it changes. This tool reads each chapter's text source, adds an offset to every
seed written as a literal in a code cell (see ``SEED_PATTERNS``), executes the result in a
fresh kernel (nothing is written back), and lists the cells that raised, with the error.
Output differences are expected and ignored; only errors count. Exit status 1 if any cell
failed, or if a chapter has no literal seed to shift (then the tool proves nothing).

Seeds must therefore be written where this tool finds them: ``seed=3``,
``seed_everything(0)`` (or ``manual_seed``, ``set_seed``, ``random.seed``,
``default_rng``), ``seeds=range(5)`` / ``SEEDS = range(0, 5)`` / ``for seed in
range(5)``, or ``seeds=[0, 1, 2]``. Not part of ``make test`` (it executes every chapter twice);
``make seeds`` runs it.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
import time
from pathlib import Path

import jupytext
from nbclient import NotebookClient
from nbclient.exceptions import CellExecutionError

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")

BOOK = Path(__file__).resolve().parent.parent / "book"


def _shift_list(match: re.Match, offset: int) -> str:
    numbers = re.sub(r"\d+", lambda n: str(int(n.group(0)) + offset), match.group(2))
    return match.group(1) + numbers + match.group(3)


SEED_PATTERNS = [
    # seed=3, seed = 3 (keyword arguments and assignments)
    (re.compile(r"(\bseed\s*=\s*)(\d+)()"), None),
    # seed_everything(0), torch.manual_seed(0), tf.random.set_seed(0), np.random.seed(0),
    # np.random.default_rng(0)
    (re.compile(r"(\b(?:seed_everything|manual_seed|set_seed|random\.seed|default_rng)"
                r"\(\s*)(\d+)()"), None),
    # seeds=range(5), SEEDS = range(2, 7), for seed in range(5)
    (re.compile(r"(\b(?:seeds\s*=\s*|for\s+seed\s+in\s+)range\()([\d\s,]+)(\))", re.I),
     "range"),
    # seeds=[0, 1, 2], SEEDS = (0, 1)
    (re.compile(r"(\bseeds\s*=\s*[\[(])([\d\s,]+)([\])])", re.I), None),
]


def shift_seeds(source: str, offset: int) -> tuple[str, int]:
    """``source`` with every literal seed shifted by ``offset``, and how many were."""
    count = 0
    for pattern, kind in SEED_PATTERNS:
        def replace(match):
            nonlocal count
            count += 1
            if kind == "range":
                bounds = [int(b) for b in match.group(2).split(",") if b.strip()]
                start, stop = (0, bounds[0]) if len(bounds) == 1 else bounds[:2]
                step = f", {bounds[2]}" if len(bounds) > 2 else ""
                return f"{match.group(1)}{start + offset}, {stop + offset}{step}{match.group(3)}"
            return _shift_list(match, offset)
        source = pattern.sub(replace, source)
    return source, count


def run_shifted(chapter: Path, offset: int) -> tuple[int, list]:
    """Execute ``chapter`` with its seeds shifted; return (seeds shifted, failed cells)."""
    notebook = jupytext.read(chapter)
    shifted = 0
    for cell in notebook.cells:
        if cell.cell_type == "code":
            cell.source, count = shift_seeds(cell.source, offset)
            shifted += count
    client = NotebookClient(notebook, timeout=1800, kernel_name="python3",
                            allow_errors=True, resources={"metadata": {"path": str(BOOK)}})
    try:
        client.execute()
    except CellExecutionError as error:  # only when allow_errors is overridden by a cell
        return shifted, [("?", str(error).splitlines()[-1])]
    failures = []
    for index, cell in enumerate(notebook.cells):
        for output in cell.get("outputs", []):
            if output.output_type == "error":
                failures.append((index, f"{output.ename}: {output.evalue}".strip()[:300]))
    return shifted, failures


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("chapters", nargs="*", type=Path,
                        default=sorted(BOOK.glob("ch[0-9]*.md")))
    parser.add_argument("--offsets", nargs="+", type=int, default=[1, 2])
    args = parser.parse_args(argv)
    failed = False
    for offset in args.offsets:
        for chapter in args.chapters:
            start = time.perf_counter()
            shifted, failures = run_shifted(chapter, offset)
            took = time.perf_counter() - start
            verdict = "ok" if shifted and not failures else "FAILED"
            print(f"offset {offset:+d} {chapter.name}: {shifted} seeds shifted, "
                  f"{len(failures)} failing cells, {took:.0f} s: {verdict}", flush=True)
            if not shifted:
                print("    no literal seed found: write seeds as seed=N, "
                      "seed_everything(N) or seeds=range(...)")
            for index, message in failures:
                print(f"    cell {index}: {message}")
            failed |= verdict == "FAILED"
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
