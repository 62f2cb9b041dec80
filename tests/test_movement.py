"""Movement pruning's scores: -sum_t g_t w_t over training steps, against a hand-written
PyTorch loop, across back ends, and refused before any step."""

import numpy as np
import pytest

from companion import tensorflow as ctf
from companion import torch as ct
from companion.core.batches import minibatches

import torch  # noqa: E402 (after the companion)

RNG = np.random.default_rng(0)
X = RNG.standard_normal((48, 6)).astype(np.float32)
Y = RNG.integers(0, 3, 48)
TRAIN = dict(epochs=2, lr=0.1, batch_size=16, progress=False)


def test_movement_scores_equal_a_hand_written_loop():
    model, twin = ct.mlp([6, 8, 3], seed=0), ct.mlp([6, 8, 3], seed=0)
    movement = ct.MovementScores(model)
    ct.train(model, X, Y, monitor=movement, **TRAIN)
    expected = [torch.zeros_like(p) for p in twin.parameters()]
    sgd = torch.optim.SGD(twin.parameters(), lr=0.1)
    for batch in minibatches(len(X), 16, epochs=2, seed=0):
        sgd.zero_grad()
        torch.nn.functional.cross_entropy(twin(torch.as_tensor(X[batch])),
                                          torch.as_tensor(Y[batch])).backward()
        with torch.no_grad():
            for e, p in zip(expected, twin.parameters()):
                e -= p.grad * p
        sgd.step()
    assert movement.steps == 6
    for ours, theirs in zip(movement.scores(), expected):
        np.testing.assert_allclose(ours.detach().numpy(), theirs.numpy(), rtol=1e-5,
                                   atol=1e-7)


def test_movement_scores_agree_across_back_ends_and_make_masks():
    scores, masks = [], []
    for backend in (ct, ctf):
        model = backend.mlp([6, 8, 3], seed=1)
        movement = backend.MovementScores(model)
        backend.train(model, X, Y, monitor=movement, **TRAIN)
        scores.append(backend.to_canonical(model, movement.scores()))
        masks.append(backend.to_canonical(
            model, backend.masks_from_scores(model, movement.scores(), 0.5)))
    for a, b in zip(*scores):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-7)
    for a, b in zip(*masks):
        if a is not None:
            np.testing.assert_array_equal(a, b)


def test_movement_scores_need_a_step_and_aligned_gradients(backend):
    model = backend.mlp([6, 8, 3], seed=0)
    movement = backend.MovementScores(model)
    with pytest.raises(ValueError, match="no training step"):
        movement.scores()
    with pytest.raises(ValueError):
        movement.record(0, backend.gradients(model, X, Y)[:2])
    assert movement.steps == 0
