"""The package's layout is its map: three columns of the same files.

``companion/core/`` (framework-neutral NumPy), ``companion/torch/`` and
``companion/tensorflow/`` hold modules of the same names, and a back-end module imports
from the core only its namesake and ``core/checks.py``; so a reader who knows where an
algorithm lives in one back end finds the other, and the shared part, at the same place.
"""

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "companion"
BACKENDS = ("torch", "tensorflow")
# Back-end modules with no framework-neutral part of their own.
CORE_ONLY = {"checks"}
MAX_LINES = 420


def _modules(folder: str) -> set:
    return {p.stem for p in (PACKAGE / folder).glob("*.py") if p.stem != "__init__"}


@pytest.mark.parametrize("backend", BACKENDS)
def test_core_and_back_ends_hold_the_same_modules(backend):
    assert _modules(backend) == _modules("core") - CORE_ONLY


def _core_imports(path: Path) -> set:
    """The ``companion.core`` modules that ``path`` imports from."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.level == 2 and node.module:
            parts = node.module.split(".")
            if parts[0] == "core":
                found.add(parts[1] if len(parts) > 1 else "*")
            elif parts[0] in ("common", "second_order", "schedules_common"):
                found.add(parts[0])
    return found


@pytest.mark.parametrize("path", sorted(p for b in BACKENDS for p in (PACKAGE / b).glob("*.py")
                                        if p.stem != "__init__"),
                         ids=lambda p: f"{p.parent.name}/{p.name}")
def test_back_end_module_imports_only_its_core_namesake_and_checks(path):
    allowed = {path.stem, "checks"}
    assert _core_imports(path) <= allowed, (
        f"{path.parent.name}/{path.name} imports companion.core."
        f"{sorted(_core_imports(path) - allowed)}; import through core/{path.stem}.py")


@pytest.mark.parametrize("path", sorted(PACKAGE.rglob("*.py")),
                         ids=lambda p: str(p.relative_to(PACKAGE)))
def test_no_module_is_over_the_size_a_reader_can_hold(path):
    lines = len(path.read_text().splitlines())
    assert lines <= MAX_LINES, f"{path.relative_to(PACKAGE)} has {lines} lines (max {MAX_LINES})"
