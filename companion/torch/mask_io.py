"""Masks that travel with the model, PyTorch back end.

* :func:`save_masks` / :func:`load_masks`: a ``.npz`` file beside the weights, in the
  canonical layout (it loads in either back end; see :mod:`companion.core.mask_io`).
* :func:`export_masks` / :func:`import_masks`: ``torch.nn.utils.prune``'s
  reparametrisation, so the masks live in ``state_dict`` as ``<name>_mask`` buffers next to
  ``<name>_orig``, and PyTorch's own tools (``prune.is_pruned``, ``prune.remove``) see them.
"""

from __future__ import annotations

import torch
from torch.nn.utils import prune as torch_prune

from ..core.checks import check_masks
from ..core.mask_io import load_canonical_masks, save_canonical_masks
from .layout import (from_canonical, get_weights, parameter_names, to_canonical,
                     trainable_parameters)

__all__ = ["save_masks", "load_masks", "export_masks", "import_masks"]


def save_masks(model, masks, path) -> None:
    """Write ``masks`` to ``path`` (``.npz``), keyed by canonical parameter name.

    ``torch.save(model.state_dict(), "model.pt"); ct.save_masks(model, masks,
    "model_masks.npz")`` keeps both; :func:`load_masks` reads them back, in either back end.

    Args:
        model: the ``torch.nn.Module`` the masks belong to.
        masks: one 0/1 tensor (or ``None``) per trainable parameter, e.g. from :func:`prune`.
        path: the file to write.

    Raises:
        ValueError: masks not aligned with the parameters, of the wrong shape, or not 0/1.
    """
    masks = check_masks(parameter_names(model), trainable_parameters(model), masks)
    save_canonical_masks(path, parameter_names(model), to_canonical(model, masks))


def load_masks(model, path) -> list:
    """The masks stored by :func:`save_masks` (either back end), as this model's tensors.

    Args:
        model: a ``torch.nn.Module`` with the parameters the masks were saved for.
        path: the ``.npz`` file.

    Returns:
        One 0/1 tensor (``None`` where none was stored) per trainable parameter, ready for
        :func:`apply_masks`, :func:`keep_masks_after_step` or ``train(..., masks=...)``.

    Raises:
        ValueError: a mask for a parameter the model lacks, of another shape, or not 0/1.
        FileNotFoundError: no file at ``path``.
    """
    shapes = [a.shape for a in get_weights(model)]
    return from_canonical(model, load_canonical_masks(path, parameter_names(model), shapes))


def _owners(model) -> list:
    """``(module, name)`` of every trainable parameter, in :func:`trainable_parameters` order."""
    where = {id(p): (module, name) for module in model.modules()
             for name, p in module._parameters.items() if p is not None}
    return [where[id(p)] for p in trainable_parameters(model)]


def export_masks(model, masks) -> None:
    """Put ``masks`` into ``torch.nn.utils.prune``'s reparametrisation of the model.

    For every mask that is not ``None``, ``prune.custom_from_mask(module, name, mask)``:
    the parameter becomes ``<name>_orig``, the mask the buffer ``<name>_mask`` (both in
    ``state_dict``), and ``<name>`` is recomputed as ``<name>_orig * <name>_mask`` before
    every forward pass. Undo with :func:`import_masks`.

    Args:
        model: a ``torch.nn.Module``.
        masks: one 0/1 tensor (or ``None``) per trainable parameter, e.g. from :func:`prune`.

    Raises:
        ValueError: masks not aligned with the parameters, of the wrong shape, or not 0/1;
            nothing is changed.
    """
    params = trainable_parameters(model)
    masks = check_masks(parameter_names(model), params, masks)
    for (module, name), param, mask in zip(_owners(model), params, masks):
        if mask is not None:
            torch_prune.custom_from_mask(module, name, torch.as_tensor(
                mask, dtype=param.dtype, device=param.device))


def import_masks(model) -> list:
    """Read ``torch.nn.utils.prune``'s masks back, and make the pruning permanent.

    Every ``<name>_mask`` buffer of a pruned parameter becomes a mask; then
    ``prune.remove`` turns ``<name>`` back into a plain parameter equal to
    ``<name>_orig * <name>_mask``, put back at its place among the module's parameters
    (weights before biases; a recurrent module's in ``_flat_weights_names`` order), so
    :func:`trainable_parameters` has the order of the unpruned model.

    Args:
        model: a ``torch.nn.Module`` pruned with ``torch.nn.utils.prune`` (any method) or
            :func:`export_masks`.

    Returns:
        One 0/1 tensor (``None`` for a parameter that was not pruned) per trainable
        parameter, ready for :func:`keep_masks_after_step` or ``train(..., masks=...)``.
    """
    found = {}
    for module in model.modules():
        hooks = [h for h in module._forward_pre_hooks.values()
                 if isinstance(h, torch_prune.BasePruningMethod)]
        for hook in hooks:
            name = hook._tensor_name
            found[name, id(module)] = getattr(module, name + "_mask").detach().clone()
            torch_prune.remove(module, name)
        if hooks:
            _restore_order(module)
    masks = {id(getattr(module, name)): mask for module in model.modules()
             for (name, owner), mask in found.items() if owner == id(module)}
    return [masks.get(id(p)) for p in trainable_parameters(model)]


def _restore_order(module) -> None:
    """Put a module's parameters back in their registration order after ``prune.remove``.

    ``torch.nn.utils.prune`` re-registers a parameter last; PyTorch's modules register
    weights before biases (a recurrent module in its ``_flat_weights_names`` order).
    """
    keys = list(module._parameters)
    flat = getattr(module, "_flat_weights_names", None)
    if flat is not None and set(flat) == set(keys):
        order = list(flat)
    else:
        order = sorted(keys, key=lambda key: key.startswith("bias"))  # stable
    for key in order:  # re-inserted one by one, so in this order
        module._parameters[key] = module._parameters.pop(key)
