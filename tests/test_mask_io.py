"""Masks that travel with the model: ``save_masks`` / ``load_masks`` (both back ends),
``export_masks`` / ``import_masks`` (``torch.nn.utils.prune``'s reparametrisation), and
``sparsity_report`` on a model pruned by ``torch.nn.utils.prune``.

Oracles: ``torch.nn.utils.prune`` itself (its ``weight_mask`` buffers, ``state_dict`` and
``prune.remove``), Keras' own ``.keras`` save/load, and the masks before the round trip.
"""

import keras
import numpy as np
import pytest
import torch
from torch.nn.utils import prune as torch_prune

from companion import tensorflow as ctf
from companion import torch as ct
from companion.tensorflow.mask_io import load_masks as tf_load, save_masks as tf_save
from companion.torch.mask_io import export_masks, import_masks, load_masks, save_masks

SIZES = [5, 12, 3]


def pruned_torch(seed=0, sparsity=0.7):
    model = ct.mlp(SIZES, seed=seed)
    return model, ct.prune(model, ct.magnitude_scores(model), sparsity)


def test_export_puts_the_masks_into_torch_prune_and_import_reads_them_back(tmp_path):
    model, masks = pruned_torch()
    names = ct.parameter_names(model)
    x = torch.randn(4, SIZES[0])
    before, weights = model(x).detach(), ct.get_weights(model)
    export_masks(model, masks)
    state = model.state_dict()
    for name, mask in zip(names, masks):
        if mask is not None:
            assert torch.equal(state[name.replace("weight", "weight_mask")], mask)
            assert torch_prune.is_pruned(model)
    assert torch.equal(model(x).detach(), before)
    assert ct.sparsity_report(model).weights == pytest.approx(0.7, abs=0.01)
    torch.save(state, tmp_path / "model.pt")
    # A fresh model, made prunable as torch.nn.utils.prune's documentation shows, loads it.
    fresh = ct.mlp(SIZES, seed=1)
    for module in fresh.modules():
        if isinstance(module, torch.nn.Linear):
            torch_prune.identity(module, "weight")
    fresh.load_state_dict(torch.load(tmp_path / "model.pt"))
    loaded = import_masks(fresh)
    assert ct.parameter_names(fresh) == names and not torch_prune.is_pruned(fresh)
    for a, b in zip(loaded, masks):
        assert (a is None and b is None) or torch.equal(a, b)
    for a, b in zip(ct.get_weights(fresh), weights):
        np.testing.assert_array_equal(a, b)
    assert ct.parameter_names(model) != names  # still reparametrised: weight_orig last
    import_masks(model)
    assert ct.parameter_names(model) == names


def test_sparsity_report_reads_a_model_pruned_by_torch():
    model = ct.mlp(SIZES, seed=2)
    layers = [(m, "weight") for m in model.modules() if isinstance(m, torch.nn.Linear)]
    torch_prune.global_unstructured(layers, torch_prune.L1Unstructured, amount=0.9)
    report = ct.sparsity_report(model)
    zeros = sum(int((m.weight_mask == 0).sum()) for m, _ in layers)
    assert report.weights == zeros / sum(m.weight.numel() for m, _ in layers)
    assert zeros == round(0.9 * 96)
    assert [r.name for r in report.rows] == [n.replace("_orig", "") for n, _ in
                                            model.named_parameters()]


def test_npz_masks_travel_across_back_ends(tmp_path):
    model, masks = pruned_torch(3)
    save_masks(model, masks, tmp_path / "masks.npz")
    again = load_masks(ct.mlp(SIZES, seed=4), tmp_path / "masks.npz")
    for a, b in zip(again, masks):
        assert (a is None and b is None) or torch.equal(a, b)
    keras_model = ctf.mlp(SIZES, seed=0)
    loaded = tf_load(keras_model, tmp_path / "masks.npz")
    for a, b in zip(ctf.to_canonical(keras_model, loaded), ct.to_canonical(model, masks)):
        assert (a is None and b is None) or np.array_equal(a, b)


def test_keras_masks_saved_and_loaded_with_the_model(tmp_path):
    model = ctf.mlp(SIZES, seed=5)
    masks = ctf.prune(model, ctf.magnitude_scores(model), 0.6)
    model.save(tmp_path / "model.keras")
    tf_save(model, masks, tmp_path / "model_masks.npz")
    restored = keras.models.load_model(tmp_path / "model.keras")
    loaded = tf_load(restored, tmp_path / "model_masks.npz")
    for a, b in zip(ctf.to_canonical(restored, loaded), ctf.to_canonical(model, masks)):
        assert (a is None and b is None) or np.array_equal(a, b)
    for w, m in zip(ctf.get_weights(restored), ctf.to_canonical(restored, loaded)):
        if m is not None:
            np.testing.assert_array_equal(w == 0, m == 0)


def test_bad_mask_files_are_refused(tmp_path):
    model, masks = pruned_torch(6)
    save_masks(model, masks, tmp_path / "masks.npz")
    with pytest.raises(ValueError, match="shape"):
        load_masks(ct.mlp([5, 8, 3], seed=0), tmp_path / "masks.npz")
    with pytest.raises(FileNotFoundError):
        load_masks(model, tmp_path / "none.npz")
    with pytest.raises(ValueError, match="only 0 and 1"):
        export_masks(model, [None if m is None else 2 * m for m in masks])
    assert not torch_prune.is_pruned(model)


def test_import_restores_a_recurrent_modules_parameter_order():
    gru = torch.nn.GRU(2, 3, num_layers=2)
    names = [n for n, _ in gru.named_parameters()]
    for name in ("weight_hh_l0", "weight_ih_l1"):
        torch_prune.l1_unstructured(gru, name, amount=0.5)
    expected = {name: getattr(gru, name + "_mask").clone() for name in ("weight_hh_l0",
                                                                         "weight_ih_l1")}
    masks = import_masks(gru)
    assert [n for n, _ in gru.named_parameters()] == names
    for name, mask in zip(names, masks):
        assert (mask is None) == (name not in expected)
        if mask is not None:
            assert torch.equal(mask, expected[name])
            assert torch.equal(getattr(gru, name) == 0, mask == 0)
