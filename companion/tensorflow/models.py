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
from ..core.models import (ACTIVATIONS, DTYPES, RNN_NONLINEARITIES, check_sizes,
                           mlp_initial_weights, rnn_initial_weights)

__all__ = ["mlp", "rnn", "trainable_parameters", "parameter_names", "get_weights",
           "set_weights", "to_canonical", "from_canonical"]


def mlp(sizes, activation: str = "relu", init: str = "he", gain: float = 1.0,
        seed: int | None = None, dtype: str = "float32") -> keras.Sequential:
    """A fully connected network ``sizes[0] -> sizes[1] -> ... -> sizes[-1]``.

    Layer ``i`` computes ``h_{i+1} = phi(W_i h_i + b_i)`` (Keras stores ``W_i`` transposed,
    as ``(sizes[i], sizes[i+1])``); the last layer has no activation (it returns logits).
    Weights are drawn from ``N(0, std^2)`` with ``std`` given by ``init`` (see
    :func:`companion.core.models.init_std`) times ``gain``; biases start at zero. Layers are
    named ``dense0, dense1, ...``.

    Args:
        sizes: layer widths, input first, e.g. ``[40, 300, 100, 10]``.
        activation: ``"relu"``, ``"tanh"``, ``"sigmoid"`` or ``"linear"``.
        init: ``"he"``, ``"glorot"`` or ``"lecun"``.
        gain: multiplies every initial weight; ``> 1`` makes gradients grow with depth.
        seed: seed of the initial weights; ``None`` draws one from NumPy's global generator.
        dtype: ``"float32"`` or ``"float64"`` (for exact curvature on small models); the
            initial weights are the same numbers either way.

    Raises:
        ValueError: fewer than two sizes, a size < 1, an unknown activation, init or
            dtype, or a gain that is not a finite number > 0.
    """
    sizes = check_sizes(sizes)
    check_choice("activation", activation, ACTIVATIONS)
    check_choice("dtype", dtype, DTYPES)
    gain = check_positive("gain", gain)
    weights = mlp_initial_weights(sizes, init, gain, resolve_seed(seed))
    layers = [keras.Input(shape=(sizes[0],), dtype=dtype)]
    for i, width in enumerate(sizes[1:]):
        last = i == len(sizes) - 2
        layers.append(keras.layers.Dense(width, activation="linear" if last else activation,
                                         name=f"dense{i}", dtype=dtype))
    model = keras.Sequential(layers)
    set_weights(model, weights)
    return model


def rnn(input_size: int, hidden_size: int, output_size: int, nonlinearity: str = "tanh",
        gain: float = 1.0, seed: int | None = None) -> keras.Sequential:
    """A vanilla RNN with a linear read-out of its last hidden state.

    ``h_t = phi(W_ih x_t + W_hh h_{t-1} + b)``, ``y = W_out h_T + b_out``, for inputs of
    shape ``(batch, time, input_size)``: a Keras ``SimpleRNN`` named ``rnn`` and a ``Dense``
    named ``readout``. ``W_hh`` starts as ``gain`` times a random orthogonal matrix, so its
    spectral norm is exactly ``gain``: above 1 (with a non-saturating ``phi``) gradients
    grow geometrically with the sequence length.
    Parameters: ``rnn.weight_ih, rnn.weight_hh, rnn.bias, readout.weight, readout.bias``.

    Args:
        input_size: features per time step ``I``, an integer >= 1.
        hidden_size: width ``H`` of the hidden state, an integer >= 1.
        output_size: width ``O`` of the read-out, an integer >= 1.
        nonlinearity: ``phi``, ``"tanh"`` or ``"relu"``.
        gain: spectral norm of the initial ``W_hh``, a finite number > 0.
        seed: seed of the initial weights; ``None`` draws one from NumPy's global generator.

    Raises:
        ValueError: a size < 1, an unknown nonlinearity (``"tanh"`` or ``"relu"``), or a
            gain that is not a finite number > 0.
    """
    for what, size in (("input_size", input_size), ("hidden_size", hidden_size),
                       ("output_size", output_size)):
        check_positive_int(what, size)
    check_choice("nonlinearity", nonlinearity, RNN_NONLINEARITIES)
    gain = check_positive("gain", gain)
    weights = rnn_initial_weights(input_size, hidden_size, output_size, gain,
                                  resolve_seed(seed))
    model = keras.Sequential([
        keras.Input(shape=(None, input_size)),
        keras.layers.SimpleRNN(hidden_size, activation=nonlinearity, name="rnn"),
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
    ``weight`` (``weight_ih`` in a recurrent layer) and ``recurrent_kernel`` ``weight_hh``.

    Args:
        model: a Keras model, e.g. from :func:`mlp` or :func:`rnn`.
    """
    names = {}
    for layer in model.layers:
        recurrent = isinstance(layer, keras.layers.RNN)
        for variable in layer.trainable_variables:
            short = {"kernel": "weight_ih" if recurrent else "weight",
                     "recurrent_kernel": "weight_hh"}.get(variable.name, variable.name)
            names[id(variable)] = f"{layer.name}.{short}"
    return [names.get(id(v), v.path.replace("/", ".")) for v in trainable_parameters(model)]


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
    arrays = []
    for variable, tensor in zip(variables, tensors):
        if tensor is None:
            arrays.append(None)
            continue
        array = np.array(tensor)
        perm = _kernel_permutation(variable, array.ndim)
        arrays.append(array if perm is None else np.ascontiguousarray(array.transpose(perm)))
    return arrays


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
    tensors = []
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
    parts, offset = [], 0
    for i in selected:
        shape = tuple(variables[i].shape)
        native = np.arange(offset, offset + int(np.prod(shape, dtype=np.int64))).reshape(shape)
        perm = _kernel_permutation(variables[i], len(shape))
        parts.append((native if perm is None else native.transpose(perm)).ravel())
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
