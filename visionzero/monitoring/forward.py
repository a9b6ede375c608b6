"""Forward evaluation: each serving model scored on the complete days it never saw (by default
every day after its training data ended; optionally only after it went live), on every zone-slot
of the full grid, with the status quo alongside.

Crash data lands days after the fact, so every served forecast gets its answer later. The grid is
every zone the stages answer for (a model is judged on all places, not only the ones people asked
about), scored with the evaluation's own code (`DenseGrid`, `DaySums`, `block_bootstrap`,
`intervals`), so a forward number means what the holdout number means.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date
from typing import Literal

import numpy as np
import pandas as pd
from pydantic import BaseModel, ConfigDict, Field

from visionzero.evaluation.grid import (
    DenseGrid,
    base_expected,
    crash_zones,
    model_expected,
    model_zones,
    status_quo_expected,
)
from visionzero.evaluation.metrics import BootstrapConfig, DaySums, Interval, intervals
from visionzero.model.crash_risk import CrashRiskModel, Prepared
from visionzero.platform.stage import STAGES, Stage
from visionzero.rollout.deployment_state import DeploymentState

LIVE_EVENTS = {
    Stage.PRODUCTION: ("deploy_production", "promote", "rollback"),
    Stage.STAGING: ("deploy_staging",),
}


class ForwardConfig(BootstrapConfig):
    """Which resolutions are scored and how the intervals are drawn (configs/monitoring.yaml
    `parameters.forward`)."""

    resolutions: list[int] = Field(
        [9, 7], min_length=1, description="H3 resolutions scored; the first is the decisive one"
    )
    chunk_days: int = Field(
        31, ge=1, description="days scored at once: bounds memory on the res-9 grid"
    )
    count_from: Literal["training_end", "deployment"] = Field(
        "training_end",
        description="first forward day: after the model's last training day (every day it never "
        "saw: crash data settles for weeks, so a model deployed today has unseen days arriving "
        "soon), or also after the day it went live (only days it served)",
    )


@dataclass(frozen=True)
class StagedModel:
    """A model as it serves: its stage, version and the day it went live (None: unknown, then
    only the day after its training window bounds its forward days)."""

    model: CrashRiskModel
    model_version: int | None
    deployed: date | None


class StageForward(BaseModel):
    """One stage on its forward days: per resolution, the model's and the status quo's metrics
    (`model`, `status_quo`) and the model minus the status quo, each with a 95% interval."""

    model_config = ConfigDict(ser_json_inf_nan="strings")

    model_version: int | None
    deployed: str | None
    training_window: list[str]
    first_day: str  # the first day it can be judged on: after both deployment and training
    days: int
    window: list[str] | None
    metrics: dict[str, dict[str, dict[str, Interval]]]  # resolution -> role -> metric
    vs_status_quo: dict[str, dict[str, Interval]]  # resolution -> metric


class PairedForward(BaseModel):
    """Staging minus production on the days both were live, one bootstrap draw scoring both."""

    model_config = ConfigDict(ser_json_inf_nan="strings")

    days: int
    window: list[str] | None
    differences: dict[str, dict[str, Interval]]  # resolution -> metric


class Unscored(BaseModel):
    """A serving stage the monitor could not score forward (its model would not load)."""

    model_version: int | None
    reason: str


class ForwardReport(BaseModel):
    """The forward_evaluator artifact."""

    model_config = ConfigDict(ser_json_inf_nan="strings")

    resolutions: list[int]
    last_complete_day: str | None
    stages: dict[str, StageForward]
    paired: PairedForward | None = None
    unscored: dict[str, Unscored] = {}  # serving stages left out of `stages`, and why


def deployed_dates(state: DeploymentState) -> dict[Stage, date | None]:
    """The day each serving stage's model went live, from the deployment state's history: the
    latest event that made that version hold its stage."""
    out: dict[Stage, date | None] = {}
    for stage, release in state.serving().items():
        out[stage] = None
        for event in reversed(state.history):
            if event.event in LIVE_EVENTS[stage] and event.model_version == release.model_version:
                out[stage] = pd.Timestamp(event.at).date()
                break
    return out


def training_days(model: CrashRiskModel, prepared: Prepared) -> pd.DatetimeIndex:
    """The complete days inside the model's training window: what its status quo is fit on."""
    start, end = (pd.Timestamp(day) for day in model.meta["training_window"])
    days = pd.DatetimeIndex(prepared.days["date"])
    return days[(days >= start) & (days <= end)]


def forward_days(
    staged: StagedModel, prepared: Prepared, count_from: str = "training_end"
) -> pd.DatetimeIndex:
    """Complete days after its training window ended (and after it went live when counting from
    deployment): days it can only have forecast, never seen."""
    first = first_forward_day(staged, count_from)
    days = pd.DatetimeIndex(prepared.days["date"])
    return days[days >= first].sort_values()


def first_forward_day(staged: StagedModel, count_from: str = "training_end") -> pd.Timestamp:
    floor = pd.Timestamp(staged.model.meta["training_window"][1]) + pd.Timedelta(days=1)
    if staged.deployed is None or count_from == "training_end":
        return floor
    # the deployment day is served partly by the model before: the first full day counts
    return max(floor, pd.Timestamp(staged.deployed) + pd.Timedelta(days=1))


def shared_zones(models: list[CrashRiskModel], resolution: int) -> list[str]:
    """The grid's zones: the first model's zones in its own order (so one model alone is scored
    exactly as the evaluator scores it), then any zone only another model answers for."""
    zones = model_zones(models[0], resolution)
    seen = set(zones)
    for model in models[1:]:
        extra = [zone for zone in model_zones(model, resolution) if zone not in seen]
        zones += extra
        seen.update(extra)
    return zones


def day_sums(
    prepared: Prepared,
    zones_by_crash: np.ndarray,
    zones: list[str],
    days: pd.DatetimeIndex,
    roles: dict[str, CrashRiskModel | pd.DatetimeIndex],
    cfg: ForwardConfig,
) -> dict[str, DaySums]:
    """Each role's day sums on the grid of `zones` x `days`, computed in chunks of days. A role is
    a model, or the training days of a status quo."""
    n_blocks = next(r for r in roles.values() if isinstance(r, CrashRiskModel)).grain.n_blocks
    parts: dict[str, list[DaySums]] = {role: [] for role in roles}
    for start in range(0, len(days), cfg.chunk_days):
        chunk = days[start : start + cfg.chunk_days]
        grid = DenseGrid.build(prepared, zones_by_crash, zones, chunk, n_blocks)
        for role, source in roles.items():
            if isinstance(source, CrashRiskModel):
                base, _ = base_expected(source, chunk, prepared.weather)
                predicted = model_expected(source, grid, prepared.weather, base)
            else:
                predicted = status_quo_expected(prepared, zones_by_crash, source, grid)
            parts[role].append(DaySums.of(grid, predicted))
    return {role: DaySums.concat(sums) for role, sums in parts.items()}


def window(days: pd.DatetimeIndex) -> list[str] | None:
    return [str(days.min().date()), str(days.max().date())] if len(days) else None


def forward_evaluation(
    prepared: Prepared, staged: dict[str, StagedModel], cfg: ForwardConfig | None = None
) -> ForwardReport:
    """Score every stage on its forward days, and staging against production on the days both
    were live (paired: one bootstrap draw of days scores both)."""
    cfg = cfg or ForwardConfig()
    stages = [stage for stage in STAGES if stage in staged]
    models = [staged[stage].model for stage in stages]
    zones_by_crash = {r: crash_zones(prepared, r) for r in cfg.resolutions}
    grid_zones = {r: shared_zones(models, r) for r in cfg.resolutions} if models else {}
    days_of = {stage: forward_days(staged[stage], prepared, cfg.count_from) for stage in stages}
    all_days = pd.DatetimeIndex(prepared.days["date"])
    report = ForwardReport(
        resolutions=list(cfg.resolutions),
        last_complete_day=str(all_days.max().date()) if len(all_days) else None,
        stages={},
    )
    for stage in stages:
        model, days = staged[stage].model, days_of[stage]
        metrics: dict[str, dict[str, dict[str, Interval]]] = {}
        versus: dict[str, dict[str, Interval]] = {}
        if len(days):
            draws = cfg.draws([len(days)])
            for r in cfg.resolutions:
                sums = day_sums(
                    prepared,
                    zones_by_crash[r],
                    grid_zones[r],
                    days,
                    {"candidate": model, "baseline": training_days(model, prepared)},
                    cfg,
                )
                own, differences = intervals(sums, draws)
                metrics[str(r)] = {"model": own["candidate"], "status_quo": own["baseline"]}
                versus[str(r)] = differences["vs_baseline"]
        report.stages[stage] = StageForward(
            model_version=staged[stage].model_version,
            deployed=str(staged[stage].deployed) if staged[stage].deployed else None,
            training_window=list(model.meta["training_window"]),
            first_day=str(first_forward_day(staged[stage], cfg.count_from).date()),
            days=len(days),
            window=window(days),
            metrics=metrics,
            vs_status_quo=versus,
        )
    if Stage.STAGING in staged and Stage.PRODUCTION in staged:
        both = days_of[Stage.STAGING].intersection(days_of[Stage.PRODUCTION])
        differences: dict[str, dict[str, Interval]] = {}
        if len(both):
            draws = cfg.draws([len(both)])
            for r in cfg.resolutions:
                roles = {
                    "candidate": staged[Stage.STAGING].model,
                    "production": staged[Stage.PRODUCTION].model,
                }
                sums = day_sums(prepared, zones_by_crash[r], grid_zones[r], both, roles, cfg)
                differences[str(r)] = intervals(sums, draws)[1]["vs_production"]
        report.paired = PairedForward(days=len(both), window=window(both), differences=differences)
    return report
