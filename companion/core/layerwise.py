"""Pruning one layer at a time from the inputs it sees: Wanda's scores.

Wanda (Sun et al. 2023) scores weight ``W_ij`` of a linear layer by
``|W_ij| * ||X_j||_2``, where ``X_j`` collects feature ``j`` of the layer's inputs over
every example (and every position of a sequence): a small weight on a large input can
matter more than a large weight on a small one. No gradient, no retraining.
"""

from __future__ import annotations

import numpy as np

__all__ = ["feature_square_sums", "wanda_score"]


def feature_square_sums(inputs) -> np.ndarray:
    """``sum_n x_nj^2`` for each feature ``j`` of a batch of layer inputs ``(..., d)``
    (every leading axis is an example or a position), in float64."""
    inputs = np.asarray(inputs, dtype=np.float64)
    return np.sum(inputs.reshape(-1, inputs.shape[-1]) ** 2, axis=0)


def wanda_score(weight, square_sums) -> np.ndarray:
    """``|W_ij| * sqrt(s_j)`` for a canonical weight ``(out, in)`` and the inputs' feature
    square sums ``s`` (``in``,), in the weight's dtype.

    Raises:
        ValueError: ``s`` does not have one entry per input of ``W``.
    """
    weight = np.asarray(weight)
    square_sums = np.asarray(square_sums)
    if weight.ndim != 2 or square_sums.shape != (weight.shape[1],):
        raise ValueError(f"a weight of shape {weight.shape} needs one input norm per input, "
                         f"got {square_sums.shape}")
    return (np.abs(weight) * np.sqrt(square_sums)[None, :]).astype(weight.dtype)
