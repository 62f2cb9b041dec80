"""The canonical weight layout, TensorFlow (Keras 3) back end.

Keras stores kernels as ``(in, out)`` (dense) and ``(k..., in, out)`` (convolution);
the canonical layout is PyTorch's ``(out, in)`` / ``(out, in, k...)``. :func:`to_canonical`
and :func:`set_weights` convert, so arrays move between the back ends unchanged: kernels
are transposed, a GRU's gates reordered, and a Dense kernel that reads a flattened
convolution output gets its input rows in PyTorch's channels-first order
(:mod:`companion.core.layout`).
"""

from __future__ import annotations

import keras
import numpy as np
import tensorflow as tf

from ..core.layout import rows_channels_first, rows_channels_last

__all__ = ["trainable_parameters", "parameter_names", "get_weights", "set_weights",
           "to_canonical", "from_canonical"]


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
    for qualified, layer in _named_layers(model):
        recurrent = isinstance(layer, keras.layers.RNN)
        for variable in layer.trainable_variables:  # a nested model's own layers come later
            short = {"kernel": "weight_ih" if recurrent else "weight",
                     "recurrent_kernel": "weight_hh", "gamma": "weight", "beta": "bias",
                     "embeddings": "weight"}.get(variable.name, variable.name)
            names[id(variable)] = f"{qualified}.{short}"
    named = [names.get(id(v), v.path.replace("/", ".")) for v in trainable_parameters(model)]
    # Two variables of one custom layer may share a short name: fall back to their paths.
    return [n if named.count(n) == 1 else v.path.replace("/", ".")
            for n, v in zip(named, trainable_parameters(model))]


def _named_layers(model, prefix: str = ""):
    """``(name, layer)`` of the model's layers, depth first; a nested model's layers are
    named ``<model>.<layer>`` (recurrent and other composite layers are not entered)."""
    for layer in model.layers:
        yield prefix + layer.name, layer
        if isinstance(layer, keras.Model):
            yield from _named_layers(layer, f"{prefix}{layer.name}.")


# Layers after which a flattened feature map is ordered (*spatial, channels) in Keras and
# (channels, *spatial) in PyTorch; elementwise layers in between keep the order.
_SPATIAL = (keras.layers.Conv1D, keras.layers.Conv2D, keras.layers.Conv3D,
            keras.layers.MaxPooling1D, keras.layers.MaxPooling2D, keras.layers.MaxPooling3D,
            keras.layers.AveragePooling1D, keras.layers.AveragePooling2D,
            keras.layers.AveragePooling3D)
_ELEMENTWISE = (keras.layers.Activation, keras.layers.ReLU, keras.layers.LeakyReLU,
                keras.layers.BatchNormalization, keras.layers.Dropout)


def _producer(layer):
    """The layer whose output ``layer`` takes, or ``None`` (no graph: a subclassed model)."""
    try:
        return layer.input._keras_history.operation
    except (AttributeError, ValueError):
        return None


def _flattened_kernels(model) -> dict:
    """``{id(kernel): spatial shape}`` for each Dense kernel fed by a ``Flatten`` of a
    convolution's or pooling's channels-last output (see
    :func:`companion.core.layout.rows_channels_first`)."""
    found = {}
    for _, layer in _named_layers(model):
        flatten = _producer(layer) if isinstance(layer, keras.layers.Dense) else None
        if not isinstance(flatten, keras.layers.Flatten) or flatten.data_format != "channels_last":
            continue
        source = _producer(flatten)
        while isinstance(source, _ELEMENTWISE):
            source = _producer(source)
        if isinstance(source, _SPATIAL):
            found[id(layer.kernel)] = tuple(flatten.input.shape[1:-1])
    return found


def _gru_variables(model) -> set:
    """``id``s of the variables of Keras GRU layers, whose gates are stored as ``z, r, h``
    where the canonical order is PyTorch's ``r, z, n``."""
    return {id(v) for _, layer in _named_layers(model) if isinstance(layer, keras.layers.GRU)
            for v in layer.trainable_variables}


def _swap_update_and_reset(variable, canonical: np.ndarray) -> np.ndarray:
    """Swap the first two thirds of the gate axis (axis 0 of a canonical kernel, the last
    axis of the ``(2, 3H)`` bias): ``z, r, h`` <-> ``r, z, n``, its own inverse."""
    axis = 0 if variable.name.endswith("kernel") else canonical.ndim - 1
    third = canonical.shape[axis] // 3
    order = np.r_[third:2 * third, 0:third, 2 * third:3 * third]
    return np.take(canonical, order, axis=axis)


def _to_canonical_array(variable, array: np.ndarray, gru: set, flattened: dict) -> np.ndarray:
    perm = _kernel_permutation(variable, array.ndim)
    array = array if perm is None else array.transpose(perm)
    if id(variable) in gru:
        array = _swap_update_and_reset(variable, array)
    if id(variable) in flattened:
        array = rows_channels_first(array, flattened[id(variable)])
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
    A Dense kernel that reads a ``Flatten``ed convolution or pooling output also has its
    input rows put in PyTorch's ``(channels, *spatial)`` order
    (:func:`companion.core.layout.rows_channels_first`), so the weights of a Keras CNN
    copied into the same PyTorch CNN compute the same function. This needs the model's
    graph (Sequential or functional); a subclassed model's Flatten cannot be seen and its
    rows stay in Keras' order.

    Args:
        model: a Keras model, e.g. from :func:`mlp` or :func:`rnn`.
        tensors: one tensor (or ``None``) per trainable variable, in order, in Keras' layout
            (kernels ``(k..., in, out)``); a ``tf.IndexedSlices`` (an ``Embedding``'s
            gradient) is made dense.

    Raises:
        ValueError: the number of tensors differs from the number of trainable variables.
    """
    tensors = [tf.convert_to_tensor(t) if isinstance(t, tf.IndexedSlices) else t
               for t in tensors]
    variables = trainable_parameters(model)
    _check_aligned(model, tensors)
    gru, flattened = _gru_variables(model), _flattened_kernels(model)
    return [None if tensor is None
            else _to_canonical_array(variable, np.array(tensor), gru, flattened)
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
    tensors, gru, flattened = [], _gru_variables(model), _flattened_kernels(model)
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
        if id(variable) in flattened:
            array = rows_channels_last(array, flattened[id(variable)])
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
    gru, flattened = _gru_variables(model), _flattened_kernels(model)
    for i in selected:
        shape = tuple(variables[i].shape)
        native = np.arange(offset, offset + int(np.prod(shape, dtype=np.int64))).reshape(shape)
        parts.append(_to_canonical_array(variables[i], native, gru, flattened).ravel())
        offset += native.size
    return np.concatenate(parts)


def _flattened_rows_to_canonical(model, flat: np.ndarray) -> np.ndarray:
    """A vector in the canonical order except for the input rows of Dense kernels that read
    a flattened convolution output (kernels only transposed, as a computation in Keras'
    layout gives them), with those rows put in PyTorch's order, as :func:`to_canonical`
    puts them."""
    flattened, pieces, start = _flattened_kernels(model), [], 0
    for variable in trainable_parameters(model):
        size = int(np.prod(variable.shape, dtype=np.int64))
        piece = flat[start:start + size]
        if id(variable) in flattened:
            rows = piece.reshape(variable.shape[1], variable.shape[0])
            piece = rows_channels_first(rows, flattened[id(variable)]).ravel()
        pieces.append(piece)
        start += size
    return np.concatenate(pieces)


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
