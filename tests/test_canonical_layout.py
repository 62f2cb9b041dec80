"""The canonical layout carries a network across frameworks (issue 12).

Oracle: the same network built in each framework computes the same function once the
weights are copied through ``get_weights`` / ``set_weights``: a Keras CNN's dense layer
reads its flattened feature map channels-last, PyTorch's channels-first, so the copy must
permute the kernel's input rows. Gradients and the Hessian, flattened in the canonical
order, must then agree too.
"""

import keras
import numpy as np
import pytest
import torch

from companion import tensorflow as ctf
from companion import torch as ct

RNG = np.random.default_rng(8)
LABELS = RNG.integers(0, 3, 5)


KERAS_LAYERS = {1: (keras.layers.Conv1D, keras.layers.MaxPooling1D),
                2: (keras.layers.Conv2D, keras.layers.MaxPooling2D)}
TORCH_LAYERS = {1: (torch.nn.Conv1d, torch.nn.MaxPool1d), 2: (torch.nn.Conv2d, torch.nn.MaxPool2d)}


def cnn_pair(dims: int):
    """A conv -> ReLU -> max-pool -> Flatten -> Dense network in both frameworks, with its
    input in each framework's layout (channels-last for Keras)."""
    size = (6,) * dims
    keras_conv, keras_pool = KERAS_LAYERS[dims]
    torch_conv, torch_pool = TORCH_LAYERS[dims]
    flat = 3 * 2 ** dims
    keras_model = keras.Sequential([
        keras.Input((*size, 2)), keras_conv(3, 3), keras.layers.ReLU(), keras_pool(2),
        keras.layers.Flatten(), keras.layers.Dense(3)])
    torch_model = torch.nn.Sequential(
        torch_conv(2, 3, 3), torch.nn.ReLU(), torch_pool(2), torch.nn.Flatten(),
        torch.nn.Linear(flat, 3))
    channels_first = RNG.standard_normal((5, 2, *size)).astype(np.float32)
    return keras_model, torch_model, np.moveaxis(channels_first, 1, -1), channels_first


@pytest.mark.parametrize("dims", [1, 2])
def test_a_keras_cnn_copied_into_pytorch_computes_the_same_function(dims):
    keras_model, torch_model, keras_x, torch_x = cnn_pair(dims)
    ct.set_weights(torch_model, ctf.get_weights(keras_model))
    np.testing.assert_allclose(ct.predict(torch_model, torch_x),
                               ctf.predict(keras_model, keras_x), rtol=1e-5, atol=1e-6)
    # and back: PyTorch's weights into the Keras model
    keras_twin, _, _, _ = cnn_pair(dims)
    ctf.set_weights(keras_twin, ct.get_weights(torch_model))
    np.testing.assert_allclose(ctf.predict(keras_twin, keras_x),
                               ct.predict(torch_model, torch_x), rtol=1e-5, atol=1e-6)
    for mine, theirs in zip(ctf.get_weights(keras_twin), ctf.get_weights(keras_model),
                            strict=True):
        np.testing.assert_array_equal(mine, theirs)


def test_gradients_and_hessian_agree_in_the_canonical_order():
    keras_model, torch_model, keras_x, torch_x = cnn_pair(2)
    ct.set_weights(torch_model, ctf.get_weights(keras_model))
    for mine, theirs in zip(ctf.to_canonical(keras_model,
                                             ctf.gradients(keras_model, keras_x, LABELS)),
                            ct.to_canonical(torch_model, ct.gradients(torch_model, torch_x,
                                                                      LABELS)), strict=True):
        np.testing.assert_allclose(mine, theirs, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(ctf.hessian(keras_model, keras_x, LABELS),
                               ct.hessian(torch_model, torch_x, LABELS), rtol=1e-3, atol=1e-5)


def test_a_flattened_sequence_keeps_its_order():
    """Flatten after an Embedding: both frameworks flatten (time, features) the same way,
    so no rows move."""
    tokens = RNG.integers(0, 7, (5, 4))
    keras_model = keras.Sequential([keras.Input((4,), dtype="int32"),
                                    keras.layers.Embedding(7, 3), keras.layers.Flatten(),
                                    keras.layers.Dense(3)])
    torch_model = torch.nn.Sequential(torch.nn.Embedding(7, 3), torch.nn.Flatten(),
                                      torch.nn.Linear(12, 3))
    ct.set_weights(torch_model, ctf.get_weights(keras_model))
    np.testing.assert_allclose(ct.predict(torch_model, tokens),
                               ctf.predict(keras_model, tokens), rtol=1e-5, atol=1e-6)


def test_a_nested_model_names_every_parameter_once():
    inner = keras.Sequential([keras.layers.Dense(8, name="first"),
                              keras.layers.Dense(8, name="second")], name="block")
    inputs = keras.Input((6,))
    model = keras.Model(inputs, keras.layers.Dense(3, name="head")(inner(inputs)))
    names = ctf.parameter_names(model)
    assert names == ["block.first.weight", "block.first.bias", "block.second.weight",
                     "block.second.bias", "head.weight", "head.bias"]
    grads = ctf.gradients(model, RNG.standard_normal((4, 6)).astype(np.float32),
                          LABELS[:4])
    assert list(ctf.parameter_norms(model, grads)) == names
    assert set(ctf.layer_norms(model, grads)) == {"block.first", "block.second", "head"}
