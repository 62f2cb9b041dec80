"""Pruning core, TensorFlow back end: scores, masks and applying them.

Scores and masks are lists aligned with :func:`trainable_parameters`, in each
variable's own (Keras) layout; masks are 0/1 tensors (``None`` for a variable left whole).
"""

from __future__ import annotations

import keras
import numpy as np
import tensorflow as tf

from ..core.checks import (check_choice, check_flag, check_masks, check_matching_shapes,
                           check_sparsity, check_tensor_list)
from ..core.pruning import (MASK_SCOPES, CompressedSize, MovementScoreRecorder, SparsityReport,
                            is_weight, lowest_score_masks, random_canonical_scores)
from .batches import _example_count, numpy_batches
from .layout import (from_canonical, get_weights, parameter_names, to_canonical,
                     trainable_parameters)
from .training import gradients

__all__ = ["magnitude_scores", "random_scores", "gradient_scores", "snip_scores",
           "taylor_scores", "masks_from_scores", "apply_masks", "prune", "KeepMasks",
           "sparsity_report", "compressed_size", "MovementScores"]


def magnitude_scores(model) -> list:
    """Magnitude saliency ``s_q = |w_q|`` of every parameter entry (Han et al. 2015).

    Args:
        model: a Keras model, e.g. from :func:`mlp` or :func:`rnn`.
    """
    return [tf.abs(v) for v in trainable_parameters(model)]


def random_scores(model, seed: int = 0) -> list:
    """Uniform random scores in ``[0, 1)``: pruning by them is random pruning, the baseline.

    Drawn in NumPy in the canonical layout from ``seed``, so both back ends prune the same
    entries.

    Args:
        model: a Keras model, e.g. from :func:`mlp` or :func:`rnn`.
        seed: the seed of the draw.
    """
    shapes = [tuple(a.shape) for a in get_weights(model)]
    return from_canonical(model, random_canonical_scores(shapes, seed))


def _batch_gradients(model, x, y, batch_size: int, loss):
    """Yield ``(n_b / n, [dL_b/dθ])`` for the batches ``b`` of arrays or of a data source
    (counted first: one more pass over it).

    Sparse gradients (``tf.IndexedSlices``, e.g. a Keras ``Embedding``'s) are made dense,
    rows of repeated indices summed: every entry gets a score.
    """
    batches = numpy_batches(x, y, batch_size, loss)
    count = len(x) if y is not None else _example_count(x, loss)
    for xb, yb in batches:
        yield len(xb) / count, [tf.convert_to_tensor(g) for g in gradients(model, xb, yb, loss)]


def gradient_scores(model, x, y=None, *, batch_size: int = 1000,
                    loss: str = "cross_entropy") -> list:
    """Gradient magnitude ``s_q = |dL/dw_q|`` of the mean loss over all of ``(x, y)``.

    ``dL/dw = sum_b (n_b / n) dL_b/dw`` is accumulated over consecutive batches ``b`` (of
    ``batch_size`` rows, or a data source's batches), so the result does not depend on
    how the data are batched. Near a minimum every gradient is small,
    the important weights' too: this is the criterion Chapter 3 shows failing.

    Args:
        model: a Keras model, e.g. from :func:`mlp` or :func:`rnn`.
        x: the inputs, an array-like with one example per row (axis 0), or a data source
            of ``(x, y)`` batches such as a ``tf.data.Dataset`` (then ``y`` is ``None``).
        y: integer class labels (``"cross_entropy"``) or targets (``"mse"``).
        batch_size: examples per gradient evaluation, an integer >= 1 (bounds memory only).
        loss: ``"cross_entropy"``, ``"mse"`` or a loss function (as in :func:`gradients`).

    Raises:
        ValueError, TypeError: bad data, loss or batch size (as in :func:`gradients`).
    """
    total = None
    for share, grads in _batch_gradients(model, x, y, batch_size, loss):
        scaled = [share * g for g in grads]
        total = scaled if total is None else [t + g for t, g in zip(total, scaled)]
    return [tf.abs(t) for t in total]


def snip_scores(model, x, y=None, *, batch_size: int = 1000, loss: str = "cross_entropy") -> list:
    """SNIP connection sensitivity ``s_q = |dL/dw_q * w_q|`` (Lee et al. 2019).

    Equal to ``|dL/dc_q|`` at ``c = 1`` for a multiplicative gate ``c_q`` on each weight
    (``w_q -> c_q w_q``): how much the loss changes when the connection is scaled. The
    gradient is that of the mean loss over all of ``(x, y)``, as in
    :func:`gradient_scores`.

    Args:
        model: a Keras model, e.g. from :func:`mlp` or :func:`rnn`.
        x: the inputs, an array-like with one example per row (axis 0), or a data source
            of ``(x, y)`` batches such as a ``tf.data.Dataset`` (then ``y`` is ``None``).
        y: integer class labels (``"cross_entropy"``) or targets (``"mse"``).
        batch_size: examples per gradient evaluation, an integer >= 1 (bounds memory only).
        loss: ``"cross_entropy"``, ``"mse"`` or a loss function (as in :func:`gradients`).

    Raises:
        ValueError, TypeError: bad data, loss or batch size (as in :func:`gradients`).
    """
    grads = gradient_scores(model, x, y, batch_size=batch_size, loss=loss)
    return [g * tf.abs(v) for g, v in zip(grads, trainable_parameters(model))]


def taylor_scores(model, x, y=None, *, batch_size: int = 64, loss: str = "cross_entropy") -> list:
    """First-order Taylor importance ``s_q = mean_b (dL_b/dw_q * w_q)^2`` (Molchanov et al. 2019).

    ``(g_q w_q)^2`` estimates the squared loss change of removing ``w_q``; squaring each
    minibatch's estimate before averaging keeps weights whose gradient changes sign from
    batch to batch (their mean gradient, which :func:`snip_scores` uses, cancels). So
    here ``batch_size`` matters: it is the minibatch of the estimate (the last one may be
    smaller).

    Args:
        model: a Keras model, e.g. from :func:`mlp` or :func:`rnn`.
        x: the inputs, an array-like with one example per row (axis 0), or a data source
            of ``(x, y)`` batches such as a ``tf.data.Dataset`` (then ``y`` is ``None``).
        y: integer class labels (``"cross_entropy"``) or targets (``"mse"``).
        batch_size: examples per minibatch estimate, an integer >= 1.
        loss: ``"cross_entropy"``, ``"mse"`` or a loss function (as in :func:`gradients`).

    Raises:
        ValueError, TypeError: bad data, loss or batch size (as in :func:`gradients`).
    """
    variables = [tf.convert_to_tensor(v) for v in trainable_parameters(model)]
    total, count = None, 0
    for _, grads in _batch_gradients(model, x, y, batch_size, loss):
        squares = [tf.square(g * v) for g, v in zip(grads, variables)]
        total = squares if total is None else [t + q for t, q in zip(total, squares)]
        count += 1
    return [t / count for t in total]


def _check_shapes(model, tensors, what: str) -> list:
    return check_matching_shapes(parameter_names(model), trainable_parameters(model),
                                 tensors, what)


def _as_tensors(scores) -> list:
    """NumPy arrays (e.g. scores computed by hand) as tensors; tensors and None as they are."""
    return [t if t is None or tf.is_tensor(t) else tf.convert_to_tensor(np.asarray(t))
            for t in check_tensor_list("scores", scores)]


def _prunable(model, prune_biases: bool = False) -> list:
    """One flag per trainable parameter: may pruning remove its entries?

    Weights may (see :func:`companion.core.pruning.is_weight`: two or more dimensions and
    not named ``bias*``, so recurrent biases such as Keras GRU's 2-D ``bias`` are not
    weights); biases and other parameters only if ``prune_biases``.

    Args:
        model: the model whose trainable parameters are flagged.
        prune_biases: flag every parameter, biases too.
    """
    return [prune_biases or is_weight(name, len(param.shape)) for name, param in
            zip(parameter_names(model), trainable_parameters(model))]


def masks_from_scores(model, scores, sparsity: float, scope: str = "global",
                      prune_biases: bool = False) -> list:
    """Masks that prune the lowest-scoring weights: exactly ``round(sparsity * n)`` of them.

    Weights are the variables with two or more dimensions, except recurrent biases
    (:func:`companion.core.pruning.is_weight`; biases too if ``prune_biases``) whose score
    is not ``None``; the others get mask ``None``. With
    ``scope="global"`` all eligible weights compete in one ranking (the count is over all of
    them, as ``torch.nn.utils.prune.global_unstructured``); with ``"layer"`` each tensor
    loses ``round(sparsity * n_i)`` of its own entries (as ``l1_unstructured``); with
    ``"row"`` each output row (every weight feeding one output unit) loses
    ``round(sparsity * K)`` of its ``K`` entries, as Wanda prunes. Ties are broken by
    position in the canonical layout, so both back ends give the same masks.

    Args:
        model: a Keras model, e.g. from :func:`mlp` or :func:`rnn`.
        scores: one score tensor (or ``None``) per trainable variable, in order, each of
            its variable's shape; higher means keep.
        sparsity: the fraction of eligible weights to prune, a number in ``[0, 1)``.
        scope: ``"global"`` (one ranking over all eligible weights), ``"layer"`` or
            ``"row"`` (see :func:`masks_from_scores`).
        prune_biases: also prune biases (see :func:`companion.core.pruning.is_weight`).

    Raises:
        ValueError: sparsity outside [0, 1), an unknown scope, scores not aligned with the
            parameters or of the wrong shape, or non-finite scores. Nothing is changed.
        TypeError: ``prune_biases`` not a bool, or ``scores`` a single tensor.
    """
    sparsity = check_sparsity(sparsity)
    check_choice("scope", scope, MASK_SCOPES)
    prune_biases = check_flag("prune_biases", prune_biases)
    scores = _check_shapes(model, _as_tensors(scores), "score")
    eligible = [s is not None and ok for s, ok in zip(scores, _prunable(model, prune_biases))]
    canonical = to_canonical(model, scores)
    return from_canonical(model, lowest_score_masks(canonical, eligible, sparsity, scope))


def apply_masks(model, masks) -> None:
    """Zero the pruned entries in place: ``w <- w * m`` for every mask that is not ``None``.

    Args:
        model: a Keras model, e.g. from :func:`mlp` or :func:`rnn`.
        masks: one 0/1 tensor (or ``None``, left whole) per trainable variable, in order,
            each of its variable's shape, e.g. from :func:`masks_from_scores`.

    Raises:
        ValueError: masks not aligned with the parameters, of the wrong shape, or holding
            values other than 0 and 1; nothing is changed.
    """
    masks = check_masks(parameter_names(model), trainable_parameters(model), masks)
    for variable, mask in zip(trainable_parameters(model), masks):
        if mask is not None:
            variable.assign(variable * tf.cast(mask, variable.dtype))


def prune(model, scores, sparsity: float, scope: str = "global",
          prune_biases: bool = False) -> list:
    """One-shot pruning: :func:`masks_from_scores`, then :func:`apply_masks`; returns the masks.

    For example ``prune(model, magnitude_scores(model), 0.9)`` zeroes the 90 % of weights
    with the smallest magnitude, ranked across all layers.

    Args:
        model: a Keras model, e.g. from :func:`mlp` or :func:`rnn`.
        scores: one score tensor (or ``None``) per trainable variable, in order, each of
            its variable's shape; higher means keep.
        sparsity: the fraction of eligible weights to prune, a number in ``[0, 1)``.
        scope: ``"global"`` (one ranking over all eligible weights), ``"layer"`` or
            ``"row"`` (see :func:`masks_from_scores`).
        prune_biases: also prune biases (see :func:`companion.core.pruning.is_weight`).

    Raises:
        ValueError: as in :func:`masks_from_scores`; nothing is changed.
    """
    masks = masks_from_scores(model, scores, sparsity, scope, prune_biases)
    apply_masks(model, masks)
    return masks


class KeepMasks(keras.callbacks.Callback):
    """Keep pruned weights at zero in Keras ``model.fit``: a callback.

    At the start of training and after every batch the weights are multiplied by their
    masks, which undoes whatever the optimizer step did to pruned entries (gradient,
    momentum, weight decay). So they are exactly zero after each step::

        masks = ctf.prune(model, ctf.magnitude_scores(model), 0.9)
        model.fit(x, y, epochs=3, callbacks=[ctf.KeepMasks(masks)])

    It needs ``steps_per_execution=1`` (Keras' default), since callbacks run between
    executions. In a hand-written ``tf.GradientTape`` loop, call :func:`apply_masks` after
    each ``optimizer.apply_gradients`` instead.

    A callback cannot reach the gradients, so the optimizer's state (momentum, Adam's
    moments) still accumulates at pruned entries; the weights stay zero all the same, but
    that state would move them if the masks were lifted. To zero the pruned gradients too,
    as ``keep_masks_after_step`` does in PyTorch, compile with an optimizer that masks
    them first (dense gradients; a gradient list is aligned with the trainable variables)::

        mask_grads = lambda grads: [g if m is None else g * m
                                    for g, m in zip(grads, masks)]
        sgd = keras.optimizers.SGD(0.1, 0.9)
        model.compile(optimizer=ctf.clipping_optimizer(sgd, mask_grads), loss=...)
        model.fit(x, y, callbacks=[ctf.KeepMasks(masks)])

    Args:
        masks: one 0/1 tensor (or ``None``) per trainable variable of the model that
            ``fit`` trains, e.g. from :func:`prune`.

    Raises:
        ValueError: (when ``fit`` starts) masks not aligned with the model's trainable
            variables, of the wrong shape, or not 0/1; the model is not changed.
    """

    def __init__(self, masks):
        super().__init__()
        self._masks = list(masks)

    def set_model(self, model):
        variables = trainable_parameters(model)
        masks = check_masks(parameter_names(model), variables, self._masks)
        self._pairs = [(v, tf.cast(m, v.dtype)) for v, m in zip(variables, masks)
                       if m is not None]
        super().set_model(model)

    def _apply(self):
        for variable, mask in self._pairs:
            variable.assign(variable * mask)

    def on_train_begin(self, logs=None):
        self._apply()

    def on_train_batch_end(self, batch, logs=None):
        self._apply()


def sparsity_report(model) -> SparsityReport:
    """How many entries of each parameter are exactly zero, and the totals.

    ``print(sparsity_report(model))`` shows a table; ``.weights`` is the sparsity over the
    weight matrices (what pruning removes), ``.total`` over every parameter.

    Args:
        model: a Keras model, e.g. from :func:`mlp` or :func:`rnn`.
    """
    return SparsityReport.from_arrays(parameter_names(model), get_weights(model))


def compressed_size(model, index_bits: int = 32) -> CompressedSize:
    """Bytes of the model's weights stored dense and in compressed sparse row (CSR) form.

    Each parameter of two or more dimensions, canonical shape ``(out, in, k...)``, is a
    matrix of ``out`` rows and ``in * k...`` columns; CSR stores its ``nnz`` non-zero
    values, one ``index_bits``-wide column index per value and ``out + 1`` row pointers::

        sparse = (nnz * itemsize                   # the values
                  + nnz * index_bits / 8          # their column indices
                  + (out + 1) * pointer_bits / 8)  # the row pointers

    (row pointers are ``index_bits`` wide unless ``nnz`` needs more). Biases are stored
    dense. ``print(compressed_size(model))`` shows a table; ``.dense_bytes``,
    ``.sparse_bytes`` and ``.ratio`` (dense / sparse) are the totals. See
    :func:`companion.core.pruning.csr_bytes`.

    Args:
        model: a Keras model, e.g. from :func:`mlp` or :func:`rnn`.
        index_bits: the width of a column index: 8, 16, 32 or 64 bits (unsigned).

    Raises:
        ValueError: ``index_bits`` not one of 8, 16, 32, 64, or too narrow to address the
            columns of some weight matrix (``2**index_bits`` of them at most).
    """
    return CompressedSize.from_arrays(parameter_names(model), get_weights(model), index_bits)


class MovementScores(MovementScoreRecorder):
    """Movement pruning's scores ``S = -sum_t g_t * w_t`` (Sanh et al. 2020), accumulated
    as ``train``'s ``monitor``; see :class:`companion.core.pruning.MovementScoreRecorder`.
    """

    def _terms(self, grads) -> list:
        variables = trainable_parameters(self.model)
        grads = _check_shapes(self.model, [tf.convert_to_tensor(g) for g in grads],
                              "gradient")
        return [-g * tf.convert_to_tensor(v) for g, v in zip(grads, variables)]

    @staticmethod
    def _copy(t):
        return tf.identity(t)
