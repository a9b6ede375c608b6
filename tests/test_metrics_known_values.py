"""Metrics, risk levels and the deploy rule on small inputs whose answers are worked out by hand."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from visionzero.evaluation.decision import Decision, DecisionRule, decide_on
from visionzero.evaluation.grid import DenseGrid
from visionzero.evaluation.holdout import ResolutionResult
from visionzero.evaluation.metrics import (
    DaySums,
    Interval,
    block_bootstrap,
    intervals,
    point_scores,
    quadratic_kappa,
)
from visionzero.model.deviance import poisson_deviance
from visionzero.model.levels import assign_levels, level_thresholds, p_at_least_one

DAY = pd.DatetimeIndex(["2025-01-06"])


def slot_grid(counts_by_block: list[list[int]], outside: float = 0.0) -> DenseGrid:
    """One day; zones z0, z1, ... in grid order, one block per list of counts."""
    observed = np.array(counts_by_block, dtype=float).T[None, :, :]  # [day, zone, block]
    zones = [f"z{zone}" for zone in range(observed.shape[1])]
    return DenseGrid(9, zones, DAY, observed, np.array([outside]))


def dense(values_by_block: list[list[float]]) -> np.ndarray:
    return np.array(values_by_block, dtype=float).T[None, :, :]


def hit_rate(grid: DenseGrid, predicted: np.ndarray, k_percent: int) -> float:
    sums = DaySums.of(grid, predicted)
    return float(sums.hits[:, k_percent - 1].sum() / sums.crashes.sum())


# Block 0: 10 zone-slots holding 4 crashes; the riskiest forecast (0.9) is z1, which had 2.
# Block 1: 10 zone-slots holding 5 crashes, every forecast equal (0.5).
COUNTS = [[0, 2, 0, 0, 1, 0, 0, 0, 1, 0], [1, 0, 0, 4, 0, 0, 0, 0, 0, 0]]
GRID = slot_grid(COUNTS)
PREDICTED = dense([[0.1, 0.9, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.05], [0.5] * 10])


def test_hit_rate_ranks_within_each_date_and_block() -> None:
    # k = 10% of 10 zone-slots = 1 per block. Block 0 picks z1 (2 crashes). Block 1 is all ties,
    # broken by grid order, so z0 (1 crash), not z3 (4): hit = (2 + 1) / 9 crashes.
    assert hit_rate(GRID, PREDICTED, 10) == pytest.approx(3 / 9)
    # k = 20%: 2 per block. Block 0 adds z8 (0.8, 1 crash); block 1 adds z1 (0 crashes): 4 / 9.
    assert hit_rate(GRID, PREDICTED, 20) == pytest.approx(4 / 9)
    # k = 5% of 10 = 0.5, rounded up to 1 zone-slot per block: the same as 10%.
    assert hit_rate(GRID, PREDICTED, 5) == pytest.approx(3 / 9)


def test_hit_rate_counts_crashes_outside_known_zones_as_missed() -> None:
    # 3 holdout crashes fell in zones the model has no row for: (2 + 1) / (9 + 3).
    assert hit_rate(slot_grid(COUNTS, outside=3.0), PREDICTED, 10) == pytest.approx(0.25)


def test_hit_rate_rounds_the_share_of_zone_slots_up() -> None:
    # 15 zone-slots: 10% is 1.5, so the 2 riskiest count: z14 (1 crash) and z13 (2) of 6 crashes.
    grid = slot_grid([[1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2, 2, 1]])
    predicted = dense([list(np.arange(15) / 100.0)])
    assert hit_rate(grid, predicted, 10) == pytest.approx(3 / 6)


def test_the_tuners_hit_rate_is_the_day_sums_hit_rate() -> None:
    # DenseGrid.hit_rate (the tuner's CV objective) on the worked examples above.
    assert GRID.hit_rate(PREDICTED, 0.10) == hit_rate(GRID, PREDICTED, 10) == 3 / 9
    assert GRID.hit_rate(PREDICTED, 0.20) == 4 / 9
    assert slot_grid(COUNTS, outside=3.0).hit_rate(PREDICTED, 0.10) == 0.25
    assert math.isnan(slot_grid([[0] * 10]).hit_rate(dense([[1.0] * 10]), 0.10))


def test_hit_rate_without_any_crash_is_undefined() -> None:
    with np.errstate(invalid="ignore"):
        assert math.isnan(hit_rate(slot_grid([[0] * 10]), dense([[1.0] * 10]), 10))


def test_pai_is_hit_rate_over_the_share_of_zone_slots() -> None:
    # hit@10% = 3/9, so PAI@10% = (3/9) / 0.10 = 10/3.
    report = point_scores(GRID, PREDICTED, DaySums.of(GRID, PREDICTED), [0.2, 0.4, 0.6, 0.8])
    assert report.hit_rate_at_10 == pytest.approx(1 / 3)
    assert report.pai_at_10 == pytest.approx(10 / 3)
    assert report.observed_total == 9.0
    assert report.predicted_total == pytest.approx(9.55)  # 4.55 in block 0 + 10 x 0.5
    assert report.calibration_ratio == pytest.approx(9.55 / 9)


def test_quadratic_kappa_agrees_with_the_hand_formula() -> None:
    # Levels (realised, predicted): (0,0) (0,1) (1,1) (4,4). Observed weighted disagreement:
    # one pair off by one, (0-1)^2 / 4 = 0.25; the chance disagreement is sum_ij (i-j)^2 r_i p_j
    # over the marginals realised [2,1,0,0,1]/4 and predicted [1,2,0,0,1]/4.
    realised, predicted = np.array([0, 0, 1, 4]), np.array([0, 1, 1, 4])
    r, p = np.bincount(realised, minlength=5) / 4, np.bincount(predicted, minlength=5) / 4
    w = np.subtract.outer(np.arange(5), np.arange(5)) ** 2
    expected = 1 - 0.25 / float((w * np.outer(r, p)).sum())
    assert quadratic_kappa(realised, predicted) == pytest.approx(expected)
    assert quadratic_kappa(np.zeros(4, int), np.zeros(4, int)) == 0.0


def test_bootstrap_draws_stay_inside_each_part_in_runs_of_consecutive_days() -> None:
    draws = block_bootstrap([10, 5], block_days=3, reps=50, seed=1)
    assert draws.shape == (50, 15)
    assert ((draws[:, :10] >= 0) & (draws[:, :10] < 10)).all()
    assert ((draws[:, 10:] >= 10) & (draws[:, 10:] < 15)).all()
    assert (np.diff(draws[:, :3], axis=1) == 1).all()  # the first block is 3 consecutive days


def test_paired_intervals_of_an_identical_model_are_exactly_zero() -> None:
    grid = slot_grid(COUNTS)
    sums = DaySums.of(grid, PREDICTED)
    own, differences = intervals(
        {"candidate": sums, "production": sums}, block_bootstrap([1], 1, 100, 0)
    )
    change = differences["vs_production"]["poisson_deviance"]
    assert (change.estimate, change.low, change.high) == (0.0, 0.0, 0.0)
    assert own["candidate"]["hit_rate_at_10"].estimate == pytest.approx(1 / 3)


def test_poisson_deviance() -> None:
    # y = [0, 2], mu = [1, 1]: unit deviances 2 * (0 - (0 - 1)) = 2 and 2 * (2 ln 2 - 1);
    # their mean is 2 ln 2.
    assert poisson_deviance(np.array([0.0, 2.0]), np.array([1.0, 1.0])) == pytest.approx(
        2 * math.log(2)
    )
    # A zero forecast is floored at 1e-4: y = 0 gives 2 * 1e-4, not 0.
    assert poisson_deviance(np.array([0.0]), np.array([0.0])) == pytest.approx(2e-4)


def test_level_thresholds_are_quintiles_of_the_predictions() -> None:
    # Five values 0..4: the q-quantile sits at position 4q (linear interpolation), so the cuts are
    # 0.8, 1.6, 2.4 and 3.2.
    assert level_thresholds(np.array([0.0, 1.0, 2.0, 3.0, 4.0])) == pytest.approx(
        [0.8, 1.6, 2.4, 3.2]
    )


def test_level_thresholds_that_do_not_increase_raise() -> None:
    # Six values, five of them 1: positions 1, 2, 3, 4 are all 1, so the cuts tie.
    with pytest.raises(ValueError, match=r"do not increase: \[1.0, 1.0, 1.0, 1.0\]"):
        level_thresholds(np.array([1.0, 1.0, 1.0, 1.0, 1.0, 2.0]))


def test_a_value_equal_to_a_cut_goes_to_the_level_above() -> None:
    cuts = [0.8, 1.6, 2.4, 3.2]
    values = np.array([-1.0, 0.0, 0.79, 0.8, 1.6, 2.39, 2.4, 3.2, 3.21, 100.0])
    assert assign_levels(values, cuts).tolist() == [0, 0, 0, 1, 2, 2, 3, 4, 4, 4]


def test_p_at_least_one() -> None:
    # P(N >= 1) = 1 - exp(-mu): mu = ln 2 gives 1/2, ln 10 gives 0.9, 1 gives 1 - 1/e.
    expected = np.array([0.0, math.log(2), math.log(10), 1.0])
    assert p_at_least_one(expected) == pytest.approx([0.0, 0.5, 0.9, 1 - math.exp(-1)])


RULE = DecisionRule(min_deviance_improvement=0.005, hit_rate_tolerance=0.005)


def change(estimate: float, low: float, high: float) -> Interval:
    return Interval(estimate=estimate, low=low, high=high)


def evidence(vs_baseline: tuple[Interval, Interval], vs_production=None) -> ResolutionResult:
    """Deviance and hit@10% changes (new minus other) with intervals; production deviance 0.50."""
    differences = {
        "vs_baseline": {"poisson_deviance": vs_baseline[0], "hit_rate_at_10": vs_baseline[1]}
    }
    roles = {"candidate": {}, "baseline": {}}
    if vs_production:
        differences["vs_production"] = {
            "poisson_deviance": vs_production[0],
            "hit_rate_at_10": vs_production[1],
        }
        roles["production"] = {"poisson_deviance": change(0.50, 0.48, 0.52)}
    return ResolutionResult(
        days=90,
        zones=10,
        zone_slots=900,
        crashes_outside_known_zones=0,
        roles=roles,
        differences=differences,
    )


BETTER = (change(-0.05, -0.06, -0.04), change(0.02, 0.01, 0.03))


def test_a_candidate_worse_than_the_baseline_is_not_deployable() -> None:
    decision = decide_on(
        evidence((change(0.05, 0.04, 0.06), change(0.02, 0.01, 0.03))), "here", None, RULE
    )
    assert (decision.action, decision.deployable) == ("none", False)
    assert (
        "deviance vs status quo change +0.0500 [+0.0400, +0.0600]: not proven" in decision.reasons
    )
    assert (
        "hit@10% vs status quo change +0.0200 [+0.0100, +0.0300]: better (interval above 0)"
        in decision.reasons
    )


def test_an_interval_touching_zero_is_not_better() -> None:
    # The point estimate is better, but the interval of the hit@10% change reaches below zero.
    decision = decide_on(evidence((BETTER[0], change(0.004, -0.001, 0.009))), "here", None, RULE)
    assert (decision.action, decision.deployable) == ("none", False)
    assert decision.reasons[-1] == "not deployable: it must beat the historical average on both"


def test_the_first_deployable_model_becomes_production() -> None:
    where = "latest holdout 2025-01-01 .. 2025-03-31 at res 9"
    decision = decide_on(evidence(BETTER), where, None, RULE)
    assert (decision.action, decision.deployable) == ("production", True)
    assert decision.reasons[0].startswith(f"evidence: {where}, 90 days")


def against_production(dev: Interval, hit: Interval) -> Decision:
    """The rule against production at deviance 0.50: the margin 0.005 asks an interval of the
    deviance change ending below -0.0025, the tolerance a hit@10% change starting above -0.005."""
    return decide_on(evidence(BETTER, (dev, hit)), "here", None, RULE)


def test_a_challenger_whose_interval_clears_the_margin_goes_to_staging() -> None:
    decision = against_production(change(-0.01, -0.015, -0.005), change(0.0, -0.004, 0.004))
    assert (decision.action, decision.deployable) == ("staging", True)
    assert (
        "deviance vs production (interval must end below -0.0025) change "
        "-0.0100 [-0.0150, -0.0050]: wins" in decision.reasons
    )


def test_a_better_point_estimate_with_an_interval_over_the_margin_changes_nothing() -> None:
    decision = against_production(change(-0.01, -0.02, 0.001), change(0.0, -0.004, 0.004))
    assert (decision.action, decision.deployable) == ("none", True)
    assert decision.reasons[-1] == "challenger loses: production stays, nothing changes"


def test_a_challenger_that_may_lose_more_than_the_hit_tolerance_changes_nothing() -> None:
    decision = against_production(change(-0.01, -0.015, -0.005), change(-0.002, -0.006, 0.002))
    assert (decision.action, decision.deployable) == ("none", True)
    assert any(line.endswith(": lost") for line in decision.reasons)


def test_a_production_of_another_grain_stays() -> None:
    reason = "production has grain res 7..9/4h, candidate res 8..9/4h: not comparable"
    decision = decide_on(evidence(BETTER), "here", reason, RULE)
    assert (decision.action, decision.deployable) == ("none", True)
    assert reason in decision.reasons[-1] and "production stays" in decision.reasons[-1]
