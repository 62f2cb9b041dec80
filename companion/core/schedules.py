"""Framework-neutral gradual pruning that both back ends share (plain Python, NumPy).

* **Schedules** (Zhu & Gupta 2017, with the semantics of TensorFlow Model Optimization's
  ``ConstantSparsity`` and ``PolynomialDecay``): pure functions of the training step that
  return ``(should_prune, sparsity)``. :func:`pruning_steps` lists where a schedule prunes.
* **Growing masks** (:func:`grow_masks`): the masks of one pruning step, in the canonical
  layout, so both back ends prune the same entries. Pruned weights stay pruned.
* **Choosing scores** (:func:`criterion_function`): a criterion name such as ``"snip"`` or
  a function ``model -> scores``, made into ``(model, step) -> scores``.

``companion.torch`` and ``companion.tensorflow`` re-export the public names, so a reader
writes ``ct.polynomial_decay(...)`` or ``ctf.polynomial_decay(...)`` and gets the same
numbers.
"""

from __future__ import annotations

import numbers
from dataclasses import dataclass, field

import numpy as np

from .batches import check_data_source, is_data_source
from .checks import check_choice, check_data, check_loss, check_positive, check_sparsity
from .pruning import SCOPES, keep_all_but_lowest
from .training import History, check_train_args  # noqa: F401 (re-exported for the back ends)

__all__ = ["constant_sparsity", "polynomial_decay", "pruning_steps",
           "check_schedule", "grow_masks", "criterion_function", "GradualPruningResult"]

CRITERIA = ("magnitude", "random", "gradient", "snip", "taylor", "obd")
DATA_CRITERIA = ("gradient", "snip", "taylor", "obd")


# --------------------------------------------------------------------------- schedules


def _check_integer(what: str, value) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{what} must be an integer, got {type(value).__name__}")
    return int(value)


def _check_steps(begin_step, end_step, frequency, allow_forever: bool) -> tuple:
    """tfmot's checks: ``begin >= 0``, ``end >= begin`` (or ``-1``), ``frequency >= 1``."""
    begin_step = _check_integer("begin_step", begin_step)
    end_step = _check_integer("end_step", end_step)
    frequency = _check_integer("frequency", frequency)
    if begin_step < 0:
        raise ValueError(f"begin_step must be >= 0, got {begin_step}")
    if end_step == -1 and not allow_forever:
        raise ValueError("end_step cannot be -1 here: polynomial_decay needs an end to decay to")
    if end_step != -1 and end_step < begin_step:
        raise ValueError(f"end_step must be >= begin_step ({begin_step})"
                         f"{' or -1 (prune forever)' if allow_forever else ''}, got {end_step}")
    if frequency <= 0:
        raise ValueError(f"frequency must be an integer >= 1, got {frequency}")
    return begin_step, end_step, frequency


def _should_prune(step: int, begin_step: int, end_step: int, frequency: int) -> bool:
    """tfmot's rule: ``begin <= step <= end`` (any ``step >= begin`` if ``end == -1``) and
    ``(step - begin) % frequency == 0``."""
    in_range = step >= begin_step and (end_step < 0 or step <= end_step)
    return in_range and (step - begin_step) % frequency == 0


def constant_sparsity(step: int, target_sparsity: float, begin_step: int = 0,
                      end_step: int = -1, frequency: int = 100) -> tuple:
    """A constant sparsity on the steps ``begin_step, begin_step + frequency, ...``.

    As TensorFlow Model Optimization's ``ConstantSparsity``: at step ``t`` pruning happens
    if ``begin_step <= t <= end_step`` (every ``t >= begin_step`` when ``end_step == -1``,
    the default: prune to the end of training) and ``(t - begin_step) % frequency == 0``;
    the sparsity is always ``target_sparsity``. Pass it to ``prune_gradually`` as a
    function of the step alone, e.g. ``lambda t: constant_sparsity(t, 0.8, frequency=10)``.

    Args:
        step: the training step ``t``, an integer (the number of optimizer updates so far).
        target_sparsity: the fraction of eligible weights to prune, in ``[0, 1)``.
        begin_step: the first pruning step, an integer >= 0.
        end_step: the last step that may prune, an integer >= ``begin_step``, or ``-1``.
        frequency: prune every ``frequency`` steps, an integer >= 1.

    Returns:
        ``(should_prune, sparsity)``: a ``bool`` and a ``float``.

    Raises:
        ValueError: ``target_sparsity`` outside ``[0, 1)``, ``begin_step < 0``, ``end_step``
            before ``begin_step`` (and not ``-1``), or ``frequency < 1``.
        TypeError: a step, ``end_step`` or ``frequency`` that is not an integer.
    """
    step = _check_integer("step", step)
    target_sparsity = check_sparsity(target_sparsity)
    begin_step, end_step, frequency = _check_steps(begin_step, end_step, frequency, True)
    return _should_prune(step, begin_step, end_step, frequency), target_sparsity


def polynomial_decay(step: int, initial_sparsity: float, final_sparsity: float,
                     begin_step: int, end_step: int, frequency: int = 100,
                     power: float = 3) -> tuple:
    """Zhu & Gupta's (2017) gradual schedule: fast pruning at first, slower near the end.

    ``s_t = s_f + (s_i - s_f) (1 - p)^power`` with ``p = clip((t - t_0) / (t_end - t_0),
    0, 1)``: ``s_i`` up to ``begin_step`` ``t_0``, ``s_f`` from ``end_step`` ``t_end`` on.
    Zhu & Gupta write ``t_end = t_0 + n Δt`` with ``Δt`` the ``frequency``. As in
    TensorFlow Model Optimization's ``PolynomialDecay``, pruning happens at step ``t`` if
    ``t_0 <= t <= t_end`` and ``(t - t_0) % frequency == 0``. So the final sparsity is
    applied only when ``t_end - t_0`` is a multiple of ``frequency``; otherwise the last
    pruning step is earlier and prunes less (tfmot behaves the same way). With
    ``t_end == t_0`` the schedule jumps to ``s_f`` at ``t_0`` (tfmot divides by zero).
    tfmot's example ``polynomial_decay(t, 0.2, 0.8, 100, 110, frequency=2)`` gives
    ``0.2, 0.4928, 0.725, 0.8`` at ``t = 100, 102, 105, 110``.

    Unlike tfmot, a schedule that would make the network denser (``s_i > s_f``) is an
    error: pruned weights stay pruned here.

    Args:
        step: the training step ``t``, an integer (the number of optimizer updates so far).
        initial_sparsity: ``s_i``, in ``[0, 1)``.
        final_sparsity: ``s_f``, in ``[s_i, 1)``.
        begin_step: ``t_0``, an integer >= 0.
        end_step: ``t_end``, an integer >= ``begin_step`` (``-1`` is not allowed).
        frequency: ``Δt``, prune every ``frequency`` steps, an integer >= 1.
        power: the exponent, a finite number > 0 (3 in Zhu & Gupta).

    Returns:
        ``(should_prune, sparsity)``: a ``bool`` and a ``float``.

    Raises:
        ValueError: a sparsity outside ``[0, 1)``, ``initial_sparsity > final_sparsity``,
            ``begin_step < 0``, ``end_step < begin_step``, ``frequency < 1`` or
            ``power`` not a finite number > 0.
        TypeError: a step, ``end_step`` or ``frequency`` that is not an integer.
    """
    step = _check_integer("step", step)
    initial = check_sparsity(initial_sparsity)
    final = check_sparsity(final_sparsity)
    if initial > final:
        raise ValueError(f"initial_sparsity ({initial}) must not exceed final_sparsity "
                         f"({final}): pruned weights are never restored")
    power = check_positive("power", power)
    begin_step, end_step, frequency = _check_steps(begin_step, end_step, frequency, False)
    if end_step == begin_step:
        progress = 1.0 if step >= begin_step else 0.0
    else:
        progress = min(1.0, max(0.0, (step - begin_step) / (end_step - begin_step)))
    sparsity = final + (initial - final) * (1.0 - progress) ** power
    return _should_prune(step, begin_step, end_step, frequency), sparsity


def check_schedule(schedule, step: int) -> tuple:
    """``schedule(step)`` checked: a ``(should_prune, sparsity)`` pair, sparsity in ``[0, 1)``.

    Args:
        schedule: a function of the step, e.g.
            ``lambda t: polynomial_decay(t, 0.0, 0.9, 0, 100, frequency=10)``.
        step: the step to evaluate it at, an integer.

    Raises:
        TypeError: ``schedule`` is not callable or does not return a pair.
        ValueError: the schedule's own error for bad parameters, or a sparsity outside
            ``[0, 1)``.
    """
    if not callable(schedule):
        raise TypeError("schedule must be a function step -> (should_prune, sparsity), e.g. "
                        f"lambda t: polynomial_decay(t, ...); got {type(schedule).__name__}")
    value = schedule(step)
    if not isinstance(value, tuple) or len(value) != 2:
        raise TypeError(f"schedule({step}) must return (should_prune, sparsity), got {value!r}")
    return bool(value[0]), check_sparsity(value[1])


def pruning_steps(schedule, steps: int) -> list:
    """Where ``schedule`` prunes during ``steps`` training steps: ``[(t, sparsity), ...]``.

    Steps are counted as TensorFlow Model Optimization counts them: the batch that makes
    the ``k``-th optimizer update is step ``t = k`` (``pruning_wrapper`` increments its
    ``pruning_step`` before the mask update, so the first batch is step 1). Evaluates
    ``schedule(t)`` for ``t = 1, ..., steps`` (so a bad schedule raises here, before any
    training) and keeps the steps whose ``should_prune`` is true: a run of exactly
    ``end_step`` steps reaches the schedule's last pruning step.

    Args:
        schedule: a function ``step -> (should_prune, sparsity)``, e.g.
            ``lambda t: polynomial_decay(t, 0.0, 0.9, 0, 100, frequency=10)``.
        steps: the number of training steps, an integer >= 0.

    Raises:
        TypeError, ValueError: as in :func:`check_schedule`.
    """
    steps = _check_integer("steps", steps)
    if steps < 0:
        raise ValueError(f"steps must be >= 0, got {steps}")
    check_schedule(schedule, 1)  # an invalid schedule fails even for a run of no steps
    plan = []
    for step in range(1, steps + 1):
        should_prune, sparsity = check_schedule(schedule, step)
        if should_prune:
            plan.append((step, sparsity))
    return plan


# --------------------------------------------------------------------------- masks


def grow_masks(scores, masks, eligible, sparsity: float, scope: str) -> list:
    """The masks of one pruning step: earlier prunes kept, the lowest scores pruned next.

    In each group of eligible tensors (all of them together for ``scope="global"``, each
    alone for ``"layer"``) of ``n`` entries, ``k = round(sparsity * n)`` entries end up
    pruned: first every entry that ``masks`` already prunes (whatever its score), then the
    lowest-scoring of the others, ties broken by position (tensor order, then row-major
    canonical index) as in :func:`companion.core.pruning.lowest_score_masks`. This is tfmot's
    rule, where pruned weights are zero and so rank lowest by magnitude, made exact for
    every criterion: masks only grow. If ``k`` is smaller than the number already pruned
    (a schedule whose sparsity fell), nothing more is pruned and nothing is restored.

    Args:
        scores: canonical-layout arrays (or ``None`` where not ``eligible``); higher
            means keep.
        masks: the current 0/1 canonical masks (``None`` where not ``eligible``).
        eligible: one ``bool`` per tensor: may it be pruned.
        sparsity: the fraction of each group's entries to prune, in ``[0, 1)``.
        scope: ``"global"`` or ``"layer"``.

    Raises:
        ValueError: an eligible tensor without a score or a mask, a sparsity outside
            ``[0, 1)``, an unknown scope, or a non-finite score of an entry not yet pruned.
    """
    sparsity = check_sparsity(sparsity)
    check_choice("scope", scope, SCOPES)
    chosen = [i for i, ok in enumerate(eligible) if ok]
    for i in chosen:
        if scores[i] is None or masks[i] is None:
            raise ValueError(f"parameter {i} is pruned, so it needs a score and a mask, "
                             "got None")
    groups = [chosen] if scope == "global" else [[i] for i in chosen]
    new = [None] * len(scores)
    for group in groups:
        if not group:
            continue
        flat = np.concatenate([np.ravel(scores[i]) for i in group])
        kept = np.concatenate([np.ravel(masks[i]) != 0 for i in group])
        if not np.all(np.isfinite(flat[kept])):
            raise ValueError("scores contain nan or inf")
        # pruned entries come first whatever their score, then the lowest of the others
        count = max(round(sparsity * flat.size), int(np.sum(~kept)))
        kept_at = np.flatnonzero(kept)
        keep = kept.copy()
        keep[kept_at[~keep_all_but_lowest(flat[kept_at], count - (flat.size - kept_at.size))]] \
            = False
        offsets = np.cumsum([0] + [np.size(scores[i]) for i in group])
        for i, start, stop in zip(group, offsets[:-1], offsets[1:]):
            new[i] = keep[start:stop].reshape(np.shape(scores[i])).astype(np.float32)
    return new


def criterion_function(criterion, lookup, x=None, y=None, loss: str = "cross_entropy",
                       seed: int = 0):
    """``criterion`` as a function ``(model, step) -> scores`` for gradual pruning.

    * ``"magnitude"``: ``magnitude_scores(model)``;
    * ``"random"``: ``random_scores(model, seed + step)``, a new draw at each step;
    * ``"gradient"``, ``"snip"``, ``"taylor"``, ``"obd"``: ``<name>_scores(model, x, y,
      loss=loss)`` on the data ``(x, y)``, with each function's defaults (``obd_scores``:
      the exact Hessian diagonal);
    * a function ``model -> scores`` (e.g. ``lambda m: ct.obd_scores(m, x, y,
      method="fisher")``) is called as it is.

    Args:
        criterion: one of the names above, or a function ``model -> scores``.
        lookup: a back end's ``name -> <name>_scores`` function (called at pruning time,
            so a back end may load ``obd_scores`` lazily).
        x: inputs for the data-based criteria, or a data source of ``(x, y)`` batches.
        y: labels or targets for the data-based criteria (``None`` with a data source).
        loss: ``"cross_entropy"``, ``"mse"`` or a loss function, for the data-based
            criteria.
        seed: the base seed of ``"random"``.

    Raises:
        ValueError: an unknown criterion name or loss, or a data-based criterion without
            data (or with bad data).
        TypeError: ``criterion`` is neither a name nor callable.
    """
    if callable(criterion):
        return lambda model, step: criterion(model)
    if not isinstance(criterion, str):
        raise TypeError("criterion must be a name (" + ", ".join(map(repr, CRITERIA)) +
                        f") or a function model -> scores, got {type(criterion).__name__}")
    check_choice("criterion", criterion, CRITERIA)
    check_loss(loss)
    if criterion == "magnitude":
        return lambda model, step: lookup("magnitude")(model)
    if criterion == "random":
        return lambda model, step: lookup("random")(model, int(seed) + step)
    if x is None or (y is None and not is_data_source(x)):
        raise ValueError(f"criterion {criterion!r} scores weights on data: pass x and y, or "
                         "a data source as x")
    if not check_data_source(x, y):
        x, y = check_data(x, y, loss)
    return lambda model, step: lookup(criterion)(model, x, y, loss=loss)


@dataclass
class GradualPruningResult:
    """What ``prune_gradually`` returns.

    Attributes:
        history: the :class:`~companion.core.training.History` of the training steps.
        masks: the final 0/1 masks, aligned with the trainable parameters (``None`` for
            a parameter that is not pruned), in the back end's own layout.
        steps: the steps at which pruning happened (before that step's update), counted
            from 1 as in tfmot (see :func:`pruning_steps`).
        sparsities: the schedule's target sparsity at each of those steps.
        pruned: the fraction of eligible weights pruned after each of those steps.
    """

    history: History
    masks: list
    steps: list = field(default_factory=list)
    sparsities: list = field(default_factory=list)
    pruned: list = field(default_factory=list)

    def __str__(self) -> str:
        lines = [f"{'step':>8}{'target':>10}{'pruned':>10}"]
        for step, target, pruned in zip(self.steps, self.sparsities, self.pruned):
            lines.append(f"{step:>8}{target:>10.2%}{pruned:>10.2%}")
        return "\n".join(lines)


# --------------------------------------------------------------------------- learning rate


def warmup_schedule(peak_lr: float, warmup_steps: int, total_steps: int | None = None,
                    decay: str | None = None):
    """A learning rate per optimizer step ``s = 0, 1, ...``: linear warm-up, then a decay.

    ``lr(s) = peak_lr * s / W`` for ``s < W`` (Goyal et al. 2017; ``s`` counts from 0, as
    ``torch.optim.lr_scheduler.LambdaLR`` and Keras' ``optimizer.iterations`` do, so the
    first step has ``lr = 0``, as in Keras' ``CosineDecay(warmup_steps=W)``), then with
    ``p = min(1, (s - W) / (T - W))``:

    * ``decay=None``: ``lr(s) = peak_lr``;
    * ``"linear"``: ``lr(s) = peak_lr (1 - p)``;
    * ``"cosine"``: ``lr(s) = peak_lr (1 + cos(pi p)) / 2`` (Loshchilov & Hutter 2017),
      zero from ``s = T`` on.

    Args:
        peak_lr: the learning rate reached after warm-up, a finite number > 0.
        warmup_steps: ``W``, an integer >= 0 (0: no warm-up).
        total_steps: ``T > W``, where the decay reaches 0; only with a ``decay``.
        decay: ``None``, ``"linear"`` or ``"cosine"``.

    Returns:
        A function ``step -> lr`` (a float) of an integer ``step >= 0``.

    Raises:
        ValueError, TypeError: a ``peak_lr`` that is not a finite number > 0, a negative or
            non-integer ``warmup_steps``, an unknown ``decay``, a ``decay`` without
            ``total_steps > warmup_steps`` or ``total_steps`` without a ``decay``.
    """
    peak_lr = check_positive("peak_lr", peak_lr)
    warmup_steps = _check_integer("warmup_steps", warmup_steps)
    if warmup_steps < 0:
        raise ValueError(f"warmup_steps must be an integer >= 0, got {warmup_steps}")
    check_choice("decay", decay, (None, "linear", "cosine"))
    if decay is None and total_steps is not None:
        raise ValueError("total_steps is where a decay ends: give decay='linear' or "
                         "'cosine' with it, or leave it None")
    if decay is not None:
        if total_steps is None:
            raise ValueError(f"decay={decay!r} needs total_steps (an integer > warmup_steps)")
        total_steps = _check_integer("total_steps", total_steps)
        if total_steps <= warmup_steps:
            raise ValueError(f"total_steps must be > warmup_steps ({warmup_steps}), got "
                             f"{total_steps}")

    def learning_rate(step: int) -> float:
        step = _check_integer("step", step)
        if step < 0:
            raise ValueError(f"step must be an integer >= 0, got {step}")
        if step < warmup_steps:
            return peak_lr * step / warmup_steps
        if decay is None:
            return peak_lr
        progress = min(1.0, (step - warmup_steps) / (total_steps - warmup_steps))
        if decay == "linear":
            return peak_lr * (1.0 - progress)
        return float(peak_lr * 0.5 * (1.0 + np.cos(np.pi * progress)))

    return learning_rate
