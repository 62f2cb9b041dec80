"""The sparsity sweep that the chapters share, against a direct computation."""

import numpy as np
import pytest

from companion.experiments import SweepResult, accuracies_at, accuracy_table, sparsity_sweep


def test_sweep_matches_pruning_by_hand(backend):
    rng = np.random.default_rng(0)
    x, y = rng.standard_normal((60, 5)).astype(np.float32), rng.integers(0, 3, 60)
    model = backend.mlp([5, 12, 3], seed=1)
    weights = backend.get_weights(model)
    scores = backend.magnitude_scores(model)
    tuned_masks = []

    def fine_tune(masks):
        tuned_masks.append(masks)
        backend.train(model, x, y, epochs=1, lr=0.1, batch_size=20, masks=masks,
                      progress=False)

    result = sparsity_sweep(backend, model, weights,
                            {"magnitude": lambda s: backend.prune(model, scores, s)},
                            [0.3, 0.8], x, y, fine_tune=fine_tune)
    for before, after in zip(weights, backend.get_weights(model)):
        np.testing.assert_array_equal(before, after)  # the trained weights are back
    for i, sparsity in enumerate([0.3, 0.8]):
        backend.set_weights(model, weights)
        masks = backend.prune(model, scores, sparsity)
        assert result.one_shot["magnitude"][i] == backend.evaluate(model, x, y)["accuracy"]
        backend.train(model, x, y, epochs=1, lr=0.1, batch_size=20, masks=masks,
                      progress=False)
        assert result.at("magnitude", sparsity, fine_tuned=True) == \
            backend.evaluate(model, x, y)["accuracy"]
    assert len(tuned_masks) == 2


def test_sweep_rejects_bad_input_before_pruning(backend):
    model = backend.mlp([5, 3], seed=1)
    calls = []
    with pytest.raises(ValueError, match="sparsity must be in"):
        sparsity_sweep(backend, model, backend.get_weights(model),
                       {"x": calls.append}, [0.5, 1.0], None, None)
    with pytest.raises(ValueError, match="pruners is empty"):
        sparsity_sweep(backend, model, backend.get_weights(model), {}, [0.5], None, None)
    assert calls == []


def test_accuracy_table_layout():
    result = SweepResult((0.5, 0.9), {"magnitude": [0.61, 0.2]}, {})
    assert accuracy_table({"PyTorch": result}).splitlines() == [
        "                           50%    90%",
        "PyTorch     magnitude    0.610  0.200",
    ]


def test_accuracies_at_lists_every_framework_in_order():
    first = SweepResult((0.5, 0.9), {"SNIP": [0.5, 0.1]}, {"SNIP": [0.6, 0.3]})
    second = SweepResult((0.5, 0.9), {"SNIP": [0.4, 0.2]}, {"SNIP": [0.7, 0.35]})
    results = {"PyTorch": first, "TensorFlow": second}
    assert accuracies_at(results, "SNIP", 0.9) == [0.1, 0.2]
    assert accuracies_at(results, "SNIP", 0.5, fine_tuned=True) == [0.6, 0.7]
