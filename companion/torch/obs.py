"""Optimal Brain Surgeon and per-example gradients, PyTorch back end.

:func:`obs_prune` computes each example's gradient here (``vmap(grad)``, or one backward
pass per example where ``vmap`` cannot batch the model) and hands them, chunk by chunk, to
:func:`companion.core.obs.obs_prune_arrays`, which builds and inverts the block-diagonal
empirical Fisher and prunes. The per-example gradients also serve the empirical Fisher
diagonal of :mod:`companion.torch.curvature` on models the closed forms do not cover.
"""

from __future__ import annotations

import torch

from ..core.checks import check_positive, check_positive_int, check_sparsity
from ..core.obs import check_obs_memory, obs_prune_arrays
from .batches import _data, _example_count, _mean_loss, _numpy, checked_batches
from .layout import from_canonical, get_weights, parameter_names, set_weights, trainable_parameters
from .pruning import _prunable
from .runtime import measured_in_inference_mode

__all__ = ["obs_prune"]


def _per_sample_gradients(model, x, y, loss, batch_size: int, selected, as_numpy=True):
    """Yield per-sample gradients of the parameters ``selected`` (indices), as NumPy arrays
    ``(k, n_selected)`` (tensors unless ``as_numpy``) in the canonical flattening order,
    ``batch_size`` examples at a time;
    ``x, y`` are tensors, or a data source (``y`` is ``None``) read batch by batch.

    Row ``i`` is the gradient of example ``i``'s own loss (its term of the mean), computed
    for a whole chunk at once by ``vmap(grad(...))`` over ``functional_call``; a model that
    ``vmap`` cannot batch (PyTorch's recurrent layers build their initial state unbatched)
    gets one backward pass per example instead.
    """
    if y is None:
        for xb, yb in checked_batches(x, loss, _numpy):
            xb, yb = _data(model, xb, yb, loss)  # the labels checked against the model
            yield from _per_sample_gradients(model, xb, yb, loss, batch_size, selected,
                                             as_numpy)
        return
    names = parameter_names(model)
    params = trainable_parameters(model)
    chosen = {names[i]: params[i].detach() for i in selected}

    def example_loss(weights, xi, yi):
        return _mean_loss(torch.func.functional_call(model, weights, (xi.unsqueeze(0),)),
                          yi.unsqueeze(0), loss)

    per_example = torch.func.vmap(torch.func.grad(example_loss), in_dims=(None, 0, 0))
    for start in range(0, len(x), batch_size):
        xb, yb = x[start:start + batch_size], y[start:start + batch_size]
        try:
            with torch.no_grad():  # torch.func.grad still differentiates; nothing else records
                grads = per_example(chosen, xb, yb)
            rows = [grads[names[i]].reshape(len(xb), -1) for i in selected]
        except RuntimeError:  # vmap cannot batch this model
            rows = _looped_gradients(model, xb, yb, loss, [params[i] for i in selected])
        chunk = torch.cat(rows, 1)
        yield chunk.cpu().numpy() if as_numpy else chunk


def _gram(chunk: torch.Tensor, blocks: int, block_size: int) -> tuple:
    """:func:`companion.core.obs.gram_blocks` by one batched product on the chunk's device."""
    count, n = chunk.shape
    chunk = torch.nn.functional.pad(chunk, (0, blocks * block_size - n))
    g = chunk.reshape(count, blocks, block_size).transpose(0, 1)  # (nb, k, B)
    return torch.bmm(g.transpose(1, 2), g).cpu().numpy(), count


def _looped_gradients(model, x, y, loss, params) -> list:
    """Per-example gradients by one backward pass per example: ``[(k, size) per param]``."""
    grads = [torch.autograd.grad(_mean_loss(model(x[i:i + 1]), y[i:i + 1], loss), params,
                                 allow_unused=True, materialize_grads=True)
             for i in range(len(x))]
    return [torch.stack([g[j] for g in grads]).reshape(len(x), -1)
            for j in range(len(params))]


@measured_in_inference_mode
def obs_prune(model, x, y=None, sparsity: float | None = None, damping: float = 1e-4,
              block_size: int = 128, loss="cross_entropy", batch_size: int = 256,
              max_bytes: float = 2**30) -> list:
    """One-shot Optimal Brain Surgeon pruning with a block-diagonal empirical Fisher.

    OBS (Hassibi & Stork 1993) removes the weights whose removal costs least to second order
    and moves the remaining weights to compensate. The Hessian is replaced by the damped
    empirical Fisher ``F = damping I + (1/N) sum_i g_i g_i^T`` of the eligible weights
    (parameters that :func:`companion.core.pruning.is_weight` calls weights, as in
    :func:`masks_from_scores`, flattened in
    order), kept in diagonal blocks of ``block_size`` consecutive weights and inverted by
    Woodbury updates starting from ``I / damping`` (WoodFisher, Singh & Alistarh 2020; see
    :func:`companion.core.obs.woodbury_block_inverse`). Then:

    1. every eligible weight gets the OBS saliency ``w_q^2 / (2 [F^-1]_qq)``, and the
       ``round(sparsity * n)`` lowest over all eligible weights are pruned (global ranking,
       ties broken by position, exactly as :func:`masks_from_scores`);
    2. within each block, the exact multi-weight OBS update for the set ``Q`` pruned in that
       block, ``dw = -F^-1[:, Q] (F^-1[Q, Q])^-1 w_Q``, is added to the block's weights
       (:func:`companion.core.obs.obs_update`; weights do not compensate across
       blocks); pruned weights are then exactly zero.

    The ranking uses single-weight saliencies (WoodFisher's choice), while the update
    accounts for the correlations among the weights pruned together in a block. Biases are
    neither pruned nor updated. Per-sample gradients are vectorised (``vmap(grad)``),
    ``batch_size`` examples at a time. The model is updated in place; every argument is
    checked first, and on any error the model is unchanged.

    Args:
        model: a ``torch.nn.Module``, e.g. from :func:`mlp` or :func:`rnn`.
        x: the inputs, an array-like with one example per row (axis 0), or a data source
            of ``(x, y)`` batches such as a ``DataLoader`` (``y`` is then ``None``): read once to
            count the examples, then once more for their gradients, a batch at a time.
        y: class labels (``"cross_entropy"``) or targets (``"mse"``), as in :func:`loss_value`.
        sparsity: the fraction of eligible weights to remove, a number in ``[0, 1)``.
        damping: ``lambda`` of ``F``, a finite number > 0; large values make the saliency
            ``~ lambda w^2 / 2`` and the update ``~ 0``, i.e. magnitude pruning.
        block_size: weights per diagonal block, an integer >= 1. Time grows about
            linearly with it, memory as ``n * block_size``.
        loss: ``"cross_entropy"``, ``"mse"`` or a loss function (see :func:`loss_value`).
        batch_size: examples per vectorised chunk of per-sample gradients (memory only).
        max_bytes: refuse (before any work) if the estimated working memory
            (:func:`companion.core.obs.check_obs_memory`) exceeds it; default 1 GiB.

    Returns:
        the masks, as :func:`masks_from_scores` gives them (a 0/1 tensor per weight, ``None``
        for biases).

    Raises:
        ValueError: ``sparsity`` outside ``[0, 1)``, ``damping`` not a finite number > 0,
            ``block_size`` or ``batch_size`` not an integer >= 1, a model without weight
            matrices, too much memory needed, an unknown loss, bad ``(x, y)``, or non-finite
            gradients. Nothing is changed.
        TypeError: ``sparsity`` or ``damping`` not a number.
    """
    if sparsity is None:
        raise TypeError("obs_prune needs sparsity, the fraction of weights to prune")
    sparsity = check_sparsity(sparsity)
    damping = check_positive("damping", damping)
    block_size = check_positive_int("block_size", block_size)
    batch_size = check_positive_int("batch_size", batch_size)
    x, y = _data(model, x, y, loss)
    count = len(x) if y is not None else _example_count(x, loss)
    params = trainable_parameters(model)
    eligible = _prunable(model)
    if not any(eligible):
        raise ValueError("obs_prune needs weights (parameters with two or more dimensions, "
                         "not named bias); the model has none")
    n = sum(p.numel() for p, ok in zip(params, eligible) if ok)
    check_obs_memory(n, block_size, min(batch_size, count), max_bytes)
    chunks = _per_sample_gradients(model, x, y, loss, batch_size,
                                   [i for i, ok in enumerate(eligible) if ok], as_numpy=False)
    weights, masks = obs_prune_arrays(get_weights(model), eligible, chunks, count, sparsity,
                                      damping, block_size, _gram)
    masks = from_canonical(model, masks)
    set_weights(model, weights)
    return masks
