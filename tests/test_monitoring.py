"""Monitoring on the real bundled data: models trained on the days before a cutoff, judged on the
real complete days after it (the 2025 holdout days play the days that arrived later)."""

from __future__ import annotations

from datetime import date
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from tests.test_k8s import release
from visionzero.data.dataset import load_frames
from visionzero.evaluation.backtest import EvaluationConfig
from visionzero.evaluation.grid import DenseGrid, crash_zones
from visionzero.evaluation.holdout import evaluate
from visionzero.evaluation.metrics import Interval
from visionzero.model.crash_risk import CrashRiskModel, train, zone_slot_grid
from visionzero.monitoring.canary import CanaryRule, decide_canary
from visionzero.monitoring.drift import DriftConfig, crash_data_drift, detect_drift
from visionzero.monitoring.forward import (
    ForwardConfig,
    StagedModel,
    deployed_dates,
    forward_evaluation,
)
from visionzero.monitoring.operational import StageHealth
from visionzero.monitoring.retrain import RetrainRule, decide_retrain
from visionzero.monitoring.traffic import reference_cells, traffic_view, zone7_boroughs
from visionzero.rollout.deployment_state import DeploymentState

pytestmark = pytest.mark.slow

PARAMS = {"n_estimators": 100, "max_depth": 3, "learning_rate": 0.1}
FORWARD = ForwardConfig(bootstrap_reps=200)
HEALTHY = {
    stage: StageHealth(
        stage=stage,
        source="prometheus",
        requests=500,
        errors=0,
        error_rate=0.0,
        p50_ms=5.0,
        p95_ms=12.0,
        p99_ms=20.0,
    )
    for stage in ("production", "staging")
}


@pytest.fixture(scope="module")
def models(real_data) -> dict[str, CrashRiskModel]:
    """Production on every day before the cutoff, a weak staging on its last 30 days only."""
    prepared, train_days, _, cfg = real_data
    return {
        "production": train(prepared, train_days, PARAMS, cfg, "test"),
        "weak": train(prepared, train_days[-30:], PARAMS, cfg, "test"),
    }


def staged(model: CrashRiskModel, version: int, deployed: date | None = None) -> StagedModel:
    return StagedModel(model, version, deployed)


def test_forward_scores_equal_the_evaluation_on_the_same_days(real_data, models) -> None:
    prepared, train_days, holdout_days, _ = real_data
    model = models["production"]
    forward = forward_evaluation(prepared, {"production": staged(model, 1)}, FORWARD)
    report = evaluate(
        prepared,
        train_days,
        holdout_days,
        model,
        None,
        cfg=EvaluationConfig(backtest_origins=1, bootstrap_reps=200),
    )
    mine = forward.stages["production"]
    assert mine.days == len(holdout_days) and mine.window == report.holdout_window
    for r in ("9", "7"):
        theirs = report.holdout[r]
        assert mine.metrics[r]["model"] == theirs.roles["candidate"]
        assert mine.metrics[r]["status_quo"] == theirs.roles["baseline"]
        assert mine.vs_status_quo[r] == theirs.differences["vs_baseline"]


def test_identical_staging_differs_by_exactly_zero_and_is_left_alone(real_data, models) -> None:
    prepared = real_data[0]
    model = models["production"]
    forward = forward_evaluation(
        prepared, {"production": staged(model, 1), "staging": staged(model, 2)}, FORWARD
    )
    for r in ("9", "7"):
        for change in forward.paired.differences[r].values():
            assert (change.estimate, change.low, change.high) == (0.0, 0.0, 0.0)
    decision = decide_canary(forward, HEALTHY, CanaryRule())
    assert decision.action == "none" and decision.paired_days == 90


def test_staging_trained_on_far_less_data_waits_then_is_rolled_back(real_data, models) -> None:
    prepared, _, holdout_days, _ = real_data
    # staging went live 10 complete days before the last, counted from deployment: too few days
    late = (holdout_days[-11]).date()
    few = forward_evaluation(
        prepared,
        {
            "production": staged(models["production"], 1),
            "staging": staged(models["weak"], 2, late),
        },
        FORWARD.model_copy(update={"count_from": "deployment"}),
    )
    assert few.paired.days == 10 and few.stages["staging"].first_day == str(
        holdout_days[-10].date()
    )
    waiting = decide_canary(few, HEALTHY, CanaryRule(min_forward_days=14))
    assert waiting.action == "wait" and waiting.days_needed == 4
    assert "wait 4 more complete days" in waiting.reasons[-1]
    # the whole forward window: the weak model is clearly worse
    forward = forward_evaluation(
        prepared,
        {"production": staged(models["production"], 1), "staging": staged(models["weak"], 2)},
        FORWARD,
    )
    change = forward.paired.differences["9"]["poisson_deviance"]
    assert change.low > 0, change
    decision = decide_canary(forward, HEALTHY, CanaryRule(min_forward_days=14))
    assert decision.action == "rollback" and "forward-worse" in decision.reasons[-1]


def test_deployed_dates_come_from_the_state_history() -> None:
    state = DeploymentState.model_validate(
        {
            "production": release(3),
            "staging": release(4),
            "history": [
                {
                    "event": "deploy_production",
                    "at": "2025-01-02T10:00:00+00:00",
                    "model_version": 3,
                },
                {"event": "deploy_staging", "at": "2025-02-03T10:00:00+00:00", "model_version": 4},
                {"event": "deploy_staging", "at": "2025-02-01T10:00:00+00:00", "model_version": 9},
            ],
        }
    )
    assert deployed_dates(state) == {"production": date(2025, 1, 2), "staging": date(2025, 2, 3)}
    only_production = DeploymentState(production=release(1), history=[])
    assert deployed_dates(only_production) == {"production": None}


def test_retrain_fires_when_forward_deviance_leaves_the_holdout_interval(real_data, models) -> None:
    prepared = real_data[0]
    forward = forward_evaluation(prepared, {"production": staged(models["production"], 1)}, FORWARD)
    estimate = forward.stages["production"].metrics["9"]["model"]["poisson_deviance"].estimate
    inside = Interval(estimate=estimate, low=estimate * 0.9, high=estimate * 1.1)
    below = Interval(estimate=estimate * 0.8, low=estimate * 0.7, high=estimate * 0.9)
    stays = decide_retrain(forward, inside, None, RetrainRule())
    assert not stays.retrain and "within" in stays.reasons[0]
    fires = decide_retrain(forward, below, None, RetrainRule())
    assert fires.retrain and "degraded beyond its backtest" in fires.reasons[0]
    off = decide_retrain(forward, below, None, RetrainRule(enabled=False))
    assert not off.retrain and "disabled" in off.reasons[-1]


@pytest.fixture(scope="module")
def frames(real_data_dir: Path) -> tuple[pd.DataFrame, pd.DatetimeIndex]:
    crashes, complete, _ = load_frames(real_data_dir)
    return crashes, pd.DatetimeIndex(complete["date"])


def test_drift_on_identical_windows_flags_nothing(frames, real_data) -> None:
    crashes, _ = frames
    holdout_days = real_data[2]
    checks = crash_data_drift(crashes, holdout_days, holdout_days, DriftConfig())
    assert [check.name for check in checks] == [
        "daily volume",
        "geocoding rate",
        "borough mix",
        "hour mix",
    ]
    assert not any(check.flagged for check in checks)
    assert all(check.psi == pytest.approx(0.0, abs=1e-12) for check in checks)


def test_drift_flags_a_window_with_one_borough_removed(frames, real_data) -> None:
    crashes, _ = frames
    holdout_days = real_data[2]
    without = crashes[crashes["borough"].astype(object) != "BROOKLYN"]
    current = without[without["crash_date"].isin(holdout_days)]
    reference = crashes[crashes["crash_date"].isin(holdout_days)]
    checks = {
        check.name: check
        for check in crash_data_drift(
            pd.concat(
                [
                    reference.assign(crash_date=reference["crash_date"] - pd.Timedelta(days=1000)),
                    current,
                ]
            ),
            holdout_days - pd.Timedelta(days=1000),
            holdout_days,
            DriftConfig(),
        )
    }
    assert checks["borough mix"].flagged, checks["borough mix"]
    assert checks["borough mix"].current_share.get("BROOKLYN", 0.0) == 0.0
    assert not checks["hour mix"].flagged  # the hours of the other boroughs hardly move


def test_detect_drift_compares_after_the_training_window(frames, real_data, models) -> None:
    crashes, complete = frames
    prepared = real_data[0]
    model = models["production"]
    report = detect_drift(
        crashes,
        complete,
        model.meta["training_window"],
        reference_cells(prepared),
        None,
        zone7_boroughs(prepared),
        DriftConfig(),
    )
    assert report.reference_window[1] == "2024-03-31"
    assert report.current_window == ["2025-01-01", "2025-03-31"]
    assert len(report.checks) == 4


def test_traffic_calibration_counts_the_crashes_on_the_asked_zone_slots(real_data, models) -> None:
    """Requests as the service logs them (the model's own answers for real zones on real days);
    observed crashes recounted independently on the evaluation's dense grid."""
    prepared, _, holdout_days, _ = real_data
    model = models["production"]
    zones9 = [z for z, r in model.zone_table.row_of.items() if model.zone_table.resolution[r] == 9]
    busiest = (
        pd.Series(crash_zones(prepared, 9)).value_counts().index.intersection(zones9)[:40].tolist()
    )
    days = holdout_days[:10]
    grid = zone_slot_grid(busiest, days, model.grain)
    expected, _ = model.expected(
        grid["zone"].to_numpy(),
        pd.DatetimeIndex(grid["date"]),
        grid["block"].to_numpy(),
        prepared.weather,
    )
    log = grid.assign(
        expected=expected,
        stage="production",
        model_version=1,
        resolution=9,
        request_id="r",
        time=pd.Timestamp("2025-04-01", tz="UTC"),
    )
    log = pd.concat([log, log.head(5)], ignore_index=True)  # asked twice: counted once
    view = traffic_view(log, prepared, zone7_boroughs(prepared))
    dense = DenseGrid.build(prepared, crash_zones(prepared, 9), busiest, days, model.grain.n_blocks)
    (cal,) = view.calibration
    assert cal.requests == len(log) and cal.zone_slots == len(grid)
    assert cal.observed == dense.observed.sum() > 0
    assert cal.predicted == pytest.approx(float(np.sum(expected)))
    assert view.requests == len(log) and sum(z["requests"] for z in view.top_zones) <= len(log)
    assert set(view.by_block) <= {str(b) for b in range(model.grain.n_blocks)}


def test_no_asked_slot_on_a_complete_day_still_merges() -> None:
    """Requests only about days not yet complete leave no resolution to count crashes at: the
    empty observed table keeps the dtypes the calibration merges on (a monitor run died here)."""
    from types import SimpleNamespace

    from visionzero.monitoring.traffic import observed_counts

    empty = SimpleNamespace(crashes=pd.DataFrame({"block": [], "cell": [], "crash_date": []}))
    observed = observed_counts(empty, [])
    asked = pd.DataFrame(
        {"zone": ["a"], "resolution": [9], "date": [pd.Timestamp("2025-04-07")], "block": [2]}
    ).iloc[:0]  # what calibration merges when no request fell on a complete day
    joined = asked.merge(observed, on=["zone", "resolution", "date", "block"], how="left")
    assert joined.empty and "observed" in joined
