"""Curvature diagonals by the layer-wise closed forms, shared by both back ends.

For a network that is a chain of dense layers ``z_l = W_l a_l + b_l`` (or convolutions) and
elementwise activations ``a_{l+1} = phi_l(z_l)``, the diagonals of the empirical Fisher, of the
generalised Gauss-Newton matrix (GGN) and of the Hessian of the mean loss
``L = (1/N) sum_i l_i`` need no per-example gradients and no Hessian-vector products: one
forward pass and one backward pass of a few matrices per example give them, as BackPACK
(Dangel et al. 2020) computes ``SumGradSquared``, ``DiagGGNExact`` and ``DiagHessian``:

* **empirical Fisher**: example ``i``'s gradient of ``W_l`` is the outer product
  ``delta_i a_i^T`` of the gradient ``delta_i = dl_i/dz_l`` and the layer's input, so
  ``(1/N) sum_i g_i^2 = (1/N) (delta^2)^T (a^2)`` (squares elementwise), one matrix product
  (a convolution shares its weight across positions, so there each example's gradient is
  formed from the unfolded input patches, as BackPACK does, and squared);
* **GGN** ``G = (1/N) sum_i J_i^T Lambda_i J_i``, ``J_i`` the Jacobian of the model's
  output and ``Lambda_i`` the Hessian of ``l_i`` in the output, factorised as
  ``Lambda_i = S_i S_i^T`` (softmax cross-entropy: ``S = diag(sqrt p) - p sqrt(p)^T``;
  mean squared error over ``C`` outputs: ``S = sqrt(2/C) I``). The ``C`` columns of ``S_i``
  are backpropagated like gradients, ``V <- (V W_l) * phi'(z)``, and at each layer
  ``diag G_W = (1/N) sum_i sum_k (V_ik^2)^T a_i^2``;
* **Hessian** ``H = G + (1/N) sum_i sum_l J_{i,l}^T diag(phi''(z_l) * dl_i/da_{l+1}) J_{i,l}``:
  each activation with a second derivative adds a diagonal term, split into its positive
  and negative parts ``r = r+ - r-``, each backpropagated as a factor ``diag(sqrt(r+-))`` and
  counted with its sign. For piecewise-linear activations (ReLU, identity) ``phi'' = 0``
  almost everywhere and the Hessian's diagonal *is* the GGN's.

:func:`backpropagate_diagonals` does this on the framework's own tensors (it only uses
arithmetic operators and the ``einsum`` it is given), so both back ends run the same lines;
the back ends walk the model, compute the forward quantities and the output factor, and
sum the chunks in float64 NumPy. Other models take the general paths
(:func:`exact_diagonal_from_rows`: one Hessian-vector product per parameter, refused above
:data:`EXACT_DIAGONAL_LIMIT` parameters).
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass

import numpy as np
from tqdm import tqdm

from .checks import check_choice

__all__ = ["DIAGONAL_KINDS", "EXACT_DIAGONAL_LIMIT", "LayerRecord", "smooth_derivatives",
           "backpropagate_diagonals", "check_finite_diagonal", "check_exact_diagonal_size",
           "exact_diagonal_from_rows"]

DIAGONAL_KINDS = ("fisher", "ggn", "hessian")

# The general exact diagonal costs one Hessian-vector product per parameter; above this many
# parameters it is refused (the message estimates the time and names the alternatives).
EXACT_DIAGONAL_LIMIT = 10_000
# From this many parameters the general exact diagonal shows a progress bar (on stderr).
PROGRESS_FROM = 2_000


@dataclass
class LayerRecord:
    """One dense or convolutional layer followed by an elementwise activation, on a chunk.

    A dense layer ``z = W a + b`` gives ``weight`` and ``inputs``; a convolution gives
    ``gradients`` and ``transpose`` instead, which work on many cotangents at once (a
    leading ``(N, K)``: ``K`` per example).

    Attributes:
        weight: dense: ``W`` in the canonical layout ``(out, in)``.
        has_bias: whether the layer has a bias ``b``.
        inputs: dense: ``a``, the layer's input, ``(N, in)``.
        first: ``phi'(z)``, shaped like ``z``, or ``None`` for the identity.
        second: ``phi''(z)``, or ``None`` where it is zero (ReLU, identity).
        gradients: convolution: ``V -> (dW, db)``, each example's gradients for the
            cotangents ``V`` ``(N, K, *z)``: ``dW`` ``(N, K, out, in * k...)`` in the canonical
            order, ``db`` ``(N, K, out)``.
        transpose: convolution: ``V -> V J`` ``(N, K, *a)``, the cotangents at the layer's
            input; dense: ``None``, or a reshape of ``(N, K, in)`` to the shape of the layer
            before a flatten.
    """

    weight: object
    has_bias: bool
    inputs: object
    first: object = None
    second: object = None
    gradients: object = None
    transpose: object = None


def smooth_derivatives(name: str, output):
    """``(phi'(z), phi''(z))`` of ``tanh`` or ``sigmoid`` from its output ``h = phi(z)``.

    ``tanh``: ``phi' = 1 - h^2``, ``phi'' = -2 h (1 - h^2)``; ``sigmoid``: ``phi' = h (1 - h)``,
    ``phi'' = h (1 - h)(1 - 2h)``. Works on any tensor type with arithmetic operators.
    """
    if name == "tanh":
        first = 1 - output * output
        return first, -2 * output * first
    first = output * (1 - output)
    return first, first * (1 - 2 * output)


def _squares(factor, einsum):
    """``sum_k sign * V_k^2`` of one factor ``(sign, V, diagonal)`` at a layer's output."""
    sign, values, diagonal = factor
    squares = values * values if diagonal else einsum("nkd->nd", values * values)
    return squares if sign > 0 else -squares


def _through_weight(factor, layer: LayerRecord, einsum):
    """A factor at a layer's output moved to its input: ``V J``."""
    sign, values, diagonal = factor
    if layer.gradients is not None:
        return sign, layer.transpose(values), False
    if diagonal:  # V = diag(s): row k of V W is s_k W_k
        values = einsum("nk,ke->nke", values, layer.weight)
    else:
        values = einsum("nkd,de->nke", values, layer.weight)
    return sign, values if layer.transpose is None else layer.transpose(values), False


def _through_activation(factor, first):
    sign, values, diagonal = factor
    return sign, values * (first if diagonal else first[:, None]), diagonal


def _convolution_sums(layer: LayerRecord, columns, einsum):
    """``sum_i sum_k sign * (dW_ik^2, db_ik^2)`` from each column's own gradients: a
    convolution's weight is shared across positions, so its squares do not factorise."""
    weight_sum = bias_sum = 0
    for sign, values in columns:
        weights, biases = layer.gradients(values)
        weight_sum = weight_sum + sign * einsum("nkof->of", weights * weights)
        bias_sum = bias_sum + sign * einsum("nko->o", biases * biases)
    return weight_sum, bias_sum if layer.has_bias else None


def backpropagate_diagonals(layers, output_gradient, output_factor, kind: str, einsum):
    """Per-layer sums over a chunk of examples of the curvature diagonal ``kind``.

    From the output backwards, each example carries its loss gradient ``delta`` and the
    factors ``V`` (``K`` columns, signed): through an activation ``delta <- delta * phi'(z)``,
    ``V <- V * phi'(z)``, and for ``"hessian"`` the factors ``sqrt(r+)``, ``-sqrt(r-)`` of
    ``diag(phi''(z) * delta)`` join; at a dense layer the sums are
    ``(delta^2)^T a^2`` (``"fisher"``) or ``(sum_k sign_k V_k^2)^T a^2`` and, for the bias,
    the same without ``a``; then ``delta <- delta W``, ``V <- V W``.

    Args:
        layers: :class:`LayerRecord` s in forward order; the last one produces the model's
            output (its activation, if any, included).
        output_gradient: ``dl_i/df_i``, each example's loss gradient in the output, ``(N, C)``.
        output_factor: ``S`` with ``Lambda_i = S_i S_i^T``: a pair ``(values, diagonal)``,
            ``values`` of shape ``(N, K, C)`` (``values[i, k]`` is column ``k`` of ``S_i``) or,
            if ``diagonal``, ``(N, C)`` for ``S_i = diag(values[i])``. Unused for
            ``"fisher"``.
        kind: ``"fisher"`` (``sum_i g_i^2``), ``"ggn"`` or ``"hessian"`` (``sum_i`` of the
            example's diagonal); divide by ``N`` for the mean loss.
        einsum: the framework's ``einsum(equation, *operands)``.

    Returns:
        one ``(weight_sum, bias_sum or None)`` pair per layer, in forward order, in the
        canonical layout and the tensors' type and dtype.

    Raises:
        ValueError: an unknown ``kind``, or a diagonal factor reaching a convolution's
            weight (``"hessian"`` with a second derivative right after a convolution).
    """
    check_choice("kind", kind, DIAGONAL_KINDS)
    gradient = output_gradient
    factors = [] if kind == "fisher" else [(1, *output_factor)]
    sums = []
    for index in reversed(range(len(layers))):
        layer = layers[index]
        if layer.first is not None:
            factors = [_through_activation(f, layer.first) for f in factors]
            if kind == "hessian" and layer.second is not None:
                residual = gradient * layer.second  # phi''(z) * dl/da, one diagonal per example
                positive = (abs(residual) + residual) / 2
                factors += [(1, positive ** 0.5, True), (-1, (positive - residual) ** 0.5, True)]
            gradient = gradient * layer.first
        if layer.gradients is not None:
            if any(diagonal for _, _, diagonal in factors):
                raise ValueError("a diagonal factor at a convolution's output (a second "
                                 "derivative there, or a convolution last) is not supported")
            columns = [(1, gradient[:, None])] if kind == "fisher" else [
                (sign, values) for sign, values, _ in factors]
            sums.append(_convolution_sums(layer, columns, einsum))
        else:
            # [closed-form-diagonal]
            if kind == "fisher":
                squares = gradient * gradient                  # delta_i^2, (N, out)
            else:
                squares = sum(_squares(f, einsum) for f in factors)
            inputs = layer.inputs * layer.inputs               # a_i^2, (N, in)
            sums.append((einsum("nd,ne->de", squares, inputs),
                         einsum("nd->d", squares) if layer.has_bias else None))
            # [closed-form-diagonal-end]
        if index:
            gradient = _through_weight((1, gradient[:, None], False), layer, einsum)[1][:, 0]
            factors = [_through_weight(f, layer, einsum) for f in factors]
    return sums[::-1]


def check_finite_diagonal(diagonal, kind: str) -> np.ndarray:
    """Return ``diagonal`` (a NumPy vector) if every entry is finite.

    Raises:
        ValueError: an entry is nan or inf (the weights or outputs are not finite), named
            with ``kind``, e.g. ``"ggn"``.
    """
    if not np.all(np.isfinite(diagonal)):
        raise ValueError(f"the {kind} diagonal holds nan or inf: the model's weights or "
                         "outputs are not finite on these examples")
    return diagonal


def _duration(seconds: float) -> str:
    """Seconds for people: ``"45 s"``, ``"12 min"``, ``"3.1 h"``."""
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def check_exact_diagonal_size(n: int, make_matvec, limit: int | None = None) -> None:
    """Refuse the general exact diagonal (``n`` Hessian-vector products) above ``limit``.

    Only when refusing, the message's estimate times one product (after a warm-up call,
    so that building the graph or tracing is not counted) and multiplies by ``n``.

    Args:
        n: the number of parameters.
        make_matvec: a function of no argument that returns ``v -> H v`` on float64
            vectors of length ``n``.
        limit: the most parameters allowed; default :data:`EXACT_DIAGONAL_LIMIT`.

    Raises:
        ValueError: ``n > limit``; the message gives the estimated time and the alternatives.
    """
    limit = EXACT_DIAGONAL_LIMIT if limit is None else limit
    if n <= limit:
        return
    matvec, zero = make_matvec(), np.zeros(n)
    matvec(zero)
    start = time.perf_counter()
    matvec(zero)
    estimate = n * (time.perf_counter() - start)
    raise ValueError(
        f"the exact Hessian diagonal of this model takes one Hessian-vector product per "
        f"parameter: {n:,} products, about {_duration(estimate)} here (the closed form, "
        f"one backward pass, covers only a chain of dense and conv layers and elementwise "
        f"activations); refused above {limit:,} parameters. Use method='fisher' (empirical "
        f"Fisher, one pass) or method='hutchinson' (an unbiased estimate from `samples` "
        f"products), or raise companion.core.diagonals.EXACT_DIAGONAL_LIMIT")


def exact_diagonal_from_rows(n: int, row_blocks, make_matvec) -> np.ndarray:
    """``H_qq`` collected from blocks of Hessian rows ``(rows, H[rows, :])``, the general
    path: first :func:`check_exact_diagonal_size`, then a progress bar on stderr from
    :data:`PROGRESS_FROM` parameters on.

    Args:
        n: the number of parameters.
        row_blocks: a lazy iterable of ``(rows, block)``, ``block[j]`` the Hessian's row
            ``rows[j]`` in the canonical order (nothing is computed before the check).
        make_matvec: for the check's time estimate, see :func:`check_exact_diagonal_size`.

    Raises:
        ValueError: ``n > EXACT_DIAGONAL_LIMIT``, from :func:`check_exact_diagonal_size`.
    """
    check_exact_diagonal_size(n, make_matvec)
    diagonal = np.zeros(n)
    with tqdm(total=n, desc="exact Hessian diagonal", unit="HVP", file=sys.stderr,
              disable=n < PROGRESS_FROM) as bar:
        for rows, block in row_blocks:
            diagonal[rows] = block[np.arange(len(rows)), rows]
            bar.update(len(rows))
    return diagonal
