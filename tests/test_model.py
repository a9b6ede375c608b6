"""The model on the real bundled data.

No leakage at any backtest origin, ordered levels, faithful save/load, time-ordered tuning.
"""

from __future__ import annotations

import itertools
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from sklearn.model_selection import TimeSeriesSplit

from visionzero.evaluation.backtest import EvaluationConfig, backtest_origins, refit
from visionzero.evaluation.grid import (
    DenseGrid,
    base_expected,
    crash_zones,
    model_expected,
    model_zones,
    status_quo_expected,
)
from visionzero.evaluation.holdout import evaluate
from visionzero.model import features as F
from visionzero.model.crash_risk import CrashRiskModel, Prepared, train, zone_slot_grid
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


def scrambled_after(prepared: Prepared, cutoff: pd.Timestamp) -> Prepared:
    """Everything known after `cutoff` replaced by nonsense: crash places and times shuffled,
    zone-slot counts and day volumes inflated, weather changed."""
    rng = np.random.default_rng(0)
    crashes = prepared.crashes.copy()
    later = (crashes["crash_date"] > cutoff).to_numpy()
    for column in ("zone", "cell", "block", "borough"):
        crashes.loc[later, column] = rng.permutation(crashes.loc[later, column].to_numpy())
    return replace(
        prepared,
        crashes=crashes,
        slots=prepared.slots.assign(
            count=np.where(
                prepared.slots["date"] > cutoff,
                prepared.slots["count"] * 7 + 3,
                prepared.slots["count"],
            )
        ),
        days=prepared.days.assign(
            volume=np.where(prepared.days["date"] > cutoff, 10_000, prepared.days["volume"])
        ),
        weather=prepared.weather.assign(
            prcp=np.where(prepared.weather["date"] > cutoff, 9.9, prepared.weather["prcp"])
        ),
    )


def test_no_backtest_origin_learns_from_its_future(real_data, model: CrashRiskModel) -> None:
    """At every origin (the holdout is the last), scrambling the days after its training days
    changes nothing learned: shares, child shares, thresholds, forecasts and the status quo."""
    prepared, train_days, holdout_days, cfg = real_data
    origins = backtest_origins(train_days, holdout_days, EvaluationConfig(backtest_origins=3))
    assert len(origins) == 3 and origins[-1].test_days.equals(holdout_days)
    for origin in origins:
        cutoff = origin.train_days.max()
        assert cutoff < origin.test_days.min()
        scrambled = scrambled_after(prepared, cutoff)
        clean, dirty = (
            refit(model, prepared, origin.train_days),
            refit(model, scrambled, origin.train_days),
        )
        assert dirty.meta["thresholds_by_resolution"] == clean.meta["thresholds_by_resolution"]
        assert dirty.meta["climatology"] == clean.meta["climatology"]
        np.testing.assert_array_equal(dirty.shares.p_zone, clean.shares.p_zone)
        for a, b in zip(dirty.children, clean.children, strict=True):
            np.testing.assert_array_equal(a.share, b.share)
        for resolution in (7, 9):
            grid = DenseGrid.build(
                prepared,
                crash_zones(prepared, resolution),
                model_zones(clean, resolution),
                origin.test_days[:7],
                cfg.grain.n_blocks,
            )
            # The forecast day's own weather is an input, not something learned: pass the same.
            weather = prepared.weather
            dirty_mu, clean_mu = (
                model_expected(m, grid, weather, base_expected(m, grid.days, weather)[0])
                for m in (dirty, clean)
            )
            np.testing.assert_array_equal(dirty_mu, clean_mu)
            np.testing.assert_array_equal(
                status_quo_expected(
                    scrambled,
                    crash_zones(scrambled, resolution),
                    origin.train_days,
                    grid,
                ),
                status_quo_expected(
                    prepared,
                    crash_zones(prepared, resolution),
                    origin.train_days,
                    grid,
                ),
            )


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


def test_served_day_cache_changes_no_answer(model: CrashRiskModel, real_data) -> None:
    """Without weather, serving keeps each date's volume and day type: the answers equal the
    same computation without the cache (an empty weather table) to the last bit, on a cold
    cache, a warm one and a mix of both, for weekdays, weekends and holidays alike."""
    _, _, holdout_days, _ = real_data
    days = pd.DatetimeIndex([*holdout_days[:10], "2024-12-25", "2025-07-04", "2025-02-08"])
    grid = zone_slot_grid(model.shares.zones[::7], days, model.grain)
    zones, dates = grid["zone"].to_numpy(), pd.DatetimeIndex(grid["date"])
    blocks = grid["block"].to_numpy()
    no_record = pd.DataFrame({"date": pd.to_datetime([]), **{f: [] for f in F.WEATHER_FIELDS}})
    uncached, source = model.expected(zones, dates, blocks, weather=no_record)
    model._day_cache.clear()
    half = len(zones) // 2
    first_half, _ = model.expected(zones[:half], dates[:half], blocks[:half])  # cold
    cold_then_warm, served_source = model.expected(zones, dates, blocks)  # half of it warm
    warm, _ = model.expected(zones, dates, blocks)
    assert len(model._day_cache) == days.nunique()
    np.testing.assert_array_equal(first_half, uncached[:half])
    np.testing.assert_array_equal(cold_then_warm, uncached)
    np.testing.assert_array_equal(warm, uncached)
    np.testing.assert_array_equal(served_source, source)


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


def test_evaluation_scores_all_three_at_every_resolution(real_data, model: CrashRiskModel) -> None:
    prepared, train_days, holdout_days, _ = real_data
    cfg = EvaluationConfig(backtest_origins=2, bootstrap_reps=200)
    report = evaluate(prepared, train_days, holdout_days, model, model, 1, cfg)
    assert report.resolution == 9 and report.resolutions == [7, 8, 9]
    assert report.production.poisson_deviance == report.candidate.poisson_deviance
    assert report.candidate.observed_total == report.baseline.observed_total > 0
    assert 0 < report.candidate.hit_rate_at_5 < report.candidate.hit_rate_at_10 < 1
    assert set(report.slices["borough"]["candidate"]) >= {"BROOKLYN", "QUEENS", "MANHATTAN"}
    assert len(report.origins) == 2 and report.origins[-1].test_window == report.holdout_window
    for results in (report.holdout, report.backtest):
        assert set(results) == {"7", "8", "9"}
        for result in results.values():
            same = result.differences["vs_production"]["poisson_deviance"]
            assert (same.low, same.high) == (0.0, 0.0)  # one recipe, refit alike: no difference
            own = result.roles["candidate"]["hit_rate_at_10"]
            assert own.low <= own.estimate <= own.high
    # Crashes are the same at every resolution: finer zones only split them.
    totals = {r: s["candidate"].observed_total for r, s in report.origins[-1].scores.items()}
    assert len(set(totals.values())) == 1, totals
    again = type(report).model_validate_json(report.model_dump_json())  # as ZenML stores it
    assert again.candidate == report.candidate and again.production_version == 1


def test_context_history_nests_and_survives_save_load(
    model: CrashRiskModel, real_data, tmp_path: Path
) -> None:
    """Each zone's observed crashes by block are its training crashes; a parent's are the sum of
    its children's at every resolution; the context is saved and loaded with the model."""
    import h3

    prepared, train_days, _, _ = real_data
    context = model.context
    assert context.history_day_count == len(train_days)
    timed = prepared.crashes[
        prepared.crashes["crash_date"].isin(train_days) & (prepared.crashes["block"] >= 0)
    ]
    base = model.shares.zones
    assert sum(sum(context.history.get(z, [0])) for z in base) == len(timed)
    for parent in base[::25]:
        for resolution in (8, 9):
            kids = h3.cell_to_children(parent, resolution)
            summed = np.sum([context.history.get(k, [0] * 6) for k in kids], axis=0)
            np.testing.assert_array_equal(summed, context.history.get(parent, [0] * 6))
    loaded = CrashRiskModel.load(model.save(tmp_path / "model"))
    assert loaded.context == context
    names = {f["properties"]["name"] for f in context.boroughs["features"]}
    assert names == {"BRONX", "BROOKLYN", "MANHATTAN", "QUEENS", "STATEN ISLAND"}


def test_day_drivers_multiply_to_the_volume(model: CrashRiskModel) -> None:
    """The outlook's drivers are the volume model's own exact contributions: their product with
    the model's average day is the day's volume, and a holiday shows up as the holiday driver."""
    days = pd.date_range("2025-11-24", periods=7)  # Thanksgiving is 2025-11-27
    volume, drivers, source = model.day_volumes(days)
    product = np.prod(list(drivers.values()), axis=0)
    average_day = volume / product
    np.testing.assert_allclose(average_day, average_day[0], rtol=1e-4)
    thanksgiving = drivers["holiday"][3]
    assert thanksgiving < min(np.delete(drivers["holiday"], 3))
    assert set(source) == {"climatology"}  # no recorded weather passed
    cuts = model.context.day_cuts
    assert len(cuts) == 12 and all(c == sorted(c) for c in cuts.values())
