"""Seeding and device choice for the PyTorch back end."""

from __future__ import annotations

import random

import numpy as np
import torch

__all__ = ["seed_everything", "device", "as_tensor"]


def seed_everything(seed: int) -> None:
    """Make runs repeatable: seed Python, NumPy and PyTorch (all devices).

    Also turns on deterministic algorithms and turns off TF32 matrix multiplication,
    so a GPU gives float32 results, not 10-bit-mantissa ones.

    Args:
        seed: an integer in ``[0, 2**32 - 1]``, the range NumPy accepts.

    Raises:
        ValueError: ``seed`` is negative or above ``2**32 - 1`` (from ``np.random.seed``).
        TypeError: ``seed`` is not an integer, e.g. ``1.5`` (from ``np.random.seed``).
    """
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    torch.use_deterministic_algorithms(True)
    torch.backends.cudnn.benchmark = False
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False


def device() -> torch.device:
    """The device models are built on: the first GPU when there is one, else the CPU."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def as_tensor(array, like: torch.Tensor) -> torch.Tensor:
    """``array`` as a tensor on ``like``'s device; floats take ``like``'s dtype.

    Args:
        array: anything ``np.asarray`` accepts: an array, a nested list, a scalar.
        like: a tensor whose device and floating dtype the result takes, e.g. a parameter.

    Raises:
        TypeError: ``array`` holds values PyTorch has no dtype for (strings, objects).
    """
    tensor = torch.as_tensor(np.asarray(array), device=like.device)
    return tensor.to(like.dtype) if tensor.is_floating_point() else tensor
