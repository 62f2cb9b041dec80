"""Gradual pruning on a schedule while training, PyTorch back end.

The schedules (Zhu & Gupta 2017, with TensorFlow Model Optimization's semantics) are pure
functions of the step, shared by both back ends from :mod:`companion.core.schedules`:
``constant_sparsity`` and ``polynomial_decay`` return ``(should_prune, sparsity)``.
:func:`prune_gradually` trains with :func:`train`'s loop and, at the start of every step
on which the schedule prunes, scores the weights and grows the masks.
"""

from __future__ import annotations

import importlib

import numpy as np
import torch

from ..core.checks import check_choice, check_flag, check_matching_shapes
from ..core.schedules import (SCOPES, GradualPruningResult, check_schedule, check_train_args,
                              constant_sparsity, criterion_function, grow_masks,
                              polynomial_decay, pruning_steps)
from ..core.schedules import warmup_schedule as shared_warmup_schedule
from . import pruning
from .layout import from_canonical, parameter_names, to_canonical, trainable_parameters
from .training import OPTIMIZER_TYPE, step_count, _train

__all__ = ["constant_sparsity", "polynomial_decay", "pruning_steps", "prune_gradually",
           "GradualPruningResult", "warmup_schedule"]


def _score_function(name: str):
    """``<name>_scores`` of this back end; ``obd_scores`` is loaded only when used."""
    module = importlib.import_module(f"{__package__}.curvature") if name == "obd" else pruning
    return getattr(module, f"{name}_scores")


def _eligible(model, prune_biases: bool) -> list:
    return pruning._prunable(model, prune_biases)


def _initial_masks(model, eligible) -> list:
    """All-ones masks for the eligible parameters, ``None`` for the others."""
    return [torch.ones_like(p) if ok else None
            for p, ok in zip(trainable_parameters(model), eligible)]


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

        result = ct.prune_gradually(
            model, x, y, "magnitude",
            lambda t: ct.polynomial_decay(t, 0.0, 0.9, begin_step=0, end_step=100,
                                          frequency=10),
            epochs=5, lr=0.1, batch_size=32)

    Args:
        model: a ``torch.nn.Module``, e.g. from :func:`mlp` or :func:`rnn`.
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


def warmup_schedule(peak_lr: float, warmup_steps: int, total_steps: int | None = None,
                    decay: str | None = None):
    """Linear warm-up to ``peak_lr``, then constant, linear or cosine decay: a function
    ``step -> lr`` (see :func:`companion.core.schedules.warmup_schedule` for the formula).

    With a PyTorch optimizer created with ``lr=peak_lr``, ``torch.optim.lr_scheduler.
    LambdaLR(optimizer, lambda step: schedule(step) / peak_lr)`` sets ``lr(s)`` before the
    ``s``-th ``optimizer.step()`` (call ``scheduler.step()`` after each).

    Raises:
        ValueError, TypeError: bad arguments (see the core function).
    """
    return shared_warmup_schedule(peak_lr, warmup_steps, total_steps, decay)
