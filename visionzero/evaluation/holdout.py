"""The evaluation report: candidate, production and the status quo at every served resolution, on
the latest holdout and on a rolling-origin backtest, with day-block bootstrap intervals.

Like with like: the candidate at the holdout is the fit the trainer made on the training days;
production is its recipe refit on those same days (the served production fit has seen days that
are now the holdout); at earlier origins both recipes are refit on the days before the origin.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from pydantic import BaseModel, ConfigDict

from visionzero.evaluation.backtest import (
    EvaluationConfig,
    Origin,
    backtest_origins,
    not_comparable,
    refit,
)
from visionzero.evaluation.grid import (
    DenseGrid,
    base_expected,
    crash_zones,
    model_expected,
    model_zones,
    status_quo_expected,
)
from visionzero.evaluation.metrics import (
    CURVE_PERCENTS,
    DaySums,
    Interval,
    Scores,
    intervals,
    point_scores,
)
from visionzero.model.context import majority_borough
from visionzero.model.crash_risk import CrashRiskModel, Prepared


class ResolutionResult(BaseModel):
    """One resolution over some days: every role's metrics and the candidate's differences to the
    others (`vs_baseline`, `vs_production`), each with a 95% day-block bootstrap interval."""

    model_config = ConfigDict(ser_json_inf_nan="strings")

    days: int
    zones: int
    zone_slots: int
    crashes_outside_known_zones: float
    roles: dict[str, dict[str, Interval]]
    differences: dict[str, dict[str, Interval]]


class OriginResult(BaseModel):
    """One backtest origin: its windows and every role's point scores per resolution."""

    model_config = ConfigDict(ser_json_inf_nan="strings")

    train_window: list[str]
    train_days: int
    test_window: list[str]
    test_days: int
    scores: dict[str, dict[str, Scores]]  # resolution -> role -> scores


class EvaluationReport(BaseModel):
    """The evaluator artifact. `candidate`, `baseline` and `production` are the holdout scores at
    the served default `resolution`; `holdout` and `backtest` hold every resolution with intervals.

    Production is scored only when its recipe has the candidate's grain; else
    `production_not_comparable` says why."""

    model_config = ConfigDict(ser_json_inf_nan="strings")

    resolution: int
    resolutions: list[int]
    holdout_window: list[str]
    holdout_days: int
    zone_slots: int
    crashes_outside_known_zones: float
    weather_source_share: dict[str, float]
    scored_fit: str
    served_fit: str
    candidate: Scores
    baseline: Scores
    production: Scores | None = None
    production_version: int | None = None
    production_not_comparable: str | None = None
    holdout: dict[str, ResolutionResult]
    origins: list[OriginResult]  # oldest first; the last is the holdout
    backtest: dict[str, ResolutionResult]  # every origin's days pooled
    slices: dict[str, dict[str, dict[str, Scores]]]  # slice kind -> role -> slice value -> scores
    hit_rate_curve: dict[str, list[float]]  # k_percent and one curve per role

    def decisive(self) -> ResolutionResult:
        """What the deploy rule reads: the latest holdout at the served resolution. Its days
        are unseen by every choice; the earlier origins' windows lie inside the training period,
        where tuning folds and default settings were chosen, so the pooled backtest shows
        stability across regimes, not unseen performance."""
        return self.holdout[str(self.resolution)]


def window(days: pd.DatetimeIndex) -> list[str]:
    return [str(days.min().date()), str(days.max().date())]


class Scored:
    """One origin at one resolution: the grid, each role's predictions, day sums and scores."""

    def __init__(
        self,
        prepared: Prepared,
        zones_by_crash: np.ndarray,
        origin: Origin,
        models: dict[str, CrashRiskModel],
        bases: dict[str, np.ndarray],
        resolution: int,
        keep_predictions: bool,
    ) -> None:
        candidate = models["candidate"]
        self.grid = DenseGrid.build(
            prepared,
            zones_by_crash,
            model_zones(candidate, resolution),
            origin.test_days,
            candidate.grain.n_blocks,
        )
        self.predicted = {
            role: model_expected(model, self.grid, prepared.weather, bases[role])
            for role, model in models.items()
        }
        self.predicted["baseline"] = status_quo_expected(
            prepared, zones_by_crash, origin.train_days, self.grid
        )
        self.sums = {role: DaySums.of(self.grid, pred) for role, pred in self.predicted.items()}
        self.thresholds = {
            role: (models.get(role) or candidate).thresholds_at(resolution)
            for role in self.predicted
        }
        self.scores = {
            role: point_scores(self.grid, pred, self.sums[role], self.thresholds[role])
            for role, pred in self.predicted.items()
        }
        if not keep_predictions:  # a resolution-9 origin holds ~100 MB per array
            self.predicted = {}
            self.grid.observed = self.grid.observed[:0]

    def sliced(self, role: str, slice_of_zone: dict[str, str]) -> dict[str, dict[str, Scores]]:
        """Scores per time block and per borough (a zone's majority borough): where the model
        helps and where it does not."""
        grid, pred = self.grid, self.predicted[role]
        labels = np.array([slice_of_zone.get(zone, "UNKNOWN") for zone in grid.zones])
        out: dict[str, dict[str, Scores]] = {"block": {}, "borough": {}}
        for block in range(grid.n_blocks):
            part = DenseGrid(
                grid.resolution,
                grid.zones,
                grid.days,
                grid.observed[:, :, block : block + 1],
                np.zeros(len(grid.days)),
            )
            sub = pred[:, :, block : block + 1]
            out["block"][str(block)] = point_scores(
                part, sub, DaySums.of(part, sub), self.thresholds[role]
            )
        for borough in sorted(set(labels)):
            mask = labels == borough
            zones = [z for z, keep in zip(grid.zones, mask, strict=True) if keep]
            part = DenseGrid(
                grid.resolution,
                zones,
                grid.days,
                grid.observed[:, mask, :],
                np.zeros(len(grid.days)),
            )
            sub = pred[:, mask, :]
            out["borough"][borough] = point_scores(
                part, sub, DaySums.of(part, sub), self.thresholds[role]
            )
        return out


def zone_boroughs(
    prepared: Prepared, zones_by_crash: np.ndarray, train_days: pd.DatetimeIndex
) -> dict[str, str]:
    """Majority borough of a zone's training crashes (crashes without a borough are not counted)."""
    training = prepared.crashes["crash_date"].isin(train_days).to_numpy()
    return majority_borough(zones_by_crash[training], prepared.crashes["borough"][training])


def resolution_result(scored: list[Scored], cfg: EvaluationConfig) -> ResolutionResult:
    """Pool the days of `scored` (one per origin) and bootstrap them, each origin on its own."""
    roles = scored[0].sums.keys()
    pooled = {role: DaySums.concat([s.sums[role] for s in scored]) for role in roles}
    draws = cfg.draws([len(s.grid.days) for s in scored])
    own, differences = intervals(pooled, draws)
    return ResolutionResult(
        days=sum(len(s.grid.days) for s in scored),
        zones=len(scored[-1].grid.zones),
        zone_slots=sum(len(s.grid.days) * len(s.grid.zones) * s.grid.n_blocks for s in scored),
        crashes_outside_known_zones=float(sum(s.grid.outside.sum() for s in scored)),
        roles=own,
        differences=differences,
    )


def score_origins(
    prepared: Prepared,
    origins: list[Origin],
    candidate: CrashRiskModel,
    production: CrashRiskModel | None,
    zones_by_crash: dict[int, np.ndarray],
) -> tuple[dict[int, list[Scored]], np.ndarray]:
    """Every origin (oldest first) at every resolution the candidate serves: the candidate's
    recipe refit before each earlier origin, production's (None: not scored) before each. Also
    the weather source of each holdout day-slot of the candidate."""
    resolutions = candidate.resolutions
    default = resolutions[-1]
    scored: dict[int, list[Scored]] = {r: [] for r in resolutions}
    for origin in origins:
        last = origin is origins[-1]
        models = {"candidate": candidate if last else refit(candidate, prepared, origin.train_days)}
        if production is not None:
            models["production"] = refit(production, prepared, origin.train_days)
        bases, sources = {}, {}
        for role, model in models.items():
            bases[role], sources[role] = base_expected(model, origin.test_days, prepared.weather)
        for r in resolutions:
            keep = last and r == default  # the holdout's slices and curves need the arrays
            scored[r].append(Scored(prepared, zones_by_crash[r], origin, models, bases, r, keep))
    return scored, sources["candidate"]


def holdout_slices(
    holdout: Scored, boroughs: dict[str, str], block_labels: list[str]
) -> dict[str, dict[str, dict[str, Scores]]]:
    """The candidate's and the status quo's holdout scores per time block (named by its hours)
    and per borough."""
    by_role = {role: holdout.sliced(role, boroughs) for role in ("candidate", "baseline")}
    block_label = dict(enumerate(block_labels))
    return {
        "block": {
            role: {block_label[int(k)]: v for k, v in parts["block"].items()}
            for role, parts in by_role.items()
        },
        "borough": {role: parts["borough"] for role, parts in by_role.items()},
    }


def origin_results(origins: list[Origin], scored: dict[int, list[Scored]]) -> list[OriginResult]:
    """Each origin's windows and point scores per resolution, oldest first."""
    return [
        OriginResult(
            train_window=window(origin.train_days),
            train_days=len(origin.train_days),
            test_window=window(origin.test_days),
            test_days=len(origin.test_days),
            scores={str(r): per_origin[i].scores for r, per_origin in scored.items()},
        )
        for i, origin in enumerate(origins)
    ]


def evaluate(
    prepared: Prepared,
    train_days: pd.DatetimeIndex,
    holdout_days: pd.DatetimeIndex,
    candidate: CrashRiskModel,
    production: CrashRiskModel | None,
    production_version: int | None = None,
    cfg: EvaluationConfig | None = None,
) -> EvaluationReport:
    """Candidate, production's recipe and the status quo at every resolution the candidate serves,
    at every backtest origin; the holdout (last origin) also gets slices and hit-rate curves at
    the served default resolution, the finest."""
    cfg = cfg or EvaluationConfig()
    reason = not_comparable(candidate, production) if production is not None else None
    origins = backtest_origins(train_days, holdout_days, cfg)
    resolutions = candidate.resolutions
    zones_by_crash = {r: crash_zones(prepared, r) for r in resolutions}
    scored, sources = score_origins(
        prepared, origins, candidate, production if reason is None else None, zones_by_crash
    )
    default = resolutions[-1]
    holdout = scored[default][-1]
    top = holdout.scores
    boroughs = zone_boroughs(prepared, zones_by_crash[default], train_days)
    all_days = train_days.union(holdout_days)
    return EvaluationReport(
        resolution=default,
        resolutions=resolutions,
        holdout_window=window(holdout_days),
        holdout_days=len(holdout_days),
        zone_slots=holdout.grid.observed.size,
        crashes_outside_known_zones=float(holdout.grid.outside.sum()),
        weather_source_share={s: float(np.mean(sources == s)) for s in np.unique(sources)},
        scored_fit=f"fit on {len(train_days)} complete days {' .. '.join(window(train_days))}",
        served_fit=f"the same recipe refit on all {len(all_days)} complete days "
        f"{' .. '.join(window(all_days))}, holdout included",
        candidate=top["candidate"],
        baseline=top["baseline"],
        production=top.get("production"),
        production_version=production_version,
        production_not_comparable=reason,
        holdout={str(r): resolution_result(scored[r][-1:], cfg) for r in resolutions},
        origins=origin_results(origins, scored),
        backtest={str(r): resolution_result(scored[r], cfg) for r in resolutions},
        slices=holdout_slices(holdout, boroughs, candidate.grain.labels),
        hit_rate_curve={
            "k_percent": CURVE_PERCENTS.tolist(),
            **{role: holdout.sums[role].curve() for role in ("candidate", "baseline")},
        },
    )
