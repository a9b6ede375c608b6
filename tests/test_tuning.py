"""The share-hierarchy search: its space, its time-ordered folds over days, and its values reaching
the trained model."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from visionzero.evaluation.grid import DenseGrid, crash_zones
from visionzero.evaluation.metrics import DaySums
from visionzero.model.crash_risk import CrashRiskModel, ModelConfig, train
from visionzero.model.tuning import (
    SHARE_SPACE,
    TunedParams,
    TuningConfig,
    fold_forecast,
    score_shares,
    search_shares,
    share_fold_days,
    share_folds,
    share_space,
)

PARAMS = {"n_estimators": 50, "max_depth": 3, "learning_rate": 0.1}


def test_share_space_is_model_config_fields_around_the_configured_values() -> None:
    fields = ModelConfig.model_fields
    assert len({dim.name for dim in SHARE_SPACE}) == len(SHARE_SPACE)
    for dim in SHARE_SPACE:
        assert fields[dim.name].annotation is float, dim.name
        assert 0 < dim.low < fields[dim.name].default < dim.high, dim.name
    cfg = ModelConfig(share_halflife_days=20_000.0)  # outside its range: the range widens
    space = {hp.name: hp for hp in share_space(cfg).space}
    assert set(space) == {dim.name for dim in SHARE_SPACE}
    assert all(hp.default == getattr(cfg, name) for name, hp in space.items())
    assert space["share_halflife_days"].max_value == 20_000.0


def test_fold_days_validate_only_after_their_training_days() -> None:
    rng = np.random.default_rng(3)  # irregular complete days, as in the snapshot
    days = pd.DatetimeIndex(
        sorted(pd.Timestamp("2015-01-01") + pd.to_timedelta(rng.choice(3000, 400, False), "D"))
    )
    folds = share_fold_days(days[::-1], n_folds=4, fold_days=60)  # any order in, time order out
    assert len(folds) == 4
    for fit, val in folds:
        assert len(val) == 60 and fit.max() < val.min()
        assert fit.equals(days[days < val.min()])  # every earlier day, no later one
    assert folds[-1][1].equals(days[-60:])
    short = share_fold_days(days[:50], n_folds=4, fold_days=60)  # too few days: shorter blocks
    assert [len(val) for _, val in short] == [10] * 4


@pytest.mark.slow
def test_share_folds_never_see_a_validation_day(real_data) -> None:
    prepared, train_days, holdout_days, cfg = real_data
    folds = share_folds(prepared, train_days, cfg, n_folds=3)
    assert len(folds) == 3
    for fold in folds:
        assert fold.fit_days.max() < fold.val_days.min()
        assert fold.val_days.isin(train_days).all() and not fold.val_days.isin(holdout_days).any()
        assert fold.prepared.slots["date"].isin(fold.fit_days).all()
        assert fold.prepared.crashes["crash_date"].isin(fold.fit_days).all()
        assert len(fold.val_days) == min(cfg.holdout_days, len(train_days) // 4)
        assert fold.grid.observed.shape == (
            len(fold.val_days),
            len(fold.grid.zones),
            cfg.grain.n_blocks,
        )
        assert fold.grid.observed.sum() > 0


@pytest.mark.slow
def test_share_trial_values_land_in_the_trained_model(
    real_data, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    prepared, train_days, _, cfg = real_data
    caplog.set_level(logging.INFO, logger="visionzero.model.tuning")
    tuning = TuningConfig(share_trials=3, cv_folds=2)
    best, trials = search_shares(prepared, train_days, cfg, tuning, tmp_path)
    lines = [r.getMessage() for r in caplog.records if r.name == "visionzero.model.tuning"]
    assert len(lines) == 3 and all(line.startswith("share trial ") for line in lines)
    assert trials[0]["params"] == {dim.name: getattr(cfg, dim.name) for dim in SHARE_SPACE}
    assert all(t["poisson_deviance"] > 0 and 0 < t["hit_rate_at_10"] < 1 for t in trials)
    assert best == min(trials, key=lambda t: t["poisson_deviance"])["params"]
    chosen = trials[-1]["params"]  # a searched trial, not the configured one
    assert chosen != trials[0]["params"]
    tuned = TunedParams(volume=PARAMS, shares=chosen)
    model = train(prepared, train_days, tuned.volume, tuned.apply(cfg), "test-version")
    loaded = CrashRiskModel.load(model.save(tmp_path / "model"))
    for name, value in chosen.items():
        assert loaded.meta["config"][name] == value
    assert loaded.meta["params"] == PARAMS


@pytest.mark.slow
def test_the_tuners_cv_scores_are_the_evaluations_on_the_same_fold(real_data) -> None:
    """One definition of hit@10% and deviance: the evaluation's code path (its own grid of the
    fold's cells and days, its day sums, ranking expected counts) gives the tuner's numbers."""
    prepared, train_days, _, cfg = real_data
    fold = share_folds(prepared, train_days, cfg, n_folds=2)[-1]
    tuned = score_shares(fold, cfg)
    grid = DenseGrid.build(
        prepared,
        crash_zones(prepared, cfg.finest_resolution),
        fold.grid.zones,
        fold.val_days,
        cfg.grain.n_blocks,
    )
    assert grid.outside.sum() > 0  # crashes off the fold's cells count as misses in both
    expected, _ = fold_forecast(fold, cfg)
    evaluated = DaySums.of(grid, expected).metrics()
    assert 0 < tuned["hit_rate_at_10"] < 1
    assert tuned["hit_rate_at_10"] == evaluated["hit_rate_at_10"]  # to the last bit
    assert tuned["poisson_deviance"] == pytest.approx(evaluated["poisson_deviance"], abs=1e-12)
