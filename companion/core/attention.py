"""Framework-neutral part of the tiny character-level transformer: argument checks, the
parameter layout and the initial weights in the canonical layout (NumPy).

Both back ends build :func:`companion.torch.transformer` and
:func:`companion.tensorflow.transformer` from these arrays, so the same seed gives the
same weights, and the same outputs, in both.
"""

from __future__ import annotations

import numpy as np

from .checks import check_choice, check_positive_int

NORM_POSITIONS = ("pre", "post")
# The frameworks' LayerNorm defaults differ (torch 1e-5, Keras 1e-3); both use torch's.
LAYER_NORM_EPSILON = 1e-5
# GPT-2's initialisation: every weight matrix and embedding N(0, 0.02^2).
INIT_STD = 0.02
MLP_EXPANSION = 4


def check_transformer_args(vocab, d_model, heads, layers, context, norm_position) -> None:
    """Validate :func:`transformer`'s sizes and ``norm_position``.

    Raises:
        ValueError: a size that is not an integer >= 1, ``d_model`` not divisible by
            ``heads``, or an unknown ``norm_position`` (``"pre"`` or ``"post"``).
    """
    for what, value in (("vocab", vocab), ("d_model", d_model), ("heads", heads),
                        ("layers", layers), ("context", context)):
        check_positive_int(what, value)
    if d_model % heads:
        raise ValueError(f"d_model ({d_model}) must be divisible by heads ({heads}): each "
                         "head gets d_model / heads features")
    check_choice("norm_position", norm_position, NORM_POSITIONS)


def check_sequence_length(steps, context: int) -> None:
    """Raise ``ValueError`` if a sequence of ``steps`` tokens (``None``: unknown while
    tracing) is longer than the ``context`` the position embedding covers."""
    if steps is not None and steps > context:
        raise ValueError(f"sequences may be at most context={context} tokens long, got {steps}")


def transformer_layout(vocab: int, d_model: int, layers: int, context: int,
                       norm_position: str) -> list:
    """``(layer name, kind, canonical shapes)`` of every layer, in parameter order.

    ``kind`` is ``"embedding"`` (one ``(rows, d)`` table), ``"dense"`` (``(out, in)`` weight
    and bias) or ``"norm"`` (scale and shift). The final LayerNorm exists in the pre-LN
    arrangement only (Xiong et al. 2020).
    """
    d, hidden = d_model, MLP_EXPANSION * d_model
    layout = [("token", "embedding", [(vocab, d)]), ("position", "embedding", [(context, d)])]
    for i in range(layers):
        layout += [(f"block{i}_norm1", "norm", [(d,), (d,)])]
        layout += [(f"block{i}_{part}", "dense", [(d, d), (d,)])
                   for part in ("query", "key", "value", "out")]
        layout += [(f"block{i}_norm2", "norm", [(d,), (d,)]),
                   (f"block{i}_up", "dense", [(hidden, d), (hidden,)]),
                   (f"block{i}_down", "dense", [(d, hidden), (d,)])]
    if norm_position == "pre":
        layout.append(("final_norm", "norm", [(d,), (d,)]))
    layout.append(("head", "dense", [(vocab, d), (vocab,)]))
    return layout


def transformer_initial_weights(layout: list, seed: int) -> list:
    """Canonical initial weights: embeddings and weight matrices ``N(0, 0.02^2)`` (GPT-2),
    biases and LayerNorm shifts 0, LayerNorm scales 1; float32."""
    rng = np.random.default_rng(seed)
    arrays = []
    for _, kind, shapes in layout:
        if kind == "norm":
            arrays += [np.ones(shapes[0]), np.zeros(shapes[1])]
        else:
            arrays.append(INIT_STD * rng.standard_normal(shapes[0]))
            arrays += [np.zeros(shape) for shape in shapes[1:]]
    return [a.astype(np.float32) for a in arrays]
