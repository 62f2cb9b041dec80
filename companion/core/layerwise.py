"""Pruning one layer at a time from the inputs it sees: Wanda's scores and layer-wise OBS.

Both look at one linear layer ``y = W x`` and the inputs ``X`` (one row per example, and
per position of a sequence) that it receives; no gradient of the loss, no retraining.

* Wanda (Sun et al. 2023) scores ``W_ij`` by ``|W_ij| * ||X_j||_2``: a small weight on a
  large input can matter more than a large weight on a small one.
* Layer-wise OBS (Optimal Brain Compression, Frantar & Alistarh 2022; SparseGPT, 2023
  approximates it for very large layers) prunes each row ``w`` of ``W`` to minimise the
  change of the layer's output, ``||X w - X w'||^2``, a quadratic with Hessian
  ``H = X^T X``, where OBS is exact.
"""

from __future__ import annotations

import numpy as np

__all__ = ["feature_square_sums", "input_gram", "wanda_score", "obc_prune_rows",
           "obc_prune_layers"]


def feature_square_sums(inputs) -> np.ndarray:
    """``sum_n x_nj^2`` for each feature ``j`` of a batch of layer inputs ``(..., d)``
    (every leading axis is an example or a position), in float64."""
    inputs = np.asarray(inputs, dtype=np.float64)
    return np.sum(inputs.reshape(-1, inputs.shape[-1]) ** 2, axis=0)


def input_gram(inputs) -> np.ndarray:
    """``X^T X`` of a batch of layer inputs ``(..., d)`` (leading axes flattened into rows),
    in float64: summed over batches, the Hessian of ``||X w - X w'||^2 / 2`` in ``w'``."""
    inputs = np.asarray(inputs, dtype=np.float64).reshape(-1, np.shape(inputs)[-1])
    return inputs.T @ inputs


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


def obc_prune_rows(weight, gram, sparsity: float, damping: float = 0.01) -> tuple:
    """Prune every row of a canonical weight ``(out, in)`` by exact OBS on its own output.

    With ``H = X^T X + lambda I``, ``lambda = damping * mean(diag(X^T X))`` (SparseGPT's
    dampening; it keeps ``H`` invertible when inputs are collinear), each row ``w``
    loses ``k = round(sparsity * in)`` weights, one at a time, greedily: the weight ``q``
    of least saliency ``w_q^2 / [H^-1]_qq`` goes, and the others move by
    ``dw = -(w_q / [H^-1]_qq) H^-1[:, q]``; then ``q`` is removed from ``H^-1``
    (``H^-1 <- H^-1 - H^-1[:, q] H^-1[q, :] / [H^-1]_qq``, the inverse of ``H`` without
    row and column ``q``). For a quadratic these updates are exact, so the kept weights
    end at the least-squares optimum for the final mask:
    ``w'_K = H_KK^-1 (H w)_K`` (Optimal Brain Compression, Frantar & Alistarh 2022). All
    rows run together, vectorised.

    Args:
        weight: the canonical weight, ``(out, in)``.
        gram: ``X^T X`` of the layer's inputs, ``(in, in)`` (:func:`input_gram`, summed).
        sparsity: the fraction of each row to prune, in ``[0, 1)``.
        damping: ``lambda`` relative to the mean diagonal of ``X^T X``, a number > 0.

    Returns:
        ``(pruned weight, mask)`` in the weight's dtype: exactly ``k`` zeros per row.
    """
    weight = np.asarray(weight)
    rows, width = weight.shape
    gram = np.asarray(gram, dtype=np.float64)
    count = int(round(sparsity * width))
    lam = damping * max(float(np.mean(np.diag(gram))), np.finfo(np.float64).tiny)
    inverse = np.linalg.inv(gram + lam * np.eye(width))
    inverses = np.repeat(inverse[None], rows, axis=0)  # one H^-1 per row, shrinking
    w = weight.astype(np.float64)
    kept = np.ones((rows, width), dtype=bool)
    every_row = np.arange(rows)
    for _ in range(count):
        diagonal = np.diagonal(inverses, axis1=1, axis2=2)
        with np.errstate(divide="ignore", invalid="ignore"):  # 0/0 where pruned
            saliency = np.where(kept, w ** 2 / diagonal, np.inf)
        q = np.argmin(saliency, axis=1)
        column = inverses[every_row, :, q]  # H^-1[:, q] of each row, (rows, in)
        pivot = column[every_row, q]
        w -= (w[every_row, q] / pivot)[:, None] * column
        inverses -= column[:, :, None] * column[:, None, :] / pivot[:, None, None]
        kept[every_row, q] = False
        w[~kept] = 0.0  # exact zeros where rounding left a residue
    return w.astype(weight.dtype), kept.astype(weight.dtype)


def obc_prune_layers(weights: list, layers: list, gram_of, set_weights, sparsity: float,
                     damping: float) -> list:
    """:func:`obc_prune_rows` on each layer in turn, all or nothing.

    Args:
        weights: the model's canonical parameters (a list; not modified).
        layers: ``(index in weights, layer)`` pairs in the order to prune.
        gram_of: ``layer -> X^T X`` of its inputs on the data through the model as it is
            now (``None`` if the data never reached the layer).
        set_weights: writes a full list of canonical parameters into the model.
        sparsity, damping: as in :func:`obc_prune_rows`.

    Returns:
        One 0/1 mask (canonical) per parameter, ``None`` where nothing was pruned.

    Raises:
        ValueError: a layer the data never reached; the model gets ``weights`` back on
            this or any other error.
    """
    pruned, masks = list(weights), [None] * len(weights)
    try:
        for index, layer in layers:
            gram = gram_of(layer)
            if gram is None:
                raise ValueError(f"parameter {index} belongs to a layer that the data "
                                 "never reached: it was not called on the data")
            pruned[index], masks[index] = obc_prune_rows(pruned[index], gram, sparsity,
                                                         damping)
            set_weights(pruned)
    except BaseException:
        set_weights(weights)
        raise
    return masks
