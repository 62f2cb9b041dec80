"""Curvature diagonals by the layer-wise closed forms, TensorFlow (Keras 3) back end.

For a ``keras.Sequential`` of ``Conv2D`` layers (channels last, one group), then ``Dense``
layers (a ``Flatten`` between them), each with activation ``"relu"``, ``"tanh"``,
``"sigmoid"`` or ``"linear"`` (or a linear one followed by one ``Activation`` layer), ending
in ``Dense``, with every variable trainable, the empirical Fisher, GGN and Hessian diagonals
come from one forward and one backward pass per chunk of examples
(:func:`companion.core.diagonals.backpropagate_diagonals`, as BackPACK's
``SumGradSquared``, ``DiagGGNExact`` and ``DiagHessian`` in PyTorch; a convolution's weight
gradients are formed per example from ``tf.image.extract_patches``, its transpose is
``tf.nn.conv2d_transpose``), compiled once per model. The Hessian's closed form also needs
piecewise-linear activations after the convolutions. Every other model (pooling,
normalisation, recurrent layers, functional or subclassed models, frozen layers) takes the
general paths of :func:`hessian_diagonal`. Like every measurement, this calls the model with
``training=False``; no moving statistic changes.

Memory per chunk of ``batch_size`` examples: the factors hold a column per class (for the
Hessian, also one per unit of each smooth dense layer) at every layer's output, and a
convolution's per-example weight gradients for each column; lower ``batch_size`` to bound
it."""

from __future__ import annotations

import keras
import numpy as np
import tensorflow as tf

from ..core.checks import LOSSES, check_choice, check_positive_int
# exact_diagonal_from_rows is for .curvature, which imports from the core only its namesake.
from ..core.diagonals import (LayerRecord, backpropagate_diagonals,  # noqa: F401
                              check_finite_diagonal, exact_diagonal_from_rows,
                              smooth_derivatives)
from .batches import check_model_data
from .layout import (_canonical_order, _flattened_rows_to_canonical, _unflatten,
                     trainable_parameters)
from .runtime import as_tensor, compiled_for

__all__ = ["ggn_diagonal"]

_ACTIVATIONS = {keras.activations.relu: "relu", keras.activations.tanh: "tanh",
                keras.activations.sigmoid: "sigmoid", keras.activations.linear: "linear"}


def _plain_convolution(layer) -> bool:
    """A ``Conv2D`` that ``extract_patches`` describes: channels last, one group."""
    return type(layer) is keras.layers.Conv2D and layer.data_format == "channels_last" \
        and layer.groups == 1


def _chain(model, kind: str):
    """``[[layer, activation name, flatten before], ...]`` if ``model`` is a chain the
    closed forms cover for ``kind``, else ``None``."""
    if type(model) is not keras.Sequential:
        return None
    chain, flatten = [], False
    for layer in model.layers:
        name = _ACTIVATIONS.get(getattr(layer, "activation", None))
        dense = isinstance(layer, keras.layers.Dense) and (
            flatten or not chain or isinstance(chain[-1][0], keras.layers.Dense))
        if name is not None and (dense or (
                _plain_convolution(layer) and not flatten
                and not any(isinstance(known, keras.layers.Dense) for known, _, _ in chain))):
            chain.append([layer, name, flatten])
            flatten = False
        elif (type(layer) is keras.layers.Activation and name is not None and chain
              and chain[-1][1] == "linear" and not flatten):
            chain[-1][1] = name
        elif type(layer) is keras.layers.Flatten and layer.data_format == "channels_last":
            flatten = True
        else:
            return None
    own = [v for layer, _, _ in chain for v in (layer.kernel, layer.bias) if v is not None]
    variables = trainable_parameters(model)
    if (not chain or flatten or not isinstance(chain[-1][0], keras.layers.Dense)
            or len(own) != len(variables) or any(a is not b for a, b in zip(own, variables))):
        return None
    if kind == "hessian" and any(not isinstance(layer, keras.layers.Dense)
                                 and name in ("tanh", "sigmoid") for layer, name, _ in chain):
        return None  # its second derivative's factor would be one column per unit
    return chain


def _takes(first, ndim: int) -> bool:
    """Whether the chain's first ``[layer, activation, flatten]`` takes ``ndim``-D inputs
    (``(N, H, W, C)`` for a convolution, ``(N, features)`` for a dense layer)."""
    layer, _, flatten = first
    if isinstance(layer, keras.layers.Dense):
        return ndim >= 2 if flatten else ndim == 2
    return ndim == 4


def _convolution(layer, inputs):
    """``(z, gradients, transpose)``: the convolution without its bias, and the functions
    of :class:`LayerRecord`, for a ``Conv2D`` on ``inputs``."""
    strides, rates = [1, *layer.strides, 1], [1, *layer.dilation_rate, 1]
    padding = layer.padding.upper()
    z = tf.nn.conv2d(inputs, layer.kernel, strides, padding, dilations=rates)
    height, width, channels = inputs.shape[1:]
    size, outputs = layer.kernel.shape[:2], layer.kernel.shape[3]
    patches = tf.image.extract_patches(inputs, [1, *size, 1], strides, rates, padding)
    count = tf.shape(inputs)[0]
    # (N, P, kh, kw, in) -> (N, in kh kw, P): the canonical order of a kernel's inputs
    patches = tf.reshape(patches, [count, -1, *size, channels])
    patches = tf.reshape(tf.transpose(patches, [0, 4, 2, 3, 1]), [count, -1, tf.shape(patches)[1]])

    def gradients(values):
        values = tf.reshape(values, [count, tf.shape(values)[1], -1, outputs])  # (N, K, P, out)
        return tf.einsum("nkpo,nfp->nkof", values, patches), tf.einsum("nkpo->nko", values)

    def transpose(values):
        shape = tf.shape(values)
        found = tf.nn.conv2d_transpose(
            tf.reshape(values, [-1, *values.shape[2:]]), layer.kernel,
            tf.stack([shape[0] * shape[1], height, width, channels]), strides, padding,
            dilations=rates)
        return tf.reshape(found, [shape[0], shape[1], height, width, channels])

    return z, gradients, transpose


def _records(chain, x):
    """The forward pass: a :class:`LayerRecord` per layer, and the model's output."""
    records, inputs = [], x
    for layer, name, flatten in chain:
        shape = inputs.shape[1:]
        if flatten:
            inputs = tf.reshape(inputs, [tf.shape(inputs)[0], -1])
        if isinstance(layer, keras.layers.Dense):
            output = tf.matmul(inputs, layer.kernel)
        else:
            output, gradients, transpose = _convolution(layer, inputs)
        if layer.bias is not None:
            output = output + layer.bias
        first = second = None
        if name == "relu":
            output = tf.nn.relu(output)
            first = tf.cast(output > 0, output.dtype)
        elif name != "linear":
            output = tf.tanh(output) if name == "tanh" else tf.sigmoid(output)
            first, second = smooth_derivatives(name, output)
        if isinstance(layer, keras.layers.Dense):
            unflatten = (lambda v, shape=tf.constant(list(shape), tf.int32): tf.reshape(
                v, tf.concat([tf.shape(v)[:2], shape], 0))) if flatten else None
            record = LayerRecord(tf.transpose(layer.kernel), layer.bias is not None, inputs,
                                 first, second, transpose=unflatten)
        else:
            record = LayerRecord(None, layer.bias is not None, None, first, second, gradients,
                                 transpose)
        records.append(record)
        inputs = output
    return records, inputs


def _output_terms(output, target, loss: str):
    """Each example's loss gradient in the output, and the factor ``S`` of its Hessian."""
    if loss == "cross_entropy":
        p = tf.nn.softmax(output, axis=1)
        gradient = p - tf.one_hot(tf.cast(target, tf.int32), tf.shape(p)[1], dtype=p.dtype)
        root = tf.sqrt(p)  # S[a, k] = delta_ak sqrt(p_a) - p_a sqrt(p_k), stored as [k, a]
        return gradient, (tf.linalg.diag(root) - p[:, None, :] * root[:, :, None], False)
    classes = int(output.shape[1])
    gradient = 2 * (output - tf.reshape(target, tf.shape(output))) / classes
    return gradient, (tf.ones_like(output) * (2 / classes) ** 0.5, True)


def _chunk_function(model, chain, loss: str, kind: str):
    """A ``tf.function`` ``(x, y) -> the chunk's float64 sums in the canonical order``."""

    def make():
        @tf.function(reduce_retracing=True)
        def chunk_sums(x, y):
            records, output = _records(chain, x)
            gradient, factor = _output_terms(output, y, loss)
            sums = backpropagate_diagonals(records, gradient, factor, kind, tf.einsum)
            return tf.concat([tf.cast(tf.reshape(s, [-1]), tf.float64) for pair in sums
                              for s in pair if s is not None], 0)

        return chunk_sums

    return compiled_for(model, ("closed_form_diagonal", loss, kind), make)


def closed_form_diagonal(model, x, y, loss: str, kind: str, batch_size: int):
    """The mean loss's ``kind`` diagonal (``"fisher"``, ``"ggn"``, ``"hessian"``) by the
    closed forms, as a float64 NumPy vector in the canonical order; ``None`` if the model
    is not a chain they cover or the loss is a function (the closed forms know the output
    Hessians of the named losses only). ``x``, ``y``: checked tensors.

    Raises:
        ValueError: the diagonal holds nan or inf.
    """
    chain = _chain(model, kind) if isinstance(loss, str) else None
    if chain is None or not _takes(chain[0], len(x.shape)):
        return None
    function = _chunk_function(model, chain, loss, kind)
    count = int(x.shape[0])
    total = 0
    for start in range(0, count, batch_size):
        total = total + function(x[start:start + batch_size], y[start:start + batch_size])
    return check_finite_diagonal(_flattened_rows_to_canonical(model, total.numpy() / count),
                                 kind)


def _general_ggn_function(model, loss: str):
    """A ``tf.function`` ``(x, y) -> sum_ik (J_i^T S_ik)^2`` over a chunk, Keras order."""
    variables = trainable_parameters(model)

    def make():
        @tf.function(reduce_retracing=True)
        def squares(x, y):
            with tf.GradientTape() as tape:
                output = model(x, training=False)
                if len(output.shape) > 2:
                    output = tf.reshape(output, [tf.shape(output)[0], -1])
                _, (values, diagonal) = _output_terms(tf.stop_gradient(output), y, loss)
                projected = tf.einsum("nkc,nc->nk", tf.linalg.diag(values) if diagonal
                                      else values, output)
            jacobians = tape.jacobian(projected, variables,
                                      unconnected_gradients=tf.UnconnectedGradients.ZERO)
            return tf.concat([tf.reshape(tf.reduce_sum(j * j, [0, 1]), [-1])
                              for j in jacobians], 0)

        return squares

    return compiled_for(model, ("general_ggn", loss), make)


def _general_ggn(model, x, y, loss: str, batch_size: int) -> np.ndarray:
    """The GGN diagonal of any model, as a float64 NumPy vector in the canonical order.

    Example ``i``'s output ``f_i`` (flattened) projected on the columns of ``S_i``,
    ``u_ik = S_ik . f_i``, has the gradient ``J_i^T S_ik``; the Jacobian of every ``u_ik``
    of a chunk (vectorised by ``pfor``) gives them, and ``diag G = (1/N) sum_ik
    (J_i^T S_ik)^2``. Memory: ``batch_size * K`` gradients.
    """
    function = _general_ggn_function(model, loss)
    count = int(x.shape[0])
    total = 0
    for start in range(0, count, batch_size):
        total = total + function(x[start:start + batch_size],
                                 y[start:start + batch_size]).numpy().astype(np.float64)
    return check_finite_diagonal(total[_canonical_order(model)] / count, "ggn")


def ggn_diagonal(model, x, y, loss: str = "cross_entropy", batch_size: int = 256) -> list:
    """The diagonal of the generalised Gauss-Newton matrix of the mean loss, exactly.

    ``G = (1/N) sum_i J_i^T Lambda_i J_i``, with ``J_i`` the Jacobian of the model's output
    in the parameters and ``Lambda_i`` the Hessian of example ``i``'s loss in the output
    (cross-entropy: ``diag(p) - p p^T``, ``p`` the softmax; mean squared error over ``C``
    outputs: ``(2/C) I``). ``G`` is the Hessian without the activations' second
    derivatives, positive semi-definite; for ReLU networks its diagonal equals the
    Hessian's. Computed as BackPACK's ``DiagGGNExact``: ``Lambda_i = S_i S_i^T`` is
    factorised and ``S_i`` backpropagated through the layers, ``batch_size`` examples at a
    time (:func:`companion.core.diagonals.backpropagate_diagonals`).

    That closed form covers a ``keras.Sequential`` of ``Conv2D`` and ``Dense`` layers with
    elementwise activations and ``Flatten``, as :mod:`companion.tensorflow.diagonals`
    describes, such as :func:`mlp` without ``norm`` or ``residual``. Any other model takes
    the general path: each example's output projected on each column of ``S_i`` is
    differentiated, one Jacobian (vectorised) per chunk (memory ``batch_size`` times the
    number of outputs times the number of parameters). Calls the model with
    ``training=False``.

    Args:
        model: a Keras model, e.g. from :func:`mlp`.
        x: the inputs, an array-like with one example per row (axis 0).
        y: class labels (``"cross_entropy"``) or targets (``"mse"``), as in :func:`loss_value`.
        loss: ``"cross_entropy"`` or ``"mse"``.
        batch_size: examples per chunk (bounds memory only), an integer >= 1.

    Returns:
        tensors aligned with the variables, each of its variable's shape (Keras' layout).

    Raises:
        ValueError: an unknown loss, ``batch_size`` not an integer >= 1, bad ``(x, y)``, or
            a non-finite result.
    """
    batch_size = check_positive_int("batch_size", batch_size)
    check_choice("loss", loss, LOSSES)
    x, y = check_model_data(model, x, y, loss)
    like = trainable_parameters(model)[0]
    x, y = as_tensor(x, like), as_tensor(y, like)
    diagonal = closed_form_diagonal(model, x, y, loss, "ggn", batch_size)
    if diagonal is None:
        diagonal = _general_ggn(model, x, y, loss, batch_size)
    return _unflatten(model, diagonal, _canonical_order(model))
