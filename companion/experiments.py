"""Pruning experiments that several chapters run: accuracy against sparsity, as data, tables
and figures. Framework-neutral: each function takes the back end (``companion.torch`` or
``companion.tensorflow``) as its first argument.

A chapter builds one *pruner* per criterion, a function ``sparsity -> masks`` that prunes
the model in place (e.g. ``lambda s: ct.prune(model, scores, s)`` or
``lambda s: ct.obs_prune(model, x, y, s)``), and hands them to :func:`sparsity_sweep`,
which restores the trained weights before each one.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

from .core.checks import check_sparsity

__all__ = ["SweepResult", "score_pruners", "fine_tuner", "sparsity_sweep", "accuracies_at",
           "accuracy_table", "plot_sparsity_curves"]

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
