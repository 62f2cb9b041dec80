"""Masks that persist while training: pruned weights stay exactly zero.

Through ``train(..., masks=...)`` in both back ends, a plain PyTorch loop with
``keep_masks_after_step``, Keras ``model.fit`` with ``KeepMasks``, with momentum, Adam and
weight decay, and across saving and loading. A control run without masks shows that the
same training would revive the pruned weights, so the checks can fail.
"""

import keras
import numpy as np
import pytest
import torch

from companion import tensorflow as ctf
from companion import torch as ct
from numpy_reference import assert_arrays_close, assert_weights_equal

SIZES = [6, 16, 4]
STEPS = 40


def problem(n: int = 64):
    rng = np.random.default_rng(11)
    return rng.standard_normal((n, SIZES[0])).astype(np.float32), rng.integers(0, 4, n)


def pruned_model(backend, sparsity: float = 0.7):
    model = backend.mlp(SIZES, seed=12)
    masks = backend.prune(model, backend.magnitude_scores(model), sparsity)
    return model, masks


def pruned_entries(backend, model, masks) -> list:
    """The weights at the pruned positions (canonical layout), one array per mask."""
    weights = backend.get_weights(model)
    return [w[m == 0] for w, m in zip(weights, backend.to_canonical(model, masks))
            if m is not None]


def assert_pruned_entries_zero(backend, model, masks):
    entries = pruned_entries(backend, model, masks)
    assert sum(e.size for e in entries) > 0
    assert all(np.all(e == 0) for e in entries)


@pytest.mark.parametrize("optimizer, momentum", [("sgd", 0.9), ("adam", 0.0)])
def test_train_keeps_masks(backend, optimizer, momentum):
    x, y = problem()
    model, masks = pruned_model(backend)
    backend.train(model, x, y, epochs=5, lr=0.05, batch_size=8, optimizer=optimizer,
                  momentum=momentum, masks=masks, progress=False)
    assert_pruned_entries_zero(backend, model, masks)


def test_without_masks_training_revives_pruned_weights(backend):
    x, y = problem()
    model, masks = pruned_model(backend)
    backend.train(model, x, y, epochs=2, lr=0.05, batch_size=8, momentum=0.9, progress=False)
    # Most come back; those feeding ReLU units that never fire here get no gradient.
    assert all(np.count_nonzero(e) > 0.5 * e.size
               for e in pruned_entries(backend, model, masks))


def test_train_masks_a_model_that_was_not_pruned_yet(backend):
    """The masks passed to train are applied before the first step."""
    x, y = problem()
    model = backend.mlp(SIZES, seed=13)
    masks = backend.masks_from_scores(model, backend.magnitude_scores(model), 0.5)
    backend.train(model, x, y, epochs=1, lr=0.05, batch_size=8, masks=masks, progress=False)
    assert_pruned_entries_zero(backend, model, masks)


def test_masked_training_agrees_across_back_ends():
    x, y = problem()
    runs = []
    for backend in (ct, ctf):
        model, masks = pruned_model(backend)
        history = backend.train(model, x, y, epochs=3, lr=0.05, batch_size=8, momentum=0.9,
                                masks=masks, progress=False, seed=4)
        runs.append((backend.get_weights(model), history.loss))
    (torch_weights, torch_loss), (tf_weights, tf_loss) = runs
    # 24 SGD steps in float32: differences are rounding, amplified a little by momentum.
    for a, b in zip(torch_weights, tf_weights):
        assert_arrays_close(a, b, rtol=1e-4, atol_factor=1e-5)
        np.testing.assert_array_equal(a == 0, b == 0)
    assert_arrays_close(np.array(torch_loss), np.array(tf_loss), rtol=1e-4)


@pytest.mark.parametrize("make_optimizer", [
    lambda params: torch.optim.SGD(params, lr=0.05, momentum=0.9, weight_decay=1e-2),
    lambda params: torch.optim.AdamW(params, lr=0.01, weight_decay=1e-2),
], ids=["sgd-momentum-weight-decay", "adamw"])
def test_plain_torch_loop_keeps_masks(make_optimizer):
    x, y = map(torch.as_tensor, problem())
    model, masks = pruned_model(ct)
    optimizer = make_optimizer(model.parameters())
    handle = ct.keep_masks_after_step(optimizer, model, masks)
    for _ in range(STEPS):
        optimizer.zero_grad()
        torch.nn.functional.cross_entropy(model(x), y).backward()
        optimizer.step()
    assert_pruned_entries_zero(ct, model, masks)
    handle.remove()
    optimizer.zero_grad()
    torch.nn.functional.cross_entropy(model(x), y).backward()
    optimizer.step()
    assert all(np.count_nonzero(e) > 0 for e in pruned_entries(ct, model, masks))


@pytest.mark.parametrize("make_optimizer", [
    lambda: keras.optimizers.SGD(learning_rate=0.05, momentum=0.9, weight_decay=1e-2),
    lambda: keras.optimizers.AdamW(learning_rate=0.01, weight_decay=1e-2),
], ids=["sgd-momentum-weight-decay", "adamw"])
def test_keras_fit_keeps_masks(make_optimizer):
    x, y = problem()
    model, masks = pruned_model(ctf)
    model.compile(optimizer=make_optimizer(),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    model.fit(x, y, batch_size=8, epochs=5, verbose=0, shuffle=False,
              callbacks=[ctf.KeepMasks(masks)])
    assert_pruned_entries_zero(ctf, model, masks)


def test_masks_survive_saving_and_loading_in_torch(tmp_path):
    x, y = problem()
    model, masks = pruned_model(ct)
    ct.train(model, x, y, epochs=2, lr=0.05, batch_size=8, momentum=0.9, masks=masks,
             progress=False)
    torch.save(model.state_dict(), tmp_path / "model.pt")
    loaded = ct.mlp(SIZES, seed=99)
    loaded.load_state_dict(torch.load(tmp_path / "model.pt"))
    assert_weights_equal(ct.get_weights(model), ct.get_weights(loaded))
    ct.train(loaded, x, y, epochs=2, lr=0.05, batch_size=8, momentum=0.9, masks=masks,
             progress=False)
    assert_pruned_entries_zero(ct, loaded, masks)


def test_masks_survive_saving_and_loading_in_keras(tmp_path):
    x, y = problem()
    model, masks = pruned_model(ctf)
    ctf.train(model, x, y, epochs=2, lr=0.05, batch_size=8, momentum=0.9, masks=masks,
              progress=False)
    model.save(tmp_path / "model.keras")
    loaded = keras.models.load_model(tmp_path / "model.keras")
    assert_weights_equal(ctf.get_weights(model), ctf.get_weights(loaded))
    loaded.compile(optimizer=keras.optimizers.SGD(learning_rate=0.05, momentum=0.9),
                   loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    loaded.fit(x, y, batch_size=8, epochs=2, verbose=0, callbacks=[ctf.KeepMasks(masks)])
    assert_pruned_entries_zero(ctf, loaded, masks)


@pytest.mark.parametrize("bad, error", [
    ("values", "must hold only 0 and 1"),
    ("count", "one mask entry per trainable parameter"),
])
def test_bad_masks_raise_before_training(backend, bad, error):
    x, y = problem()
    model, masks = pruned_model(backend)
    before = backend.get_weights(model)
    masks = list(masks)
    if bad == "values":
        canonical = backend.to_canonical(model, masks)
        canonical[0] = canonical[0] * 0.5
        masks = backend.from_canonical(model, canonical)
    else:
        masks = masks[:-1]
    with pytest.raises(ValueError, match=error):
        backend.train(model, x, y, epochs=1, lr=0.05, batch_size=8, masks=masks,
                      progress=False)
    with pytest.raises(ValueError, match=error):
        backend.apply_masks(model, masks)
    assert_weights_equal(before, backend.get_weights(model))


def test_keep_masks_after_step_rejects_bad_input():
    model, masks = pruned_model(ct)
    with pytest.raises(TypeError, match="torch.optim.Optimizer"):
        ct.keep_masks_after_step("sgd", model, masks)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    with pytest.raises(ValueError, match="one mask entry per trainable parameter"):
        ct.keep_masks_after_step(optimizer, model, masks[:1])


def test_keep_masks_callback_rejects_masks_of_another_model():
    model, _ = pruned_model(ctf)
    other = ctf.mlp([6, 5, 4], seed=1)
    masks = ctf.masks_from_scores(other, ctf.magnitude_scores(other), 0.5)
    model.compile(optimizer="sgd",
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    before = ctf.get_weights(model)
    x, y = problem()
    with pytest.raises(ValueError, match="mask for dense0.weight has shape"):
        model.fit(x, y, epochs=1, verbose=0, callbacks=[ctf.KeepMasks(masks)])
    assert_weights_equal(before, ctf.get_weights(model))


def test_keras_masked_gradients_keep_the_optimizer_state_zero():
    """KeepMasks alone lets momentum build up at pruned entries; the documented recipe
    (an optimizer that masks the gradients first) keeps it zero, as keep_masks_after_step
    does in PyTorch."""
    x, y = problem()
    velocities = []
    for recipe in (False, True):
        model, masks = pruned_model(ctf)
        optimizer = keras.optimizers.SGD(learning_rate=0.05, momentum=0.9)
        if recipe:
            optimizer = ctf.clipping_optimizer(optimizer, lambda grads: [
                g if m is None else g * m for g, m in zip(grads, masks)])
        model.compile(optimizer=optimizer,
                      loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
        model.fit(x, y, batch_size=8, epochs=1, verbose=0, shuffle=False,
                  callbacks=[ctf.KeepMasks(masks)])
        assert_pruned_entries_zero(ctf, model, masks)
        slots = {id(v): model.optimizer.momentums[model.optimizer._get_variable_index(v)]
                 for v in model.trainable_variables}
        velocities.append([np.asarray(slots[id(v)])[np.asarray(m) == 0]
                           for v, m in zip(model.trainable_variables, masks)
                           if m is not None])
    assert any(np.count_nonzero(v) > 0 for v in velocities[0])  # the control
    assert all(np.all(v == 0) for v in velocities[1])
