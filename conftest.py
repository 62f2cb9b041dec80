"""Settings every test run needs, also for a plain `pytest --nbval` at the repo root."""

import os

# Before any TensorFlow import, here and in the notebook kernels (they inherit the
# environment): TensorFlow's start-up log lines would otherwise break strict nbval.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")
os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")


def pytest_collectstart(collector):
    """nbval: compare text outputs strictly, but not stderr or rich HTML/SVG renderings."""
    if getattr(collector, "skip_compare", None) is not None:
        collector.skip_compare += ("stderr", "text/html", "image/svg+xml")
