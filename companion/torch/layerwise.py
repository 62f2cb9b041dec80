"""Pruning one layer at a time from the inputs it sees, PyTorch back end.

See :mod:`companion.core.layerwise`. The inputs of every ``nn.Linear`` are read by forward
hooks during one pass over the data, one batch at a time.
"""

from __future__ import annotations

import torch
from torch import nn

from ..core.layerwise import feature_square_sums, wanda_score
from .batches import input_arrays
from .layout import from_canonical, get_weights, trainable_parameters
from .runtime import as_tensor, measured_in_inference_mode

__all__ = ["wanda_scores"]


def _linear_input_square_sums(model, x, batch_size: int) -> dict:
    """``{id(weight): feature square sums of the layer's inputs}`` for every
    ``nn.Linear``, accumulated over the batches of ``x``."""
    sums = {}

    def recorder(weight):
        def record(module, inputs, output):
            batch = feature_square_sums(inputs[0].detach().cpu().numpy())
            sums[id(weight)] = sums.get(id(weight), 0) + batch
        return record

    handles = [module.register_forward_hook(recorder(module.weight))
               for module in model.modules() if isinstance(module, nn.Linear)]
    like = trainable_parameters(model)[0]
    try:
        with torch.no_grad():
            for xb in input_arrays(x, batch_size):
                model(as_tensor(xb, like))
    finally:
        for handle in handles:
            handle.remove()
    return sums


@measured_in_inference_mode
def wanda_scores(model, x, batch_size: int = 1024) -> list:
    """Wanda's scores ``|W_ij| * ||X_j||_2`` (Sun et al. 2023) of every ``nn.Linear``
    weight, from the inputs ``X`` the layer receives on ``x``.

    ``||X_j||_2`` is the 2-norm of input feature ``j`` over every example (and every
    position, for inputs ``(batch, T, d)``), accumulated batch by batch. Other parameters
    (biases, convolutions, recurrent weights) get ``None``, so pruning leaves them alone.
    Wanda compares the scores within each output row; :func:`nm_masks` and
    :func:`masks_from_scores` (``scope="layer"``) compare them within a group or a layer.
    Runs in inference mode and changes no buffer.

    Args:
        model: a ``torch.nn.Module``, e.g. from :func:`mlp` or :func:`transformer`.
        x: inputs (one example per row), or a data source whose batches are inputs or
            ``(x, y)`` pairs (``y`` is ignored).
        batch_size: examples per forward pass with arrays, an integer >= 1.

    Returns:
        One score tensor (or ``None``) per trainable parameter; higher means keep.

    Raises:
        ValueError: bad ``x`` or ``batch_size``, or a model without ``nn.Linear`` layers.
    """
    sums = _linear_input_square_sums(model, x, batch_size)
    if not sums:
        raise ValueError("wanda_scores scores the weights of nn.Linear layers; the model "
                         "has none")
    params = trainable_parameters(model)
    scores = [wanda_score(w, sums[id(p)]) if id(p) in sums else None
              for p, w in zip(params, get_weights(model))]
    return from_canonical(model, scores)
