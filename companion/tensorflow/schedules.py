"""Gradual pruning on a schedule while training, TensorFlow back end.

The schedules (Zhu & Gupta 2017, with TensorFlow Model Optimization's semantics) are pure
functions of the step, shared by both back ends from :mod:`companion.core.schedules`:
``constant_sparsity`` and ``polynomial_decay`` return ``(should_prune, sparsity)``.
:func:`prune_gradually` trains with :func:`train`'s loop and, at the start of every step
on which the schedule prunes, scores the weights and grows the masks; the
:class:`GradualPruning` callback does the same in Keras ``model.fit``.
"""

from __future__ import annotations

import importlib
import math

import keras
import numpy as np
import tensorflow as tf

from ..core.checks import (check_choice, check_flag, check_loss, check_matching_shapes,
                           resolve_seed)
from ..core.schedules import (SCOPES, GradualPruningResult, check_schedule, check_train_args,
                              constant_sparsity, criterion_function, grow_masks,
                              polynomial_decay, pruning_steps)
from ..core.schedules import warmup_schedule as shared_warmup_schedule
from . import pruning
from .layout import from_canonical, parameter_names, to_canonical, trainable_parameters
from .training import OPTIMIZER_TYPE, step_count, _train

__all__ = ["constant_sparsity", "polynomial_decay", "pruning_steps", "prune_gradually",
           "GradualPruningResult", "GradualPruning", "warmup_schedule", "WarmupSchedule"]


def _score_function(name: str):
    """``<name>_scores`` of this back end; ``obd_scores`` is loaded only when used."""
    module = importlib.import_module(f"{__package__}.curvature") if name == "obd" else pruning
    return getattr(module, f"{name}_scores")


def _eligible(model, prune_biases: bool) -> list:
    return pruning._prunable(model, prune_biases)


def _initial_masks(model, eligible) -> list:
    """All-ones masks for the eligible variables, ``None`` for the others."""
    return [tf.ones(v.shape, v.dtype) if ok else None
            for v, ok in zip(trainable_parameters(model), eligible)]


def _grow(model, scores, masks, eligible, sparsity: float, scope: str) -> tuple:
    """One pruning step: ``(new masks, fraction of eligible entries pruned)``."""
    scores = check_matching_shapes(parameter_names(model), trainable_parameters(model),
                                   scores, "score")
    new = grow_masks(to_canonical(model, [s if ok else None for s, ok in zip(scores, eligible)]),
                     to_canonical(model, masks), eligible, sparsity, scope)
    chosen = [m for m in new if m is not None]
    pruned = sum(int(np.sum(m == 0)) for m in chosen) / max(sum(m.size for m in chosen), 1)
    return from_canonical(model, new), pruned


def prune_gradually(model, x, y, criterion, schedule, epochs: int, *,
                    lr: float | None = None, batch_size: int | None = None,
                    scope: str = "global", prune_biases: bool = False, optimizer="sgd",
                    momentum: float = 0.0, loss="cross_entropy", clip=None, monitor=None,
                    progress: bool = True, seed: int = 0) -> GradualPruningResult:
    """Train ``model`` as :func:`train` does while pruning it on ``schedule``.

    Step ``t`` (counted from 1 as in tfmot: the step of the ``t``-th update, so ``t - 1``
    updates are done; see :func:`pruning_steps`) starts, when ``schedule(t)`` says
    ``should_prune``, by scoring the weights with ``criterion`` on the current model and
    pruning to ``schedule(t)``'s sparsity ``s_t``: every weight pruned so far stays
    pruned, and the lowest-scoring others join them until ``round(s_t * n)`` of the ``n``
    eligible weights are pruned (per tensor with ``scope="layer"``; see
    :func:`~companion.core.schedules.grow_masks`). Then the step's update follows. A
    pruned weight stays exactly zero: its gradient is masked before every update and the
    weights are re-masked after it, as in ``train(..., masks=...)``.

    The order (masks first, then the step's forward pass and update) is TensorFlow Model
    Optimization's. tfmot re-ranks all weights by magnitude at each pruning step, where
    pruned ones score lowest because they are (nearly) zero; here they rank lowest by
    rule, so masks only grow for every criterion, random and gradient-based ones too.

    For example, 90 % sparsity over the first 100 steps, pruning every 10 steps::

        result = ctf.prune_gradually(
            model, x, y, "magnitude",
            lambda t: ctf.polynomial_decay(t, 0.0, 0.9, begin_step=0, end_step=100,
                                           frequency=10),
            epochs=5, lr=0.1, batch_size=32)

    Args:
        model: a Keras model, e.g. from :func:`mlp` or :func:`rnn`.
        x: the inputs, an array-like with one example per row (axis 0), or a data source
            of ``(x, y)`` batches (as in :func:`train`; the data-based criteria read it too).
        y: integer class labels (``"cross_entropy"``) or targets (``"mse"``); ``None``
            with a data source.
        criterion: ``"magnitude"``, ``"random"``, ``"gradient"``, ``"snip"``, ``"taylor"``
            or ``"obd"`` (the data-based ones score on ``(x, y)``; ``"random"`` draws with
            seed ``seed + t``), or a function ``model -> scores``; higher means keep.
        schedule: a function ``step -> (should_prune, sparsity)``, e.g. built from
            :func:`polynomial_decay` or :func:`constant_sparsity`.
        epochs: passes over ``(x, y)``, an integer >= 1.
        lr: the learning rate of ``"sgd"`` or ``"adam"``, a finite number > 0.
        batch_size: examples per step with arrays, an integer >= 1.
        scope: ``"global"`` (one ranking over all eligible weights) or ``"layer"``.
        prune_biases: also prune biases (see :func:`companion.core.pruning.is_weight`).
        optimizer: ``"sgd"``, ``"adam"`` or the framework's optimizer, as in :func:`train`.
        momentum: SGD momentum in ``[0, 1)``.
        loss: ``"cross_entropy"``, ``"mse"`` or a loss function, as in :func:`train`.
        clip: ``None``, a ``Clip`` rule or a function ``grads -> grads``, as in :func:`train`.
        monitor: e.g. a :class:`GradientMonitor`, as in :func:`train`.
        progress: show a tqdm progress bar (on stdout).
        seed: the minibatch order (as in :func:`train`) and the base seed of ``"random"``.

    Returns:
        a :class:`~companion.core.schedules.GradualPruningResult`: the training
        ``history``, the final ``masks``, and the ``steps`` that pruned with their target
        ``sparsities`` and the fraction of eligible weights ``pruned`` after each.

    Raises:
        ValueError, TypeError: bad arguments (as in :func:`train`), an unknown criterion or
            scope, or an invalid schedule (e.g. ``final_sparsity >= 1``, ``end_step <
            begin_step``, ``frequency < 1``, ``initial_sparsity > final_sparsity``),
            before anything is changed.
        NonFiniteError: as in :func:`train`; pruning done so far stays.
    """
    x, y = check_train_args(x, y, epochs, lr, batch_size, optimizer, momentum, loss, monitor,
                            optimizer_type=OPTIMIZER_TYPE)
    check_choice("scope", scope, SCOPES)
    score = criterion_function(criterion, _score_function, x, y, loss, seed)
    steps = step_count(x, y, batch_size, epochs)
    # All steps are checked before training; a source of unknown length, step by step.
    plan = None if steps is None else dict(pruning_steps(schedule, steps))
    eligible = _eligible(model, check_flag("prune_biases", prune_biases))
    masks = _initial_masks(model, eligible)
    result = GradualPruningResult(history=None, masks=masks)

    def before_step(index: int):
        step = index + 1  # tfmot's count: the first batch is step 1
        should_prune, sparsity = (check_schedule(schedule, step) if plan is None
                                  else (step in plan, plan.get(step)))
        if not should_prune:
            return None
        result.masks, pruned = _grow(model, score(model, step), result.masks, eligible,
                                     sparsity, scope)
        result.steps.append(step)
        result.sparsities.append(sparsity)
        result.pruned.append(pruned)
        return result.masks

    result.history = _train(model, x, y, epochs=epochs, lr=lr, batch_size=batch_size,
                            optimizer=optimizer, momentum=momentum, loss=loss, clip=clip,
                            monitor=monitor, masks=masks, progress=progress, seed=seed,
                            before_step=before_step)
    return result


class GradualPruning(keras.callbacks.Callback):
    """Gradual pruning in Keras ``model.fit``: a callback, as :func:`prune_gradually` does.

    TensorFlow Model Optimization's pruning does not support Keras 3; this does the same
    with any criterion. The step ``t`` is counted as tfmot's ``UpdatePruningStep`` and
    ``pruning_wrapper`` count it: the optimizer's iteration count plus one
    (``model.optimizer.iterations + 1``, the step of the update this batch makes; the
    first batch is step 1), so a second ``fit`` goes on where the first stopped. Before
    each batch whose ``schedule(t)`` says ``should_prune``, the weights are scored and the masks grown to ``schedule(t)``'s
    sparsity (see :func:`companion.core.schedules.grow_masks`: masks only grow); at the
    start of training and after every batch the weights are multiplied by the masks, as
    :class:`KeepMasks` does, so pruned weights are exactly zero after each step::

        schedule = lambda t: ctf.polynomial_decay(t, 0.0, 0.9, 0, 100, frequency=10)
        pruning = ctf.GradualPruning("magnitude", schedule)
        model.fit(x, y, epochs=5, callbacks=[pruning])
        pruning.masks  # the final masks
        pruning.steps, pruning.sparsities, pruning.pruned  # as in prune_gradually

    It needs ``steps_per_execution=1`` (Keras' default), since callbacks run between
    executions. The masks persist across ``fit`` calls on the same model.

    Args:
        criterion: ``"magnitude"``, ``"random"``, ``"gradient"``, ``"snip"``, ``"taylor"``
            or ``"obd"`` (the data-based ones need ``x`` and ``y``), or a function
            ``model -> scores``; higher means keep.
        schedule: a function ``step -> (should_prune, sparsity)``, e.g. built from
            :func:`polynomial_decay` or :func:`constant_sparsity`.
        x: inputs for the data-based criteria (e.g. the training inputs or a subset).
        y: labels or targets for the data-based criteria.
        scope: ``"global"`` (one ranking over all eligible weights) or ``"layer"``.
        prune_biases: also prune biases (see :func:`companion.core.pruning.is_weight`).
        loss: ``"cross_entropy"`` or ``"mse"``, for the data-based criteria.
        seed: the base seed of ``"random"`` (seed ``seed + t`` at step ``t``).

    Attributes:
        masks: the current masks, aligned with the model's trainable variables (``None``
            before ``fit`` and for variables that are not pruned).
        steps: the steps at which pruning happened.
        sparsities: the schedule's target sparsity at each of those steps.
        pruned: the fraction of eligible weights pruned after each of those steps.

    Raises:
        ValueError, TypeError: an unknown criterion, scope or loss, a data-based criterion
            without data, or an invalid schedule (checked at step 1), when the callback
            is made; a schedule invalid at any step of a ``fit`` whose length Keras knows,
            when that ``fit`` starts (before any weight changes).
    """

    def __init__(self, criterion, schedule, x=None, y=None, *, scope: str = "global",
                 prune_biases: bool = False, loss: str = "cross_entropy", seed: int = 0):
        super().__init__()
        check_choice("scope", scope, SCOPES)
        check_loss(loss)
        check_schedule(schedule, 1)
        self._score = criterion_function(criterion, _score_function, x, y, loss,
                                         resolve_seed(seed))
        self._schedule = schedule
        self._scope = scope
        self._prune_biases = check_flag("prune_biases", prune_biases)
        self._owner = None
        self.masks = None
        self.steps, self.sparsities, self.pruned = [], [], []

    def set_model(self, model):
        if model is not self._owner:  # a new model starts from no pruning
            self._eligible = _eligible(model, self._prune_biases)
            self.masks = _initial_masks(model, self._eligible)
            self._owner = model
            self.steps, self.sparsities, self.pruned = [], [], []
        super().set_model(model)

    def _apply(self):
        for variable, mask in zip(trainable_parameters(self.model), self.masks):
            if mask is not None:
                variable.assign(variable * mask)

    def on_train_begin(self, logs=None):
        # Every step of this fit is checked now, so a bad schedule fails before training.
        steps, epochs = self.params.get("steps"), self.params.get("epochs")
        if steps and epochs:
            first = int(self.model.optimizer.iterations.numpy()) + 1
            for step in range(first, first + steps * epochs):
                check_schedule(self._schedule, step)
        self._apply()

    def on_train_batch_begin(self, batch, logs=None):
        step = int(self.model.optimizer.iterations.numpy()) + 1
        should_prune, sparsity = check_schedule(self._schedule, step)
        if should_prune:
            self.masks, pruned = _grow(self.model, self._score(self.model, step), self.masks,
                                       self._eligible, sparsity, self._scope)
            self.steps.append(step)
            self.sparsities.append(sparsity)
            self.pruned.append(pruned)
            self._apply()

    def on_train_batch_end(self, batch, logs=None):
        self._apply()


class WarmupSchedule(keras.optimizers.schedules.LearningRateSchedule):
    """:func:`warmup_schedule` as a Keras learning-rate schedule (graph-compatible)."""

    def __init__(self, peak_lr: float, warmup_steps: int, total_steps: int | None = None,
                 decay: str | None = None):
        super().__init__()
        shared_warmup_schedule(peak_lr, warmup_steps, total_steps, decay)  # the checks
        self.peak_lr, self.warmup_steps = float(peak_lr), int(warmup_steps)
        self.total_steps, self.decay = total_steps, decay

    def __call__(self, step):
        # float64, then float32 like the optimizer's variable: the core's numbers, rounded.
        step = tf.cast(step, tf.float64)
        lr = tf.constant(self.peak_lr, tf.float64)
        if self.decay is not None:
            span = float(self.total_steps - self.warmup_steps)
            progress = tf.clip_by_value((step - self.warmup_steps) / span, 0.0, 1.0)
            lr = lr * (1.0 - progress if self.decay == "linear" else
                       0.5 * (1.0 + tf.cos(math.pi * progress)))
        if self.warmup_steps > 0:
            lr = tf.where(step < self.warmup_steps, self.peak_lr * step / self.warmup_steps,
                          lr)
        return tf.cast(lr, tf.float32)

    def get_config(self) -> dict:
        return {"peak_lr": self.peak_lr, "warmup_steps": self.warmup_steps,
                "total_steps": self.total_steps, "decay": self.decay}


def warmup_schedule(peak_lr: float, warmup_steps: int, total_steps: int | None = None,
                    decay: str | None = None) -> WarmupSchedule:
    """Linear warm-up to ``peak_lr``, then constant, linear or cosine decay, as a Keras
    ``LearningRateSchedule`` (see :func:`companion.core.schedules.warmup_schedule` for the
    formula): ``keras.optimizers.SGD(learning_rate=schedule)`` uses ``lr(s)`` at its
    ``s``-th step (``optimizer.iterations``); ``float(schedule(s))`` is that number.

    Raises:
        ValueError, TypeError: bad arguments (see the core function).
    """
    return WarmupSchedule(peak_lr, warmup_steps, total_steps, decay)
