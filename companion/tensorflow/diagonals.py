"""Curvature diagonals by the layer-wise closed forms, TensorFlow (Keras 3) back end.

For a ``keras.Sequential`` of ``Dense`` layers (activation ``"relu"``, ``"tanh"``,
``"sigmoid"`` or ``"linear"``, optionally followed by one ``Activation`` layer if their own
is linear), with every variable trainable, the empirical Fisher, GGN and Hessian diagonals
come from one forward and one backward pass per chunk of examples
(:func:`companion.core.diagonals.backpropagate_diagonals`, as BackPACK's
``SumGradSquared``, ``DiagGGNExact`` and ``DiagHessian`` in PyTorch), compiled once per model.
Every other model (convolutions, normalisation, recurrent layers, functional or subclassed
models, frozen layers) takes the general paths of :func:`hessian_diagonal`. Like every
measurement, this calls the model with ``training=False``; no moving statistic changes.
"""

from __future__ import annotations

import keras
import numpy as np
import tensorflow as tf

from ..core.checks import LOSSES, check_choice, check_positive_int
# exact_diagonal_from_rows is for .curvature, which imports from the core only its namesake.
from ..core.diagonals import (LayerRecord, backpropagate_diagonals,  # noqa: F401
                              exact_diagonal_from_rows, smooth_derivatives)
from .models import _canonical_order, _unflatten, trainable_parameters
from .runtime import as_tensor, compiled_for
from .training import check_model_data

__all__ = ["ggn_diagonal"]

_ACTIVATIONS = {keras.activations.relu: "relu", keras.activations.tanh: "tanh",
                keras.activations.sigmoid: "sigmoid", keras.activations.linear: "linear"}


def _chain(model):
    """``[(dense, activation name), ...]`` if ``model`` is a chain the closed forms cover,
    else ``None``."""
    if type(model) is not keras.Sequential:
        return None
    chain = []
    for layer in model.layers:
        name = _ACTIVATIONS.get(getattr(layer, "activation", None))
        if isinstance(layer, keras.layers.Dense) and name is not None:
            chain.append([layer, name])
        elif (type(layer) is keras.layers.Activation and name is not None and chain
              and chain[-1][1] == "linear"):
            chain[-1][1] = name
        else:
            return None
    own = [v for dense, _ in chain for v in (dense.kernel, dense.bias) if v is not None]
    variables = trainable_parameters(model)
    if not chain or len(own) != len(variables) or any(
            a is not b for a, b in zip(own, variables)):
        return None
    return chain


def _records(chain, x):
    """The forward pass: a :class:`LayerRecord` per layer, and the model's output."""
    records, inputs = [], x
    for dense, name in chain:
        output = tf.matmul(inputs, dense.kernel)
        if dense.bias is not None:
            output = output + dense.bias
        first = second = None
        if name == "relu":
            output = tf.nn.relu(output)
            first = tf.cast(output > 0, output.dtype)
        elif name != "linear":
            output = tf.tanh(output) if name == "tanh" else tf.sigmoid(output)
            first, second = smooth_derivatives(name, output)
        records.append(LayerRecord(tf.transpose(dense.kernel), dense.bias is not None, inputs,
                                   first, second))
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
    is not a chain they cover. ``x``, ``y``: checked tensors.

    Raises:
        ValueError: the diagonal holds nan or inf.
    """
    chain = _chain(model)
    if chain is None or len(x.shape) != 2:
        return None
    function = _chunk_function(model, chain, loss, kind)
    count = int(x.shape[0])
    total = 0
    for start in range(0, count, batch_size):
        total = total + function(x[start:start + batch_size], y[start:start + batch_size])
    diagonal = total.numpy() / count
    if not np.all(np.isfinite(diagonal)):
        raise ValueError(f"the {kind} diagonal holds nan or inf: the model's weights or "
                         "outputs are not finite on these examples")
    return diagonal


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

    Only for a ``keras.Sequential`` of ``Dense`` layers with elementwise activations
    (``"relu"``, ``"tanh"``, ``"sigmoid"``, ``"linear"``, in the layer or in one following
    ``Activation`` layer) and every variable trainable, such as :func:`mlp` without ``norm``
    or ``residual``; other models are refused (use :func:`hessian_diagonal`, whose general
    paths take any model). Calls the model with ``training=False``.

    Args:
        model: a ``keras.Sequential`` as above.
        x: the inputs, an array-like ``(N, features)``.
        y: class labels (``"cross_entropy"``) or targets (``"mse"``), as in :func:`loss_value`.
        loss: ``"cross_entropy"`` or ``"mse"``.
        batch_size: examples per chunk (bounds memory only), an integer >= 1.

    Returns:
        tensors aligned with the variables, each of its variable's shape (Keras' layout).

    Raises:
        ValueError: a model the closed form does not cover, an unknown loss, ``batch_size``
            not an integer >= 1, bad ``(x, y)``, or a non-finite result.
    """
    batch_size = check_positive_int("batch_size", batch_size)
    check_choice("loss", loss, LOSSES)
    x, y = check_model_data(model, x, y, loss)
    like = trainable_parameters(model)[0]
    diagonal = closed_form_diagonal(model, as_tensor(x, like), as_tensor(y, like), loss, "ggn",
                                    batch_size)
    if diagonal is None:
        raise ValueError(
            f"ggn_diagonal needs a keras.Sequential of Dense layers with activation 'relu', "
            f"'tanh', 'sigmoid' or 'linear' (or one Activation layer after a linear Dense), "
            f"every variable trainable, and 2-D inputs; got {type(model).__name__} with "
            f"inputs of shape {np.shape(x)}. For other models use "
            f"hessian_diagonal(method='exact', 'fisher' or 'hutchinson')")
    return _unflatten(model, diagonal, _canonical_order(model))
