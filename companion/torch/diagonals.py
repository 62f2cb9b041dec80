"""Curvature diagonals by the layer-wise closed forms, PyTorch back end.

For a ``torch.nn.Sequential`` of ``nn.Conv2d`` layers (one group, numeric zero padding),
then ``nn.Linear`` layers (an ``nn.Flatten`` between them), each followed by at most one
elementwise activation (``nn.ReLU``, ``nn.Tanh``, ``nn.Sigmoid``, ``nn.Identity``), ending in
``nn.Linear``, with every parameter trainable, the empirical Fisher, GGN and Hessian
diagonals come from one forward and one backward pass per chunk of examples
(:func:`companion.core.diagonals.backpropagate_diagonals`, as BackPACK's
``SumGradSquared``, ``DiagGGNExact`` and ``DiagHessian``; a convolution's weight gradients
are formed per example from ``unfold``, its transpose is ``conv2d_input``). The Hessian's
closed form also needs piecewise-linear activations after the convolutions. Every other
model (pooling, normalisation, recurrent layers, a custom ``forward``, frozen layers) takes
the general paths of :func:`hessian_diagonal`. Like every measurement, this runs the model
in inference mode and changes no buffer.

Memory per chunk of ``batch_size`` examples: the factors hold a column per class (for the
Hessian, also one per unit of each smooth dense layer) at every layer's output, and a
convolution's per-example weight gradients for each column; lower ``batch_size`` to bound
it."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from ..core.checks import LOSSES, check_choice, check_positive_int
# exact_diagonal_from_rows is for .curvature, which imports from the core only its namesake.
from ..core.diagonals import (LayerRecord, backpropagate_diagonals,  # noqa: F401
                              check_finite_diagonal, exact_diagonal_from_rows,
                              smooth_derivatives)
from .batches import check_model_data
from .layout import _unflatten, trainable_parameters
from .runtime import as_tensor, measured_in_inference_mode

__all__ = ["ggn_diagonal"]

_ACTIVATIONS = {nn.ReLU: "relu", nn.Tanh: "tanh", nn.Sigmoid: "sigmoid", nn.Identity: "linear"}


def _plain_convolution(module) -> bool:
    """An ``nn.Conv2d`` that ``unfold`` describes: one group, zero padding given as numbers."""
    return (module.groups == 1 and module.padding_mode == "zeros"
            and isinstance(module.padding, tuple))


def _chain(model, kind: str):
    """``[[layer, activation name, flatten before], ...]`` if ``model`` is a chain the
    closed forms cover for ``kind``, else ``None``."""
    if type(model) is not nn.Sequential:
        return None
    chain, flatten = [], False
    for module in model:
        flat = flatten or not chain or isinstance(chain[-1][0], nn.Linear)
        if (isinstance(module, nn.Linear) and flat) or (
                isinstance(module, nn.Conv2d) and _plain_convolution(module) and not flatten
                and not any(isinstance(layer, nn.Linear) for layer, _, _ in chain)):
            chain.append([module, "linear", flatten])
            flatten = False
        elif type(module) in _ACTIVATIONS and chain and chain[-1][1] == "linear" and not flatten:
            chain[-1][1] = _ACTIVATIONS[type(module)]
        elif type(module) is nn.Flatten and (module.start_dim, module.end_dim) == (1, -1):
            flatten = True
        else:
            return None
    own = [p for layer, _, _ in chain for p in (layer.weight, layer.bias) if p is not None]
    params = trainable_parameters(model)
    if (not chain or flatten or not isinstance(chain[-1][0], nn.Linear)
            or len(own) != len(params) or any(a is not b for a, b in zip(own, params))):
        return None
    if kind == "hessian" and any(isinstance(layer, nn.Conv2d) and name in ("tanh", "sigmoid")
                                 for layer, name, _ in chain):
        return None  # its second derivative's factor would be one column per unit
    return chain


def _takes(first, ndim: int) -> bool:
    """Whether the chain's first ``[layer, activation, flatten]`` takes ``ndim``-D inputs
    (``(N, C, H, W)`` for a convolution, ``(N, features)`` for a dense layer)."""
    layer, _, flatten = first
    return ndim == 4 if isinstance(layer, nn.Conv2d) else ndim >= 2 if flatten else ndim == 2


def _convolution(module, inputs):
    """``(gradients, transpose)`` of :class:`LayerRecord` for ``nn.Conv2d`` on ``inputs``."""
    options = dict(stride=module.stride, padding=module.padding, dilation=module.dilation)
    patches = nn.functional.unfold(inputs, module.kernel_size, **options)  # (N, in k k, P)

    def gradients(values):
        values = values.reshape(*values.shape[:3], -1)                    # (N, K, out, P)
        return torch.einsum("nkop,nfp->nkof", values, patches), values.sum(-1)

    def transpose(values):
        count, columns = values.shape[:2]
        found = torch.nn.grad.conv2d_input((count * columns, *inputs.shape[1:]), module.weight,
                                           values.reshape(-1, *values.shape[2:]), **options)
        return found.reshape(count, columns, *inputs.shape[1:])

    return gradients, transpose


def _records(chain, x):
    """The forward pass: a :class:`LayerRecord` per layer, and the model's output."""
    records, inputs = [], x
    for layer, name, flatten in chain:
        shape = inputs.shape[1:]
        if flatten:
            inputs = inputs.reshape(len(inputs), -1)
        output = layer(inputs)
        first = second = None
        if name == "relu":
            output = torch.relu(output)
            first = (output > 0).to(output.dtype)
        elif name != "linear":
            output = torch.tanh(output) if name == "tanh" else torch.sigmoid(output)
            first, second = smooth_derivatives(name, output)
        if isinstance(layer, nn.Conv2d):
            gradients, transpose = _convolution(layer, inputs)
            record = LayerRecord(None, layer.bias is not None, None, first, second,
                                 gradients, transpose)
        else:
            unflatten = (lambda v, shape=shape: v.reshape(*v.shape[:2], *shape)) if flatten \
                else None
            record = LayerRecord(layer.weight, layer.bias is not None, inputs, first, second,
                                 transpose=unflatten)
        records.append(record)
        inputs = output
    return records, inputs


def _output_terms(output, target, loss: str):
    """Each example's loss gradient in the output, and the factor ``S`` of its Hessian."""
    if loss == "cross_entropy":
        p = torch.softmax(output, 1)
        gradient = p - nn.functional.one_hot(target.long(), p.shape[1]).to(p.dtype)
        root = p.sqrt()  # S[a, k] = delta_ak sqrt(p_a) - p_a sqrt(p_k), stored as [k, a]
        return gradient, (torch.diag_embed(root) - p[:, None, :] * root[:, :, None], False)
    classes = output.shape[1]
    gradient = 2 * (output - target.reshape(output.shape)) / classes
    return gradient, (torch.full_like(output, (2 / classes) ** 0.5), True)


def closed_form_diagonal(model, x, y, loss: str, kind: str, batch_size: int):
    """The mean loss's ``kind`` diagonal (``"fisher"``, ``"ggn"``, ``"hessian"``) by the
    closed forms, as a float64 NumPy vector in the canonical order; ``None`` if the model
    is not a chain they cover or the loss is a function (the closed forms know the output
    Hessians of the named losses only). ``x``, ``y``: checked tensors.

    Raises:
        ValueError: the diagonal holds nan or inf.
    """
    chain = _chain(model, kind) if isinstance(loss, str) else None
    if chain is None or not _takes(chain[0], x.dim()):
        return None
    total = 0
    with torch.no_grad():
        for start in range(0, len(x), batch_size):
            records, output = _records(chain, x[start:start + batch_size])
            gradient, factor = _output_terms(output, y[start:start + batch_size], loss)
            sums = backpropagate_diagonals(records, gradient, factor, kind, torch.einsum)
            total = total + torch.cat([s.reshape(-1).double() for pair in sums
                                       for s in pair if s is not None])
    return check_finite_diagonal((total / len(x)).cpu().numpy(), kind)


def _general_ggn(model, x, y, loss: str, batch_size: int) -> np.ndarray:
    """The GGN diagonal of any model, as a float64 NumPy vector in the canonical order.

    Example ``i``'s output ``f_i`` (flattened) projected on the columns of ``S_i``,
    ``u_ik = S_ik . f_i``, has the gradient ``J_i^T S_ik``; one batched backward pass
    (``is_grads_batched``) gives it for every ``(i, k)`` of a chunk, and
    ``diag G = (1/N) sum_ik (J_i^T S_ik)^2``. Memory: ``batch_size * K`` gradients.
    """
    params = trainable_parameters(model)
    total = 0
    for start in range(0, len(x), batch_size):
        with torch.enable_grad():
            output = model(x[start:start + batch_size])
        output = output.reshape(len(output), -1)
        _, (values, diagonal) = _output_terms(output.detach(), y[start:start + batch_size],
                                              loss)
        projected = torch.einsum("nkc,nc->nk", torch.diag_embed(values) if diagonal else values,
                                 output).reshape(-1)
        basis = torch.eye(len(projected), dtype=projected.dtype, device=projected.device)
        grads = torch.autograd.grad(projected, params, basis, is_grads_batched=True,
                                    allow_unused=True, materialize_grads=True)
        total = total + torch.cat([(g * g).sum(0).reshape(-1).double() for g in grads])
    return check_finite_diagonal((total / len(x)).cpu().numpy(), "ggn")


@measured_in_inference_mode
def ggn_diagonal(model, x, y, loss: str = "cross_entropy", batch_size: int = 256) -> list:
    """The diagonal of the generalised Gauss-Newton matrix of the mean loss, exactly.

    ``G = (1/N) sum_i J_i^T Lambda_i J_i``, with ``J_i`` the Jacobian of the model's output
    in the parameters and ``Lambda_i`` the Hessian of example ``i``'s loss in the output
    (cross-entropy: ``diag(p) - p p^T``, ``p`` the softmax; mean squared error over ``C``
    outputs: ``(2/C) I``). ``G`` is the Hessian without the activations' second
    derivatives, positive semi-definite; for ReLU networks its diagonal equals the
    Hessian's. Computed as BackPACK's ``DiagGGNExact``: ``Lambda_i = S_i S_i^T`` is
    factorised and ``S_i`` backpropagated through the layers, ``batch_size`` examples at a
    time (:func:`companion.core.diagonals.backpropagate_diagonals`).

    That closed form covers a ``torch.nn.Sequential`` of ``nn.Conv2d`` and ``nn.Linear``
    layers with elementwise activations and ``nn.Flatten``, as :mod:`companion.torch.diagonals`
    describes, such as :func:`mlp` without ``norm`` or ``residual``. Any other model takes
    the general path: each example's output projected on each column of ``S_i`` is
    differentiated, one batched backward pass per chunk (memory ``batch_size`` times the
    number of outputs times the number of parameters). Runs the model in inference mode; no
    buffer changes.

    Args:
        model: a ``torch.nn.Module``, e.g. from :func:`mlp`.
        x: the inputs, an array-like with one example per row (axis 0).
        y: class labels (``"cross_entropy"``) or targets (``"mse"``), as in :func:`loss_value`.
        loss: ``"cross_entropy"`` or ``"mse"``.
        batch_size: examples per chunk (bounds memory only), an integer >= 1.

    Returns:
        tensors aligned with the parameters, each of its parameter's shape.

    Raises:
        ValueError: an unknown loss, ``batch_size`` not an integer >= 1, bad ``(x, y)``, or
            a non-finite result.
    """
    batch_size = check_positive_int("batch_size", batch_size)
    check_choice("loss", loss, LOSSES)
    x, y = check_model_data(model, x, y, loss)
    like = trainable_parameters(model)[0]
    x, y = as_tensor(x, like), as_tensor(y, like)
    diagonal = closed_form_diagonal(model, x, y, loss, "ggn", batch_size)
    if diagonal is None:
        diagonal = _general_ggn(model, x, y, loss, batch_size)
    return _unflatten(model, diagonal)
