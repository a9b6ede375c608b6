"""The model on the real bundled data.

No leakage, ordered levels, faithful save/load, time-ordered tuning.
"""

from __future__ import annotations

import itertools
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from sklearn.model_selection import TimeSeriesSplit

from visionzero.evaluation.decision import DecisionRule, decide
from visionzero.evaluation.holdout import HistoricalAverage, evaluate
from visionzero.model.crash_risk import CrashRiskModel, train, zone_slot_grid
from visionzero.model.levels import assign_levels, level_thresholds
from visionzero.model.tuning import make_tuner, volume_training_frame

pytestmark = pytest.mark.slow  # integration tier: see pyproject.toml

PARAMS = {"n_estimators": 100, "max_depth": 3, "learning_rate": 0.1}


@pytest.fixture(scope="module")
def model(real_data) -> CrashRiskModel:
    prepared, train_days, _, cfg = real_data
    return train(prepared, train_days, PARAMS, cfg, "test-version")


def test_holdout_is_after_training(real_data) -> None:
    _, train_days, holdout_days, cfg = real_data
    assert train_days.max() < holdout_days.min()
    assert len(holdout_days) == cfg.holdout_days


def test_no_history_feature_sees_a_holdout_date(real_data, model: CrashRiskModel) -> None:
    prepared, train_days, holdout_days, cfg = real_data
    # Scramble everything known about the holdout period: crashes, day volumes and weather.
    scrambled = replace(
        prepared,
        slots=prepared.slots.assign(
            count=np.where(
                prepared.slots["date"].isin(holdout_days),
                prepared.slots["count"] * 7 + 3,
                prepared.slots["count"],
            )
        ),
        days=prepared.days.assign(
            volume=np.where(
                prepared.days["date"].isin(holdout_days), 10_000, prepared.days["volume"]
            )
        ),
        weather=prepared.weather.assign(
            prcp=np.where(
                prepared.weather["date"] > train_days.max(), 9.9, prepared.weather["prcp"]
            )
        ),
    )
    other = train(scrambled, train_days, PARAMS, cfg, "test-version")
    assert other.thresholds == model.thresholds
    assert other.meta["climatology"] == model.meta["climatology"]
    np.testing.assert_array_equal(other.shares.p_zone, model.shares.p_zone)
    grid = zone_slot_grid(model.shares.zones[:20], train_days[-10:], model.grain)
    args = (grid["zone"].to_numpy(), pd.DatetimeIndex(grid["date"]), grid["block"].to_numpy())
    np.testing.assert_array_equal(other.expected(*args)[0], model.expected(*args)[0])
    base_a = HistoricalAverage(prepared, train_days)
    base_b = HistoricalAverage(scrambled, train_days)
    pd.testing.assert_series_equal(base_a.mean, base_b.mean)


def test_level_thresholds_increase(model: CrashRiskModel) -> None:
    assert len(model.thresholds) == 4
    assert all(b > a for a, b in itertools.pairwise(model.thresholds))
    levels = assign_levels(np.array([0.0, *model.thresholds, 100.0]), model.thresholds)
    assert levels.tolist() == [0, 1, 2, 3, 4, 4]
    with pytest.raises(ValueError, match="do not increase"):
        level_thresholds(np.zeros(100))


def test_levels_are_cut_per_resolution(model: CrashRiskModel) -> None:
    assert model.resolutions == [7, 8, 9]
    cuts = [model.thresholds_at(r) for r in model.resolutions]
    assert cuts[0] == model.thresholds
    for coarse, fine in itertools.pairwise(cuts):
        assert all(b > a for a, b in itertools.pairwise(fine))
        assert fine[-1] < coarse[-1]  # a Dangerous block is rarer than a Dangerous district


def test_finer_zones_sum_exactly_to_their_parent(model: CrashRiskModel) -> None:
    import h3

    for parent in model.shares.zones[::40]:
        for resolution in (8, 9):
            kids = h3.cell_to_children(parent, resolution)
            day = pd.DatetimeIndex(["2025-02-03"] * len(kids))
            for block in range(6):
                whole, _ = model.expected(np.array([parent]), day[:1], np.array([block]))
                parts, _ = model.expected(np.array(kids), day, np.full(len(kids), block))
                assert parts.sum() == pytest.approx(whole[0], rel=1e-9)


def test_save_load_gives_identical_predictions(
    model: CrashRiskModel, real_data, tmp_path: Path
) -> None:
    _, _, holdout_days, _ = real_data
    loaded = CrashRiskModel.load(model.save(tmp_path / "model"))
    assert (tmp_path / "model" / "volume.json").exists()  # XGBoost's native JSON, no pickle
    assert not list((tmp_path / "model").glob("*.pkl"))
    grid = zone_slot_grid(model.shares.zones, holdout_days[:5], model.grain)
    args = (grid["zone"].to_numpy(), pd.DatetimeIndex(grid["date"]), grid["block"].to_numpy())
    np.testing.assert_array_equal(loaded.expected(*args)[0], model.expected(*args)[0])
    assert (
        loaded.thresholds == model.thresholds
        and loaded.meta["training_window"] == model.meta["training_window"]
    )


def test_tuner_trials_never_shuffle_time(real_data, tmp_path: Path) -> None:
    prepared, train_days, _, cfg = real_data
    X, _, dates = volume_training_frame(prepared, train_days)
    assert dates.is_monotonic_increasing
    tuner = make_tuner(cfg, max_trials=1, n_splits=4, directory=tmp_path)
    assert isinstance(tuner.cv, TimeSeriesSplit)
    for train_idx, test_idx in tuner.cv.split(X):
        assert dates[train_idx].max() < dates[test_idx].min()


def test_evaluation_scores_all_three_on_one_holdout(real_data, model: CrashRiskModel) -> None:
    prepared, train_days, holdout_days, _ = real_data
    report = evaluate(prepared, train_days, holdout_days, model, model, production_version=1)
    assert report.production.poisson_deviance == report.candidate.poisson_deviance
    assert report.candidate.observed_total == report.baseline.observed_total > 0
    assert 0 < report.candidate.hit_rate_at_5 < report.candidate.hit_rate_at_10 < 1
    assert set(report.slices["borough"]["candidate"]) >= {"BROOKLYN", "QUEENS", "MANHATTAN"}
    again = type(report).model_validate_json(report.model_dump_json())  # as ZenML stores it
    assert again.candidate == report.candidate and again.production_version == 1


def scores(dev: float, hit: float) -> dict:
    return {"poisson_deviance": dev, "hit_rate_at_10": hit}


@pytest.mark.parametrize(
    "candidate,production,action,deployable",
    [
        (scores(0.60, 0.31), None, "none", False),  # worse deviance than the baseline
        (scores(0.50, 0.29), None, "none", False),  # worse hit@10% than the baseline
        (scores(0.50, 0.31), None, "production", True),  # first deployable model
        (scores(0.49, 0.31), scores(0.50, 0.31), "staging", True),  # beats production by >= 0.5%
        (scores(0.499, 0.31), scores(0.50, 0.31), "none", True),  # improvement below the margin
        (scores(0.45, 0.30), scores(0.50, 0.31), "none", True),  # loses more than the hit tolerance
    ],
)
def test_decision_rule_branches(
    candidate: dict, production: dict | None, action: str, deployable: bool
) -> None:
    report = {"candidate": candidate, "baseline": scores(0.55, 0.295), "production": production}
    decision = decide(
        report, DecisionRule(min_deviance_improvement=0.005, hit_rate_tolerance=0.005)
    )
    assert (decision.action, decision.deployable) == (action, deployable)
    assert len(decision.reasons) >= 3
