"""The sparsity sweep that the chapters share, against a direct computation; the seed
statistics, against scipy and hand-worked cases."""

import numpy as np
import pytest

from companion import experiments
from companion.experiments import SweepResult, accuracies_at, accuracy_table, sparsity_sweep


def test_sweep_matches_pruning_by_hand(backend):
    rng = np.random.default_rng(0)
    x, y = rng.standard_normal((60, 5)).astype(np.float32), rng.integers(0, 3, 60)
    model = backend.mlp([5, 12, 3], seed=1)
    weights = backend.get_weights(model)
    scores = backend.magnitude_scores(model)
    tuned_masks = []

    def fine_tune(masks):
        tuned_masks.append(masks)
        backend.train(model, x, y, epochs=1, lr=0.1, batch_size=20, masks=masks,
                      progress=False)

    result = sparsity_sweep(backend, model, weights,
                            {"magnitude": lambda s: backend.prune(model, scores, s)},
                            [0.3, 0.8], x, y, fine_tune=fine_tune)
    for before, after in zip(weights, backend.get_weights(model)):
        np.testing.assert_array_equal(before, after)  # the trained weights are back
    for i, sparsity in enumerate([0.3, 0.8]):
        backend.set_weights(model, weights)
        masks = backend.prune(model, scores, sparsity)
        assert result.one_shot["magnitude"][i] == backend.evaluate(model, x, y)["accuracy"]
        backend.train(model, x, y, epochs=1, lr=0.1, batch_size=20, masks=masks,
                      progress=False)
        assert result.at("magnitude", sparsity, fine_tuned=True) == \
            backend.evaluate(model, x, y)["accuracy"]
    assert len(tuned_masks) == 2


def test_sweep_rejects_bad_input_before_pruning(backend):
    model = backend.mlp([5, 3], seed=1)
    calls = []
    with pytest.raises(ValueError, match="sparsity must be in"):
        sparsity_sweep(backend, model, backend.get_weights(model),
                       {"x": calls.append}, [0.5, 1.0], None, None)
    with pytest.raises(ValueError, match="pruners is empty"):
        sparsity_sweep(backend, model, backend.get_weights(model), {}, [0.5], None, None)
    assert calls == []


def test_accuracy_table_layout():
    result = SweepResult((0.5, 0.9), {"magnitude": [0.61, 0.2]}, {})
    assert accuracy_table({"PyTorch": result}).splitlines() == [
        "                           50%    90%",
        "PyTorch     magnitude    0.610  0.200",
    ]


def test_accuracies_at_lists_every_framework_in_order():
    first = SweepResult((0.5, 0.9), {"SNIP": [0.5, 0.1]}, {"SNIP": [0.6, 0.3]})
    second = SweepResult((0.5, 0.9), {"SNIP": [0.4, 0.2]}, {"SNIP": [0.7, 0.35]})
    results = {"PyTorch": first, "TensorFlow": second}
    assert accuracies_at(results, "SNIP", 0.9) == [0.1, 0.2]
    assert accuracies_at(results, "SNIP", 0.5, fine_tuned=True) == [0.6, 0.7]


# --------------------------------------------------------------------------- seeds


def test_summary_interval_is_students_t():
    """Against scipy's t interval and a hand-worked case."""
    from scipy import stats

    values = [0.61, 0.64, 0.59, 0.66, 0.62]
    summary = experiments.summarize(values, seeds=[3, 4, 5, 6, 7])
    expected = stats.t.interval(0.95, 4, loc=np.mean(values), scale=stats.sem(values))
    np.testing.assert_allclose(summary.interval, expected, rtol=1e-12)
    assert (summary.median, summary.low, summary.high) == (0.62, 0.59, 0.66)
    # Two values 0 and 2: mean 1, s = sqrt(2), t(0.975, 1) = 12.7062; half width 12.7062.
    assert experiments.summarize([0.0, 2.0]).interval == pytest.approx((-11.7062, 13.7062),
                                                                       abs=1e-4)
    assert str(summary).startswith("0.624 (95% CI ")


def test_paired_comparison_counts_wins_and_cancels_shared_noise():
    seeds = range(5)
    shared = np.array([0.1, -0.3, 0.2, 0.5, -0.4])   # e.g. how easy each seed's split is
    a = experiments.summarize(0.6 + shared + [0.02, 0.03, 0.01, 0.02, 0.025], seeds)
    b = experiments.summarize(0.6 + shared, seeds)
    comparison = experiments.compare(a, b)
    assert comparison.wins == 5 and comparison.seeds == 5
    assert comparison.a_is_larger()              # paired: the shared noise cancels ...
    assert not experiments.compare(a, experiments.summarize(b.values[::-1], seeds)) \
        .a_is_larger()                           # ... unpaired-looking data does not
    assert "larger in 5 of 5 seeds" in str(comparison)


def test_over_seeds_runs_each_seed_and_names_quantities():
    calls = []

    def experiment(seed):
        calls.append(seed)
        return {"accuracy": 0.5 + seed / 100, "loss": 1.0 - seed / 100}

    summaries = experiments.over_seeds(experiment, [10, 11, 12])
    assert calls == [10, 11, 12]
    assert list(summaries) == ["accuracy", "loss"]
    assert summaries["accuracy"].values == (0.6, 0.61, 0.62)
    assert summaries["loss"].seeds == (10, 11, 12)
    assert experiments.over_seeds(lambda s: float(s), [1, 2])["value"].mean == 1.5


@pytest.mark.parametrize("call, error", [
    (lambda: experiments.summarize([1.0]), ValueError),
    (lambda: experiments.summarize([1.0, float("nan")]), ValueError),
    (lambda: experiments.summarize([1.0, 2.0], seeds=[1, 1]), ValueError),
    (lambda: experiments.summarize([1.0, 2.0], seeds=[1, 2, 3]), ValueError),
    (lambda: experiments.summarize([1.0, 2.0], seeds=[1.5, 2]), TypeError),
    (lambda: experiments.summarize([1.0, 2.0], confidence=1.0), ValueError),
    (lambda: experiments.over_seeds(lambda s: {"a": s} if s else {"b": s}, [0, 1]),
     ValueError),
    (lambda: experiments.compare(experiments.summarize([1, 2], [0, 1]),
                                 experiments.summarize([1, 2], [0, 2])), ValueError),
])
def test_seed_statistics_reject_bad_input(call, error):
    with pytest.raises(error):
        call()


def test_plot_band_draws_mean_and_interval():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots()
    summaries = [experiments.summarize([v, v + 0.1, v + 0.2]) for v in (0.1, 0.5)]
    line = experiments.plot_band(ax, [1, 2], summaries, "magnitude", marker="o")
    np.testing.assert_allclose(line.get_ydata(), [0.2, 0.6])
    assert line.get_label() == "magnitude (3 seeds)"
    band = ax.collections[0].get_paths()[0].vertices[:, 1]
    np.testing.assert_allclose([band.min(), band.max()],
                               [summaries[0].interval[0], summaries[1].interval[1]])
    plt.close(fig)
