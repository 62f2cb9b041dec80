"""Masks that travel with the model, TensorFlow back end.

:func:`save_masks` / :func:`load_masks` keep the masks in a ``.npz`` file beside the
``.keras`` file, in the canonical layout (it loads in either back end; see
:mod:`companion.core.mask_io`). A ``.keras`` file stores the (already zeroed) weights; the
masks say which zeros must stay zero when training goes on.
"""

from __future__ import annotations

from ..core.checks import check_masks
from ..core.mask_io import load_canonical_masks, save_canonical_masks
from .layout import (from_canonical, get_weights, parameter_names, to_canonical,
                     trainable_parameters)

__all__ = ["save_masks", "load_masks"]


def save_masks(model, masks, path) -> None:
    """Write ``masks`` to ``path`` (``.npz``), keyed by canonical parameter name.

    ``model.save("model.keras"); ctf.save_masks(model, masks, "model_masks.npz")`` keeps
    both; after ``keras.models.load_model``, :func:`load_masks` reads the masks back (in
    either back end).

    Args:
        model: the Keras model the masks belong to.
        masks: one 0/1 tensor (or ``None``) per trainable variable, e.g. from :func:`prune`.
        path: the file to write.

    Raises:
        ValueError: masks not aligned with the variables, of the wrong shape, or not 0/1.
    """
    masks = check_masks(parameter_names(model), trainable_parameters(model), masks)
    save_canonical_masks(path, parameter_names(model), to_canonical(model, masks))


def load_masks(model, path) -> list:
    """The masks stored by :func:`save_masks` (either back end), as this model's tensors.

    Args:
        model: a Keras model with the variables the masks were saved for (e.g. from
            ``keras.models.load_model``).
        path: the ``.npz`` file.

    Returns:
        One 0/1 tensor (``None`` where none was stored) per trainable variable, ready for
        :func:`apply_masks`, :class:`KeepMasks` or ``train(..., masks=...)``.

    Raises:
        ValueError: a mask for a variable the model lacks, of another shape, or not 0/1.
        FileNotFoundError: no file at ``path``.
    """
    shapes = [a.shape for a in get_weights(model)]
    return from_canonical(model, load_canonical_masks(path, parameter_names(model), shapes))
