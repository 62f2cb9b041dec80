"""The book's models, TensorFlow (Keras 3) back end: :func:`mlp` and :func:`rnn`.

Both back ends build them from the same NumPy initial weights
(:mod:`companion.core.models`), copied in through the canonical layout
(:mod:`companion.tensorflow.layout`), so after :func:`seed_everything` with the same seed
they hold the same numbers.
"""

from __future__ import annotations

import keras

from ..core.checks import check_choice, check_positive, check_positive_int, resolve_seed
from ..core.models import (ACTIVATIONS, BATCH_NORM_MOMENTUM, DTYPES, MLP_INITS,
                           NORM_EPSILON, check_cell, check_mlp_structure, check_sizes,
                           interleave_norms, mlp_initial_weights, norm_initial_weights,
                           rnn_initial_weights)
from .layout import set_weights

__all__ = ["mlp", "rnn"]


def mlp(sizes, activation: str = "relu", init: str = "he", gain: float = 1.0,
        seed: int | None = None, dtype: str = "float32", norm: str | None = None,
        residual: bool = False) -> keras.Model:
    """A fully connected network ``sizes[0] -> sizes[1] -> ... -> sizes[-1]``.

    Layer ``i`` computes ``h_{i+1} = phi(W_i h_i + b_i)`` (Keras stores ``W_i`` transposed,
    as ``(sizes[i], sizes[i+1])``); the last layer has no activation (it returns logits).
    Weights are drawn from ``N(0, std^2)`` with ``std`` given by ``init`` (see
    :func:`companion.core.models.init_std`) times ``gain``, or are ``gain`` times a random
    orthogonal matrix (``init="orthogonal"``, Saxe et al. 2014); biases start at zero.
    Layers are named ``dense0, dense1, ...``.

    With ``norm``, each hidden layer normalises its pre-activation, before ``phi`` as
    Ioffe & Szegedy (2015) and He et al. (2016) place it:
    ``h_{i+1} = phi(N_i(W_i h_i + b_i))`` with ``N_i(z) = gamma (z - mu) / sqrt(var + eps)
    + beta``, ``eps = 1e-5`` (PyTorch's; Keras' default is 1e-3); ``mu, var`` over the batch
    (``"batch"``, moving averages with Keras momentum 0.9, i.e. PyTorch's 0.1, in inference
    mode) or over the features of each example (``"layer"``, Ba et al. 2016). Layers
    ``norm0, norm1, ...``; ``gamma = 1``, ``beta = 0``. With ``residual``, hidden blocks
    whose widths match add their input: ``h_{i+1} = h_i + phi(N_i(W_i h_i + b_i))`` (He et
    al. 2016), so the block's Jacobian is ``I +`` the plain one (a functional model).

    Keras' moving variance averages the biased batch variance, PyTorch's the unbiased one
    (times ``n / (n - 1)``): after training steps in ``"batch"`` mode the inference-mode
    outputs of the two back ends differ by that much.

    Args:
        sizes: layer widths, input first, e.g. ``[40, 300, 100, 10]``.
        activation: ``"relu"``, ``"tanh"``, ``"sigmoid"`` or ``"linear"``.
        init: ``"he"``, ``"glorot"``, ``"lecun"`` or ``"orthogonal"``.
        gain: multiplies every initial weight; ``> 1`` makes gradients grow with depth.
        seed: seed of the initial weights; ``None`` draws one from NumPy's global generator.
        dtype: ``"float32"`` or ``"float64"`` (for exact curvature on small models); the
            initial weights are the same numbers either way.
        norm: ``None``, ``"batch"`` (``BatchNormalization``) or ``"layer"``
            (``LayerNormalization``).
        residual: add skip connections (needs equal hidden widths).

    Raises:
        ValueError: fewer than two sizes, a size < 1, an unknown activation, init, dtype or
            norm, a gain that is not a finite number > 0, or ``residual`` with unequal
            hidden widths or no block whose widths match.
        TypeError: ``residual`` is not a bool.
    """
    sizes = check_sizes(sizes)
    check_choice("activation", activation, ACTIVATIONS)
    check_choice("init", init, MLP_INITS)
    check_choice("dtype", dtype, DTYPES)
    gain = check_positive("gain", gain)
    blocks = check_mlp_structure(sizes, norm, residual)
    weights = mlp_initial_weights(sizes, init, gain, resolve_seed(seed))
    if norm is None and not residual:
        model = _plain_mlp(sizes, activation, dtype)
    else:
        weights = weights if norm is None else interleave_norms(
            weights, norm_initial_weights(sizes))
        model = _block_mlp(sizes, activation, dtype, norm, blocks)
    set_weights(model, weights)
    return model


def _plain_mlp(sizes, activation: str, dtype: str) -> keras.Sequential:
    layers = [keras.Input(shape=(sizes[0],), dtype=dtype)]
    for i, width in enumerate(sizes[1:]):
        last = i == len(sizes) - 2
        layers.append(keras.layers.Dense(width, activation="linear" if last else activation,
                                         name=f"dense{i}", dtype=dtype))
    return keras.Sequential(layers)


def _block_mlp(sizes, activation: str, dtype: str, norm, blocks) -> keras.Model:
    """``h_{i+1} = [h_i +] act{i}(norm{i}(dense{i}(h_i)))``; the last layer plain."""
    inputs = keras.Input(shape=(sizes[0],), dtype=dtype)
    x = inputs
    for i, width in enumerate(sizes[1:-1]):
        out = keras.layers.Dense(width, name=f"dense{i}", dtype=dtype)(x)
        if norm == "batch":
            out = keras.layers.BatchNormalization(
                momentum=1.0 - BATCH_NORM_MOMENTUM, epsilon=NORM_EPSILON, name=f"norm{i}",
                dtype=dtype)(out)
        elif norm == "layer":
            out = keras.layers.LayerNormalization(epsilon=NORM_EPSILON, name=f"norm{i}",
                                                  dtype=dtype)(out)
        out = keras.layers.Activation(activation, name=f"act{i}", dtype=dtype)(out)
        x = keras.layers.Add(name=f"add{i}", dtype=dtype)([x, out]) if i in blocks else out
    outputs = keras.layers.Dense(sizes[-1], name=f"dense{len(sizes) - 2}", dtype=dtype)(x)
    return keras.Model(inputs, outputs)


def rnn(input_size: int, hidden_size: int, output_size: int, nonlinearity: str = "tanh",
        gain: float = 1.0, seed: int | None = None, cell: str = "rnn",
        init: str = "orthogonal") -> keras.Sequential:
    """A recurrent network (vanilla, LSTM or GRU) with a linear read-out of its last state.

    For inputs of shape ``(batch, time, input_size)``: a Keras ``SimpleRNN``, ``LSTM`` or
    ``GRU`` (``reset_after=True``, PyTorch's formula) named ``rnn`` and a ``Dense`` named
    ``readout``; ``y = W_out h_T + b_out``. The equations are those of
    :class:`companion.torch.RecurrentLayer`. Canonical weights hold the gates in
    PyTorch's order: the LSTM's ``i, f, g, o`` is Keras' ``i, f, c, o``; the GRU's
    ``r, z, n`` is Keras' ``z, r, h`` with the first two blocks swapped, which
    :func:`to_canonical` and :func:`set_weights` do. Each ``H x H`` gate block of ``W_hh``
    starts as ``gain`` times a random orthogonal matrix (spectral norm exactly ``gain``),
    or Gaussian with ``init="normal"`` (see
    :func:`companion.core.models.rnn_initial_weights`). The LSTM's forget bias starts at 1.
    Parameters: ``rnn.weight_ih, rnn.weight_hh, rnn.bias, readout.weight, readout.bias``.

    Args:
        input_size: features per time step ``I``, an integer >= 1.
        hidden_size: width ``H`` of the hidden state, an integer >= 1.
        output_size: width ``O`` of the read-out, an integer >= 1.
        nonlinearity: ``phi`` of the vanilla cell, ``"tanh"`` or ``"relu"``.
        gain: scale of the initial ``W_hh`` blocks, a finite number > 0.
        seed: seed of the initial weights; ``None`` draws one from NumPy's global generator.
        cell: ``"rnn"``, ``"lstm"`` or ``"gru"``.
        init: ``"orthogonal"`` or ``"normal"`` (of ``W_hh``).

    Raises:
        ValueError: a size < 1, an unknown nonlinearity, cell or init, a nonlinearity
            other than tanh for a gated cell, or a gain that is not a finite number > 0.
    """
    for what, size in (("input_size", input_size), ("hidden_size", hidden_size),
                       ("output_size", output_size)):
        check_positive_int(what, size)
    check_cell(cell, nonlinearity, init)
    gain = check_positive("gain", gain)
    weights = rnn_initial_weights(input_size, hidden_size, output_size, gain,
                                  resolve_seed(seed), cell, init)
    if cell == "rnn":
        recurrent = keras.layers.SimpleRNN(hidden_size, activation=nonlinearity, name="rnn")
    elif cell == "lstm":
        recurrent = keras.layers.LSTM(hidden_size, name="rnn")
    else:
        recurrent = keras.layers.GRU(hidden_size, reset_after=True, name="rnn")
    model = keras.Sequential([
        keras.Input(shape=(None, input_size)),
        recurrent,
        keras.layers.Dense(output_size, name="readout"),
    ])
    set_weights(model, weights)
    return model
