"""Framework-neutral second-order pieces that both back ends share (NumPy, float64).

Both ``companion.torch.curvature`` and ``companion.tensorflow.curvature`` reduce curvature
questions to NumPy vectors in the *canonical flattening order*: the trainable parameters in
order, each flattened row-major in the canonical (PyTorch) layout. What depends on the
framework (Hessian-vector products, per-sample gradients) is computed there; what does not
lives here, once:

* random probes and the estimators built on them: Hutchinson's diagonal and trace
  (:func:`rademacher_probes`, :func:`hutchinson_diagonal`) and power iteration
  (:func:`power_iteration`). Probes are drawn here from ``seed``, in the canonical order, so
  both back ends use exactly the same probes;
* the empirical Fisher ``F = damping I + (1/N) sum_i g_i g_i^T`` in diagonal blocks, inverted
  by Woodbury updates (:func:`woodbury_block_inverse`, WoodFisher, Singh & Alistarh 2020);
* Optimal Brain Surgeon (Hassibi & Stork 1993): the saliency ``w_q^2 / (2 [F^-1]_qq)``
  (:func:`obs_saliency`) and the compensating update (:func:`obs_update`), for a dense
  inverse Hessian or a block-diagonal one, and the whole one-shot pruning step on arrays
  (:func:`obs_prune_arrays`);
* size checks that refuse work that would not fit in memory (:func:`check_hessian_size`,
  :func:`check_obs_memory`).
"""

from __future__ import annotations

import numbers

import numpy as np

from .checks import check_choice, check_positive, check_positive_int, check_sparsity
from .pruning import lowest_score_masks

__all__ = ["CURVATURE_METHODS", "check_method", "check_seed", "check_hessian_size",
           "rademacher_probes", "hutchinson_diagonal", "power_iteration", "fisher_diagonal",
           "block_count", "check_obs_memory", "woodbury_block_inverse", "obs_saliency",
           "obs_update", "obs_prune_arrays"]

CURVATURE_METHODS = ("exact", "hutchinson", "fisher")

# Per-sample gradients enter the Woodbury update this many at a time (see
# woodbury_block_inverse): rank-1 updates are memory-bound (the whole inverse is read and
# written once per example: 85 s for the 43k-weight MLP on 4,000 examples on a 2-core
# machine); rank-32 updates are matrix products (about 8 s), with the same result.
WOODBURY_RANK = 32


def check_method(method: str) -> str:
    """Return ``method`` if it is one of :data:`CURVATURE_METHODS`; raise ``ValueError`` if not."""
    return check_choice("method", method, CURVATURE_METHODS)


def check_seed(seed) -> int:
    """Return ``seed`` if it is an integer >= 0 (NumPy's ``default_rng`` accepts it).

    Raises:
        ValueError: ``seed`` is not an integer >= 0.
    """
    if isinstance(seed, bool) or not isinstance(seed, numbers.Integral) or seed < 0:
        raise ValueError(f"seed must be an integer >= 0, got {seed!r}")
    return int(seed)


def _size(count: float) -> str:
    """A byte count for people: ``"7.6 GB"``."""
    for unit in ("bytes", "KB", "MB", "GB", "TB"):
        if count < 1000 or unit == "TB":
            return f"{count:.0f} {unit}" if unit == "bytes" else f"{count:.1f} {unit}"
        count /= 1000
    raise AssertionError("unreachable")


def check_hessian_size(n: int, itemsize: int, max_bytes: float) -> None:
    """Refuse a dense ``n x n`` Hessian that would take more than ``max_bytes`` bytes.

    The matrix alone holds ``n^2 * itemsize`` bytes (4 for float32, 8 for float64).

    Args:
        n: the number of parameters.
        itemsize: bytes per entry.
        max_bytes: the most memory the matrix may take.

    Raises:
        ValueError: ``n^2 * itemsize > max_bytes``; the message names the sizes and what
            to use instead.
    """
    max_bytes = check_positive("max_bytes", max_bytes, allow_inf=True)
    need = float(n) * n * itemsize
    if need > max_bytes:
        raise ValueError(
            f"the dense Hessian of a model with {n:,} parameters has {n:,} x {n:,} entries "
            f"({_size(need)} at {itemsize} bytes each), more than max_bytes = "
            f"{_size(max_bytes)}; use hvp, hessian_diagonal or top_eigenvalue, which never "
            "form it, or raise max_bytes")


def rademacher_probes(n: int, samples: int, seed: int):
    """Yield ``samples`` Rademacher vectors of length ``n`` (entries ``+1``/``-1``, float64).

    Drawn one after another from ``numpy.random.default_rng(seed)``, so the first ``k``
    probes of a longer run are the probes of a run with ``samples=k``, and both back ends,
    which flatten in the same canonical order, use exactly the same probes.
    """
    rng = np.random.default_rng(check_seed(seed))
    for _ in range(check_positive_int("samples", samples)):
        yield rng.integers(0, 2, size=n).astype(np.float64) * 2.0 - 1.0


def hutchinson_diagonal(matvec, n: int, samples: int, seed: int) -> np.ndarray:
    """Hutchinson's estimate of ``diag(H)`` from Hessian-vector products (Bekas et al. 2007).

    ``diag(H) ~ (1/S) sum_s v_s * (H v_s)`` for Rademacher probes ``v_s``
    (:func:`rademacher_probes`): unbiased, since ``E[v v^T] = I``, with variance
    ``(1/S) sum_{j != q} H_qj^2`` for entry ``q``. Its sum is Hutchinson's estimate of the
    trace, ``(1/S) sum_s v_s^T H v_s``, from the same probes.

    Args:
        matvec: a function ``v -> H v`` on float64 vectors of length ``n``.
        n: the dimension.
        samples: the number of probes ``S``, an integer >= 1.
        seed: seed of the probes, an integer >= 0.

    Raises:
        ValueError: ``samples`` is not an integer >= 1, or ``seed`` not an integer >= 0.
    """
    samples = check_positive_int("samples", samples)
    total = np.zeros(n)
    for probe in rademacher_probes(n, samples, seed):
        total += probe * np.asarray(matvec(probe), np.float64)
    return total / samples


def power_iteration(matvec, n: int, iterations: int, tol: float, seed: int):
    """The dominant eigenvalue of a symmetric ``H`` (largest ``|lambda|``) and its eigenvector.

    Starting from a standard normal vector drawn from ``default_rng(seed)``, repeat
    ``w = H v``, ``lambda = v^T w``, ``v = w / ||w||`` until the relative change of
    ``lambda`` is at most ``tol`` or ``iterations`` products have been taken. The error of
    ``lambda`` shrinks like ``(lambda_2 / lambda_1)^(2k)``. Returns ``(lambda, v)`` with
    ``||v|| = 1``; a zero ``H`` gives ``(0.0, v0)``.

    Args:
        matvec: a function ``v -> H v`` on float64 vectors of length ``n``.
        n: the dimension.
        iterations: the most Hessian-vector products, an integer >= 1.
        tol: the relative change of ``lambda`` at which to stop, a finite number > 0.
        seed: seed of the starting vector, an integer >= 0.

    Raises:
        ValueError: ``iterations`` not an integer >= 1, ``tol`` not a finite number > 0, or
            ``seed`` not an integer >= 0.
    """
    iterations = check_positive_int("iterations", iterations)
    tol = check_positive("tol", tol)
    v = np.random.default_rng(check_seed(seed)).standard_normal(n)
    v /= np.linalg.norm(v)
    eigenvalue = None
    for _ in range(iterations):
        w = np.asarray(matvec(v), np.float64)
        new = float(v @ w)
        norm = float(np.linalg.norm(w))
        if norm == 0.0:
            return 0.0, v
        v = w / norm
        if eigenvalue is not None and abs(new - eigenvalue) <= tol * abs(new):
            return new, v
        eigenvalue = new
    return eigenvalue, v


def fisher_diagonal(gradient_chunks, n: int, num_samples: int) -> np.ndarray:
    """The empirical Fisher diagonal ``(1/N) sum_i g_i^2`` from per-sample gradients.

    Args:
        gradient_chunks: arrays of shape ``(k, n)``, row ``i`` the gradient ``g_i`` of
            example ``i``'s loss, in the canonical flattening order; ``N`` rows in all.
        n: the number of parameters.
        num_samples: ``N``, the number of examples (rows over all chunks).
    """
    total = np.zeros(n)
    for chunk in gradient_chunks:
        chunk = np.asarray(chunk, np.float64)
        total += np.einsum("ij,ij->j", chunk, chunk)
    return total / num_samples


def block_count(n: int, block_size: int) -> int:
    """The number of diagonal blocks of ``block_size`` consecutive weights covering ``n``
    weights; the last block is padded when ``block_size`` does not divide ``n``."""
    return -(-n // block_size)


def check_obs_memory(n: int, block_size: int, batch_size: int, max_bytes: float) -> int:
    """Refuse an OBS step whose working memory would exceed ``max_bytes``; return the estimate.

    The estimate is three float64 copies of the block inverse (``nb * B^2`` entries for
    ``nb`` blocks of size ``B``: the inverse, a Woodbury term, and the systems solved by the
    update) plus three copies of one chunk of per-sample gradients (``batch_size * nb * B``
    entries: as computed, in float64, and rearranged into blocks).

    Raises:
        ValueError: the estimate exceeds ``max_bytes``; the message names the sizes.
    """
    max_bytes = check_positive("max_bytes", max_bytes, allow_inf=True)
    padded = block_count(n, block_size) * block_size
    need = 8.0 * 3 * (padded * block_size + batch_size * padded)
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
            # [woodbury-update]
            u = inverse @ g                                  # (nb, B, k): F^-1 G^T
            s = np.swapaxes(g, 1, 2) @ u                     # (nb, k, k): G F^-1 G^T
            s[:, np.arange(s.shape[1]), np.arange(s.shape[1])] += num_samples
            inverse -= u @ np.linalg.solve(s, np.swapaxes(u, 1, 2))
            # [woodbury-update-end]
    if seen != num_samples:
        raise ValueError(f"the gradient chunks hold {seen} examples, num_samples is "
                         f"{num_samples}")
    return (inverse + np.swapaxes(inverse, 1, 2)) / 2


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
                     damping: float, block_size: int):
    """One-shot OBS pruning on canonical arrays: what ``obs_prune`` does in either back end.

    The eligible weights (``eligible[i]`` true), flattened in order, get the damped empirical
    Fisher inverse of :func:`woodbury_block_inverse` from the per-sample gradients; the
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

    Returns:
        A pair ``(new_weights, masks)``, float64 canonical arrays (the ineligible ones as
        given) and 0/1 float32 masks (``None`` for ineligible parameters).

    Raises:
        ValueError: bad arguments, or non-finite saliencies (non-finite gradients).
    """
    sparsity = check_sparsity(sparsity)
    weights = [np.asarray(w) for w in weights]
    chosen = [i for i, ok in enumerate(eligible) if ok]
    flat = np.concatenate([weights[i].ravel() for i in chosen]).astype(np.float64)
    inverse = woodbury_block_inverse(gradient_chunks, flat.size, num_samples, block_size,
                                     damping)
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
