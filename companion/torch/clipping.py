"""Gradient clipping, PyTorch back end: by value, by norm, by global norm, adaptive.

Every function is pure: it takes a list of gradients aligned with the parameters (``None``
entries pass through untouched) and returns a new list; nothing is modified in place.
The rules and their non-finite behaviour are the same in :mod:`companion.tensorflow`.
"""

from __future__ import annotations

import math
import sys

import torch

from ..core.checks import check_positive, check_tensor_list
from ..core.clipping import Clip, check_clip_inputs, nonfinite_norm_message, resolve_clip
from .diagnostics import _norm64, total_norm
from .layout import trainable_parameters

__all__ = ["Clip", "clip_by_value", "clip_by_norm", "clip_by_global_norm", "adaptive_clip",
           "clip_function", "clip_grads_"]


def clip_by_value(grads, clip_value: float) -> list:
    """Clip every entry into ``[-c, c]``: ``g_ij <- min(max(g_ij, -c), c)``.

    Changes the gradient's direction whenever some entries are clipped and others not.
    ``nan`` entries stay ``nan``.

    Args:
        grads: gradients aligned with the trainable parameters, each a tensor or ``None``.
        clip_value: the bound ``c``, a finite number > 0.

    Raises:
        ValueError: ``clip_value`` is not a finite number > 0.
    """
    c = check_positive("clip_value", clip_value)
    grads = check_tensor_list("grads", grads)
    return [None if g is None else g.clamp(-c, c) for g in grads]


def _scale_to(norm: torch.Tensor, max_norm: float) -> torch.Tensor:
    """``c / max(norm, c)``, and ``nan`` where ``norm`` is not finite."""
    scale = max_norm / torch.clamp(norm, min=max_norm)
    return torch.where(torch.isfinite(norm), scale, torch.full_like(scale, math.nan))


def clip_by_norm(grads, max_norm: float) -> list:
    """Rescale each tensor on its own to 2-norm at most ``c``: ``g <- g * c / max(||g||_2, c)``.

    What Keras' ``clipnorm`` does. Each tensor keeps its direction, but tensors are scaled
    by different factors, so the direction of the whole gradient changes. A tensor whose
    norm is not finite becomes all ``nan``.

    Args:
        grads: gradients aligned with the trainable parameters, each a tensor or ``None``.
        max_norm: the bound ``c`` on each tensor's 2-norm, a finite number > 0.

    Raises:
        ValueError: ``max_norm`` is not a finite number > 0.
    """
    c = check_positive("max_norm", max_norm)
    grads = check_tensor_list("grads", grads)
    return [None if g is None else g * _scale_to(_norm64(g, 2.0), c).to(g.dtype)
            for g in grads]


def clip_by_global_norm(grads, max_norm: float, norm_type: float = 2.0,
                        error_if_nonfinite: bool = False):
    """Rescale all gradients together to global p-norm at most ``c``.

    ``T = ||(g_1, ..., g_n)||_p`` over all entries, then ``g_i <- g_i * c / max(T, c)``:
    one factor for every tensor, so the direction of the whole gradient is kept
    (Pascanu et al. 2013). Returns ``(clipped, T)``, with ``T`` (a 0-d float64 tensor) the
    norm *before* clipping, the number worth logging.

    Compared with the libraries: ``torch.nn.utils.clip_grad_norm_`` scales by
    ``c / (T + 1e-6)`` (clamped at 1), so it leaves a norm slightly *below* ``c``;
    ``tf.clip_by_global_norm`` scales by ``c / max(T, c)`` exactly as here.

    Non-finite ``T``: with ``error_if_nonfinite=True`` a ``FloatingPointError`` is raised
    and nothing is returned; otherwise every entry of the result is ``nan`` (as in
    ``tf.clip_by_global_norm``), so a broken step cannot pass for a finite one.

    Args:
        grads: gradients aligned with the trainable parameters, each a tensor or ``None``.
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
    if error_if_nonfinite and not torch.isfinite(total):
        raise FloatingPointError(nonfinite_norm_message(total.item(), p))
    scale = _scale_to(total, c)
    return [None if g is None else g * scale.to(g.dtype) for g in grads], total


def _unit_norms(x: torch.Tensor) -> torch.Tensor:
    """2-norm of each output unit's incoming weights: rows of ``(out, in, k...)``.

    Vectors (biases) and scalars get one norm for the whole tensor.
    """
    if x.dim() < 2:
        return _norm64(x, 2.0).reshape([1] * x.dim())
    return torch.linalg.vector_norm(x, dim=tuple(range(1, x.dim())), keepdim=True,
                                    dtype=torch.float64)


def adaptive_clip(grads, params, clipping: float = 0.01, eps: float = 1e-3) -> list:
    """Unit-wise adaptive gradient clipping (AGC, Brock et al. 2021).

    For each output unit ``i`` of each parameter (a row ``W_i`` of a PyTorch weight
    ``(out, in, k...)``, i.e. its fan-in; a whole bias vector), with ``G_i`` its gradient:
    ``G_i <- lambda * max(||W_i||, eps) / ||G_i|| * G_i`` if
    ``||G_i|| > lambda * max(||W_i||, eps)``, else unchanged. The bound is relative to the
    weights' own size, so small and large layers are clipped alike. Norms are computed in
    float64. A unit whose gradient is not finite stays not finite.

    Args:
        grads: gradients aligned with ``params``, each a tensor of its parameter's shape or
            ``None``.
        params: the trainable parameters the gradients belong to, in order.
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
        max_norm = lam * torch.clamp(_unit_norms(w.detach()), min=eps)
        g_norm = _unit_norms(g)
        # Divide by max(||G_i||, bound), not by a fixed floor such as optax's 1e-6: where
        # the bound is below that floor, the floor would scale a unit to less than the bound.
        scale = (max_norm / torch.maximum(g_norm, max_norm)).to(g.dtype)
        clipped.append(torch.where(g_norm > max_norm, g * scale, g))
    return clipped


def clip_function(clip, params):
    """``clip`` as a function ``grads -> grads``: a :class:`Clip` rule, a function, or ``None``.

    ``params`` are the parameters the gradients belong to (the ``"adaptive"`` rule needs
    them). Used by :func:`train`.

    Args:
        clip: ``None``, a :class:`~companion.core.clipping.Clip` rule, or a function
            ``grads -> grads``.
        params: the trainable parameters the gradients belong to, in order.

    Raises:
        TypeError: ``clip`` is none of these.
    """
    return resolve_clip(clip, params, sys.modules[__name__])


def clip_grads_(model, clip) -> None:
    """Clip the ``.grad`` of ``model``'s parameters in place, for a plain PyTorch loop.

    ``loss.backward(); clip_grads_(model, Clip("global_norm", 1.0)); optimizer.step()``,
    with any :class:`Clip` rule or function ``grads -> grads`` (what
    ``torch.nn.utils.clip_grad_norm_`` does for one rule). Parameters without a gradient
    are left alone.

    Args:
        model: a ``torch.nn.Module`` whose parameters' ``.grad`` hold the gradients (after
            ``loss.backward()``).
        clip: a :class:`~companion.core.clipping.Clip` rule or a function ``grads -> grads``; not
            ``None``.

    Raises:
        TypeError: ``clip`` is not a :class:`Clip` rule or a function ``grads -> grads``.
    """
    if clip is None:
        raise TypeError("clip must be a Clip(...) rule or a function grads -> grads, not None")
    params = trainable_parameters(model)
    grads = [p.grad for p in params]
    if isinstance(clip, Clip) and clip.rule == "global_norm":
        # In place, one factor for every tensor: no copy of the gradients is made.
        scale = _scale_to(total_norm(grads, clip.norm_type), clip.threshold)
        with torch.no_grad():
            for grad in grads:
                if grad is not None:
                    grad.mul_(scale.to(grad.dtype))
        return
    clipped = clip_function(clip, params)(grads)
    with torch.no_grad():
        for param, grad in zip(params, clipped):
            if grad is not None:
                param.grad.copy_(grad)
