"""Pruning schedules: pure functions of the step, the same in both back ends.

Oracles: TensorFlow Model Optimization's published test values (``pruning_schedule_test.py``:
``PolynomialDecay(0.2, 0.8, 100, 110, power=3, frequency=2)`` gives 0.2, 0.4928, 0.725 and
0.8 at steps 100, 102, 105 and 110, "generated using tf.polynomial_decay"), its rules for
when to prune and which parameters to refuse, and values worked out by hand from Zhu &
Gupta's formula ``s_t = s_f + (s_i - s_f) (1 - (t - t_0) / (n Δt))^3``.
"""

import math

import numpy as np
import pytest

from companion.core import schedules as core_schedules
from companion.core.pruning import lowest_score_masks
from companion import tensorflow as ctf
from companion import torch as ct


def test_both_back_ends_offer_the_same_schedule_functions():
    for name in ("constant_sparsity", "polynomial_decay", "pruning_steps"):
        assert getattr(ct, name) is getattr(ctf, name) is getattr(core_schedules, name)


@pytest.mark.parametrize("step, sparsity, should_prune", [
    (100, 0.2, True), (102, 0.4928, True), (105, 0.725, False), (110, 0.8, True)])
def test_polynomial_decay_matches_tfmot_published_values(backend, step, sparsity,
                                                         should_prune):
    result = backend.polynomial_decay(step, 0.2, 0.8, 100, 110, frequency=2, power=3)
    assert result == (should_prune, pytest.approx(sparsity, abs=1e-12))
    assert isinstance(result[0], bool) and isinstance(result[1], float)


def test_polynomial_decay_hand_computed():
    """s_i = 0, s_f = 0.9, t_0 = 0, n Δt = 100 (Δt = 25): s_t = 0.9 (1 - (1 - t/100)^3)."""
    expected = {0: 0.0, 25: 0.9 * (1 - 0.75**3), 50: 0.7875, 75: 0.9 * 63 / 64, 100: 0.9}
    assert expected[25] == pytest.approx(0.5203125)
    for step, sparsity in expected.items():
        assert ct.polynomial_decay(step, 0.0, 0.9, 0, 100, frequency=25) == (
            True, pytest.approx(sparsity, abs=1e-12))
    # Between pruning steps the value is defined, but nothing is pruned.
    assert ct.polynomial_decay(10, 0.0, 0.9, 0, 100, frequency=25) == (
        False, pytest.approx(0.9 * (1 - 0.9**3)))
    # Before begin_step: initial sparsity; after end_step: final sparsity; neither prunes.
    assert ct.polynomial_decay(5, 0.1, 0.9, 10, 110, frequency=25) == (
        False, pytest.approx(0.1))
    assert ct.polynomial_decay(135, 0.0, 0.9, 10, 110, frequency=25) == (
        False, pytest.approx(0.9))
    # Another power: linear decay.
    assert ct.polynomial_decay(50, 0.2, 0.6, 0, 100, frequency=50, power=1) == (
        True, pytest.approx(0.4))


def test_polynomial_decay_is_non_decreasing_and_ends_at_final_sparsity():
    values = [ct.polynomial_decay(t, 0.1, 0.95, 7, 47, frequency=5)[1] for t in range(60)]
    assert all(a <= b for a, b in zip(values, values[1:]))
    assert values[0] == pytest.approx(0.1) and values[47] == pytest.approx(0.95)


def test_polynomial_decay_with_end_equal_to_begin_jumps_to_final():
    assert ct.polynomial_decay(9, 0.2, 0.8, 10, 10, frequency=5) == (False, pytest.approx(0.2))
    assert ct.polynomial_decay(10, 0.2, 0.8, 10, 10, frequency=5) == (True, pytest.approx(0.8))
    assert ct.polynomial_decay(11, 0.2, 0.8, 10, 10, frequency=1) == (False, pytest.approx(0.8))


@pytest.mark.parametrize("schedule", [
    lambda t: ct.constant_sparsity(t, 0.5, 100, 200, frequency=1),
    lambda t: ct.polynomial_decay(t, 0.2, 0.8, 100, 200, frequency=1),
], ids=["constant", "polynomial"])
def test_prunes_only_from_begin_to_end_step(schedule):
    """tfmot's testPrunesOnlyInBeginEndStepRange."""
    for step in (90, 99, 201, 210):
        assert schedule(step)[0] is False
    for step in (100, 110, 200):
        assert schedule(step)[0] is True


@pytest.mark.parametrize("schedule", [
    lambda t: ct.constant_sparsity(t, 0.5, 100, 200, frequency=10),
    lambda t: ct.polynomial_decay(t, 0.2, 0.8, 100, 200, frequency=10),
], ids=["constant", "polynomial"])
def test_prunes_only_every_frequency_steps(schedule):
    """tfmot's testOnlyPrunesAtValidFrequencySteps."""
    assert [schedule(t)[0] for t in (100, 109, 110, 111)] == [True, False, True, False]


def test_constant_sparsity():
    assert ct.constant_sparsity(110, 0.5, 100, 200, frequency=10) == (True, 0.5)
    assert ct.constant_sparsity(115, 0.5, 100, 200, frequency=10) == (False, 0.5)
    # end_step = -1 (the default) prunes forever (tfmot's
    # testPrunesForeverIfEndStepIsNegativeOne).
    assert ct.constant_sparsity(10_000, 0.5, 0, -1, frequency=10) == (True, 0.5)
    assert ct.constant_sparsity(100_000_000, 0.5, frequency=10) == (True, 0.5)
    assert ct.constant_sparsity(3, 0.5, frequency=1) == (True, 0.5)


def test_pruning_steps_lists_where_a_schedule_prunes(backend):
    plan = backend.pruning_steps(
        lambda t: backend.polynomial_decay(t, 0.0, 0.9, 10, 50, frequency=20), 100)
    assert [step for step, _ in plan] == [10, 30, 50]
    assert [s for _, s in plan] == pytest.approx([0.0, 0.7875, 0.9])
    # Steps count from 1 (tfmot): a run of exactly end_step steps reaches the final
    # sparsity; pruning steps beyond the run are not listed.
    assert backend.pruning_steps(
        lambda t: backend.polynomial_decay(t, 0.0, 0.9, 10, 50, frequency=20), 50) == [
        (10, 0.0), (30, pytest.approx(0.7875)), (50, pytest.approx(0.9))]
    assert backend.pruning_steps(
        lambda t: backend.polynomial_decay(t, 0.0, 0.9, 10, 50, frequency=20), 49) == [
        (10, 0.0), (30, pytest.approx(0.7875))]
    # tfmot's rule: when end - begin is not a multiple of frequency, end_step never prunes;
    # and step 0 never comes, so begin_step=0 first prunes at step frequency.
    plan = backend.pruning_steps(
        lambda t: backend.polynomial_decay(t, 0.0, 0.9, 0, 50, frequency=20), 100)
    assert [step for step, _ in plan] == [20, 40] and plan[-1][1] < 0.9
    assert backend.pruning_steps(lambda t: backend.constant_sparsity(t, 0.3, 2, 7, 2), 100) == [
        (2, 0.3), (4, 0.3), (6, 0.3)]
    assert backend.pruning_steps(lambda t: (True, 0.1), 0) == []


POLYNOMIAL_ERRORS = [
    (dict(final_sparsity=1.0), ValueError, "sparsity must be in \\[0, 1\\)"),
    (dict(final_sparsity=10.0), ValueError, "sparsity must be in \\[0, 1\\)"),
    (dict(initial_sparsity=-0.001), ValueError, "sparsity must be in \\[0, 1\\)"),
    (dict(initial_sparsity=0.9, final_sparsity=0.5), ValueError,
     "initial_sparsity \\(0.9\\) must not exceed final_sparsity \\(0.5\\)"),
    (dict(begin_step=-1), ValueError, "begin_step must be >= 0"),
    (dict(begin_step=20, end_step=10), ValueError, "end_step must be >= begin_step \\(20\\)"),
    (dict(end_step=-1), ValueError, "end_step cannot be -1"),
    (dict(end_step=-5), ValueError, "end_step must be >= begin_step"),
    (dict(frequency=0), ValueError, "frequency must be an integer >= 1"),
    (dict(frequency=-5), ValueError, "frequency must be an integer >= 1"),
    (dict(frequency=2.5), TypeError, "frequency must be an integer"),
    (dict(power=0), ValueError, "power must be a finite number > 0"),
    (dict(power=math.nan), ValueError, "power must be a finite number > 0"),
    (dict(step=1.5), TypeError, "step must be an integer"),
    (dict(final_sparsity="0.5"), TypeError, "sparsity must be a number"),
]


@pytest.mark.parametrize("bad, error, message", POLYNOMIAL_ERRORS)
def test_invalid_polynomial_decay_raises(backend, bad, error, message):
    kwargs = dict(step=5, initial_sparsity=0.1, final_sparsity=0.8, begin_step=0,
                  end_step=10, frequency=1) | bad
    with pytest.raises(error, match=message):
        backend.polynomial_decay(**kwargs)


@pytest.mark.parametrize("bad, message", [
    (dict(target_sparsity=1.0), "sparsity must be in \\[0, 1\\)"),
    (dict(target_sparsity=-0.5), "sparsity must be in \\[0, 1\\)"),
    (dict(begin_step=-5), "begin_step must be >= 0"),
    (dict(begin_step=10, end_step=5), "or -1 \\(prune forever\\), got 5"),
    (dict(end_step=-5), "end_step must be >= begin_step"),
    (dict(frequency=0), "frequency must be an integer >= 1"),
])
def test_invalid_constant_sparsity_raises(backend, bad, message):
    kwargs = dict(step=5, target_sparsity=0.5, begin_step=0, end_step=-1, frequency=1) | bad
    with pytest.raises(ValueError, match=message):
        backend.constant_sparsity(**kwargs)


def test_tfmot_accepts_what_we_accept():
    """The boundary cases tfmot's tests accept are accepted here too."""
    for begin, end in ((0, 0), (0, 1), (10, 10), (100, 1000)):
        ct.constant_sparsity(0, 0.5, begin, end, 10)
        ct.polynomial_decay(0, 0.2, 0.8, begin, end, frequency=10)
    for sparsity in (0.0, 0.001, 0.5, 0.99):
        ct.constant_sparsity(0, sparsity)
        ct.polynomial_decay(0, sparsity, 0.99, 0, 10)
        ct.polynomial_decay(0, 0.0, sparsity, 0, 10)


@pytest.mark.parametrize("schedule, error, message", [
    ("polynomial", TypeError, "schedule must be a function"),
    (lambda t: 0.5, TypeError, "must return \\(should_prune, sparsity\\)"),
    (lambda t: (True, 1.0), ValueError, "sparsity must be in \\[0, 1\\)"),
    (lambda t: ct.polynomial_decay(t, 0.5, 0.4, 0, 10), ValueError, "must not exceed"),
])
def test_pruning_steps_rejects_bad_schedules(backend, schedule, error, message):
    with pytest.raises(error, match=message):
        backend.pruning_steps(schedule, 10)


def test_grow_masks_keeps_earlier_prunes_whatever_their_score():
    """Scores 0..7 in a 2x4 tensor; entries 6 and 7 (the highest) were pruned before.
    At 50 % (4 of 8) they stay pruned and the two lowest others (0, 1) join them."""
    scores = [np.arange(8.0).reshape(2, 4), np.ones(2)]
    masks = [np.array([[1, 1, 1, 1], [1, 1, 0, 0]], np.float32), None]
    new = core_schedules.grow_masks(scores, masks, [True, False], 0.5, "global")
    np.testing.assert_array_equal(new[0], [[0, 0, 1, 1], [1, 1, 0, 0]])
    assert new[1] is None
    # A lower sparsity than what is pruned already restores nothing.
    new = core_schedules.grow_masks(scores, masks, [True, False], 0.1, "global")
    np.testing.assert_array_equal(new[0], masks[0])
    # Non-finite scores of pruned entries do not matter; of the others they do.
    scores[0][1, 3] = np.nan
    core_schedules.grow_masks(scores, masks, [True, False], 0.5, "global")
    scores[0][0, 0] = np.inf
    with pytest.raises(ValueError, match="nan or inf"):
        core_schedules.grow_masks(scores, masks, [True, False], 0.5, "global")


def test_grow_masks_from_no_prunes_equals_one_shot_masks(rng):
    scores = [rng.standard_normal((5, 7)), rng.standard_normal(5), rng.standard_normal((3, 5))]
    scores[0][0, :3] = 0.25  # ties: broken by position in both
    ones = [np.ones_like(s) for s in scores]
    for scope in ("global", "layer"):
        for eligible in ([True, False, True], [True, True, True]):
            np.testing.assert_equal(
                core_schedules.grow_masks(scores, ones, eligible, 0.6, scope),
                lowest_score_masks(scores, eligible, 0.6, scope))


def test_result_prints_a_table():
    result = core_schedules.GradualPruningResult(
        history=None, masks=[], steps=[0, 10], sparsities=[0.25, 0.5], pruned=[0.25, 0.5])
    assert str(result).splitlines() == [
        "    step    target    pruned", "       0    25.00%    25.00%",
        "      10    50.00%    50.00%"]
