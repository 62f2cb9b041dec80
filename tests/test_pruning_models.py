"""Pruning on ordinary models beyond the MLP: recurrent biases and sparse gradients.

Oracles: the frameworks' own attributes that hold each recurrent bias (Keras
``layer.cell.bias``, PyTorch ``bias_ih_l0`` / ``bias_hh_l0``), exact counts
``round(s * n)`` over the weights alone, and, for the Keras ``Embedding`` (whose gradients
are ``tf.IndexedSlices``), the same network with the lookup written as a dense one-hot
product, whose gradients are dense.
"""

import keras
import numpy as np
import pytest
import tensorflow as tf
import torch

from companion import tensorflow as ctf
from companion import torch as ct

SCORES = ["gradient_scores", "snip_scores", "taylor_scores"]


def keras_recurrent(kind, seed=0):
    keras.utils.set_random_seed(seed)
    layer = {"gru": keras.layers.GRU, "lstm": keras.layers.LSTM}[kind](3)
    model = keras.Sequential([keras.Input((5, 2)), layer, keras.layers.Dense(4)])
    layer.cell.bias.assign(np.linspace(0.1, 0.9, layer.cell.bias.shape.num_elements())
                           .reshape(layer.cell.bias.shape))  # not Keras' zeros: seen pruned
    return model, [layer.cell.bias]


class TorchRecurrent(torch.nn.Module):
    def __init__(self, kind):
        super().__init__()
        torch.manual_seed(0)
        self.rnn = {"gru": torch.nn.GRU, "lstm": torch.nn.LSTM}[kind](2, 3, batch_first=True)
        self.head = torch.nn.Linear(3, 4)

    def forward(self, x):
        return self.head(self.rnn(x)[0][:, -1])


def torch_recurrent(kind):
    model = TorchRecurrent(kind)
    return model, [model.rnn.bias_ih_l0, model.rnn.bias_hh_l0, model.head.bias]


def recurrent_models():
    for kind in ("gru", "lstm"):
        yield pytest.param(ctf, lambda kind=kind: keras_recurrent(kind), id=f"keras-{kind}")
        yield pytest.param(ct, lambda kind=kind: torch_recurrent(kind), id=f"torch-{kind}")


def data(seed=1):
    rng = np.random.default_rng(seed)
    return rng.standard_normal((12, 5, 2)).astype(np.float32), rng.integers(0, 4, 12)


@pytest.mark.parametrize("backend, build", list(recurrent_models()))
def test_recurrent_biases_are_not_pruned_by_default(backend, build):
    model, biases = build()
    params = backend.trainable_parameters(model)
    is_bias = [any(p is b for b in biases) or len(p.shape) < 2 for p in params]
    scores = backend.magnitude_scores(model)
    masks = backend.masks_from_scores(model, scores, 0.5)
    assert [m is None for m in masks] == is_bias
    n = sum(int(np.prod(p.shape)) for p, bias in zip(params, is_bias) if not bias)
    assert sum(int(np.sum(np.asarray(m) == 0)) for m in masks if m is not None) == round(0.5 * n)
    with_biases = backend.masks_from_scores(model, scores, 0.5, prune_biases=True)
    assert all(m is not None for m in with_biases)


@pytest.mark.parametrize("backend, build", list(recurrent_models()))
def test_gradual_pruning_leaves_recurrent_biases(backend, build):
    model, biases = build()
    before = [np.array(b.detach() if torch.is_tensor(b) else b.numpy()) for b in biases]
    x, y = data()
    result = backend.prune_gradually(model, x, y, "magnitude",
                                     lambda t: backend.constant_sparsity(t, 0.5, 1, 1),
                                     1, lr=1e-9, batch_size=12, progress=False)
    params = backend.trainable_parameters(model)
    for bias, old in zip(biases, before):
        index = next(i for i, p in enumerate(params) if p is bias)
        assert result.masks[index] is None
        now = np.array(bias.detach() if torch.is_tensor(bias) else bias.numpy())
        assert np.all(now != 0) and np.allclose(now, old, atol=1e-6)


def embedding_models():
    """An Embedding network and the same network with the lookup as a one-hot product."""
    keras.utils.set_random_seed(2)
    embed = keras.Sequential([keras.Input((5,), dtype="int32"),
                              keras.layers.Embedding(20, 4), keras.layers.GRU(3),
                              keras.layers.Dense(4)])
    one_hot = keras.layers.Lambda(lambda i: tf.one_hot(i, 20), output_shape=(5, 20))
    dense = keras.Sequential([keras.Input((5,), dtype="int32"), one_hot,
                              keras.layers.Dense(4, use_bias=False), keras.layers.GRU(3),
                              keras.layers.Dense(4)])
    dense.set_weights(embed.get_weights())
    return embed, dense


@pytest.mark.parametrize("name", SCORES)
def test_scores_of_an_embedding_equal_the_dense_network(name):
    embed, dense = embedding_models()
    rng = np.random.default_rng(3)
    x, y = rng.integers(0, 20, (16, 5)), rng.integers(0, 4, 16)
    # x repeats tokens, so the sparse gradient has repeated rows that must be summed
    assert isinstance(ctf.gradients(embed, x, y)[0], tf.IndexedSlices)
    sparse = getattr(ctf, name)(embed, x, y, batch_size=8)
    reference = getattr(ctf, name)(dense, x, y, batch_size=8)
    assert len(sparse) == len(reference) == 6
    for s, r in zip(sparse, reference):
        np.testing.assert_allclose(np.asarray(s), np.asarray(r), rtol=1e-5, atol=1e-9)
    assert np.count_nonzero(np.asarray(sparse[0])) > 0
    masks = ctf.masks_from_scores(embed, sparse, 0.5)
    assert masks[0].shape == (20, 4)
