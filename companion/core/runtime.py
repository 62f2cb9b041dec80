"""What both back ends do to share one process (see ``torch/runtime.py`` and
``tensorflow/runtime.py`` for devices, seeding and tensors).
"""

from __future__ import annotations

import sys


def share_cpu_between_frameworks() -> None:
    """Give PyTorch one CPU thread once TensorFlow is loaded in the same process.

    Both frameworks keep a pool of threads that busy-wait for work. On a laptop's few
    cores, TensorFlow's pool starves PyTorch's OpenMP threads: on this book's 2-core test
    machine, two epochs of the Chapter 1 MLP went from 0.1 s to 6-15 s after TensorFlow had
    run once. The book's small models gain nothing from a second PyTorch thread, so one is
    the better choice whenever both frameworks share a process. Each back end calls this
    on import; call ``torch.set_num_threads`` afterwards to choose otherwise.
    """
    if "torch" in sys.modules and "tensorflow" in sys.modules:
        sys.modules["torch"].set_num_threads(1)
