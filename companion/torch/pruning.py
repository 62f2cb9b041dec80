"""Pruning core, PyTorch back end: scores, masks and applying them.

Scores and masks are lists aligned with :func:`trainable_parameters`, in each
parameter's own layout; masks are 0/1 tensors (``None`` for a parameter left whole).
"""

from __future__ import annotations

import torch

from ..common import (SCOPES, check_choice, check_matching_shapes, check_sparsity,
                      lowest_score_masks)
from .models import from_canonical, parameter_names, to_canonical, trainable_parameters

__all__ = ["magnitude_scores", "masks_from_scores", "apply_masks", "prune"]


def magnitude_scores(model) -> list:
    """Magnitude saliency ``s_q = |w_q|`` of every parameter entry (Han et al. 2015).

    Args:
        model: a ``torch.nn.Module``, e.g. from :func:`mlp` or :func:`rnn`.
    """
    return [p.detach().abs() for p in trainable_parameters(model)]


def _check_shapes(model, tensors, what: str) -> list:
    return check_matching_shapes(parameter_names(model), trainable_parameters(model),
                                 tensors, what)


def masks_from_scores(model, scores, sparsity: float, scope: str = "global",
                      prune_biases: bool = False) -> list:
    """Masks that prune the lowest-scoring weights: exactly ``round(sparsity * n)`` of them.

    Weights are the parameters with two or more dimensions (biases too if
    ``prune_biases``) whose score is not ``None``; the others get mask ``None``. With
    ``scope="global"`` all eligible weights compete in one ranking (the count is over all of
    them, as ``torch.nn.utils.prune.global_unstructured``); with ``"layer"`` each tensor
    loses ``round(sparsity * n_i)`` of its own entries (as ``l1_unstructured``). Ties are
    broken by position in the canonical layout, so both back ends give the same masks.

    Args:
        model: a ``torch.nn.Module``, e.g. from :func:`mlp` or :func:`rnn`.
        scores: one score tensor (or ``None``) per trainable parameter, in order, each of
            its parameter's shape; higher means keep.
        sparsity: the fraction of eligible weights to prune, a number in ``[0, 1)``.
        scope: ``"global"`` (one ranking over all eligible weights) or ``"layer"``.
        prune_biases: also prune parameters with fewer than two dimensions (biases).

    Raises:
        ValueError: sparsity outside [0, 1), an unknown scope, scores not aligned with the
            parameters or of the wrong shape, or non-finite scores. Nothing is changed.
    """
    sparsity = check_sparsity(sparsity)
    check_choice("scope", scope, SCOPES)
    scores = _check_shapes(model, scores, "score")
    eligible = [s is not None and (prune_biases or p.dim() >= 2)
                for s, p in zip(scores, trainable_parameters(model))]
    canonical = to_canonical(model, scores)
    return from_canonical(model, lowest_score_masks(canonical, eligible, sparsity, scope))


def apply_masks(model, masks) -> None:
    """Zero the pruned entries in place: ``w <- w * m`` for every mask that is not ``None``.

    Args:
        model: a ``torch.nn.Module``, e.g. from :func:`mlp` or :func:`rnn`.
        masks: one 0/1 tensor (or ``None``, left whole) per trainable parameter, in order,
            each of its parameter's shape, e.g. from :func:`masks_from_scores`.

    Raises:
        ValueError: masks not aligned with the parameters or of the wrong shape; nothing
            is changed.
    """
    masks = _check_shapes(model, masks, "mask")
    with torch.no_grad():
        for param, mask in zip(trainable_parameters(model), masks):
            if mask is not None:
                param.mul_(mask.to(param.dtype))


def prune(model, scores, sparsity: float, scope: str = "global",
          prune_biases: bool = False) -> list:
    """One-shot pruning: :func:`masks_from_scores`, then :func:`apply_masks`; returns the masks.

    For example ``prune(model, magnitude_scores(model), 0.9)`` zeroes the 90 % of weights
    with the smallest magnitude, ranked across all layers.

    Args:
        model: a ``torch.nn.Module``, e.g. from :func:`mlp` or :func:`rnn`.
        scores: one score tensor (or ``None``) per trainable parameter, in order, each of
            its parameter's shape; higher means keep.
        sparsity: the fraction of eligible weights to prune, a number in ``[0, 1)``.
        scope: ``"global"`` (one ranking over all eligible weights) or ``"layer"``.
        prune_biases: also prune parameters with fewer than two dimensions (biases).

    Raises:
        ValueError: as in :func:`masks_from_scores`; nothing is changed.
    """
    masks = masks_from_scores(model, scores, sparsity, scope, prune_biases)
    apply_masks(model, masks)
    return masks
