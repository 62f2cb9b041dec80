"""N:M (semi-structured) sparsity masks, PyTorch back end.

See :mod:`companion.core.patterns`.
"""

from __future__ import annotations

from ..core.patterns import check_nm, nm_masks_from
from .layout import from_canonical, parameter_names, to_canonical
from .pruning import _as_tensors, _check_shapes

__all__ = ["nm_masks"]


def nm_masks(model, scores, n: int = 2, m: int = 4) -> list:
    """Masks that keep the ``n`` highest-scoring of every ``m`` consecutive weights.

    Each weight (two or more dimensions, not a bias), read in the canonical layout as an
    ``(out, K)`` matrix, loses the ``m - n`` lowest scores of every group of ``m``
    consecutive inputs (:func:`companion.core.patterns.nm_mask`): sparsity exactly
    ``1 - n / m`` in every row, the 2:4 pattern sparse tensor cores run. Biases and
    ``None`` scores get mask ``None``. Apply with :func:`apply_masks`, or keep during
    training with ``train(..., masks=...)``.

    Args:
        model: a ``torch.nn.Module``, e.g. from :func:`mlp`.
        scores: one score (or ``None``) per trainable parameter, e.g. from
            :func:`magnitude_scores`; higher means keep.
        n: weights kept per group, an integer >= 1.
        m: group size, an integer > ``n``.

    Raises:
        ValueError, TypeError: bad ``n, m``; scores not aligned with the parameters, of
            the wrong shape or not finite; a weight whose inputs per output are not a
            multiple of ``m``.
    """
    n, m = check_nm(n, m)
    scores = _check_shapes(model, _as_tensors(scores), "score")
    canonical = to_canonical(model, scores)
    return from_canonical(model, nm_masks_from(parameter_names(model), canonical, n, m))
