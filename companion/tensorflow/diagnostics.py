"""Gradient diagnostics, TensorFlow back end: global and per-layer norms, and a monitor."""

from __future__ import annotations

import math

import numpy as np
import tensorflow as tf

from ..core.checks import check_positive
from ..core.diagnostics import GradientNormRecorder, layer_norms_from
from .layout import parameter_names

__all__ = ["total_norm", "global_norm", "parameter_norms", "layer_norms", "GradientMonitor"]


def _tensor_norm(g: tf.Tensor, norm_type: float) -> tf.Tensor:
    """``||g||_p``, with derivative 0 at ``g = 0`` (where ``sum |g|^p`` is 0, the root's
    derivative would be infinite and the chain rule give ``nan``; PyTorch's norm has the
    same zero subgradient there)."""
    g = tf.abs(tf.reshape(g, [-1]))
    if math.isinf(norm_type):
        return tf.reduce_max(g) if g.shape[0] else tf.zeros([], g.dtype)
    total = tf.reduce_sum(g ** norm_type)
    positive = total > 0
    # not positive: 0, or nan (which must stay nan); the root only where it is safe
    return tf.where(positive, tf.where(positive, total, 1) ** (1.0 / norm_type), total)


def _dense_rows(g):
    """The entries of a gradient: a tensor as it is; for ``tf.IndexedSlices`` (an
    ``Embedding``'s), its rows with repeated indices summed, without forming the dense
    tensor: the norm of the gradient, not of the slices."""
    if not isinstance(g, tf.IndexedSlices):
        return g
    unique, position = tf.unique(g.indices)
    return tf.math.unsorted_segment_sum(g.values, position, tf.shape(unique)[0])


def _norm64(g, norm_type: float) -> tf.Tensor:
    """``||g||_p`` computed in float64, so float32 entries near 1e30 or 1e-30 do not
    overflow or underflow on the way."""
    return _tensor_norm(tf.cast(_dense_rows(g), tf.float64), norm_type)


def _tensor_norms(grads, norm_type: float) -> list:
    """The p-norm of each non-``None`` tensor, as Python floats (one device sync)."""
    norms = [_norm64(g, norm_type) for g in grads if g is not None]
    return tf.stack(norms).numpy().tolist() if norms else []


@tf.function(reduce_retracing=True)
def _fast_global_norm(grads):
    """``tf.linalg.global_norm`` (the 2-norm ``tf.clip_by_global_norm`` computes), compiled
    once per list of shapes: eagerly, one call instead of an op per tensor."""
    return tf.linalg.global_norm(grads)


def _trustworthy(norm: tf.Tensor, dtype) -> tf.Tensor:
    """Whether a norm computed in the gradients' own ``dtype`` can be kept: finite, and not
    so small that the entries' squares may have underflowed (below ``sqrt(tiny) / eps``,
    about 1e-12 in float32; a zero gradient takes the exact path too, which gives 0)."""
    info = np.finfo(dtype.as_numpy_dtype)
    return tf.math.is_finite(norm) & (norm > float(info.tiny) ** 0.5 / info.eps)


def total_norm(grads, norm_type: float = 2.0) -> tf.Tensor:
    """:func:`global_norm` as a 0-d float64 tensor; works inside ``tf.function`` too.

    Fast path, for dense gradients of one float dtype and the 2-norm:
    ``tf.linalg.global_norm`` in the gradients' own dtype, compiled. Its result is kept
    unless it is not finite or so small that it may have underflowed; then the norm is
    computed again in float64 throughout, so float32 gradients with entries near 1e30 (or
    1e-30) neither overflow nor underflow, and a gradient that is really not finite still
    gives ``inf`` or ``nan``. Sparse gradients (``tf.IndexedSlices``) take the float64 path,
    with their repeated rows summed.

    Args:
        grads: gradients, each a tensor or ``None`` (skipped).
        norm_type: the order ``p`` of the norm, a number > 0 or ``inf``; not checked here
            (:func:`global_norm` checks it).
    """
    grads = [g for g in grads if g is not None]
    if not grads:
        return tf.zeros([], tf.float64)

    def exact():
        return _tensor_norm(tf.stack([_norm64(g, norm_type) for g in grads]), norm_type)

    dtypes = {g.dtype for g in grads}
    if norm_type != 2.0 or len(dtypes) != 1 or not grads[0].dtype.is_floating or any(
            isinstance(g, tf.IndexedSlices) for g in grads):
        return exact()
    fast = tf.cast(_fast_global_norm(grads), tf.float64)
    return tf.cond(_trustworthy(fast, grads[0].dtype), lambda: fast, exact)


def global_norm(grads, norm_type: float = 2.0) -> float:
    """The p-norm of all gradients taken together, as if concatenated into one vector.

    ``||g||_p = (sum_i sum_j |g_ij|^p)^(1/p)``; for ``norm_type=inf``, ``max_ij |g_ij|``.
    ``None`` entries are skipped; an empty list has norm 0. A non-finite entry gives a
    non-finite norm (``inf`` or ``nan``), never an exception: check the result.

    Args:
        grads: gradients, each a tensor or ``None`` (skipped).
        norm_type: the order ``p`` of the norm, a number > 0 or ``inf``.

    Raises:
        ValueError: ``norm_type`` is not a number > 0 (``inf`` allowed).
    """
    norm_type = check_positive("norm_type", norm_type, allow_inf=True)
    return float(total_norm(grads, norm_type))


def parameter_norms(model, grads, norm_type: float = 2.0) -> dict:
    """Gradient norm of each parameter: ``{parameter name: ||g||_p}``, in the model's order.

    ``None`` gradients are skipped.

    Args:
        model: a Keras model, e.g. from :func:`mlp` or :func:`rnn`.
        grads: one gradient (or ``None``) per trainable variable, in order.
        norm_type: the order ``p`` of the norm, a number > 0 or ``inf``.

    Raises:
        ValueError: ``grads`` is not aligned with the parameters, or a bad ``norm_type``.
    """
    norm_type = check_positive("norm_type", norm_type, allow_inf=True)
    grads = list(grads)
    names = parameter_names(model)
    if len(grads) != len(names):
        raise ValueError(f"expected one gradient per trainable parameter ({len(names)}), "
                         f"got {len(grads)}")
    present = [name for name, grad in zip(names, grads) if grad is not None]
    return dict(zip(present, _tensor_norms(grads, norm_type)))


def layer_norms(model, grads, norm_type: float = 2.0) -> dict:
    """Gradient norm of each layer: ``{layer name: ||gradients of its parameters||_p}``.

    A layer's name is its parameters' name without the last part (``dense3.weight`` and
    ``dense3.bias`` make ``dense3``), in the model's order. ``None`` gradients are skipped.

    Args:
        model: a Keras model, e.g. from :func:`mlp` or :func:`rnn`.
        grads: one gradient (or ``None``) per trainable variable, in order.
        norm_type: the order ``p`` of the norm, a number > 0 or ``inf``.

    Raises:
        ValueError: ``grads`` is not aligned with the parameters, or a bad ``norm_type``.
    """
    norm_type = check_positive("norm_type", norm_type, allow_inf=True)
    grads = list(grads)
    return layer_norms_from(parameter_names(model), grads, _tensor_norms(grads, norm_type),
                            norm_type)


class GradientMonitor(GradientNormRecorder):
    """Records the total and per-layer gradient 2-norms of ``model`` at every step.

    Pass it to :func:`train` (``monitor=...``) or call :meth:`record` in your own loop.
    It flags non-finite steps and spikes above ``spike_factor`` times the running median
    of recent norms, and plots itself (:meth:`plot`); see
    :class:`companion.core.diagnostics.GradientNormRecorder`.
    """

    layer_norms = staticmethod(layer_norms)
