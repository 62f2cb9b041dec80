"""The linear-time selection of the lowest scores gives exactly the sorted path's entries.

Oracles: ``np.argsort(kind="stable")`` (the previous implementation of
``lowest_score_masks``), ``np.lexsort`` (the previous ``grow_masks``), and
``torch.nn.utils.prune.global_unstructured`` on tie-free magnitudes.
"""

import numpy as np
import pytest
import torch
from torch.nn.utils import prune as torch_prune

from companion import torch as ct
from companion.core.pruning import keep_all_but_lowest, lowest_score_masks
from companion.core.schedules import grow_masks


def sorted_keep(flat, count):
    keep = np.ones(flat.size, dtype=bool)
    keep[np.argsort(flat.astype(np.float64), kind="stable")[:count]] = False
    return keep


@pytest.mark.parametrize("dtype", [np.float16, np.float32, np.float64, np.int64])
def test_keep_all_but_lowest_equals_the_stable_sort_with_ties(dtype):
    rng = np.random.default_rng(0)
    for values in (rng.integers(0, 5, 300), rng.standard_normal(257), np.zeros(40)):
        flat = values.astype(dtype)
        for count in (0, 1, 7, flat.size // 2, flat.size - 1, flat.size):
            np.testing.assert_array_equal(keep_all_but_lowest(flat, count),
                                          sorted_keep(flat, count))


def old_lowest_score_masks(scores, eligible, sparsity, scope):
    chosen = [i for i, ok in enumerate(eligible) if ok]
    groups = [chosen] if scope == "global" else [[i] for i in chosen]
    masks = [None] * len(scores)
    for group in groups:
        flat = np.concatenate([np.ravel(scores[i]).astype(np.float64) for i in group])
        keep = sorted_keep(flat, round(sparsity * flat.size))
        offsets = np.cumsum([0] + [np.size(scores[i]) for i in group])
        for i, start, stop in zip(group, offsets[:-1], offsets[1:]):
            masks[i] = keep[start:stop].reshape(np.shape(scores[i])).astype(np.float32)
    return masks


@pytest.mark.parametrize("scope", ["global", "layer"])
def test_lowest_score_masks_equal_the_previous_path(scope):
    rng = np.random.default_rng(1)
    scores = [rng.integers(0, 6, (7, 5)).astype(np.float32), rng.random(5),
              rng.integers(0, 6, (3, 7, 2)).astype(np.float32)]
    for sparsity in (0.0, 0.3, 0.5, 0.93):
        new = lowest_score_masks(scores, [True, False, True], sparsity, scope)
        old = old_lowest_score_masks(scores, [True, False, True], sparsity, scope)
        for a, b in zip(new, old):
            assert (a is None and b is None) or np.array_equal(a, b)


def test_grow_masks_equals_the_previous_lexsort_path():
    rng = np.random.default_rng(2)
    scores = [rng.integers(0, 4, (6, 5)).astype(np.float32),
              rng.integers(0, 4, (4, 6)).astype(np.float32)]
    masks = [(rng.random(s.shape) > 0.3).astype(np.float32) for s in scores]
    for sparsity in (0.1, 0.4, 0.6, 0.9):
        new = grow_masks(scores, masks, [True, True], sparsity, "global")
        flat = np.concatenate([s.ravel() for s in scores]).astype(np.float64)
        kept = np.concatenate([m.ravel() != 0 for m in masks])
        order = np.lexsort((np.arange(flat.size), np.where(kept, flat, 0.0), kept))
        keep = np.ones(flat.size, dtype=bool)
        keep[order[:max(round(sparsity * flat.size), int(np.sum(~kept)))]] = False
        np.testing.assert_array_equal(np.concatenate([m.ravel() for m in new]), keep)


def test_global_masks_equal_torch_global_unstructured():
    torch.manual_seed(3)
    model = torch.nn.Sequential(torch.nn.Linear(64, 48), torch.nn.Linear(48, 32))
    masks = ct.masks_from_scores(model, ct.magnitude_scores(model), 0.9)
    layers = [(m, "weight") for m in model]
    torch_prune.global_unstructured(layers, torch_prune.L1Unstructured, amount=0.9)
    assert torch.equal(masks[0], model[0].weight_mask)
    assert torch.equal(masks[2], model[1].weight_mask)
