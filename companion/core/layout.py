"""The canonical weight layout that both back ends share: PyTorch's.

Weights, gradients, scores and masks travel between the back ends as NumPy arrays in
PyTorch's layout (linear ``(out, in)``, convolution ``(out, in, k...)``), named
``<layer>.<parameter>``. Most of the conversion is a transpose, done in each back end; the
one rule that needs the network's structure, the order of a flattened feature map, is
here.
"""

from __future__ import annotations

import numpy as np

__all__ = ["rows_channels_first", "rows_channels_last"]


def rows_channels_first(kernel: np.ndarray, spatial: tuple) -> np.ndarray:
    """A canonical dense kernel ``(out, in)`` fed by a flattened ``(*spatial, channels)``
    feature map, with its input axis reordered from channels-last to channels-first.

    Keras flattens a convolution's output ``(h, w, c)`` in the order ``(h, w, c)``,
    PyTorch its ``(c, h, w)`` in the order ``(c, h, w)``; the same network therefore
    holds the same dense kernel with its input rows permuted:
    ``W_torch[o, (c, h, w)] = W_keras[(h, w, c), o]``.
    """
    out = kernel.shape[0]
    grid = kernel.reshape(out, *spatial, -1)
    return np.moveaxis(grid, -1, 1).reshape(out, -1)


def rows_channels_last(kernel: np.ndarray, spatial: tuple) -> np.ndarray:
    """The inverse of :func:`rows_channels_first`."""
    out = kernel.shape[0]
    grid = kernel.reshape(out, -1, *spatial)
    return np.moveaxis(grid, 1, -1).reshape(out, -1)
