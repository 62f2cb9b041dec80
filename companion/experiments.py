"""Pruning experiments that several chapters run: accuracy against sparsity, as data, tables
and figures. Framework-neutral: each function takes the back end (``companion.torch`` or
``companion.tensorflow``) as its first argument.

A chapter builds one *pruner* per criterion, a function ``sparsity -> masks`` that prunes
the model in place (e.g. ``lambda s: ct.prune(model, scores, s)`` or
``lambda s: ct.obs_prune(model, x, y, s)``), and hands them to :func:`sparsity_sweep`,
which restores the trained weights before each one.

A claim such as "magnitude beats SNIP" rests on several seeds, not one draw:
:func:`over_seeds` runs an experiment once per seed, :func:`summarize` gives a quantity's
mean with its 95% confidence interval and its median and range (:class:`SeedSummary`),
:func:`compare` pairs two quantities seed by seed (:class:`PairedComparison`: the
difference's interval and the per-seed wins), and :func:`plot_band` draws a mean with its
interval as a band.
"""

from __future__ import annotations

import functools
import math
import numbers
from dataclasses import dataclass

import numpy as np

from .core.checks import check_sparsity

__all__ = ["SweepResult", "score_pruners", "fine_tuner", "sparsity_sweep", "accuracies_at",
           "accuracy_table", "plot_sparsity_curves", "SeedSummary", "PairedComparison",
           "summarize", "compare", "over_seeds", "plot_band"]

_MARKERS = "osv^Dpx*"


@dataclass(frozen=True)
class SweepResult:
    """Test accuracies of a :func:`sparsity_sweep`.

    ``one_shot[criterion][i]`` is the accuracy right after pruning to ``sparsities[i]``;
    ``fine_tuned`` holds the same after fine-tuning (empty without a ``fine_tune``).
    """

    sparsities: tuple
    one_shot: dict
    fine_tuned: dict

    def at(self, criterion: str, sparsity: float, fine_tuned: bool = False) -> float:
        """The accuracy of ``criterion`` at ``sparsity`` (one of :attr:`sparsities`)."""
        results = self.fine_tuned if fine_tuned else self.one_shot
        return results[criterion][self.sparsities.index(sparsity)]


def score_pruners(backend, model, scores: dict) -> dict:
    """``{criterion: sparsity -> masks}`` pruning ``model`` by precomputed scores.

    Compute the scores once on the trained model; each pruner then calls
    ``backend.prune(model, scores[criterion], sparsity)`` (global ranking, biases kept).

    Args:
        backend: ``companion.torch`` or ``companion.tensorflow``.
        model: the model to prune.
        scores: ``{criterion: score list}``, each aligned with the model's parameters.
    """
    return {criterion: functools.partial(backend.prune, model, criterion_scores)
            for criterion, criterion_scores in scores.items()}


def fine_tuner(backend, model, x, y, **train_args):
    """A function ``masks -> None`` that trains ``model`` on ``(x, y)`` keeping ``masks``.

    ``backend.train(model, x, y, masks=masks, progress=False, **train_args)``: the pruned
    weights stay exactly zero while the others adapt.

    Args:
        backend: ``companion.torch`` or ``companion.tensorflow``.
        model: the model to train.
        x: the training inputs.
        y: the training labels.
        **train_args: ``epochs``, ``lr``, ``batch_size`` and any other argument of
            ``train``.
    """
    def fine_tune(masks) -> None:
        backend.train(model, x, y, masks=masks, **({"progress": False} | train_args))

    return fine_tune


def sparsity_sweep(backend, model, weights, pruners: dict, sparsities, x_test, y_test,
                   fine_tune=None) -> SweepResult:
    """Prune ``model`` with every pruner at every sparsity; test accuracy before and after
    fine-tuning.

    For each criterion and sparsity ``s``: the model gets ``weights`` back, ``masks =
    pruners[criterion](s)`` prunes it, its test accuracy is recorded, and, if
    ``fine_tune`` is given, ``fine_tune(masks)`` trains it (keeping the masks) and the
    accuracy is recorded again. The model holds ``weights`` again at the end.

    Args:
        backend: ``companion.torch`` or ``companion.tensorflow``.
        model: the model of that back end that the pruners prune.
        weights: the trained weights to start every run from, as from ``get_weights``.
        pruners: ``{criterion: function sparsity -> masks}``, each pruning ``model`` in
            place.
        sparsities: the sparsities to visit, each in ``[0, 1)``.
        x_test: the test inputs.
        y_test: the test labels.
        fine_tune: ``None``, or a function ``masks -> None`` that trains ``model``.

    Raises:
        ValueError: a sparsity outside ``[0, 1)`` or no pruners, before anything changes.
    """
    sparsities = tuple(check_sparsity(s) for s in sparsities)
    if not pruners:
        raise ValueError("pruners is empty; give at least one criterion")
    one_shot, fine_tuned = {}, {}
    for criterion, pruner in pruners.items():
        for sparsity in sparsities:
            backend.set_weights(model, weights)
            masks = pruner(sparsity)
            one_shot.setdefault(criterion, []).append(_accuracy(backend, model, x_test,
                                                                y_test))
            if fine_tune is not None:
                fine_tune(masks)
                fine_tuned.setdefault(criterion, []).append(_accuracy(backend, model, x_test,
                                                                      y_test))
    backend.set_weights(model, weights)
    return SweepResult(sparsities, one_shot, fine_tuned)


def _accuracy(backend, model, x, y) -> float:
    return backend.evaluate(model, x, y)["accuracy"]


def accuracies_at(results: dict, criterion: str, sparsity: float,
                  fine_tuned: bool = False) -> list:
    """The accuracy of ``criterion`` at ``sparsity`` in every framework, in order.

    Args:
        results: ``{framework name: SweepResult}``.
        criterion: a criterion of the sweeps.
        sparsity: one of the sweeps' sparsities.
        fine_tuned: after fine-tuning instead of one-shot.
    """
    return [result.at(criterion, sparsity, fine_tuned) for result in results.values()]


def accuracy_table(results: dict, fine_tuned: bool = False) -> str:
    """A text table: one row per framework and criterion, one column per sparsity.

    Args:
        results: ``{framework name: SweepResult}`` with the same sparsities.
        fine_tuned: show the accuracies after fine-tuning instead of one-shot.
    """
    first = next(iter(results.values()))
    lines = [" " * 23 + "".join(f"{s:>7.0%}" for s in first.sparsities)]
    for name, result in results.items():
        rows = result.fine_tuned if fine_tuned else result.one_shot
        for criterion, accuracies in rows.items():
            lines.append(f"{name:11s} {criterion:11s}"
                         + "".join(f"{a:7.3f}" for a in accuracies))
    return "\n".join(lines)


def plot_sparsity_curves(results: dict, title: str, fine_tuned: bool = False,
                         styles: dict | None = None):
    """Test accuracy against sparsity, one panel per framework; returns the figure.

    Args:
        results: ``{framework name: SweepResult}``.
        title: the figure's title.
        fine_tuned: plot the accuracies after fine-tuning instead of one-shot.
        styles: ``{criterion: matplotlib format string}``; by default markers in order,
            with random pruning dotted.
    """
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(results), figsize=(5.5 * len(results), 3.8),
                             sharey=True, squeeze=False)
    for ax, (name, result) in zip(axes[0], results.items()):
        rows = result.fine_tuned if fine_tuned else result.one_shot
        for i, (criterion, accuracies) in enumerate(rows.items()):
            default = "k:" if criterion == "random" else f"{_MARKERS[i % len(_MARKERS)]}-"
            ax.plot([100 * s for s in result.sparsities], accuracies,
                    (styles or {}).get(criterion, default), label=criterion)
        ax.set(title=name, xlabel="weights removed (%)")
    axes[0][0].set_ylabel("test accuracy")
    axes[0][0].legend()
    fig.suptitle(title)
    fig.tight_layout()
    return fig


# --------------------------------------------------------------------------- seeds


@dataclass(frozen=True)
class SeedSummary:
    """One quantity measured once per seed, and its spread.

    With ``n`` values of mean ``m`` and sample standard deviation ``s``, the interval is
    Student's ``m ± t(1 - (1 - confidence) / 2, n - 1) · s / sqrt(n)``: a confidence
    interval for the mean over seeds, assuming the per-seed values are independent draws.
    The median and the range (``low``, ``high``) need no such assumption.

    Attributes:
        seeds: the seeds, in the order of ``values``.
        values: the quantity, one float per seed.
        confidence: the interval's confidence level.
    """

    seeds: tuple
    values: tuple
    confidence: float = 0.95

    @property
    def mean(self) -> float:
        """The mean over the seeds."""
        return float(np.mean(self.values))

    @property
    def median(self) -> float:
        """The median over the seeds."""
        return float(np.median(self.values))

    @property
    def low(self) -> float:
        """The smallest value over the seeds."""
        return float(np.min(self.values))

    @property
    def high(self) -> float:
        """The largest value over the seeds."""
        return float(np.max(self.values))

    @property
    def interval(self) -> tuple:
        """``(lower, upper)`` confidence bounds of the mean."""
        from scipy import stats

        n = len(self.values)
        half = (stats.t.ppf(0.5 + self.confidence / 2, n - 1)
                * float(np.std(self.values, ddof=1)) / math.sqrt(n))
        return self.mean - half, self.mean + half

    def __str__(self) -> str:
        lower, upper = self.interval
        return (f"{self.mean:.3f} ({self.confidence:.0%} CI {lower:.3f} to {upper:.3f}, "
                f"median {self.median:.3f}, range {self.low:.3f} to {self.high:.3f}; "
                f"{len(self.values)} seeds)")


@dataclass(frozen=True)
class PairedComparison:
    """Quantity ``a`` against quantity ``b``, measured on the same seeds.

    The comparison is paired: ``differences`` holds ``a_s - b_s`` for each seed ``s``, so
    what the seeds share (the data split, the initial weights) cancels.

    Attributes:
        a: the first quantity.
        b: the second quantity.
        differences: ``a - b`` per seed, with its interval.
        wins: the number of seeds where ``a > b``.
    """

    a: SeedSummary
    b: SeedSummary
    differences: SeedSummary
    wins: int

    @property
    def seeds(self) -> int:
        """How many seeds the comparison pairs."""
        return len(self.differences.values)

    def a_is_larger(self) -> bool:
        """Whether the difference's whole confidence interval lies above 0."""
        return self.differences.interval[0] > 0

    def __str__(self) -> str:
        lower, upper = self.differences.interval
        return (f"difference {self.differences.mean:+.3f} "
                f"({self.differences.confidence:.0%} CI {lower:+.3f} to {upper:+.3f}); "
                f"larger in {self.wins} of {self.seeds} seeds")


def _check_seeds(seeds) -> tuple:
    seeds = tuple(seeds)
    if any(isinstance(s, bool) or not isinstance(s, numbers.Integral) for s in seeds):
        raise TypeError(f"seeds must be integers, got {seeds!r}")
    if len(seeds) < 2 or len(set(seeds)) != len(seeds):
        raise ValueError(f"a spread needs at least 2 distinct seeds, got {seeds!r}")
    return tuple(int(s) for s in seeds)


def summarize(values, seeds=None, confidence: float = 0.95) -> SeedSummary:
    """A :class:`SeedSummary` of ``values``, one per seed.

    Args:
        values: at least 2 finite numbers.
        seeds: the seeds they came from (default ``0, 1, ...``).
        confidence: the interval's level, in (0, 1).

    Raises:
        ValueError: fewer than 2 values, a non-finite value, seeds that do not match the
            values, or a confidence outside (0, 1).
        TypeError: seeds that are not integers.
    """
    values = tuple(float(v) for v in values)
    seeds = _check_seeds(range(len(values)) if seeds is None else seeds)
    if len(seeds) != len(values):
        raise ValueError(f"{len(values)} values for {len(seeds)} seeds")
    bad = [seed for seed, value in zip(seeds, values) if not math.isfinite(value)]
    if bad:
        raise ValueError(f"non-finite values for seeds {bad}: {values}")
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    return SeedSummary(seeds, values, float(confidence))


def compare(a: SeedSummary, b: SeedSummary) -> PairedComparison:
    """Pair ``a`` and ``b`` seed by seed: the differences ``a - b`` and the wins of ``a``.

    Raises:
        ValueError: ``a`` and ``b`` were not measured on the same seeds.
    """
    if a.seeds != b.seeds:
        raise ValueError(f"a paired comparison needs the same seeds, got {a.seeds} and "
                         f"{b.seeds}")
    differences = [x - y for x, y in zip(a.values, b.values)]
    wins = sum(x > y for x, y in zip(a.values, b.values))
    return PairedComparison(a, b, summarize(differences, a.seeds, a.confidence), int(wins))


def over_seeds(experiment, seeds) -> dict:
    """Run ``experiment(seed)`` for each seed; summarise each quantity it returns.

    Args:
        experiment: ``seed -> {name: number}`` (or ``seed -> number``, named ``"value"``).
            It must set every seed it uses from its argument.
        seeds: at least 2 distinct integers.

    Returns:
        ``{name: SeedSummary}``, names in the order the first run returned them.

    Raises:
        ValueError: fewer than 2 seeds, runs that return different names, or a non-finite
            result (named with its seed).
        TypeError: seeds that are not integers.
    """
    seeds = _check_seeds(seeds)
    runs = []
    for seed in seeds:
        result = experiment(seed)
        runs.append(result if isinstance(result, dict) else {"value": result})
        if list(runs[-1]) != list(runs[0]):
            raise ValueError(f"seed {seed} returned {list(runs[-1])}, seed {seeds[0]} "
                             f"returned {list(runs[0])}")
    return {name: summarize([run[name] for run in runs], seeds) for name in runs[0]}


def plot_band(ax, x, summaries, label: str, **style):
    """Draw the means of ``summaries`` against ``x`` with their intervals as a band.

    Args:
        ax: a matplotlib axes.
        x: the positions, one per summary.
        summaries: :class:`SeedSummary` objects.
        label: the legend label (the number of seeds is added).
        style: passed to ``ax.plot`` (e.g. ``marker="o"``).
    """
    summaries = list(summaries)
    lower, upper = zip(*(s.interval for s in summaries))
    line, = ax.plot(x, [s.mean for s in summaries],
                    label=f"{label} ({len(summaries[0].values)} seeds)", **style)
    ax.fill_between(x, lower, upper, color=line.get_color(), alpha=0.2, linewidth=0)
    return line
