"""Magnitude scores, masks and one-shot pruning, in both back ends.

Oracles: ``torch.nn.utils.prune`` (``l1_unstructured`` for one layer, ``global_unstructured``
across layers), a hand-worked example, and NumPy. Scores are drawn continuous so that no
two weights tie and the libraries' tie-breaking cannot matter.
"""

import numpy as np
import pytest
import torch
from torch.nn.utils import prune as torch_prune

from companion import tensorflow as ctf
from companion import torch as ct
from numpy_reference import assert_weights_equal, tensors

SIZES = [6, 8, 5, 3]


def canonical_masks(backend, model, masks):
    return backend.to_canonical(model, masks)


@pytest.mark.parametrize("sparsity", [0.0, 0.3, 0.5, 0.9])
def test_layer_scope_matches_torch_l1_unstructured(backend, sparsity):
    model = backend.mlp(SIZES, seed=3)
    masks = canonical_masks(backend, model, backend.masks_from_scores(
        model, backend.magnitude_scores(model), sparsity, scope="layer"))
    weights = backend.get_weights(model)
    for weight, mask in zip(weights, masks):
        if weight.ndim < 2:
            assert mask is None  # biases are not pruned by default
            continue
        layer = torch.nn.Linear(weight.shape[1], weight.shape[0])
        with torch.no_grad():
            layer.weight.copy_(torch.as_tensor(weight))
        torch_prune.l1_unstructured(layer, "weight", amount=sparsity)
        np.testing.assert_array_equal(mask, layer.weight_mask.numpy())


@pytest.mark.parametrize("sparsity", [0.3, 0.5, 0.9])
def test_row_scope_matches_torch_l1_unstructured_on_each_row(backend, sparsity):
    model = backend.mlp(SIZES, seed=5)
    masks = canonical_masks(backend, model, backend.masks_from_scores(
        model, backend.magnitude_scores(model), sparsity, scope="row"))
    for weight, mask in zip(backend.get_weights(model), masks):
        if weight.ndim < 2:
            assert mask is None
            continue
        for row, row_mask in zip(weight, mask):
            layer = torch.nn.Linear(len(row), 1)
            with torch.no_grad():
                layer.weight.copy_(torch.as_tensor(row[None]))
            torch_prune.l1_unstructured(layer, "weight", amount=sparsity)
            np.testing.assert_array_equal(row_mask, layer.weight_mask.numpy()[0])


def test_row_scope_breaks_ties_by_position_and_takes_a_bias_as_one_row(backend):
    model = backend.mlp([4, 2], seed=0)
    # Canonical (out, in) = (2, 4) weight scores, then the bias's.
    scores = [np.array([[1.0, 1.0, 1.0, 1.0], [3.0, 2.0, 2.0, 1.0]]),
              np.array([5.0, 4.0])]
    masks = backend.to_canonical(model, backend.masks_from_scores(
        model, backend.from_canonical(model, scores), 0.5, scope="row",
        prune_biases=True))
    np.testing.assert_array_equal(masks[0], [[0, 0, 1, 1], [1, 0, 1, 0]])
    np.testing.assert_array_equal(masks[1], [1, 0])


@pytest.mark.parametrize("sparsity", [0.25, 0.8])
def test_global_scope_matches_torch_global_unstructured(backend, sparsity):
    model = backend.mlp(SIZES, seed=4)
    masks = canonical_masks(backend, model, backend.masks_from_scores(
        model, backend.magnitude_scores(model), sparsity, scope="global"))
    layers = []
    for weight in backend.get_weights(model):
        if weight.ndim == 2:
            layer = torch.nn.Linear(weight.shape[1], weight.shape[0])
            with torch.no_grad():
                layer.weight.copy_(torch.as_tensor(weight))
            layers.append(layer)
    torch_prune.global_unstructured([(layer, "weight") for layer in layers],
                                    pruning_method=torch_prune.L1Unstructured,
                                    amount=sparsity)
    ours = [m for m in masks if m is not None]
    for mask, layer in zip(ours, layers):
        np.testing.assert_array_equal(mask, layer.weight_mask.numpy())
    total = sum(m.size for m in ours)
    assert sum(int((m == 0).sum()) for m in ours) == round(sparsity * total)


def test_hand_worked_matrix_pruned_twice(backend):
    """A 2x4 weight. 25 % is round(0.25 * 8) = 2 entries: |0.1| and |-0.2| go. Then 50 %
    (4 of all 8, counted from scratch: the two zeros are the smallest scores) removes
    0.3 and 0.5 as well."""
    model = backend.mlp([4, 2], activation="linear")
    weight = np.array([[0.5, -3.0, 0.1, 2.0], [-0.2, 4.0, -1.0, 0.3]], np.float32)
    backend.set_weights(model, [weight, np.zeros(2, np.float32)])
    backend.prune(model, backend.magnitude_scores(model), 0.25)
    expected = np.array([[0.5, -3.0, 0.0, 2.0], [0.0, 4.0, -1.0, 0.3]], np.float32)
    np.testing.assert_array_equal(backend.get_weights(model)[0], expected)
    backend.prune(model, backend.magnitude_scores(model), 0.5)
    expected = np.array([[0.0, -3.0, 0.0, 2.0], [0.0, 4.0, -1.0, 0.0]], np.float32)
    np.testing.assert_array_equal(backend.get_weights(model)[0], expected)


def test_ties_are_broken_by_position_in_both_back_ends(backend):
    """Equal scores: the earlier entries (row-major, canonical layout) go first."""
    model = backend.mlp([3, 2], activation="linear")
    backend.set_weights(model, [np.ones((2, 3), np.float32), np.zeros(2, np.float32)])
    masks = canonical_masks(backend, model, backend.masks_from_scores(
        model, backend.magnitude_scores(model), 0.5))
    np.testing.assert_array_equal(masks[0], [[0, 0, 0], [1, 1, 1]])


def test_prune_biases_and_none_scores(backend):
    model = backend.mlp([3, 4, 2], seed=1)
    scores = backend.magnitude_scores(model)
    masks = backend.masks_from_scores(model, scores, 0.5, prune_biases=True)
    assert all(m is not None for m in masks)
    scores[0] = None
    masks = backend.masks_from_scores(model, scores, 0.5)
    assert masks[0] is None and masks[2] is not None


def test_masks_agree_across_back_ends():
    torch_model, tf_model = ct.mlp(SIZES, seed=5), ctf.mlp(SIZES, seed=5)
    for scope in ("global", "layer"):
        a = ct.to_canonical(torch_model, ct.masks_from_scores(
            torch_model, ct.magnitude_scores(torch_model), 0.6, scope))
        b = ctf.to_canonical(tf_model, ctf.masks_from_scores(
            tf_model, ctf.magnitude_scores(tf_model), 0.6, scope))
        for x, y in zip(a, b):
            assert (x is None and y is None) or np.array_equal(x, y)


def test_apply_masks_zeroes_exactly_the_masked_entries(backend):
    model = backend.mlp(SIZES, seed=6)
    before = backend.get_weights(model)
    masks = backend.masks_from_scores(model, backend.magnitude_scores(model), 0.7)
    backend.apply_masks(model, masks)
    for weight, after, mask in zip(before, backend.get_weights(model),
                                   canonical_masks(backend, model, masks)):
        np.testing.assert_array_equal(after, weight if mask is None else weight * mask)


@pytest.mark.parametrize("bad, error", [
    (dict(sparsity=1.0), "sparsity must be in \\[0, 1\\)"),
    (dict(sparsity=-0.1), "sparsity must be in \\[0, 1\\)"),
    (dict(scope="column"), "unknown scope 'column'; allowed: 'global', 'layer', 'row'"),
])
def test_bad_arguments_raise_and_change_nothing(backend, bad, error):
    model = backend.mlp(SIZES, seed=7)
    before = backend.get_weights(model)
    kwargs = dict(sparsity=0.5, scope="global") | bad
    with pytest.raises(ValueError, match=error):
        backend.prune(model, backend.magnitude_scores(model), **kwargs)
    assert_weights_equal(before, backend.get_weights(model))


def test_misaligned_scores_and_masks_raise(backend):
    model = backend.mlp(SIZES, seed=8)
    scores = backend.magnitude_scores(model)
    with pytest.raises(ValueError, match="one score entry per trainable parameter"):
        backend.masks_from_scores(model, scores[:-1], 0.5)
    wrong = list(scores)
    wrong[0] = tensors(backend, [np.ones((2, 2), np.float32)])[0]
    with pytest.raises(ValueError, match="score for dense0.weight has shape"):
        backend.masks_from_scores(model, wrong, 0.5)
    nan_scores = list(scores)
    nan_scores[2] = tensors(backend, [np.full(np.shape(scores[2]), np.nan, np.float32)])[0]
    with pytest.raises(ValueError, match="nan or inf"):
        backend.masks_from_scores(model, nan_scores, 0.5)
    with pytest.raises(ValueError, match="one mask entry per trainable parameter"):
        backend.apply_masks(model, [None])
