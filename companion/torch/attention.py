"""A tiny character-level transformer (decoder only, causal self-attention), PyTorch.

Small and readable rather than fast: every layer is a plain ``nn.Linear``,
``nn.LayerNorm`` or ``nn.Embedding`` attribute of one module, named as in the TensorFlow
back end, so parameters line up one to one and :func:`set_weights` moves them across.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from ..core.checks import resolve_seed
from ..core.attention import (LAYER_NORM_EPSILON, check_sequence_length,
                                check_transformer_args,
                                transformer_initial_weights, transformer_layout)
from .layout import set_weights
from .runtime import device

__all__ = ["transformer", "Transformer", "causal_attention"]


def causal_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                     heads: int) -> torch.Tensor:
    """Multi-head causal self-attention of ``(batch, T, d)`` projections.

    Per head (``d_h = d / heads`` features): ``softmax(q k^T / sqrt(d_h) + M) v`` with
    ``M[s, t] = -inf`` for ``t > s`` (a position sees only itself and the past); the heads'
    outputs are concatenated back to ``(batch, T, d)``.
    """
    batch, steps, d = q.shape
    q, k, v = (t.reshape(batch, steps, heads, d // heads).transpose(1, 2) for t in (q, k, v))
    scores = q @ k.transpose(-2, -1) / math.sqrt(d // heads)
    future = torch.ones(steps, steps, dtype=torch.bool, device=q.device).triu(1)
    weights = torch.softmax(scores.masked_fill(future, float("-inf")), dim=-1)
    return (weights @ v).transpose(1, 2).reshape(batch, steps, d)


class Transformer(nn.Module):
    """See :func:`transformer`."""

    def __init__(self, layout: list, heads: int, norm_position: str):
        super().__init__()
        self.heads, self.norm_position = heads, norm_position
        self.blocks = sum(name.endswith("_norm1") for name, _, _ in layout)
        for name, kind, shapes in layout:
            if kind == "embedding":
                layer = nn.Embedding(*shapes[0])
            elif kind == "norm":
                layer = nn.LayerNorm(shapes[0][0], eps=LAYER_NORM_EPSILON)
            else:
                layer = nn.Linear(shapes[0][1], shapes[0][0])
            self.add_module(name, layer)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        check_sequence_length(tokens.shape[1], self.position.num_embeddings)
        tokens = tokens.long()  # the companion's helpers hand inputs over as floats
        x = self.token(tokens) + self.position.weight[:tokens.shape[1]]
        for i in range(self.blocks):
            x = self._residual(x, i, "norm1", self._attention)
            x = self._residual(x, i, "norm2", self._mlp)
        if self.norm_position == "pre":
            x = self.final_norm(x)
        return self.head(x)

    def _part(self, i: int, name: str) -> nn.Module:
        return getattr(self, f"block{i}_{name}")

    def _residual(self, x, i: int, norm: str, sublayer):
        """Pre-LN ``x + f(LN(x))`` or post-LN ``LN(x + f(x))``."""
        norm = self._part(i, norm)
        if self.norm_position == "pre":
            return x + sublayer(norm(x), i)
        return norm(x + sublayer(x, i))

    def _attention(self, x, i: int):
        mixed = causal_attention(self._part(i, "query")(x), self._part(i, "key")(x),
                                 self._part(i, "value")(x), self.heads)
        return self._part(i, "out")(mixed)

    def _mlp(self, x, i: int):
        return self._part(i, "down")(torch.nn.functional.gelu(self._part(i, "up")(x)))


def transformer(vocab: int, d_model: int, heads: int, layers: int, context: int,
                norm_position: str = "pre", seed: int | None = None) -> Transformer:
    """A tiny decoder-only transformer: token ids ``(batch, T)``, ``T <= context``, to
    next-token logits ``(batch, T, vocab)``.

    ``x_0 = E[tokens] + P[:T]`` (learned token and position embeddings); each of the
    ``layers`` blocks applies causal multi-head self-attention (see
    :func:`causal_attention`; projections ``query, key, value, out``) and an MLP
    ``down(gelu(up(x)))`` (width ``4 d_model``, exact erf GELU), each inside a residual
    connection with a LayerNorm (eps 1e-5):

    * ``"pre"`` (GPT-2; Xiong et al. 2020): ``x + f(LN(x))``, and a final LayerNorm;
    * ``"post"`` (Vaswani et al. 2017): ``LN(x + f(x))``.

    The logits are ``head(x)``. No dropout. Weights as
    :func:`companion.core.attention.transformer_initial_weights` (GPT-2's
    ``N(0, 0.02^2)``); parameters ``token.weight, position.weight, block0_norm1.weight,
    ...`` in the canonical layout.

    Args:
        vocab: number of tokens (characters), an integer >= 1.
        d_model: width of the residual stream, an integer >= 1 divisible by ``heads``.
        heads: number of attention heads, an integer >= 1.
        layers: number of blocks, an integer >= 1.
        context: longest sequence, an integer >= 1.
        norm_position: ``"pre"`` or ``"post"``.
        seed: seed of the initial weights; ``None`` draws one from NumPy's global generator.

    Raises:
        ValueError: a size < 1, ``d_model`` not divisible by ``heads``, or an unknown
            ``norm_position``.
    """
    check_transformer_args(vocab, d_model, heads, layers, context, norm_position)
    layout = transformer_layout(vocab, d_model, layers, context, norm_position)
    model = Transformer(layout, heads, norm_position).to(device())
    set_weights(model, transformer_initial_weights(layout, resolve_seed(seed)))
    return model
