"""Masks that travel with the model: saved beside it, in the canonical layout.

A mask file is a NumPy ``.npz`` archive with one 0/1 array per masked parameter, keyed by
its canonical name (``"dense0.weight"``) in the canonical layout, so a file written by
one back end loads in the other.
"""

from __future__ import annotations

import os

import numpy as np


def save_canonical_masks(path, names, masks) -> None:
    """Write ``masks`` (canonical 0/1 arrays or ``None``) to ``path`` (``.npz``), by name.

    Args:
        path: the file to write; NumPy adds ``.npz`` if it is missing.
        names: the canonical parameter names, aligned with ``masks``.
        masks: one canonical 0/1 array (or ``None``, not stored) per parameter.
    """
    np.savez(path, **{name: np.asarray(mask, dtype=np.uint8)
                      for name, mask in zip(names, masks) if mask is not None})


def load_canonical_masks(path, names, shapes) -> list:
    """The masks stored in ``path`` for parameters ``names`` of canonical ``shapes``.

    A parameter with no entry in the file gets ``None`` (left whole).

    Raises:
        ValueError: the file names a parameter the model lacks, holds a mask of another
            shape, or values other than 0 and 1.
        FileNotFoundError: no file at ``path``.
    """
    if not os.path.exists(path):
        raise FileNotFoundError(f"no mask file at {path}")
    with np.load(path) as stored:
        unknown = sorted(set(stored.files) - set(names))
        if unknown:
            raise ValueError(f"the mask file holds masks for {unknown}, which the model does "
                             f"not have (its parameters: {list(names)})")
        masks = []
        for name, shape in zip(names, shapes):
            if name not in stored.files:
                masks.append(None)
                continue
            mask = stored[name]
            if mask.shape != tuple(shape):
                raise ValueError(f"mask for {name} has shape {mask.shape}, the parameter "
                                 f"{tuple(shape)}")
            if not np.all((mask == 0) | (mask == 1)):
                raise ValueError(f"mask for {name} must hold only 0 and 1")
            masks.append(mask.astype(np.float32))
    return masks
