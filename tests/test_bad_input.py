"""Bad input gets a clear error, in both back ends, before anything changes; and the input
forms a user reasonably tries (NumPy scores, bfloat16 models) work."""

import numpy as np
import pytest
import torch

from companion import tensorflow as ctf
from companion import torch as ct

RNG = np.random.default_rng(3)
X = RNG.standard_normal((16, 4)).astype(np.float32)
Y = RNG.integers(0, 3, 16)


def test_one_tensor_instead_of_a_list_is_refused(backend):
    model = backend.mlp([4, 5, 3], seed=0)
    grad = backend.gradients(model, X, Y)[0]
    for clip in (lambda g: backend.clip_by_value(g, 1.0),
                 lambda g: backend.clip_by_norm(g, 1.0),
                 lambda g: backend.clip_by_global_norm(g, 1.0)):
        with pytest.raises(TypeError, match=r"wrap it in a list"):
            clip(grad)
    with pytest.raises(TypeError, match=r"wrap it in a list"):
        backend.adaptive_clip(grad, backend.trainable_parameters(model))


def test_strings_for_flags_and_numbers_are_refused_before_training(backend):
    model = backend.mlp([4, 5, 3], seed=0)
    before = backend.get_weights(model)
    scores = backend.magnitude_scores(model)
    with pytest.raises(TypeError, match="prune_biases must be True or False"):
        backend.prune(model, scores, 0.5, prune_biases="no")
    with pytest.raises(TypeError, match="momentum must be a real number"):
        backend.train(model, X, Y, epochs=1, lr=0.1, batch_size=8, momentum="0.9",
                      progress=False)
    for b, a in zip(before, backend.get_weights(model)):
        np.testing.assert_array_equal(a, b)


def test_numpy_scores_give_the_same_masks_as_tensors(backend):
    model = backend.mlp([4, 5, 3], seed=0)
    scores = backend.magnitude_scores(model)
    as_numpy = [np.asarray(s) for s in scores]
    for expected, got in zip(backend.masks_from_scores(model, scores, 0.5),
                             backend.masks_from_scores(model, as_numpy, 0.5)):
        np.testing.assert_array_equal(np.asarray(got), np.asarray(expected))


def test_clipping_optimizer_needs_a_keras_optimizer():
    with pytest.raises(TypeError, match="Keras optimizer"):
        ctf.clipping_optimizer("sgd", ctf.Clip("global_norm", 1.0))


def test_keep_masks_after_step_refuses_another_models_optimizer():
    model, other = ct.mlp([4, 5, 3], seed=0), ct.mlp([4, 5, 3], seed=1)
    masks = ct.masks_from_scores(model, ct.magnitude_scores(model), 0.5)
    optimizer = torch.optim.SGD(other.parameters(), lr=0.1)
    with pytest.raises(ValueError, match="does not update the model's masked parameters"):
        ct.keep_masks_after_step(optimizer, model, masks)


def test_bfloat16_models_read_and_prune():
    model = ct.mlp([4, 5, 3], seed=0).to(torch.bfloat16)
    weights = ct.get_weights(model)
    assert weights[0].dtype == np.float32
    np.testing.assert_array_equal(weights[0], model[0].weight.detach().float().numpy())
    ct.prune(model, ct.magnitude_scores(model), 0.5)
    assert (model[0].weight == 0).sum().item() > 0
