"""Seeding, device choice, tensors and train/eval modes for the PyTorch back end.

**The mode rule.** Functions that train (:func:`train`, :func:`prune_gradually`) run the
model in training mode and give it back in the modes its modules had. Everything that
measures (:func:`evaluate`, :func:`predict`, :func:`loss_value`, :func:`gradients`, the
pruning scores, curvature) runs in inference mode (``model.eval()``: Dropout off,
BatchNorm on its running statistics), so it gives the same numbers on every call and
changes no buffer; it too restores the caller's modes.
"""

from __future__ import annotations

import contextlib
import functools
import random

import numpy as np
import torch

__all__ = ["seed_everything", "device", "as_tensor", "inference_mode", "training_mode"]


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


@contextlib.contextmanager
def _mode(model: torch.nn.Module, training: bool):
    if not isinstance(model, torch.nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    saved = [(module, module.training) for module in model.modules()]
    model.train(training)
    try:
        yield model
    finally:
        for module, was_training in saved:
            module.training = was_training


def inference_mode(model: torch.nn.Module):
    """``with inference_mode(model):`` runs ``model.eval()`` inside, and afterwards gives
    every submodule back the mode it had (a frozen BatchNorm in eval mode inside a model in
    training mode stays so).

    Gradients still flow (unlike ``torch.inference_mode``): this is about Dropout and
    BatchNorm, not autograd.

    Args:
        model: a ``torch.nn.Module``.
    """
    return _mode(model, False)


def training_mode(model: torch.nn.Module):
    """``with training_mode(model):`` runs ``model.train()`` inside, and afterwards gives
    every submodule back the mode it had.

    Args:
        model: a ``torch.nn.Module``.
    """
    return _mode(model, True)


def measured_in_inference_mode(function):
    """Decorate ``function(model, ...)`` to run with ``model`` in :func:`inference_mode`."""
    @functools.wraps(function)
    def in_inference_mode(model, *args, **kwargs):
        with inference_mode(model):
            return function(model, *args, **kwargs)
    return in_inference_mode
