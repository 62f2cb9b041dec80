"""Argument checks that every public function of both back ends shares.

Each check returns the value it accepts (converted where that helps) and raises a
``ValueError`` or ``TypeError`` that names the argument and what is allowed, so a caller
is stopped before anything is modified.
"""

from __future__ import annotations

import math
import numbers

import numpy as np


LOSSES = ("cross_entropy", "mse")
OPTIMIZERS = ("sgd", "adam")


def check_choice(what: str, value, allowed) -> str:
    """Return ``value`` if it is one of ``allowed``; raise ``ValueError`` naming them if not."""
    if value not in allowed:
        raise ValueError(f"unknown {what} {value!r}; allowed: {', '.join(map(repr, allowed))}")
    return value


def check_positive(what: str, value, *, allow_inf: bool = False) -> float:
    """Return ``value`` as a float if it is a real number > 0 (finite unless ``allow_inf``)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{what} must be a real number, got {type(value).__name__}")
    value = float(value)
    if math.isnan(value) or value <= 0 or (math.isinf(value) and not allow_inf):
        allowed = "a number > 0 or inf" if allow_inf else "a finite number > 0"
        raise ValueError(f"{what} must be {allowed}, got {value}")
    return value


def check_positive_int(what: str, value) -> int:
    """Return ``value`` if it is an integer >= 1."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
        raise ValueError(f"{what} must be an integer >= 1, got {value!r}")
    return int(value)


def check_inputs(x) -> np.ndarray:
    """Return ``x`` as an array if it holds at least one example along axis 0.

    Raises:
        ValueError: ``x`` is a scalar or empty.
    """
    x = np.asarray(x)
    if x.ndim == 0 or len(x) == 0:
        raise ValueError(f"x must hold at least one example along axis 0, got shape {x.shape}")
    return x


def check_data(x, y, loss: str):
    """Check that ``x`` and ``y`` hold the same number of examples; return them as arrays."""
    x = np.asarray(x)
    y = np.asarray(y)
    if x.ndim == 0 or y.ndim == 0 or len(x) != len(y):
        raise ValueError(
            f"x and y must hold the same number of examples, got shapes {x.shape} and {y.shape}"
        )
    if len(x) == 0:
        raise ValueError("x and y are empty")
    if loss == "cross_entropy" and not np.issubdtype(y.dtype, np.integer):
        raise ValueError(f"cross_entropy needs integer class labels of shape (n,), or (n, T) "
                         f"for a sequence model, got {y.dtype} {y.shape}")
    if loss == "cross_entropy":
        y = y.astype(np.int64, copy=False)  # torch rejects int32 targets, TensorFlow uint8
    return x, y


def check_loss(loss):
    """Return ``loss`` if it is ``"cross_entropy"``, ``"mse"`` or a function.

    A function takes the framework's tensors in the framework's own order and returns the
    *mean* loss over the batch, a scalar tensor: in PyTorch ``loss(outputs, targets)``, as
    ``torch.nn.functional.huber_loss`` or ``torch.nn.CrossEntropyLoss()``; in TensorFlow
    ``loss(targets, outputs)``, as ``keras.losses.Huber()``. Means over batches are
    weighted by batch size, so the loss of a data set is the mean over its examples, as
    for the named losses.

    Raises:
        ValueError: an unknown name.
        TypeError: neither a name nor a callable.
    """
    if callable(loss):
        return loss
    if not isinstance(loss, str):
        raise TypeError(f"loss must be one of {', '.join(map(repr, LOSSES))} or a function "
                        f"(outputs, targets) -> mean loss, got {type(loss).__name__}")
    return check_choice("loss", loss, LOSSES)


def check_labels(y: np.ndarray, classes: int) -> None:
    """Check that integer labels ``y`` name one of ``classes`` outputs: ``0 <= y < classes``.

    Without it a label out of range is an ``IndexError`` in PyTorch, an
    ``InvalidArgumentError`` in TensorFlow on the CPU, and a silent ``nan`` loss in
    TensorFlow on a GPU.

    Raises:
        ValueError: a label below 0 or at least ``classes``.
    """
    low, high = int(np.min(y)), int(np.max(y))
    if low < 0 or high >= classes:
        raise ValueError(f"class labels must be in [0, {classes}) for a model with {classes} "
                         f"outputs, got labels from {low} to {high}")


def check_label_outputs(y: np.ndarray, output_shape) -> None:
    """Check integer labels ``y`` against a model's logits of shape ``output_shape``.

    The logits hold one row of ``C = output_shape[-1]`` classes per label: labels
    ``(n,)`` go with logits ``(n, C)``, labels ``(n, T)`` (one per position of a
    sequence) with ``(n, T, C)``. Only the axes after the first are compared, so the
    logits of one example check the labels of many. Then :func:`check_labels`.

    Raises:
        ValueError: the label and logit shapes do not match, or a label out of range.
    """
    output_shape = tuple(int(d) for d in output_shape)
    if len(output_shape) < 2 or output_shape[1:-1] != tuple(y.shape[1:]):
        raise ValueError(f"cross_entropy needs integer class labels, one per row of logits: "
                         f"labels (n, *S) for outputs (n, *S, classes); got labels {y.shape} "
                         f"for outputs {output_shape}")
    check_labels(y, output_shape[-1])


def check_matching_shapes(names, params, tensors, what: str) -> list:
    """Check that ``tensors`` has one entry per parameter, each ``None`` or of its shape."""
    tensors = list(tensors)
    if len(tensors) != len(params):
        raise ValueError(f"expected one {what} entry per trainable parameter "
                         f"({len(params)}), got {len(tensors)}")
    for name, param, tensor in zip(names, params, tensors):
        if tensor is not None and tuple(tensor.shape) != tuple(param.shape):
            raise ValueError(f"{what} for {name} has shape {tuple(tensor.shape)}, "
                             f"the parameter has {tuple(param.shape)}")
    return tensors


def resolve_seed(seed) -> int:
    """``seed`` if given, else a seed drawn from NumPy's global generator.

    :func:`seed_everything` seeds that generator, so after it both back ends draw the same
    seed and build the same model.
    """
    if seed is None:
        return int(np.random.randint(0, 2**31 - 1))
    return int(seed)


def check_sparsity(sparsity) -> float:
    """Return ``sparsity`` as a float if it lies in [0, 1); raise ``ValueError`` if not."""
    if isinstance(sparsity, bool) or not isinstance(sparsity, numbers.Real):
        raise TypeError(f"sparsity must be a number in [0, 1), got {type(sparsity).__name__}")
    if not 0.0 <= float(sparsity) < 1.0:
        raise ValueError(f"sparsity must be in [0, 1), got {sparsity}")
    return float(sparsity)


def check_masks(names, params, masks) -> list:
    """Check that ``masks`` is aligned with ``params`` and holds only 0s and 1s."""
    masks = check_matching_shapes(names, params, masks, "mask")
    for name, mask in zip(names, masks):
        if mask is None:
            continue
        # A torch tensor may live on a GPU, and be bfloat16, which NumPy lacks.
        values = (mask.detach().cpu().float().numpy() if hasattr(mask, "detach")
                  else np.asarray(mask))
        if not np.all((values == 0) | (values == 1)):
            raise ValueError(f"mask for {name} must hold only 0 and 1")
    return masks


def check_flag(what: str, value) -> bool:
    """Return ``value`` if it is a bool (Python's or NumPy's); a string such as ``"no"``
    would otherwise count as true.

    Raises:
        TypeError: ``value`` is not a bool.
    """
    if not isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{what} must be True or False, got {value!r}")
    return bool(value)


def check_tensor_list(what: str, tensors) -> list:
    """Return ``tensors`` as a list, one entry (a tensor or ``None``) per parameter.

    A single tensor is refused: iterating over it would treat its rows as the entries.

    Raises:
        TypeError: ``tensors`` is a single tensor or array (it has a ``shape``), or a string.
    """
    if hasattr(tensors, "shape") or isinstance(tensors, (str, bytes)):
        raise TypeError(f"{what} must be a list with one tensor (or None) per parameter, got "
                        f"a single {type(tensors).__name__}; wrap it in a list: [{what}]")
    return list(tensors)
