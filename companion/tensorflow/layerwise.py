"""Pruning one layer at a time from the inputs it sees, TensorFlow back end.

See :mod:`companion.core.layerwise`. The inputs of every ``Dense`` layer (nested and
subclassed models included) are read during one pass over the data, one batch at a time,
by wrapping each layer's ``call`` for the pass: Keras' counterpart of a PyTorch forward
hook.
"""

from __future__ import annotations

import keras

from ..core.layerwise import feature_square_sums, wanda_score
from .batches import input_arrays
from .layout import from_canonical, get_weights, trainable_parameters
from .runtime import as_tensor

__all__ = ["wanda_scores"]


def _recording_call(layer, sums: dict):
    original = layer.call

    def call(inputs, *args, **kwargs):
        batch = feature_square_sums(keras.ops.convert_to_numpy(inputs))
        sums[id(layer.kernel)] = sums.get(id(layer.kernel), 0) + batch
        return original(inputs, *args, **kwargs)
    return call


def _dense_input_square_sums(model, x, batch_size: int) -> dict:
    """``{id(kernel): feature square sums of the layer's inputs}`` for every ``Dense``
    layer, accumulated over the batches of ``x``."""
    dense = [layer for layer in model._flatten_layers(include_self=False)
             if isinstance(layer, keras.layers.Dense)]
    like = trainable_parameters(model)[0]
    sums = {}
    for layer in dense:
        layer.call = _recording_call(layer, sums)  # an instance attribute, for this pass
    try:
        for xb in input_arrays(x, batch_size):
            model(as_tensor(xb, like), training=False)
    finally:
        for layer in dense:
            del layer.call  # back to the class's own
    return sums


def wanda_scores(model, x, batch_size: int = 1024) -> list:
    """Wanda's scores ``|W_ij| * ||X_j||_2`` (Sun et al. 2023) of every ``Dense`` kernel,
    from the inputs ``X`` the layer receives on ``x``.

    ``||X_j||_2`` is the 2-norm of input feature ``j`` over every example (and every
    position, for inputs ``(batch, T, d)``), accumulated batch by batch. Other variables
    (biases, convolutions, recurrent kernels) get ``None``, so pruning leaves them alone.
    Wanda compares the scores within each output row; :func:`nm_masks` and
    :func:`masks_from_scores` (``scope="layer"``) compare them within a group or a layer.
    Runs in inference mode (``training=False``).

    Args:
        model: a Keras model, e.g. from :func:`mlp` or :func:`transformer`.
        x: inputs (one example per row), or a data source whose batches are inputs or
            ``(x, y)`` pairs (``y`` is ignored).
        batch_size: examples per forward pass with arrays, an integer >= 1.

    Returns:
        One score tensor (or ``None``) per trainable variable; higher means keep.

    Raises:
        ValueError: bad ``x`` or ``batch_size``, or a model without ``Dense`` layers.
    """
    sums = _dense_input_square_sums(model, x, batch_size)
    if not sums:
        raise ValueError("wanda_scores scores the kernels of Dense layers; the model has "
                         "none")
    variables = trainable_parameters(model)
    scores = [wanda_score(w, sums[id(v)]) if id(v) in sums else None
              for v, w in zip(variables, get_weights(model))]
    return from_canonical(model, scores)
