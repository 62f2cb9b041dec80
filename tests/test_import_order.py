"""The triton / TensorFlow import-order crash (GUIDE section 5; tensorflow#124205).

TensorFlow >= 2.20 loads its library with RTLD_GLOBAL; a later ``import triton`` then
registers LLVM command-line options a second time and the process dies (an LLVM
"registered more than once" abort here, a segfault elsewhere). ``import companion``
imports triton first, which avoids it. Each check runs in a fresh interpreter, because
this test process has long since imported all three.
"""

import importlib.util
import os
import subprocess
import sys

import pytest

pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("triton") is None,
    reason="triton is not installed (it is a test requirement: pip install triton); "
           "the import-order crash cannot be reproduced without it")


def _run(code: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", TF_ENABLE_ONEDNN_OPTS="0")
    return subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                          text=True, timeout=120)


def test_triton_after_tensorflow_crashes():
    """The hazard is real on this stack: if this starts passing, GUIDE section 5 is stale."""
    result = _run("import tensorflow; import triton")
    assert result.returncode != 0, (
        "import tensorflow; import triton no longer crashes; stdout/stderr:\n"
        f"{result.stdout}\n{result.stderr}")


def test_import_companion_first_prevents_the_crash():
    result = _run("import companion; import tensorflow; import triton; import torch; "
                  "print('ok')")
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip() == "ok"


def test_import_companion_after_tensorflow_warns_instead_of_crashing():
    """Too late to load triton first: companion must not be the one to trigger the crash."""
    result = _run("import tensorflow; import companion; print('ok')")
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip() == "ok"
    assert "Import companion before tensorflow" in result.stderr


def test_import_companion_imports_triton_and_sets_tensorflow_environment():
    code = ("import os, sys; assert 'triton' not in sys.modules; import companion; "
            "print('triton' in sys.modules, 'tensorflow' in sys.modules, "
            "os.environ['TF_CPP_MIN_LOG_LEVEL'], os.environ['TF_ENABLE_ONEDNN_OPTS'])")
    env = {k: v for k, v in os.environ.items()
           if k not in ("TF_CPP_MIN_LOG_LEVEL", "TF_ENABLE_ONEDNN_OPTS")}
    result = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    # triton is loaded, TensorFlow is not (back ends load lazily), the log settings are set.
    assert result.stdout.split() == ["True", "False", "3", "0"]
