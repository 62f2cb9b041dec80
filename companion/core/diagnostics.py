"""Framework-neutral gradient diagnostics: norms of norms, per-layer grouping, the recorder
behind each back end's ``GradientMonitor``.
"""

from __future__ import annotations

import math

import numpy as np

from .checks import check_positive, check_positive_int


def norm_of_norms(norms, norm_type: float) -> float:
    """``||(n_1, ..., n_k)||_p``: the p-norm of all entries, from the per-tensor p-norms.

    Because ``||concat(g_i)||_p**p = sum_i ||g_i||_p**p``, the global norm is the p-norm of
    the per-tensor norms (for ``p = inf``, their maximum). An empty list has norm 0.
    """
    norms = np.asarray(list(norms), dtype=np.float64)
    if norms.size == 0:
        return 0.0
    if math.isinf(norm_type):
        return float(norms.max())
    return float(np.linalg.norm(norms, ord=norm_type))


def layer_norms_from(names, grads, tensor_norms, norm_type: float) -> dict:
    """Group per-tensor norms by layer: ``{layer: ||norms of its tensors||_p}``.

    ``tensor_norms`` holds one norm per non-``None`` entry of ``grads``; a layer's name is
    its parameters' name without the last part (``dense3.weight`` -> ``dense3``).
    """
    grads = list(grads)
    if len(grads) != len(names):
        raise ValueError(f"expected one gradient per trainable parameter ({len(names)}), "
                         f"got {len(grads)}")
    norms = iter(tensor_norms)
    per_layer: dict = {}
    for name, grad in zip(names, grads):
        if grad is not None:
            per_layer.setdefault(name.rpartition(".")[0] or name, []).append(next(norms))
    return {layer: norm_of_norms(values, norm_type) for layer, values in per_layer.items()}


class GradientNormRecorder:
    """Records gradient norms per step and flags non-finite values and spikes.

    Each back end's ``GradientMonitor`` supplies ``layer_norms(model, grads)``; this class
    turns gradients into norms with it, keeps them, decides what is a spike and plots them.

    A step is a *spike* when its total norm exceeds ``spike_factor`` times the median of the
    finite values among the previous ``window`` total norms (at least ``min_history`` of
    them). The median is robust: one earlier spike does not hide the next.
    """

    def __init__(self, model, spike_factor: float = 10.0, window: int = 50,
                 min_history: int = 5):
        self.model = model
        self.spike_factor = check_positive("spike_factor", spike_factor)
        self.window = check_positive_int("window", window)
        self.min_history = check_positive_int("min_history", min_history)
        self.steps: list = []
        self.total: list = []
        self.layers: dict = {}
        self.nonfinite_steps: list = []
        self.spike_steps: list = []

    def record_norms(self, step: int, total: float, layers: dict) -> None:
        """Store one step's total norm and per-layer norms, and classify the step."""
        recent = [t for t in self.total[-self.window:] if math.isfinite(t)]
        if not math.isfinite(total) or not all(map(math.isfinite, layers.values())):
            self.nonfinite_steps.append(step)
        elif len(recent) >= self.min_history and total > self.spike_factor * np.median(recent):
            self.spike_steps.append(step)
        self.steps.append(step)
        self.total.append(float(total))
        for name, value in layers.items():
            self.layers.setdefault(name, []).append(float(value))

    def record(self, step: int, grads) -> None:
        """Record the gradients (aligned with the model's parameters) of one step."""
        per_layer = self.layer_norms(self.model, grads)
        self.record_norms(step, norm_of_norms(per_layer.values(), 2.0), per_layer)

    def summary(self) -> dict:
        """Steps recorded, median and max finite total norm, non-finite and spike steps."""
        finite = [t for t in self.total if math.isfinite(t)]
        return {
            "steps": len(self.steps),
            "median_norm": float(np.median(finite)) if finite else float("nan"),
            "max_norm": max(finite) if finite else float("nan"),
            "nonfinite_steps": list(self.nonfinite_steps),
            "spike_steps": list(self.spike_steps),
        }

    def plot(self, ax=None, layers: bool = True):
        """Plot total (and per-layer) norms against the step on a log scale; mark spikes."""
        import matplotlib.pyplot as plt

        if ax is None:
            _, ax = plt.subplots(figsize=(7, 3.5))
        if layers:
            for name, values in self.layers.items():
                ax.plot(self.steps, values, lw=0.8, alpha=0.6, label=name)
        ax.plot(self.steps, self.total, color="black", lw=1.5, label="total")
        spikes = [self.total[self.steps.index(s)] for s in self.spike_steps]
        ax.scatter(self.spike_steps, spikes, color="red", zorder=3, label="spike")
        ax.set_yscale("log")
        ax.set_xlabel("step")
        ax.set_ylabel("gradient norm")
        ax.legend(fontsize="small", ncol=2)
        return ax
