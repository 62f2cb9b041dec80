"""Gradient diagnostics, PyTorch back end: global and per-layer norms, and a monitor."""

from __future__ import annotations

import torch

from ..core.checks import check_positive
from ..core.diagnostics import GradientNormRecorder, layer_norms_from
from .layout import parameter_names

__all__ = ["total_norm", "global_norm", "parameter_norms", "layer_norms", "GradientMonitor"]


def _norm64(g: torch.Tensor, norm_type: float) -> torch.Tensor:
    """``||g||_p`` computed in float64, so float32 entries near 1e30 or 1e-30 do not
    overflow or underflow on the way; 0 for an empty tensor."""
    if not g.numel():
        return g.new_zeros((), dtype=torch.float64)
    return torch.linalg.vector_norm(g.detach(), ord=norm_type, dtype=torch.float64)


def _tensor_norms(grads, norm_type: float) -> list:
    """The p-norm of each non-``None`` tensor, as Python floats (one device sync)."""
    norms = [_norm64(g, norm_type) for g in grads if g is not None]
    return torch.stack(norms).cpu().tolist() if norms else []


def _trustworthy(norm: torch.Tensor) -> bool:
    """Whether a norm computed in its gradients' own dtype can be kept: finite, and not so
    small that the entries' powers may have underflowed (below ``sqrt(tiny) / eps``, about
    1e-12 in float32, an entry's square could be subnormal or 0 and lose digits; a zero
    gradient takes the exact path too, which gives 0 for it)."""
    info = torch.finfo(norm.dtype)
    return bool(torch.isfinite(norm)) and bool(norm > info.tiny ** 0.5 / info.eps)


def total_norm(grads, norm_type: float = 2.0) -> torch.Tensor:
    """:func:`global_norm` as a 0-d float64 tensor on the gradients' device.

    Fast path: ``torch.nn.utils.get_total_norm`` in the gradients' own dtype (what
    ``clip_grad_norm_`` computes). Its result is kept unless it is not finite or so small
    that it may have underflowed; then the norm is computed again in float64 throughout, so
    float32 gradients with entries near 1e30 (or 1e-30) neither overflow nor underflow, and
    a gradient that is really not finite still gives ``inf`` or ``nan``. The check costs one
    host sync (none on the CPU).

    Args:
        grads: gradients, each a tensor or ``None`` (skipped).
        norm_type: the order ``p`` of the norm, a number > 0 or ``inf``; not checked here
            (:func:`global_norm` checks it).
    """
    grads = [g.detach() for g in grads if g is not None]
    if not grads:
        return torch.zeros((), dtype=torch.float64)
    if (len({(g.dtype, g.device) for g in grads}) == 1 and grads[0].is_floating_point()
            and all(g.numel() for g in grads)):
        fast = torch.nn.utils.get_total_norm(grads, norm_type)
        if _trustworthy(fast):
            return fast.to(torch.float64)
    norms = [_norm64(g, norm_type) for g in grads]
    return torch.linalg.vector_norm(torch.stack(norms), ord=norm_type)


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
        model: a ``torch.nn.Module``, e.g. from :func:`mlp` or :func:`rnn`.
        grads: one gradient (or ``None``) per trainable parameter, in order.
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
        model: a ``torch.nn.Module``, e.g. from :func:`mlp` or :func:`rnn`.
        grads: one gradient (or ``None``) per trainable parameter, in order.
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
