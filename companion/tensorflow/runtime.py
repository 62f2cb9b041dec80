"""Seeding and device choice for the TensorFlow (Keras 3) back end."""

from __future__ import annotations

import random
import weakref

import keras
import numpy as np
import tensorflow as tf

__all__ = ["seed_everything", "device", "as_tensor"]


def _drop_retracing_warning(record) -> bool:
    # Each model gets its own compiled step function, all from the same code; TensorFlow
    # counts them together and warns of "retracing", on stderr, in every notebook.
    return "triggered tf.function retracing" not in record.getMessage()


tf.get_logger().addFilter(_drop_retracing_warning)


def seed_everything(seed: int) -> None:
    """Make runs repeatable: seed Python, NumPy, TensorFlow and Keras.

    Also turns on deterministic ops and turns off TF32 matrix multiplication, so a GPU
    gives float32 results, not 10-bit-mantissa ones.

    Args:
        seed: an integer in ``[0, 2**32 - 1]``, the range NumPy accepts.

    Raises:
        ValueError: ``seed`` is negative or above ``2**32 - 1`` (from ``np.random.seed``).
        TypeError: ``seed`` is not an integer, e.g. ``1.5`` (from ``np.random.seed``).
    """
    random.seed(seed)
    np.random.seed(seed)
    keras.utils.set_random_seed(seed)
    tf.config.experimental.enable_op_determinism()
    tf.config.experimental.enable_tensor_float_32_execution(False)


def device() -> str:
    """The device TensorFlow places ops on: ``"GPU:0"`` when there is a GPU, else ``"CPU:0"``."""
    return "GPU:0" if tf.config.list_physical_devices("GPU") else "CPU:0"


def as_tensor(array, like) -> tf.Tensor:
    """``array`` as a tensor; floats take ``like``'s dtype (TensorFlow places it itself).

    Args:
        array: anything ``np.asarray`` accepts: an array, a nested list, a scalar.
        like: a tensor or variable whose floating dtype the result takes, e.g. a variable.
    """
    array = np.asarray(array)
    if np.issubdtype(array.dtype, np.floating):
        return tf.convert_to_tensor(array, dtype=like.dtype)
    return tf.convert_to_tensor(array)


# One compiled function per (model, what it computes, its trainable variables).
_COMPILED: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()


def compiled_for(model, key, make):
    """The compiled function ``make()`` for ``model`` and ``key``, made once.

    A ``tf.function`` captures the model's trainable variables when it traces, so they are
    part of the key: after ``layer.trainable = ...`` the next call makes a new function
    instead of reusing one that would differentiate the old variables. The cache holds the
    model weakly.
    """
    per_model = _COMPILED.setdefault(model, {})
    key = (key, tuple(id(v) for v in model.trainable_variables))
    if key not in per_model:
        per_model[key] = make()
    return per_model[key]
