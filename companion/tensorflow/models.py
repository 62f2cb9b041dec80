"""Models and the canonical weight layout, TensorFlow (Keras 3) back end.

Keras stores kernels as ``(in, out)`` (dense) and ``(k..., in, out)`` (convolution);
the canonical layout is PyTorch's ``(out, in)`` / ``(out, in, k...)``. :func:`to_canonical`
and :func:`set_weights` convert, so arrays move between the back ends unchanged. Both
back ends build :func:`mlp` and :func:`rnn` from the same NumPy initial weights, so after
:func:`seed_everything` with the same seed they hold the same numbers.
"""

from __future__ import annotations

import keras
import numpy as np
import tensorflow as tf

from ..core.checks import check_choice, check_positive, check_positive_int, resolve_seed
from ..core.models import (ACTIVATIONS, BATCH_NORM_MOMENTUM, DTYPES, MLP_INITS,
                           NORM_EPSILON, check_cell, check_mlp_structure, check_sizes,
                           interleave_norms, mlp_initial_weights, norm_initial_weights,
                           rnn_initial_weights)

__all__ = ["mlp", "rnn", "trainable_parameters", "parameter_names", "get_weights",
           "set_weights", "to_canonical", "from_canonical"]


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


def trainable_parameters(model) -> list:
    """The variables that gradients, scores and masks are aligned with, in order:
    ``model.trainable_variables`` (layers with ``trainable=False`` are left out).

    Args:
        model: a Keras model, e.g. from :func:`mlp` or :func:`rnn`.

    Raises:
        TypeError: ``model`` is not a Keras model or layer.
        ValueError: ``model`` has no trainable variable: none, all frozen, or not built
            yet (a Keras model makes its variables when first called, or when it starts
            with ``keras.Input``).
    """
    if not isinstance(model, keras.layers.Layer):
        raise TypeError(f"model must be a Keras model, got {type(model).__name__}")
    variables = list(model.trainable_variables)
    if not variables:
        built = "" if model.built else " (it is not built yet: call it on a batch first, " \
                                        "or start it with keras.Input)"
        raise ValueError(f"{type(model).__name__} has no trainable variable{built}: there "
                         "is nothing to differentiate")
    return variables


def parameter_names(model) -> list:
    """Canonical names of :func:`trainable_parameters`, e.g. ``["dense0.weight", ...]``.

    ``<layer>.<variable>`` with Keras' names mapped to PyTorch's: ``kernel`` becomes
    ``weight`` (``weight_ih`` in a recurrent layer), ``recurrent_kernel`` ``weight_hh``,
    ``gamma``/``beta`` (normalisation) ``weight``/``bias``, ``embeddings`` ``weight``.

    Args:
        model: a Keras model, e.g. from :func:`mlp` or :func:`rnn`.
    """
    names = {}
    for layer in model.layers:
        recurrent = isinstance(layer, keras.layers.RNN)
        for variable in layer.trainable_variables:
            short = {"kernel": "weight_ih" if recurrent else "weight",
                     "recurrent_kernel": "weight_hh", "gamma": "weight", "beta": "bias",
                     "embeddings": "weight"}.get(variable.name, variable.name)
            names[id(variable)] = f"{layer.name}.{short}"
    return [names.get(id(v), v.path.replace("/", ".")) for v in trainable_parameters(model)]


def _gru_variables(model) -> set:
    """``id``s of the variables of Keras GRU layers, whose gates are stored as ``z, r, h``
    where the canonical order is PyTorch's ``r, z, n``."""
    return {id(v) for layer in model.layers if isinstance(layer, keras.layers.GRU)
            for v in layer.trainable_variables}


def _swap_update_and_reset(variable, canonical: np.ndarray) -> np.ndarray:
    """Swap the first two thirds of the gate axis (axis 0 of a canonical kernel, the last
    axis of the ``(2, 3H)`` bias): ``z, r, h`` <-> ``r, z, n``, its own inverse."""
    axis = 0 if variable.name.endswith("kernel") else canonical.ndim - 1
    third = canonical.shape[axis] // 3
    order = np.r_[third:2 * third, 0:third, 2 * third:3 * third]
    return np.take(canonical, order, axis=axis)


def _to_canonical_array(variable, array: np.ndarray, gru: set) -> np.ndarray:
    perm = _kernel_permutation(variable, array.ndim)
    array = array if perm is None else array.transpose(perm)
    if id(variable) in gru:
        array = _swap_update_and_reset(variable, array)
    return np.ascontiguousarray(array)


def _kernel_permutation(variable, ndim: int):
    """Axis order taking a Keras kernel ``(k..., in, out)`` to ``(out, in, k...)``, else ``None``."""
    if ndim < 2 or not variable.name.endswith("kernel"):
        return None
    return [ndim - 1, ndim - 2, *range(ndim - 2)]


def to_canonical(model, tensors) -> list:
    """Tensors aligned with the model's variables, as NumPy arrays in canonical layout.

    Kernels are transposed to PyTorch's layout (``(in, out)`` becomes ``(out, in)``,
    ``(k, in, out)`` becomes ``(out, in, k)``); biases are unchanged. ``None`` stays ``None``.

    Args:
        model: a Keras model, e.g. from :func:`mlp` or :func:`rnn`.
        tensors: one tensor (or ``None``) per trainable variable, in order, in Keras' layout
            (kernels ``(k..., in, out)``).

    Raises:
        ValueError: the number of tensors differs from the number of trainable variables.
    """
    tensors = list(tensors)
    variables = trainable_parameters(model)
    _check_aligned(model, tensors)
    gru = _gru_variables(model)
    return [None if tensor is None else _to_canonical_array(variable, np.array(tensor), gru)
            for variable, tensor in zip(variables, tensors)]


def get_weights(model) -> list:
    """The model's trainable variables as NumPy arrays in canonical layout.

    Args:
        model: a Keras model, e.g. from :func:`mlp` or :func:`rnn`.
    """
    return to_canonical(model, trainable_parameters(model))


def from_canonical(model, arrays) -> list:
    """Canonical-layout arrays aligned with the variables, as tensors in Keras' layout.

    The inverse of :func:`to_canonical`: kernels are transposed back, values are cast to
    each variable's dtype. ``None`` stays ``None``.

    Args:
        model: a Keras model, e.g. from :func:`mlp` or :func:`rnn`.
        arrays: one array-like (or ``None``) per trainable variable, in order and in canonical
            layout ``(out, in, ...)``.

    Raises:
        ValueError: the number of arrays or any shape differs from the canonical shapes of
            the variables; the message names the variable and the expected shape.
    """
    arrays = [None if a is None else np.asarray(a) for a in arrays]
    variables = trainable_parameters(model)
    _check_aligned(model, arrays)
    tensors, gru = [], _gru_variables(model)
    for name, variable, array in zip(parameter_names(model), variables, arrays):
        if array is None:
            tensors.append(None)
            continue
        perm = _kernel_permutation(variable, len(variable.shape))
        expected = tuple(variable.shape) if perm is None else tuple(
            variable.shape[i] for i in perm)
        if tuple(array.shape) != expected:
            raise ValueError(f"{name} needs shape {expected} (canonical layout "
                             f"(out, in, ...)), got {array.shape}")
        if id(variable) in gru:
            array = _swap_update_and_reset(variable, array)
        native = array if perm is None else array.transpose(np.argsort(perm))
        tensors.append(tf.convert_to_tensor(native, dtype=variable.dtype))
    return tensors


def set_weights(model, arrays) -> None:
    """Copy canonical-layout arrays into the model's trainable variables.

    Args:
        model: a Keras model, e.g. from :func:`mlp` or :func:`rnn`.
        arrays: one array-like per trainable variable, in order and in canonical layout
            ``(out, in, ...)``; none may be ``None``.

    Raises:
        ValueError: an entry of ``arrays`` is ``None``, or the number of arrays or any
            shape differs from the canonical shapes of the variables (see
            :func:`from_canonical`). The model is left unchanged.
    """
    arrays = list(arrays)
    if any(a is None for a in arrays):
        raise ValueError("set_weights needs an array for every parameter, got None")
    tensors = from_canonical(model, arrays)
    for variable, tensor in zip(trainable_parameters(model), tensors):
        variable.assign(tensor)


def _check_aligned(model, items: list) -> None:
    expected = len(trainable_parameters(model))
    if len(items) != expected:
        raise ValueError(f"expected one entry per trainable parameter ({expected}: "
                         f"{', '.join(parameter_names(model))}), got {len(items)}")


def _canonical_order(model, selected=None) -> np.ndarray:
    """``order[c]``: the position, in the variables' own (Keras) flattening, of the entry
    at position ``c`` of the canonical flattening (kernels transposed to ``(out, in, k...)``).

    Over the variables ``selected`` (indices, default all), concatenated in order.
    """
    variables = trainable_parameters(model)
    selected = range(len(variables)) if selected is None else selected
    parts, offset, gru = [], 0, _gru_variables(model)
    for i in selected:
        shape = tuple(variables[i].shape)
        native = np.arange(offset, offset + int(np.prod(shape, dtype=np.int64))).reshape(shape)
        parts.append(_to_canonical_array(variables[i], native, gru).ravel())
        offset += native.size
    return np.concatenate(parts)


def _flatten(tensors, order: np.ndarray) -> np.ndarray:
    """Tensors in Keras' layout as one float64 vector in the canonical flattening order."""
    native = np.concatenate([np.asarray(t, np.float64).ravel() for t in tensors])
    return native[order]


def _unflatten(model, flat, order: np.ndarray) -> list:
    """A vector in the canonical flattening order as tensors aligned with the variables."""
    variables = trainable_parameters(model)
    native = np.empty(len(order))
    native[order] = flat
    sizes = np.cumsum([0] + [int(np.prod(v.shape, dtype=np.int64)) for v in variables])
    return [tf.constant(native[a:b].reshape(tuple(v.shape)), dtype=v.dtype)
            for v, a, b in zip(variables, sizes[:-1], sizes[1:])]
