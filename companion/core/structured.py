"""Structured pruning: remove whole units (neurons) of dense layers.

Unstructured sparsity leaves the matrices their size, so dense kernels take as long as
before. Removing unit ``j`` of hidden layer ``i`` deletes row ``j`` of ``W_i`` and
``b_i`` and column ``j`` of ``W_{i+1}``: the model that remains is smaller and dense, and
faster by about the fraction of the work removed. A unit is scored by

* ``"l1"``: ``||W_i[j, :]||_1``, the L1 norm of its incoming weights (Li et al. 2017);
* ``"taylor"``: ``(sum_k g_jk w_jk + g_j b_j)^2`` averaged over minibatches, the squared
  first-order change of the loss when the unit is removed (Molchanov et al. 2019), where
  ``g`` is the minibatch's gradient: the derivative of the loss with respect to a gate
  multiplying the unit's pre-activation.
"""

from __future__ import annotations

import numpy as np

from .checks import check_sparsity
from .pruning import keep_all_but_lowest

__all__ = ["UNIT_CRITERIA", "l1_unit_scores", "taylor_unit_terms", "check_unit_scores",
           "units_to_keep", "shrink_dense_chain"]

UNIT_CRITERIA = ("l1", "taylor")


def l1_unit_scores(weight) -> np.ndarray:
    """``||W[j, :]||_1`` for each output unit ``j`` of a canonical weight ``(out, in)``."""
    return np.sum(np.abs(np.asarray(weight, dtype=np.float64)), axis=1)


def taylor_unit_terms(weight, bias, weight_grad, bias_grad) -> np.ndarray:
    """``sum_k g_jk w_jk + g_j b_j`` per unit ``j`` (one minibatch; square and average)."""
    term = np.sum(np.asarray(weight_grad, np.float64) * np.asarray(weight, np.float64), axis=1)
    if bias is not None:
        term = term + np.asarray(bias_grad, np.float64) * np.asarray(bias, np.float64)
    return term


def check_unit_scores(scores: dict, units: dict) -> dict:
    """``scores`` restricted to the hidden layers, checked: one score per unit.

    Args:
        scores: ``{layer name: unit scores}``.
        units: ``{hidden layer name: its number of units}``, in order.

    Raises:
        ValueError: ``scores`` does not name exactly the hidden layers, or a layer's
            scores are not one per unit.
    """
    if sorted(scores) != sorted(units):
        raise ValueError(f"scores must name the hidden layers {list(units)}, got "
                         f"{sorted(scores)}")
    for name, count in units.items():
        if len(scores[name]) != count:
            raise ValueError(f"{name} has {count} units, got {len(scores[name])} scores")
    return {name: scores[name] for name in units}


def units_to_keep(scores: dict, fraction: float) -> dict:
    """``{layer: sorted indices of the units kept}``: each layer loses the
    ``round(fraction * units)`` lowest-scoring units (ties: the earlier goes).

    Raises:
        ValueError: ``fraction`` outside ``[0, 1)``, a non-finite score, or a layer that
            would lose every unit.
    """
    fraction = check_sparsity(fraction)
    keep = {}
    for name, values in scores.items():
        values = np.asarray(values, dtype=np.float64)
        if not np.all(np.isfinite(values)):
            raise ValueError(f"the unit scores of {name} are not all finite")
        drop = int(round(fraction * values.size))
        if drop >= values.size:
            raise ValueError(f"fraction {fraction} would remove every unit of {name} "
                             f"({values.size})")
        keep[name] = np.flatnonzero(keep_all_but_lowest(values, drop))
    return keep


def shrink_dense_chain(layers: list, keep: list) -> list:
    """The ``(W, b)`` pairs of a chain of dense layers after removing units.

    Args:
        layers: canonical ``(W_i, b_i)`` pairs in forward order (``b_i`` may be ``None``).
        keep: for each layer, the indices of its output units kept, or ``None`` for all
            (the last layer keeps all: its outputs are the model's).

    Returns:
        ``(W_i[kept_i][:, kept_{i-1}], b_i[kept_i])`` for each layer.
    """
    shrunk, previous = [], None
    for (weight, bias), kept in zip(layers, keep):
        rows = slice(None) if kept is None else kept
        weight = weight[rows]
        if previous is not None:
            weight = weight[:, previous]
        shrunk.append((weight, None if bias is None else bias[rows]))
        previous = kept
    return shrunk
