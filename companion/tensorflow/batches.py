"""Data as arrays or as a source of batches, and the loss on a batch, TensorFlow back end.

The rules (what a data source is, how batches are checked and weighted) are in
:mod:`companion.core.batches`; here TensorFlow's tensors become NumPy arrays and back, and
a loss, named or a function ``loss(targets, outputs) -> mean loss`` as a ``keras.losses``
object, is evaluated on a batch.
"""

from __future__ import annotations

import numpy as np
import tensorflow as tf

from ..core.batches import (check_data_source, checked_batches, epoch_batches, example_count,
                            input_batches, input_chunks, is_data_source, minibatches,
                            step_count)
from ..core.batches import numpy_batches as shared_numpy_batches
from ..core.checks import check_data, check_label_outputs, check_loss
from .layout import trainable_parameters
from .runtime import as_tensor

# Re-exported for the modules that take data.
__all__ = ["check_data_source", "is_data_source", "checked_batches", "input_batches",
           "minibatches", "step_count", "check_model_data", "numpy_batches", "input_arrays"]


def _numpy(tensor) -> np.ndarray:
    return tensor.numpy() if tf.is_tensor(tensor) else np.asarray(tensor)


def input_arrays(x, batch_size: int):
    """:func:`companion.core.batches.input_chunks` for this back end's tensors."""
    return input_chunks(x, batch_size, _numpy)


def _batch_mean(compute, source, loss):
    """``(1/N) sum_b n_b compute(x_b, y_b)`` over the batches ``b`` of a data source, where
    ``compute`` returns a tensor or a list of tensors (one batch in memory at a time)."""
    total, count = None, 0
    for xb, yb in checked_batches(source, loss, _numpy):
        value = compute(xb, yb)
        terms = value if isinstance(value, list) else [value]
        weighted = [len(xb) * tf.convert_to_tensor(t) for t in terms]
        total = weighted if total is None else [a + b for a, b in zip(total, weighted)]
        count += len(xb)
    mean = [t / count for t in total]
    return mean if isinstance(value, list) else mean[0]


def _mean_loss(output: tf.Tensor, target: tf.Tensor, loss) -> tf.Tensor:
    if loss == "cross_entropy":
        # logits (n, ..., C) and labels (n, ...): the mean over every position
        return tf.reduce_mean(tf.nn.sparse_softmax_cross_entropy_with_logits(target, output))
    if loss == "mse":
        return tf.reduce_mean(tf.square(output - tf.reshape(target, tf.shape(output))))
    value = loss(target, output)  # Keras' order: (y_true, y_pred)
    if not tf.is_tensor(value) or value.shape.rank != 0:
        raise ValueError("the loss function must return the mean loss over the batch, a "
                         f"scalar tensor; got {getattr(value, 'shape', type(value).__name__)}")
    return value


def check_model_data(model, x, y, loss: str):
    """:func:`~companion.core.checks.check_data`, and for ``"cross_entropy"`` that every label
    names one of the model's outputs and their shapes match (``0 <= y < classes``,
    read from the model's output on one example); returns ``x, y`` as arrays.

    Raises:
        ValueError: as :func:`~companion.core.checks.check_data`, or a label out of range.
    """
    x, y = check_data(x, y, loss)
    if loss == "cross_entropy":
        output = model(as_tensor(x[:1], trainable_parameters(model)[0]), training=False)
        check_label_outputs(y, output.shape)
    return x, y


def _data(model, x, y, loss):
    """Check ``loss`` and ``(x, y)``; return them as tensors like the variables, or a data
    source as it is (with ``y = None``), to be read batch by batch."""
    loss = check_loss(loss)
    if check_data_source(x, y):
        return x, None
    x, y = check_model_data(model, x, y, loss)
    like = trainable_parameters(model)[0]
    return as_tensor(x, like), as_tensor(y, like)


def numpy_batches(x, y, batch_size: int, loss):
    """:func:`companion.core.batches.numpy_batches` for this back end's tensors."""
    return shared_numpy_batches(x, y, batch_size, loss, _numpy)


def _batches(x, y, batch_size, epochs, seed, loss):
    return epoch_batches(x, y, batch_size, epochs, seed, loss, _numpy)


def _example_count(source, loss) -> int:
    return example_count(source, loss, _numpy)
