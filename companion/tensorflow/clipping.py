"""Gradient clipping, TensorFlow back end: by value, by norm, by global norm, adaptive.

Every function is pure: it takes a list of gradients aligned with the variables (``None``
entries pass through untouched) and returns a new list; nothing is modified in place.
The rules and their non-finite behaviour are the same in :mod:`companion.torch`.
"""

from __future__ import annotations

import math
import sys

import keras
import tensorflow as tf

from ..core.checks import check_positive, check_tensor_list
from ..core.clipping import Clip, check_clip_inputs, nonfinite_norm_message, resolve_clip
from .diagnostics import _norm64, total_norm

__all__ = ["Clip", "clip_by_value", "clip_by_norm", "clip_by_global_norm", "adaptive_clip",
           "clip_function", "clipping_optimizer"]


def clip_by_value(grads, clip_value: float) -> list:
    """Clip every entry into ``[-c, c]``: ``g_ij <- min(max(g_ij, -c), c)``.

    Changes the gradient's direction whenever some entries are clipped and others not.
    ``nan`` entries stay ``nan``.

    Args:
        grads: gradients aligned with the trainable variables, each a tensor or ``None``.
        clip_value: the bound ``c``, a finite number > 0.

    Raises:
        ValueError: ``clip_value`` is not a finite number > 0.
    """
    c = check_positive("clip_value", clip_value)
    grads = check_tensor_list("grads", grads)
    return [None if g is None else _clipped_values(g, c) for g in grads]


def _clipped_values(g, c: float):
    """``g`` with every entry clipped into ``[-c, c]``; a ``tf.IndexedSlices`` stays sparse,
    its rows with repeated indices summed first (the gradient's entries are the sums)."""
    if isinstance(g, tf.IndexedSlices):
        unique, position = tf.unique(g.indices)
        rows = tf.math.unsorted_segment_sum(g.values, position, tf.shape(unique)[0])
        return tf.IndexedSlices(tf.clip_by_value(rows, -c, c), unique, g.dense_shape)
    return tf.clip_by_value(g, -c, c)


def _scaled(g, scale: tf.Tensor):
    """``g * scale`` in ``g``'s dtype; a ``tf.IndexedSlices`` stays sparse (its values
    scaled), as in ``tf.clip_by_global_norm``."""
    if isinstance(g, tf.IndexedSlices):
        return tf.IndexedSlices(g.values * tf.cast(scale, g.values.dtype), g.indices,
                                g.dense_shape)
    return g * tf.cast(scale, g.dtype)


def _scale_to(norm: tf.Tensor, max_norm: float) -> tf.Tensor:
    """``c / max(norm, c)``, and ``nan`` where ``norm`` is not finite."""
    # tf.constant, not tf.cast: tf.cast(c, float64) first rounds the Python float to float32,
    # so that for T <= c the factor c / fl32(c) would differ from 1 by up to 6e-8.
    scale = max_norm / tf.maximum(norm, tf.constant(max_norm, norm.dtype))
    return tf.where(tf.math.is_finite(norm), scale, tf.cast(math.nan, norm.dtype))


def clip_by_norm(grads, max_norm: float) -> list:
    """Rescale each tensor on its own to 2-norm at most ``c``: ``g <- g * c / max(||g||_2, c)``.

    What Keras' ``clipnorm`` does. Each tensor keeps its direction, but tensors are scaled
    by different factors, so the direction of the whole gradient changes. A tensor whose
    norm is not finite becomes all ``nan``.

    Args:
        grads: gradients aligned with the trainable variables, each a tensor or ``None``.
        max_norm: the bound ``c`` on each tensor's 2-norm, a finite number > 0.

    Raises:
        ValueError: ``max_norm`` is not a finite number > 0.
    """
    c = check_positive("max_norm", max_norm)
    grads = check_tensor_list("grads", grads)
    return [None if g is None else _scaled(g, _scale_to(_norm64(g, 2.0), c)) for g in grads]


def clip_by_global_norm(grads, max_norm: float, norm_type: float = 2.0,
                        error_if_nonfinite: bool = False):
    """Rescale all gradients together to global p-norm at most ``c``.

    ``T = ||(g_1, ..., g_n)||_p`` over all entries, then ``g_i <- g_i * c / max(T, c)``:
    one factor for every tensor, so the direction of the whole gradient is kept
    (Pascanu et al. 2013). Returns ``(clipped, T)``, with ``T`` (a 0-d float64 tensor) the
    norm *before* clipping, the number worth logging. Works inside ``tf.function`` (and
    so inside ``model.fit``).

    Compared with the libraries: ``tf.clip_by_global_norm`` (2-norm only) scales by
    ``c / max(T, c)`` exactly as here; ``torch.nn.utils.clip_grad_norm_`` scales by
    ``c / (T + 1e-6)`` (clamped at 1), leaving a norm slightly *below* ``c``.

    Non-finite ``T``: with ``error_if_nonfinite=True`` a ``FloatingPointError`` is raised
    and nothing is returned (inside ``tf.function``, TensorFlow's ``InvalidArgumentError``);
    otherwise every entry of the result is ``nan`` (as in ``tf.clip_by_global_norm``), so
    a broken step cannot pass for a finite one.

    Args:
        grads: gradients aligned with the trainable variables, each a tensor or ``None``.
        max_norm: the bound ``c`` on the global norm, a finite number > 0.
        norm_type: the order ``p`` of the norm, a number > 0 or ``inf``.
        error_if_nonfinite: raise when ``T`` is not finite, instead of returning ``nan``.

    Raises:
        ValueError: ``max_norm`` not a finite number > 0, or ``norm_type`` not > 0 (inf
            allowed).
        FloatingPointError: ``T`` is not finite and ``error_if_nonfinite`` is set.
    """
    c = check_positive("max_norm", max_norm)
    p = check_positive("norm_type", norm_type, allow_inf=True)
    grads = check_tensor_list("grads", grads)
    total = total_norm(grads, p)
    if error_if_nonfinite:
        if tf.executing_eagerly():
            if not math.isfinite(float(total)):
                raise FloatingPointError(nonfinite_norm_message(float(total), p))
        else:
            total = tf.debugging.assert_all_finite(total, nonfinite_norm_message("not finite", p))
    scale = _scale_to(total, c)
    return [None if g is None else _scaled(g, scale) for g in grads], total


def _unit_norms(x: tf.Tensor) -> tf.Tensor:
    """2-norm of each output unit's incoming weights: the last axis of ``(k..., in, out)``.

    Vectors (biases) and scalars get one norm for the whole tensor.
    """
    rank = len(x.shape)
    if rank < 2:
        return tf.reshape(_norm64(x, 2.0), [1] * rank)
    x = tf.cast(x, tf.float64)
    return tf.sqrt(tf.reduce_sum(tf.square(x), axis=list(range(rank - 1)), keepdims=True))


def adaptive_clip(grads, params, clipping: float = 0.01, eps: float = 1e-3) -> list:
    """Unit-wise adaptive gradient clipping (AGC, Brock et al. 2021).

    For each output unit ``i`` of each variable (a column ``W_i`` of a Keras kernel
    ``(k..., in, out)``, i.e. its fan-in; a whole bias vector), with ``G_i`` its gradient:
    ``G_i <- lambda * max(||W_i||, eps) / ||G_i|| * G_i`` if
    ``||G_i|| > lambda * max(||W_i||, eps)``, else unchanged. The bound is relative to the
    weights' own size, so small and large layers are clipped alike. Norms are computed in
    float64. A unit whose gradient is not finite stays not finite.

    Args:
        grads: gradients aligned with ``params``, each a tensor of its variable's shape or
            ``None``.
        params: the trainable variables the gradients belong to, in order.
        clipping: ``lambda``, the bound relative to the weights' norm, a finite number > 0.
        eps: the floor ``eps`` on each unit's weight norm, a finite number > 0.

    Raises:
        ValueError: ``clipping`` or ``eps`` not a finite number > 0, or ``grads`` and
            ``params`` of different lengths or shapes.
    """
    lam = check_positive("clipping", clipping)
    eps = check_positive("eps", eps)
    grads, params = check_clip_inputs(grads, params)
    clipped = []
    for g, w in zip(grads, params):
        if g is None:
            clipped.append(None)
            continue
        g = tf.convert_to_tensor(g)  # unit-wise: an Embedding's IndexedSlices made dense
        max_norm = lam * tf.maximum(_unit_norms(tf.convert_to_tensor(w)),
                                    tf.constant(eps, tf.float64))
        g_norm = _unit_norms(g)
        # Divide by max(||G_i||, bound), not by a fixed floor such as optax's 1e-6: where
        # the bound is below that floor, the floor would scale a unit to less than the bound.
        scale = tf.cast(max_norm / tf.maximum(g_norm, max_norm), g.dtype)
        clipped.append(tf.where(g_norm > max_norm, g * scale, g))
    return clipped


def clip_function(clip, params):
    """``clip`` as a function ``grads -> grads``: a :class:`Clip` rule, a function, or ``None``.

    ``params`` are the parameters the gradients belong to (the ``"adaptive"`` rule needs
    them). Used by :func:`train`.

    Args:
        clip: ``None``, a :class:`~companion.core.clipping.Clip` rule, or a function
            ``grads -> grads``.
        params: the trainable variables the gradients belong to, in order.

    Raises:
        TypeError: ``clip`` is none of these.
    """
    return resolve_clip(clip, params, sys.modules[__name__])


def clipping_optimizer(optimizer, clip):
    """A copy of the Keras ``optimizer`` that clips every gradient with ``clip`` first.

    Use it to clip inside ``model.fit`` with any rule, e.g.
    ``model.compile(optimizer=clipping_optimizer(keras.optimizers.SGD(0.1),
    Clip("adaptive", 0.01)), ...)``. Keras' own options cover less: ``clipnorm`` clips
    each variable *on its own* (like :func:`clip_by_norm`, which changes the direction of
    the whole gradient), ``global_clipnorm`` is :func:`clip_by_global_norm` for the 2-norm
    only, and nothing is adaptive. The copy is built from ``optimizer.get_config()`` (a
    fresh state); it is meant for training, not for saving with the model.

    Args:
        optimizer: a Keras optimizer, e.g. ``keras.optimizers.SGD(0.1)``; it is copied, not
            changed.
        clip: a :class:`~companion.core.clipping.Clip` rule or a function ``grads -> grads``; not
            ``None``.

    Raises:
        TypeError: ``optimizer`` is not a Keras optimizer (a name such as ``"sgd"`` is not
            enough: its settings would be guessed), or ``clip`` is not a :class:`Clip`
            rule or a function ``grads -> grads``.
    """
    if not isinstance(optimizer, keras.optimizers.Optimizer):
        raise TypeError(f"optimizer must be a Keras optimizer such as "
                        f"keras.optimizers.SGD(0.1), got {optimizer!r}")
    if clip is None:
        raise TypeError("clip must be a Clip(...) rule or a function grads -> grads, not None")
    clip_function(clip, [])  # validates now, before any training
    base = type(optimizer)

    class ClippingOptimizer(base):
        def apply(self, grads, trainable_variables=None):
            variables = (getattr(self, "_trainable_variables", None)
                         if trainable_variables is None else list(trainable_variables))
            clipped = clip_function(clip, variables)(list(grads))
            return super().apply(clipped, trainable_variables)

    ClippingOptimizer.__name__ = ClippingOptimizer.__qualname__ = f"Clipping{base.__name__}"
    return ClippingOptimizer.from_config(optimizer.get_config())
