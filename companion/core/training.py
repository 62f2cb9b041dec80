"""Framework-neutral parts of training: the history, the argument checks, the errors.

The minibatch order (:func:`companion.core.batches.minibatches`) depends on ``seed`` only,
so both back ends visit the same batches and plain SGD runs agree to float32 rounding.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from .batches import check_data_source
from .checks import (OPTIMIZERS, check_choice, check_data, check_loss, check_positive,
                     check_positive_int)


class NonFiniteError(FloatingPointError):
    """Training met a non-finite loss or gradient and stopped before applying it.

    Attributes:
        step: the optimisation step (0-based) whose loss or gradient was not finite.
        history: the :class:`History` up to, not including, that step.
    """

    def __init__(self, message: str, step: int, history: "History"):
        super().__init__(message)
        self.step = step
        self.history = history


@dataclass
class History:
    """What :func:`train` records, one entry per optimisation step.

    Attributes:
        loss: the minibatch's mean loss before the update.
        accuracy: the minibatch's accuracy (classification only, else empty).
        grad_norm: the global 2-norm of the minibatch gradient, before any clipping.
    """

    loss: list = field(default_factory=list)
    accuracy: list = field(default_factory=list)
    grad_norm: list = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.loss)


def scheduled_lr(lr, step: int) -> float | None:
    """The learning rate of step ``step`` (from 0) when ``lr`` is a schedule, a function
    ``step -> lr`` such as :func:`companion.core.schedules.warmup_schedule`; ``None``
    when ``lr`` is a number (or ``None``), which the optimizer then holds throughout.

    Raises:
        ValueError: the schedule's value at ``step`` is not a finite number >= 0.
    """
    if not callable(lr):
        return None
    rate = float(lr(step))
    if not (math.isfinite(rate) and rate >= 0):
        raise ValueError(f"the learning-rate schedule gave {rate} at step {step}: it must "
                         "give finite numbers >= 0")
    return rate


def nonfinite_message(step: int, loss: float, grad_norm: float) -> str:
    """The message :class:`NonFiniteError` carries: what was not finite, at which step."""
    what = []
    if not math.isfinite(loss):
        what.append(f"loss = {loss}")
    if not math.isfinite(grad_norm):
        what.append(f"gradient norm = {grad_norm}")
    return (f"step {step}: {' and '.join(what)}; training stopped before applying this update "
            "(try a smaller learning rate, a better initialisation or gradient clipping)")


def nonfinite_clip_message(step: int) -> str:
    """The message of the :class:`NonFiniteError` raised when a clip function of the
    user's turns finite gradients into non-finite ones, before they are applied."""
    return (f"step {step}: the clip function returned non-finite gradients from finite "
            "ones; training stopped before applying this update")


def check_train_args(x, y, epochs, lr, batch_size, optimizer, momentum, loss, monitor, *,
                     optimizer_type: tuple):
    """Validate ``train``'s arguments (both back ends) before anything changes.

    Returns ``x, y`` as checked arrays, or ``(x, None)`` for a data source of batches (see
    :func:`companion.core.batches.is_data_source`), whose batches are the minibatches, so
    ``batch_size`` must then be ``None``. ``optimizer`` is a name or the framework's own
    optimizer, an instance of ``optimizer_type = (class, its name for messages)``; an
    object holds its own learning rate and momentum, so ``lr`` and ``momentum`` must then
    not be given. ``lr`` is a number > 0 or a schedule (see :func:`scheduled_lr`).

    Raises:
        ValueError, TypeError: what each check says (``epochs``, ``lr``, ``batch_size``,
            ``optimizer``, ``momentum``, ``loss``, ``monitor``, the data).
    """
    check_positive_int("epochs", epochs)
    optimizer_class, class_name = optimizer_type
    optimizer_object = isinstance(optimizer, optimizer_class)
    if not optimizer_object and not isinstance(optimizer, str):
        raise TypeError(f"optimizer must be 'sgd', 'adam' or a {class_name}, got "
                        f"{type(optimizer).__name__}")
    if isinstance(momentum, bool) or not isinstance(momentum, (int, float, np.floating)):
        raise TypeError(f"momentum must be a real number in [0, 1), got "
                        f"{type(momentum).__name__}")
    if not 0.0 <= momentum < 1.0:
        raise ValueError(f"momentum must be in [0, 1), got {momentum}")
    if optimizer_object:
        if lr is not None or momentum:
            raise ValueError("the optimizer object holds its own learning rate and momentum: "
                             "leave lr and momentum unset")
    else:
        if lr is None:
            raise ValueError(f"lr is needed with optimizer={optimizer!r}")
        if callable(lr):
            scheduled_lr(lr, 0)
        else:
            check_positive("lr", lr)
        check_choice("optimizer", optimizer, OPTIMIZERS)
        if momentum and optimizer != "sgd":
            raise ValueError("momentum applies to optimizer='sgd' only")
    check_loss(loss)
    if monitor is not None and not hasattr(monitor, "record"):
        raise TypeError("monitor must have a record(step, grads) method, e.g. GradientMonitor")
    if check_data_source(x, y):
        if batch_size is not None:
            raise ValueError("batch_size must be None with a data source: its batches are "
                             "the minibatches")
        return x, None
    check_positive_int("batch_size", batch_size)
    return check_data(x, y, loss)
