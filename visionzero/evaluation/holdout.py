"""Holdout scoring.

Shared by the new model, the production model and the historical-average baseline.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from pydantic import BaseModel, ConfigDict
from sklearn.metrics import cohen_kappa_score

from visionzero.model.crash_risk import CrashRiskModel, Prepared, zone_slot_grid
from visionzero.model.deviance import poisson_deviance
from visionzero.model.grain import Grain
from visionzero.model.levels import assign_levels

METRIC_KEYS = ["poisson_deviance", "hit_rate_at_10", "hit_rate_at_5", "pai_at_10", "qwk"]


class Scores(BaseModel):
    """One predictor's scores on a zone-slot grid."""

    model_config = ConfigDict(ser_json_inf_nan="strings")  # a slice without crashes has NaN rates

    poisson_deviance: float
    hit_rate_at_10: float
    hit_rate_at_5: float
    pai_at_10: float
    qwk: float
    predicted_total: float
    observed_total: float
    calibration_ratio: float

    def headline(self) -> dict[str, float]:
        return {key: getattr(self, key) for key in METRIC_KEYS}


class EvaluationReport(BaseModel):
    """The evaluator artifact: candidate, production (re-scored) and baseline on one holdout.

    Production is re-scored only at the candidate's grain; of another grain it has no scores and
    `production_not_comparable` says why (its zones and blocks are not the candidate's).
    """

    model_config = ConfigDict(ser_json_inf_nan="strings")

    holdout_window: list[str]
    holdout_days: int
    zone_slots: int
    crashes_outside_known_zones: float
    weather_source_share: dict[str, float]
    candidate: Scores
    baseline: Scores
    production: Scores | None = None
    production_version: int | None = None
    production_not_comparable: str | None = None
    slices: dict[str, dict[str, dict[str, Scores]]]  # slice kind -> role -> slice value -> scores
    hit_rate_curve: dict[str, list[float]]  # k_percent and one curve per role


class HistoricalAverage:
    """The status quo: mean crashes per zone x weekday x block over the training days."""

    def __init__(self, prepared: Prepared, train_days: pd.DatetimeIndex) -> None:
        slots = prepared.slots[prepared.slots["date"].isin(train_days)]
        days_per_dow = pd.Series(train_days.dayofweek).value_counts()
        totals = (
            slots.assign(dow=slots["date"].dt.dayofweek)
            .groupby(["zone", "dow", "block"])["count"]
            .sum()
        )
        self.mean = totals / days_per_dow.reindex(totals.index.get_level_values("dow")).to_numpy()

    def expected(self, grid: pd.DataFrame) -> np.ndarray:
        keys = pd.MultiIndex.from_arrays([grid["zone"], grid["date"].dt.dayofweek, grid["block"]])
        return self.mean.reindex(keys).fillna(0.0).to_numpy()


def holdout_frame(
    prepared: Prepared, zones: list[str], holdout_days: pd.DatetimeIndex, grain: Grain
) -> tuple[pd.DataFrame, float]:
    """Zone-slot grid of the holdout with observed counts, and the holdout crashes outside those
    zones."""
    grid = zone_slot_grid(zones, holdout_days, grain)
    observed = prepared.slots[prepared.slots["date"].isin(holdout_days)]
    grid = grid.merge(observed, on=["date", "zone", "block"], how="left").fillna({"count": 0})
    outside = float(observed["count"].sum() - grid["count"].sum())
    return grid, outside


def hit_rate(grid: pd.DataFrame, predicted: np.ndarray, k: float, outside: float = 0.0) -> float:
    """Share of holdout crashes in the k% riskiest zone-slots, ranked within each date x block."""
    frame = grid[["date", "block", "count"]].assign(pred=predicted, zone_order=np.arange(len(grid)))
    frame = frame.sort_values(
        ["date", "block", "pred", "zone_order"], ascending=[True, True, False, True]
    )
    rank = frame.groupby(["date", "block"]).cumcount()
    per_slot = frame.groupby(["date", "block"])["count"].transform("size")
    top = rank < np.ceil(k * per_slot)
    total = frame["count"].sum() + outside
    return float(frame.loc[top, "count"].sum() / total) if total else float("nan")


def score(
    grid: pd.DataFrame, predicted: np.ndarray, thresholds: list[float], outside: float = 0.0
) -> dict[str, float]:
    y = grid["count"].to_numpy(dtype=float)
    hit10 = hit_rate(grid, predicted, 0.10, outside)
    realised = assign_levels(y, thresholds)
    levels = assign_levels(predicted, thresholds)
    both_constant = len(np.unique(realised)) == 1 and len(np.unique(levels)) == 1
    return {
        "poisson_deviance": poisson_deviance(y, predicted),
        "hit_rate_at_10": hit10,
        "hit_rate_at_5": hit_rate(grid, predicted, 0.05, outside),
        "pai_at_10": hit10 / 0.10,
        "qwk": 0.0
        if both_constant
        else float(cohen_kappa_score(realised, levels, weights="quadratic")),
        "predicted_total": float(predicted.sum()),
        "observed_total": float(y.sum()),
        "calibration_ratio": float(predicted.sum() / y.sum()) if y.sum() else float("nan"),
    }


def sliced(
    grid: pd.DataFrame, predicted: np.ndarray, thresholds: list[float], by: pd.Series
) -> dict[str, dict[str, float]]:
    out = {}
    for key in sorted(by.dropna().unique(), key=str):
        mask = (by == key).to_numpy()
        out[str(key)] = score(grid[mask].reset_index(drop=True), predicted[mask], thresholds)
    return out


def zone_boroughs(prepared: Prepared, train_days: pd.DatetimeIndex) -> dict[str, str]:
    """Majority borough of a zone's training crashes (crashes without a borough are not counted)."""
    rows = prepared.crashes[
        prepared.crashes["crash_date"].isin(train_days) & prepared.crashes["borough"].notna()
    ]
    return rows.groupby("zone")["borough"].agg(lambda s: s.value_counts().index[0]).to_dict()


def grain_name(grain: Grain) -> str:
    return f"res {grain.resolution}/{grain.block_hours}h"


def evaluate(
    prepared: Prepared,
    train_days: pd.DatetimeIndex,
    holdout_days: pd.DatetimeIndex,
    candidate: CrashRiskModel,
    production: CrashRiskModel | None,
    production_version: int | None = None,
) -> EvaluationReport:
    """Score candidate, production (re-scored here) and baseline on one holdout zone-slot grid,
    the candidate's: a production model of another grain never saw those zones and blocks, so it
    is not scored, with the reason in the report."""
    grain = candidate.grain
    grid, outside = holdout_frame(prepared, candidate.shares.zones, holdout_days, grain)
    weather = prepared.weather
    dates = pd.DatetimeIndex(grid["date"])
    pred_new, weather_source = candidate.expected(
        grid["zone"].to_numpy(), dates, grid["block"].to_numpy(), weather
    )
    baseline = HistoricalAverage(prepared, train_days)
    pred_base = baseline.expected(grid)
    boroughs = grid["zone"].map(zone_boroughs(prepared, train_days)).fillna("UNKNOWN")
    blocks = grid["block"].map(dict(enumerate(grain.labels)))
    thresholds = candidate.thresholds
    report = {
        "holdout_window": [str(holdout_days.min().date()), str(holdout_days.max().date())],
        "holdout_days": len(holdout_days),
        "zone_slots": len(grid),
        "crashes_outside_known_zones": outside,
        "weather_source_share": {
            s: float(np.mean(weather_source == s)) for s in np.unique(weather_source)
        },
        "candidate": score(grid, pred_new, thresholds, outside),
        "baseline": score(grid, pred_base, thresholds, outside),
        "production": None,
        "production_version": production_version,
        "production_not_comparable": None,
        "slices": {
            "borough": {
                "candidate": sliced(grid, pred_new, thresholds, boroughs),
                "baseline": sliced(grid, pred_base, thresholds, boroughs),
            },
            "block": {
                "candidate": sliced(grid, pred_new, thresholds, blocks),
                "baseline": sliced(grid, pred_base, thresholds, blocks),
            },
        },
    }
    if production is not None and production.grain != grain:
        report["production_not_comparable"] = (
            f"production has grain {grain_name(production.grain)}, "
            f"candidate {grain_name(grain)}: not comparable"
        )
    elif production is not None:
        zones = grid["zone"].to_numpy()
        pred_prod, _ = production.expected(zones, dates, grid["block"].to_numpy(), weather)
        report["production"] = score(grid, pred_prod, production.thresholds, outside)
    curves = {
        name: [hit_rate(grid, pred, k / 100, outside) for k in range(1, 51)]
        for name, pred in (("candidate", pred_new), ("baseline", pred_base))
    }
    report["hit_rate_curve"] = {"k_percent": list(range(1, 51)), **curves}
    return EvaluationReport.model_validate(report)
