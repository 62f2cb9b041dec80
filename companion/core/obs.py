"""Optimal Brain Surgeon on NumPy arrays (float64), shared by both back ends.

The back ends compute per-sample gradients (framework work); everything else is here, once,
in the canonical flattening order:

* the damped empirical Fisher ``F = damping I + (1/N) sum_i g_i g_i^T`` of the eligible
  weights in diagonal blocks, inverted by Woodbury updates (:func:`woodbury_block_inverse`,
  WoodFisher, Singh & Alistarh 2020), with a memory check (:func:`check_obs_memory`);
* the saliency ``w_q^2 / (2 [F^-1]_qq)`` (:func:`obs_saliency`) and the compensating update
  (:func:`obs_update`) of Hassibi & Stork (1993), for a dense inverse or a block-diagonal
  one, and the whole one-shot pruning step (:func:`obs_prune_arrays`).
"""

from __future__ import annotations

import numpy as np
from threadpoolctl import threadpool_limits

from .checks import check_positive, check_positive_int, check_sparsity
from .curvature import _size
from .pruning import lowest_score_masks

__all__ = ["block_count", "check_obs_memory", "woodbury_block_inverse", "gram_blocks",
           "block_fisher_inverse", "obs_saliency", "obs_update", "obs_prune_arrays"]

# Per-sample gradients enter the Woodbury update this many at a time (see
# woodbury_block_inverse): rank-1 updates are memory-bound (the whole inverse is read and
# written once per example: 85 s for the 43k-weight MLP on 4,000 examples on a 2-core
# machine); rank-32 updates are matrix products (about 8 s), with the same result.
WOODBURY_RANK = 32


def block_count(n: int, block_size: int) -> int:
    """The number of diagonal blocks of ``block_size`` consecutive weights covering ``n``
    weights; the last block is padded when ``block_size`` does not divide ``n``."""
    return -(-n // block_size)


def check_obs_memory(n: int, block_size: int, batch_size: int, max_bytes: float) -> int:
    """Refuse an OBS step whose working memory would exceed ``max_bytes``; return the estimate.

    The estimate is three float64 arrays of the blocks' size (``nb * B^2`` entries for
    ``nb`` blocks of size ``B``: the Fisher blocks, their Cholesky factors and the inverse)
    plus two float32 copies of one chunk of per-sample gradients (``batch_size * nb * B``
    entries: as computed and arranged into blocks) and their products (``nb * B^2``).

    Raises:
        ValueError: the estimate exceeds ``max_bytes``; the message names the sizes.
    """
    max_bytes = check_positive("max_bytes", max_bytes, allow_inf=True)
    padded = block_count(n, block_size) * block_size
    need = 8.0 * 3 * padded * block_size + 4.0 * (2 * batch_size * padded + padded * block_size)
    if need > max_bytes:
        raise ValueError(
            f"OBS with {n:,} weights in blocks of {block_size} and chunks of {batch_size} "
            f"examples needs about {_size(need)}, more than max_bytes = {_size(max_bytes)}; "
            "use a smaller block_size or batch_size, or raise max_bytes")
    return int(need)


def _blocks(chunk: np.ndarray, padded: int, block_size: int) -> np.ndarray:
    """Rows ``(k, n)`` as blocks ``(nb, B, k)``: block ``b`` holds columns ``bB..bB+B-1``."""
    k, n = chunk.shape
    if padded > n:
        chunk = np.concatenate([chunk, np.zeros((k, padded - n))], axis=1)
    return chunk.reshape(k, padded // block_size, block_size).transpose(1, 2, 0)


def woodbury_block_inverse(gradient_chunks, n: int, num_samples: int, block_size: int,
                           damping: float, rank: int = WOODBURY_RANK) -> np.ndarray:
    """Inverse of the damped empirical Fisher, block by block, by Woodbury updates.

    ``F = damping I + (1/N) sum_i g_i g_i^T`` restricted to diagonal blocks of
    ``B = block_size`` consecutive weights (WoodFisher, Singh & Alistarh 2020). Each block's
    inverse starts at ``I / damping`` and takes in the examples by the Sherman-Morrison
    formula ``F^-1 <- F^-1 - (F^-1 g)(F^-1 g)^T / (N + g^T F^-1 g)``. ``rank`` examples
    ``G`` (``rank x B``) enter at once, by the Woodbury identity
    ``F^-1 <- F^-1 - U (N I + G U)^-1 U^T`` with ``U = F^-1 G^T``, which equals ``rank``
    successive rank-1 updates in exact arithmetic (``rank=1`` is the formula above) and turns
    memory-bound vector updates into matrix products. Every block is updated at once (one
    batched product per group of examples, no loop over blocks). Computed in float64; the
    result is symmetrised.

    When ``B`` does not divide ``n`` the last block is padded with weights whose gradients
    are zero; their rows and columns hold ``I / damping`` and never mix with the others.

    Args:
        gradient_chunks: arrays of shape ``(k, n)``, row ``i`` the gradient ``g_i`` of
            example ``i``'s loss; ``N = num_samples`` rows in all.
        n: the number of weights (columns).
        num_samples: ``N`` in the formula, the number of examples.
        block_size: ``B``, an integer >= 1.
        damping: ``lambda > 0``, which keeps ``F`` invertible.
        rank: examples per Woodbury update, an integer >= 1 (speed only).

    Returns:
        an array ``(nb, B, B)``, ``nb = ceil(n / B)``; block ``b`` is the inverse of ``F``
        restricted to weights ``bB .. bB + B - 1``.

    Raises:
        ValueError: ``block_size``, ``num_samples`` or ``rank`` not an integer >= 1,
            ``damping`` not a finite number > 0, a chunk that is not ``(k, n)`` or holds
            nan or inf, or chunks whose rows do not add up to ``num_samples``.
    """
    block_size = check_positive_int("block_size", block_size)
    num_samples = check_positive_int("num_samples", num_samples)
    rank = check_positive_int("rank", rank)
    damping = check_positive("damping", damping)
    blocks = block_count(n, block_size)
    padded = blocks * block_size
    inverse = np.zeros((blocks, block_size, block_size))
    inverse[:, np.arange(block_size), np.arange(block_size)] = 1.0 / damping
    seen = 0
    for chunk in gradient_chunks:
        chunk = np.asarray(chunk)
        if chunk.ndim != 2 or chunk.shape[1] != n:
            raise ValueError(f"gradient chunks must have shape (k, {n}), got {chunk.shape}")
        if not np.all(np.isfinite(chunk)):
            raise ValueError(f"the per-sample gradients of examples {seen}..{seen + len(chunk) - 1}"
                             " contain nan or inf")
        seen += len(chunk)
        for start in range(0, len(chunk), rank):
            g = _blocks(np.asarray(chunk[start:start + rank], np.float64), padded, block_size)
            u = inverse @ g                                  # (nb, B, k): F^-1 G^T
            s = np.swapaxes(g, 1, 2) @ u                     # (nb, k, k): G F^-1 G^T
            s[:, np.arange(s.shape[1]), np.arange(s.shape[1])] += num_samples
            inverse -= u @ np.linalg.solve(s, np.swapaxes(u, 1, 2))
    if seen != num_samples:
        raise ValueError(f"the gradient chunks hold {seen} examples, num_samples is "
                         f"{num_samples}")
    return (inverse + np.swapaxes(inverse, 1, 2)) / 2


def gram_blocks(chunk, blocks: int, block_size: int):
    """``(G_b^T G_b for every block b, k)`` of one chunk ``G`` (``k x n``) of per-sample
    gradients, in NumPy: the reference for the back ends' batched products."""
    chunk = np.asarray(chunk)
    k, n = chunk.shape
    if blocks * block_size > n:
        chunk = np.concatenate([chunk, np.zeros((k, blocks * block_size - n), chunk.dtype)], 1)
    # [fisher-blocks]
    g = np.ascontiguousarray(  # (nb, k, B), contiguous for the batched product
        chunk.reshape(k, blocks, block_size).transpose(1, 0, 2))
    return np.swapaxes(g, 1, 2) @ g, k  # G_b^T G_b, in the gradients' dtype
    # [fisher-blocks-end]


def block_fisher_inverse(gradient_chunks, n: int, num_samples: int, block_size: int,
                         damping: float, gram=gram_blocks) -> np.ndarray:
    """Inverse of the damped empirical Fisher, block by block: each block formed by one
    matrix product of the per-sample gradients, then inverted.

    ``F_b = damping I + (1/N) G_b^T G_b`` for each diagonal block ``b`` of
    ``B = block_size`` consecutive weights, ``G_b`` (``N x B``) the per-sample gradients'
    columns of that block, accumulated chunk by chunk in float64 from products in the
    gradients' own dtype (float32 products of float32 gradients: a relative error of
    about ``1e-7`` per entry, far below ``damping``); then every block is inverted at once
    (batched Cholesky). The same matrix as :func:`woodbury_block_inverse` builds by
    rank-``k`` updates, with about half the arithmetic, in large matrix products:
    ``N B^2`` per block for the products and ``B^3 / 3`` for the inverse. Memory: the
    blocks, ``nb B^2`` float64 entries, and one chunk.

    Args:
        gradient_chunks, n, num_samples, block_size, damping: as in
            :func:`woodbury_block_inverse`; with a ``gram`` of a back end, the chunks may
            be its tensors.
        gram: ``(chunk, nb, B) -> (G_b^T G_b as an (nb, B, B) array, k)``:
            :func:`gram_blocks` or a back end's batched product on its own device.

    Returns:
        an array ``(nb, B, B)``: block ``b`` is the inverse of ``F`` restricted to weights
        ``bB .. bB + B - 1``.

    Raises:
        ValueError: as :func:`woodbury_block_inverse`.
    """
    block_size = check_positive_int("block_size", block_size)
    num_samples = check_positive_int("num_samples", num_samples)
    damping = check_positive("damping", damping)
    blocks = block_count(n, block_size)
    fisher = np.zeros((blocks, block_size, block_size))
    seen = 0
    for chunk in gradient_chunks:
        if len(chunk.shape) != 2 or chunk.shape[1] != n:
            raise ValueError(f"gradient chunks must have shape (k, {n}), got "
                             f"{tuple(chunk.shape)}")
        sums, count = gram(chunk, blocks, block_size)
        if not np.all(np.isfinite(sums)):  # a non-finite gradient, or an overflow
            raise ValueError(f"the per-sample gradients of examples {seen}.."
                             f"{seen + count - 1} contain nan or inf")
        fisher += sums
        seen += count
    if seen != num_samples:
        raise ValueError(f"the gradient chunks hold {seen} examples, num_samples is "
                         f"{num_samples}")
    fisher /= num_samples
    fisher[:, np.arange(block_size), np.arange(block_size)] += damping
    lower_inverse = np.linalg.inv(np.linalg.cholesky(fisher))  # F = L L^T, F^-1 = L^-T L^-1
    return np.swapaxes(lower_inverse, 1, 2) @ lower_inverse


def _as_blocks(inverse, n: int) -> np.ndarray:
    """A dense ``(n, n)`` inverse as one block, or ``(nb, B, B)`` blocks covering ``n``."""
    inverse = np.asarray(inverse, np.float64)
    if inverse.ndim == 2:
        inverse = inverse[None]
    if inverse.ndim != 3 or inverse.shape[1] != inverse.shape[2] or \
            inverse.shape[0] * inverse.shape[1] < n:
        raise ValueError(f"the inverse must be an (n, n) matrix or (nb, B, B) blocks with "
                         f"nb * B >= n = {n}, got shape {inverse.shape}")
    return inverse


def _padded(vector: np.ndarray, size: int) -> np.ndarray:
    return np.concatenate([vector, np.zeros(size - len(vector), vector.dtype)])


def obs_saliency(weights, inverse) -> np.ndarray:
    """OBS saliency ``w_q^2 / (2 [H^-1]_qq)`` of every weight (Hassibi & Stork 1993).

    The loss increase, to second order at a minimum, of removing weight ``q`` alone and
    letting the others compensate (:func:`obs_update`).

    Args:
        weights: the weights ``w``, a vector of length ``n``.
        inverse: ``H^-1`` (or ``F^-1``), a dense ``(n, n)`` matrix or the ``(nb, B, B)``
            diagonal blocks of :func:`woodbury_block_inverse`.

    Raises:
        ValueError: shapes that do not fit together.
    """
    weights = np.asarray(weights, np.float64).ravel()
    inverse = _as_blocks(inverse, len(weights))
    diagonal = np.diagonal(inverse, axis1=1, axis2=2).ravel()[:len(weights)]
    return weights ** 2 / (2 * diagonal)


def obs_update(weights, inverse, pruned):
    """Remove the weights in ``pruned`` and update the others: the exact OBS step.

    For the set ``Q`` of pruned weights, OBS minimises the quadratic model of the loss
    increase subject to ``w_q + dw_q = 0`` for ``q`` in ``Q``, which gives (Hassibi & Stork
    1993; the multi-weight form as in Singh & Alistarh 2020)::

        dw = -H^-1[:, Q] (H^-1[Q, Q])^-1 w_Q,     dL = 1/2 w_Q^T (H^-1[Q, Q])^-1 w_Q

    (for one weight, ``dL = w_q^2 / (2 [H^-1]_qq)``, its :func:`obs_saliency`). With
    a block-diagonal inverse, weights only compensate within their block, and this is done
    for every block at once: ``Q_b`` is the part of ``Q`` in block ``b``. The pruned weights
    are set exactly to zero.

    Args:
        weights: the weights ``w``, a vector of length ``n``.
        inverse: ``H^-1`` (or ``F^-1``), a dense ``(n, n)`` matrix or the ``(nb, B, B)``
            diagonal blocks of :func:`woodbury_block_inverse`.
        pruned: a boolean vector of length ``n``, ``True`` for the weights to remove.

    Returns:
        A pair ``(new_weights, predicted_increase)``, the float64 weights ``w + dw`` (zero
        on ``Q``) and ``dL``, the loss increase the quadratic model predicts.

    Raises:
        ValueError: shapes that do not fit together.
    """
    weights = np.asarray(weights, np.float64).ravel()
    n = len(weights)
    inverse = _as_blocks(inverse, n)
    pruned = np.asarray(pruned, bool).ravel()
    if pruned.shape != (n,):
        raise ValueError(f"pruned must have one entry per weight ({n}), got {pruned.shape}")
    blocks, size = inverse.shape[:2]
    w = _padded(weights, blocks * size).reshape(blocks, size)
    p = _padded(pruned, blocks * size).reshape(blocks, size)
    touched = np.flatnonzero(p.any(axis=1))  # blocks that lose at least one weight
    new = w.copy()
    increase = 0.0
    if len(touched):
        inv, mask, wb = inverse[touched], p[touched].astype(np.float64), w[touched]
        # H^-1[Q, Q] padded with the identity outside Q, so one batched solve gives
        # z = (H^-1[Q, Q])^-1 w_Q on Q and zero elsewhere, in every touched block.
        system = inv * mask[:, :, None] * mask[:, None, :]
        system[:, np.arange(size), np.arange(size)] += 1.0 - mask
        z = np.linalg.solve(system, (mask * wb)[:, :, None])[:, :, 0]
        new[touched] = wb - (inv @ z[:, :, None])[:, :, 0]
        increase = 0.5 * float(np.sum(wb * z))
    new[p] = 0.0
    return new.ravel()[:n], increase


def obs_prune_arrays(weights, eligible, gradient_chunks, num_samples: int, sparsity: float,
                     damping: float, block_size: int, gram=gram_blocks):
    """One-shot OBS pruning on canonical arrays: what ``obs_prune`` does in either back end.

    The eligible weights (``eligible[i]`` true), flattened in order, get the damped empirical
    Fisher inverse of :func:`block_fisher_inverse` from the per-sample gradients; the
    ``round(sparsity * n)`` weights of lowest :func:`obs_saliency` over all of them are
    removed (:func:`companion.core.pruning.lowest_score_masks`, global scope, ties broken by
    position), and :func:`obs_update` updates the others within their blocks.

    Args:
        weights: canonical arrays, one per trainable parameter.
        eligible: one bool per parameter: may it be pruned (and updated)?
        gradient_chunks: per-sample gradients of the eligible weights, arrays ``(k, n)``.
        num_samples: ``N``, the number of examples.
        sparsity: the fraction of eligible weights to remove, in ``[0, 1)``.
        damping: ``lambda > 0`` of ``F = lambda I + (1/N) sum_i g_i g_i^T``.
        block_size: weights per diagonal block of ``F``.
        gram: the blocks' products of one chunk, as in :func:`block_fisher_inverse`.

    Returns:
        A pair ``(new_weights, masks)``, float64 canonical arrays (the ineligible ones as
        given) and 0/1 float32 masks (``None`` for ineligible parameters).

    Raises:
        ValueError: bad arguments, or non-finite saliencies (non-finite gradients).
    """
    sparsity = check_sparsity(sparsity)
    # One BLAS thread: for many small blocks OpenBLAS's threads cost far more than they
    # save (measured: Cholesky and inverse of 336 blocks of 128, 11 s on 2 threads of a busy
    # 2-core machine, 0.3 s on one).
    with threadpool_limits(1, user_api="blas"):
        weights = [np.asarray(w) for w in weights]
        chosen = [i for i, ok in enumerate(eligible) if ok]
        flat = np.concatenate([weights[i].ravel() for i in chosen]).astype(np.float64)
        inverse = block_fisher_inverse(gradient_chunks, flat.size, num_samples, block_size,
                                       damping, gram)
        saliency = obs_saliency(flat, inverse)
        offsets = np.cumsum([0] + [weights[i].size for i in chosen])
        scores = [None] * len(weights)
        for i, start, stop in zip(chosen, offsets[:-1], offsets[1:]):
            scores[i] = saliency[start:stop].reshape(weights[i].shape)
        masks = lowest_score_masks(scores, [s is not None for s in scores], sparsity, "global")
        pruned = np.concatenate([masks[i].ravel() == 0 for i in chosen])
        updated, _ = obs_update(flat, inverse, pruned)
        new = list(weights)
        for i, start, stop in zip(chosen, offsets[:-1], offsets[1:]):
            new[i] = updated[start:stop].reshape(weights[i].shape)
        return new, masks
