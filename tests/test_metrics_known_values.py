"""Metrics, risk levels and the deploy rule on small inputs whose answers are worked out by hand."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from visionzero.evaluation.decision import Decision, DecisionRule, decide
from visionzero.evaluation.holdout import hit_rate, poisson_deviance, score
from visionzero.model.levels import assign_levels, level_thresholds, p_at_least_one

DAY = pd.Timestamp("2025-01-06")


def slot_grid(counts_by_block: list[list[int]]) -> pd.DataFrame:
    """One day; zones z0, z1, ... in grid order, one block per list of counts."""
    rows = [
        {"date": DAY, "zone": f"z{zone}", "block": block, "count": count}
        for block, counts in enumerate(counts_by_block)
        for zone, count in enumerate(counts)
    ]
    return pd.DataFrame(rows)


# Block 0: 10 zone-slots holding 4 crashes; the riskiest forecast (0.9) is z1, which had 2.
# Block 1: 10 zone-slots holding 5 crashes, every forecast equal (0.5).
GRID = slot_grid([[0, 2, 0, 0, 1, 0, 0, 0, 1, 0], [1, 0, 0, 4, 0, 0, 0, 0, 0, 0]])
PREDICTED = np.array([0.1, 0.9, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.05] + [0.5] * 10)


def test_hit_rate_ranks_within_each_date_and_block() -> None:
    # k = 10% of 10 zone-slots = 1 per block. Block 0 picks z1 (2 crashes). Block 1 is all ties,
    # broken by grid order, so z0 (1 crash), not z3 (4): hit = (2 + 1) / 9 crashes.
    assert hit_rate(GRID, PREDICTED, 0.10) == pytest.approx(3 / 9)
    # k = 20%: 2 per block. Block 0 adds z8 (0.8, 1 crash); block 1 adds z1 (0 crashes): 4 / 9.
    assert hit_rate(GRID, PREDICTED, 0.20) == pytest.approx(4 / 9)
    # k = 5% of 10 = 0.5, rounded up to 1 zone-slot per block: the same as 10%.
    assert hit_rate(GRID, PREDICTED, 0.05) == pytest.approx(3 / 9)


def test_hit_rate_counts_crashes_outside_known_zones_as_missed() -> None:
    # 3 holdout crashes fell in zones the model has no row for: (2 + 1) / (9 + 3).
    assert hit_rate(GRID, PREDICTED, 0.10, outside=3.0) == pytest.approx(0.25)


def test_hit_rate_rounds_the_share_of_zone_slots_up() -> None:
    # 15 zone-slots: 10% is 1.5, so the 2 riskiest count: z14 (1 crash) and z13 (2) of 6 crashes.
    grid = slot_grid([[1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2, 2, 1]])
    predicted = np.arange(15) / 100.0
    assert hit_rate(grid, predicted, 0.10) == pytest.approx(3 / 6)


def test_hit_rate_without_any_crash_is_undefined() -> None:
    assert math.isnan(hit_rate(slot_grid([[0] * 10]), np.ones(10), 0.10))


def test_pai_is_hit_rate_over_the_share_of_zone_slots() -> None:
    # hit@10% = 3/9, so PAI@10% = (3/9) / 0.10 = 10/3.
    report = score(GRID, PREDICTED, thresholds=[0.2, 0.4, 0.6, 0.8])
    assert report["hit_rate_at_10"] == pytest.approx(1 / 3)
    assert report["pai_at_10"] == pytest.approx(10 / 3)
    assert report["observed_total"] == 9.0
    assert report["predicted_total"] == pytest.approx(9.55)  # 4.55 in block 0 + 10 x 0.5


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
BASELINE = {"poisson_deviance": 0.55, "hit_rate_at_10": 0.295}


def scores(deviance: float, hit: float) -> dict:
    return {"poisson_deviance": deviance, "hit_rate_at_10": hit}


def test_a_candidate_worse_than_the_baseline_is_not_deployable() -> None:
    decision = decide(
        {"candidate": scores(0.60, 0.31), "baseline": BASELINE, "production": None}, RULE
    )
    assert (decision.action, decision.deployable) == ("none", False)
    assert "deviance 0.6000 vs baseline 0.5500: not better" in decision.reasons
    assert "hit@10% 0.3100 vs baseline 0.2950: better" in decision.reasons


def test_equal_to_the_baseline_is_not_better() -> None:
    decision = decide({"candidate": scores(0.50, 0.295), "baseline": BASELINE}, RULE)
    assert (decision.action, decision.deployable) == ("none", False)
    assert "hit@10% 0.2950 vs baseline 0.2950: not better" in decision.reasons


def test_the_first_deployable_model_becomes_production() -> None:
    decision = decide(
        {"candidate": scores(0.50, 0.31), "baseline": BASELINE, "production": None}, RULE
    )
    assert (decision.action, decision.deployable) == ("production", True)
    assert decision.reasons[:2] == [
        "deviance 0.5000 vs baseline 0.5500: better",
        "hit@10% 0.3100 vs baseline 0.2950: better",
    ]


def against_production(candidate: dict) -> Decision:
    """The rule for a candidate against production at deviance 0.50 and hit@10% 0.31."""
    return decide(
        {"candidate": candidate, "baseline": BASELINE, "production": scores(0.50, 0.31)}, RULE
    )


def test_a_challenger_that_wins_by_the_margin_goes_to_staging() -> None:
    # Production deviance 0.50 needs <= 0.50 x (1 - 0.005) = 0.4975; 0.49 wins. Hit 0.31 >= 0.305.
    decision = against_production(scores(0.49, 0.31))
    assert (decision.action, decision.deployable) == ("staging", True)
    assert "deviance 0.4900 vs production 0.5000 (needs <= 0.4975): wins" in decision.reasons
    assert "hit@10% 0.3100 vs production 0.3100 (tolerance 0.005): kept" in decision.reasons


def test_exactly_the_margin_and_exactly_the_tolerance_still_win() -> None:
    production = scores(0.50, 0.31)
    candidate = scores(0.50 * (1 - 0.005), 0.31 - 0.005)  # 0.4975 and 0.305, computed as the rule
    decision = decide(
        {"candidate": candidate, "baseline": BASELINE, "production": production}, RULE
    )
    assert decision.action == "staging"


def test_a_challenger_below_the_margin_changes_nothing() -> None:
    # 0.499 > 0.4975: a 0.2% improvement is not the required 0.5%.
    decision = against_production(scores(0.499, 0.31))
    assert (decision.action, decision.deployable) == ("none", True)
    assert (
        "deviance 0.4990 vs production 0.5000 (needs <= 0.4975): does not win" in decision.reasons
    )
    assert decision.reasons[-1] == "challenger loses: production stays, nothing changes"


def test_a_challenger_losing_more_than_the_hit_tolerance_changes_nothing() -> None:
    # Deviance 0.45 wins, but hit 0.30 < 0.31 - 0.005 = 0.305.
    decision = against_production(scores(0.45, 0.30))
    assert (decision.action, decision.deployable) == ("none", True)
    assert "deviance 0.4500 vs production 0.5000 (needs <= 0.4975): wins" in decision.reasons
    assert "hit@10% 0.3000 vs production 0.3100 (tolerance 0.005): lost" in decision.reasons
