"""Companion package of the book *Exploding Gradients, Clipping and Pruning*.

Two back ends with the same names and the same numbers::

    from companion import torch as ct
    from companion import tensorflow as ctf

and framework-neutral data sets in :mod:`companion.data`.

Importing this package does two things before either framework loads, both to keep the
two frameworks usable side by side in one process:

* it silences TensorFlow's start-up log lines (they would break strict notebook tests);
* it imports ``triton`` first when it is installed. TensorFlow >= 2.20 loads its library
  with ``RTLD_GLOBAL``, after which ``import triton`` segfaults (tensorflow#124205); CUDA
  builds of PyTorch import triton lazily (first optimizer, ``torch.compile``), so a notebook
  that imported TensorFlow would crash inside PyTorch.
"""

import importlib
import importlib.util
import os
import sys
import warnings

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")
# Deterministic cuBLAS needs this before CUDA initialises; harmless on the CPU.
os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")

if importlib.util.find_spec("triton") is not None:
    if "tensorflow" not in sys.modules:
        importlib.import_module("triton")
    elif "triton" not in sys.modules:
        # Too late: importing triton now would abort the process (tensorflow#124205).
        warnings.warn("companion was imported after TensorFlow, so triton could not be "
                      "loaded first; a later `import triton` (e.g. by a CUDA build of "
                      "PyTorch) will crash. Import companion before tensorflow.",
                      RuntimeWarning, stacklevel=2)

__all__ = ["data", "torch", "tensorflow"]
__version__ = "0.1.0"


def __getattr__(name):
    # Back ends load on first use, so `import companion` alone stays cheap.
    if name in __all__:
        return importlib.import_module(f"{__name__}.{name}")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
