"""Optimal Brain Surgeon and per-example gradients, TensorFlow back end.

:func:`obs_prune` computes each example's gradient here (the Jacobian of the per-example
losses, a chunk at a time) and hands them to :func:`companion.core.obs.obs_prune_arrays`,
which builds and inverts the block-diagonal empirical Fisher and prunes. The per-example
gradients also serve the empirical Fisher diagonal of :mod:`companion.tensorflow.curvature`
on models the closed forms do not cover.
"""

from __future__ import annotations

import numpy as np
import tensorflow as tf

from ..core.checks import check_positive, check_positive_int, check_sparsity
from ..core.obs import check_obs_memory, obs_prune_arrays
from .batches import _data, _example_count, _mean_loss, _numpy, checked_batches
from .layout import (_canonical_order, from_canonical, get_weights, set_weights,
                     trainable_parameters)
from .pruning import _prunable
from .runtime import compiled_for

__all__ = ["obs_prune"]


def _example_losses(output: tf.Tensor, target: tf.Tensor, loss) -> tf.Tensor:
    """Each example's own loss (its term of :func:`loss_value`'s mean), a vector; for a loss
    function, the function on each example alone."""
    if loss == "cross_entropy":
        return tf.nn.sparse_softmax_cross_entropy_with_logits(target, output)
    if loss == "mse":
        squared = tf.square(output - tf.reshape(target, tf.shape(output)))
        return tf.reduce_mean(tf.reshape(squared, [tf.shape(output)[0], -1]), axis=1)
    return tf.map_fn(lambda pair: _mean_loss(pair[1][None], pair[0][None], loss),
                     (target, output), fn_output_signature=output.dtype)


def _per_sample_function(model, loss: str, selected: tuple):
    """A ``tf.function`` ``(x, y) -> (k, n_selected)`` per-sample gradients, Keras order."""
    variables = [trainable_parameters(model)[i] for i in selected]

    def make():
        @tf.function(reduce_retracing=True)
        def per_sample_gradients(x, y):
            with tf.GradientTape() as tape:
                losses = _example_losses(model(x, training=False), y, loss)
            jacobian = tape.jacobian(losses, variables,
                                     unconnected_gradients=tf.UnconnectedGradients.ZERO)
            return tf.concat([tf.reshape(j, [tf.shape(x)[0], -1]) for j in jacobian], 1)

        return per_sample_gradients

    return compiled_for(model, ("per_sample", loss, selected), make)


def _per_sample_gradients(model, x, y, loss, batch_size: int, selected, as_numpy=True):
    """Yield per-sample gradients of the variables ``selected`` (indices), as NumPy arrays
    ``(k, n_selected)`` in the canonical flattening order, ``batch_size`` examples at a time;
    ``x, y`` are tensors, or a data source (``y`` is ``None``) read batch by batch.

    Row ``i`` is the gradient of example ``i``'s own loss (its term of the mean), computed
    for a whole chunk at once as the Jacobian of the per-example losses.
    """
    if y is None:
        for xb, yb in checked_batches(x, loss, _numpy):
            xb, yb = _data(model, xb, yb, loss)  # the labels checked against the model
            yield from _per_sample_gradients(model, xb, yb, loss, batch_size, selected,
                                             as_numpy)
        return
    selected = tuple(selected)
    order = _canonical_order(model, selected)
    function = _per_sample_function(model, loss, selected)
    for start in range(0, int(x.shape[0]), batch_size):
        chunk = function(x[start:start + batch_size], y[start:start + batch_size])
        yield chunk.numpy()[:, order] if as_numpy else tf.gather(chunk, order, axis=1)


def _gram(chunk: tf.Tensor, blocks: int, block_size: int) -> tuple:
    """:func:`companion.core.obs.gram_blocks` by one batched product on the chunk's device."""
    count, n = chunk.shape
    chunk = tf.pad(chunk, [[0, 0], [0, blocks * block_size - n]])
    g = tf.transpose(tf.reshape(chunk, [count, blocks, block_size]), [1, 0, 2])  # (nb, k, B)
    return tf.linalg.matmul(g, g, transpose_a=True).numpy(), count


def obs_prune(model, x, y=None, sparsity: float | None = None, damping: float = 1e-4,
              block_size: int = 128, loss="cross_entropy", batch_size: int = 256,
              max_bytes: float = 2**30) -> list:
    """One-shot Optimal Brain Surgeon pruning with a block-diagonal empirical Fisher.

    OBS (Hassibi & Stork 1993) removes the weights whose removal costs least to second order
    and moves the remaining weights to compensate. The Hessian is replaced by the damped
    empirical Fisher ``F = damping I + (1/N) sum_i g_i g_i^T`` of the eligible weights
    (variables that :func:`companion.core.pruning.is_weight` calls weights, as in
    :func:`masks_from_scores`, flattened in
    the canonical order), kept in diagonal blocks of ``block_size`` consecutive weights and
    inverted by Woodbury updates starting from ``I / damping`` (WoodFisher, Singh & Alistarh
    2020; see :func:`companion.core.obs.woodbury_block_inverse`). Then:

    1. every eligible weight gets the OBS saliency ``w_q^2 / (2 [F^-1]_qq)``, and the
       ``round(sparsity * n)`` lowest over all eligible weights are pruned (global ranking,
       ties broken by position, exactly as :func:`masks_from_scores`);
    2. within each block, the exact multi-weight OBS update for the set ``Q`` pruned in that
       block, ``dw = -F^-1[:, Q] (F^-1[Q, Q])^-1 w_Q``, is added to the block's weights
       (:func:`companion.core.obs.obs_update`; weights do not compensate across
       blocks); pruned weights are then exactly zero.

    The ranking uses single-weight saliencies (WoodFisher's choice), while the update
    accounts for the correlations among the weights pruned together in a block. Biases are
    neither pruned nor updated. Per-sample gradients are vectorised (a batch Jacobian),
    ``batch_size`` examples at a time. The model is updated in place; every argument is
    checked first, and on any error the model is unchanged.

    Args:
        model: a Keras model, e.g. from :func:`mlp` or :func:`rnn`.
        x: the inputs, an array-like with one example per row (axis 0), or a data source
            of ``(x, y)`` batches such as a ``tf.data.Dataset`` (``y`` is then ``None``):
            read once to count the examples, then once more for their gradients, a batch at
            a time.
        y: class labels (``"cross_entropy"``) or targets (``"mse"``), as in :func:`loss_value`.
        sparsity: the fraction of eligible weights to remove, a number in ``[0, 1)``.
        damping: ``lambda`` of ``F``, a finite number > 0; large values make the saliency
            ``~ lambda w^2 / 2`` and the update ``~ 0``, i.e. magnitude pruning.
        block_size: weights per diagonal block, an integer >= 1. Time grows about
            linearly with it, memory as ``n * block_size``.
        loss: ``"cross_entropy"``, ``"mse"`` or a loss function (see :func:`loss_value`).
        batch_size: examples per vectorised chunk of per-sample gradients (memory only).
        max_bytes: refuse (before any work) if the estimated working memory
            (:func:`companion.core.obs.check_obs_memory`) exceeds it; default 1 GiB.

    Returns:
        the masks, as :func:`masks_from_scores` gives them (a 0/1 tensor per weight, ``None``
        for biases).

    Raises:
        ValueError: ``sparsity`` outside ``[0, 1)``, ``damping`` not a finite number > 0,
            ``block_size`` or ``batch_size`` not an integer >= 1, a model without weight
            matrices, too much memory needed, an unknown loss, bad ``(x, y)``, or non-finite
            gradients. Nothing is changed.
        TypeError: ``sparsity`` or ``damping`` not a number.
    """
    if sparsity is None:
        raise TypeError("obs_prune needs sparsity, the fraction of weights to prune")
    sparsity = check_sparsity(sparsity)
    damping = check_positive("damping", damping)
    block_size = check_positive_int("block_size", block_size)
    batch_size = check_positive_int("batch_size", batch_size)
    x, y = _data(model, x, y, loss)
    count = int(x.shape[0]) if y is not None else _example_count(x, loss)
    variables = trainable_parameters(model)
    eligible = _prunable(model)
    if not any(eligible):
        raise ValueError("obs_prune needs weights (parameters with two or more dimensions, "
                         "not named bias); the model has none")
    n = sum(int(np.prod(v.shape, dtype=np.int64)) for v, ok in zip(variables, eligible) if ok)
    check_obs_memory(n, block_size, min(batch_size, count), max_bytes)
    chunks = _per_sample_gradients(model, x, y, loss, batch_size,
                                   [i for i, ok in enumerate(eligible) if ok], as_numpy=False)
    weights, masks = obs_prune_arrays(get_weights(model), eligible, chunks, count, sparsity,
                                      damping, block_size, _gram)
    masks = from_canonical(model, masks)
    set_weights(model, weights)
    return masks
