"""Sparsity patterns that hardware can run faster than unstructured sparsity.

N:M (semi-structured) sparsity keeps at most ``n`` non-zeros in every group of ``m``
consecutive weights along the input dimension; NVIDIA's sparse tensor cores run 2:4
matrices at twice the dense throughput (Mishra et al. 2021). Masks are computed in the
canonical layout (``(out, in, ...)``), so both back ends group the same weights.
"""

from __future__ import annotations

import numbers

import numpy as np

from .pruning import is_weight, keep_all_but_lowest_per_row

__all__ = ["check_nm", "nm_mask", "nm_masks_from"]


def check_nm(n, m) -> tuple:
    """``(n, m)`` if they are integers with ``1 <= n < m``.

    Raises:
        TypeError: ``n`` or ``m`` not an integer.
        ValueError: not ``1 <= n < m``.
    """
    for what, value in (("n", n), ("m", m)):
        if isinstance(value, bool) or not isinstance(value, numbers.Integral):
            raise TypeError(f"{what} must be an integer, got {type(value).__name__}")
    if not 1 <= n < m:
        raise ValueError(f"N:M sparsity needs integers 1 <= n < m, got n={n}, m={m}")
    return int(n), int(m)


def nm_mask(scores, n: int, m: int) -> np.ndarray:
    """The 0/1 mask that keeps the ``n`` highest scores of every ``m`` consecutive entries.

    ``scores`` is a canonical weight of shape ``(out, in, ...)``, read as ``(out, K)``
    with ``K = in * ...`` (row-major, as the matrix a sparse kernel multiplies); each row
    is cut into ``K / m`` groups of ``m`` consecutive entries, and in each group the
    ``m - n`` lowest scores are dropped by
    :func:`companion.core.pruning.keep_all_but_lowest_per_row` (ties: the earlier
    position). The sparsity is exactly ``1 - n / m``.

    Raises:
        ValueError: ``scores`` has fewer than 2 dimensions, ``K`` is not a multiple of
            ``m``, or a score is not finite.
    """
    scores = np.asarray(scores)
    if scores.ndim < 2:
        raise ValueError(f"N:M masks group the input dimension of a weight (2 or more "
                         f"dimensions), got shape {scores.shape}")
    rows, width = scores.shape[0], int(np.prod(scores.shape[1:]))
    if width % m:
        raise ValueError(f"a weight of shape {scores.shape} has {width} inputs per output, "
                         f"not a multiple of m={m}")
    if not np.all(np.isfinite(scores)):
        raise ValueError("scores must be finite")
    keep = keep_all_but_lowest_per_row(scores.reshape(rows * (width // m), m), m - n)
    return keep.reshape(scores.shape).astype(scores.dtype)


def nm_masks_from(names, scores, n: int, m: int) -> list:
    """:func:`nm_mask` of every weight (see :func:`companion.core.pruning.is_weight`) whose
    canonical score is not ``None``; ``None`` for biases and the rest."""
    return [nm_mask(s, n, m) if s is not None and is_weight(name, s.ndim) else None
            for name, s in zip(names, scores)]
