"""Framework-neutral parts of training: the history, the minibatch order, the errors.

The minibatch order depends on ``seed`` only, so both back ends visit the same batches and
plain SGD runs agree to float32 rounding.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np


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


def minibatches(n: int, batch_size: int, epochs: int, seed: int):
    """Yield index arrays of shuffled minibatches, epoch after epoch.

    The order depends on ``seed`` only, so both back ends see the same batches. The last
    batch of an epoch may be smaller.
    """
    rng = np.random.default_rng(seed)
    for _ in range(epochs):
        order = rng.permutation(n)
        for start in range(0, n, batch_size):
            yield order[start:start + batch_size]


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
