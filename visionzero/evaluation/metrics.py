"""Scores of one predictor on a dense grid, kept as sums per day.

Every headline metric is a ratio of day sums (deviance per zone-slot, crashes in the top k% per
crash, predicted per observed), so a day-block bootstrap only resamples days and re-adds sums:
the intervals cost nothing next to the predictions. QWK is a point estimate only.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from visionzero.model.deviance import unit_poisson_deviance
from visionzero.model.levels import RISK_LEVELS, assign_levels
from visionzero.model.scoring import DenseGrid, top_k_hits

METRIC_KEYS = ["poisson_deviance", "hit_rate_at_10", "hit_rate_at_5", "pai_at_10", "qwk"]
INTERVAL_KEYS = [
    "poisson_deviance",
    "hit_rate_at_10",
    "hit_rate_at_5",
    "pai_at_10",
    "calibration_ratio",
]
CURVE_PERCENTS = np.arange(1, 51)  # the hit-rate curve's k, in percent


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


class Interval(BaseModel):
    """A point estimate with its 95% day-block bootstrap interval."""

    model_config = ConfigDict(ser_json_inf_nan="strings")

    estimate: float
    low: float
    high: float

    def __str__(self) -> str:
        return f"{self.estimate:+.4f} [{self.low:+.4f}, {self.high:+.4f}]"


@dataclass
class DaySums:
    """Per-day sums of one predictor on one grid; concatenating days of several grids pools them."""

    deviance: np.ndarray  # [D] summed unit Poisson deviance
    slots: np.ndarray  # [D] zone-slots
    crashes: np.ndarray  # [D] all timed crashes of the day, those outside the grid's zones too
    observed: np.ndarray  # [D] crashes on the grid
    predicted: np.ndarray  # [D] expected crashes on the grid
    hits: np.ndarray  # [D, len(CURVE_PERCENTS)] crashes in the top k% zones of each block

    @classmethod
    def of(cls, grid: DenseGrid, predicted: np.ndarray) -> DaySums:
        """Top k% ranks zones within each day x block by `predicted` (`top_k_hits`, the tuner's
        count too)."""
        n_days, n_zones, _ = grid.observed.shape
        return cls(
            deviance=unit_poisson_deviance(grid.observed, predicted).sum(axis=(1, 2)),
            slots=np.full(n_days, float(n_zones * grid.n_blocks)),
            crashes=grid.crashes_per_day(),
            observed=grid.observed.sum(axis=(1, 2)),
            predicted=predicted.sum(axis=(1, 2)),
            hits=top_k_hits(grid.observed, predicted, CURVE_PERCENTS / 100),
        )

    @classmethod
    def concat(cls, parts: list[DaySums]) -> DaySums:
        return cls(
            **{f.name: np.concatenate([getattr(p, f.name) for p in parts]) for f in fields(cls)}
        )

    def metrics(self, days: np.ndarray | None = None) -> dict[str, np.ndarray]:
        """The interval metrics over `days` (row indices; [reps, n] for a bootstrap), else all."""

        def total(values: np.ndarray) -> np.ndarray:
            return values.sum() if days is None else values[days].sum(axis=-1)

        crashes = total(self.crashes)
        hit10 = total(self.hits[:, 9]) / crashes
        return {
            "poisson_deviance": total(self.deviance) / total(self.slots),
            "hit_rate_at_10": hit10,
            "hit_rate_at_5": total(self.hits[:, 4]) / crashes,
            "pai_at_10": hit10 / 0.10,
            "calibration_ratio": total(self.predicted) / total(self.observed),
        }

    def curve(self) -> list[float]:
        """Hit rate at k = 1..50% of zone-slots."""
        return (self.hits.sum(axis=0) / self.crashes.sum()).tolist()


def quadratic_kappa(realised: np.ndarray, predicted: np.ndarray) -> float:
    """Cohen's kappa with quadratic weights over the five levels (0 when both are constant)."""
    k = len(RISK_LEVELS)
    if len(np.unique(realised)) == 1 and len(np.unique(predicted)) == 1:
        return 0.0
    confusion = np.bincount(realised * k + predicted, minlength=k * k).reshape(k, k).astype(float)
    confusion /= confusion.sum()
    expected = np.outer(confusion.sum(axis=1), confusion.sum(axis=0))
    weights = np.subtract.outer(np.arange(k), np.arange(k)) ** 2
    return float(1.0 - (weights * confusion).sum() / (weights * expected).sum())


def point_scores(
    grid: DenseGrid, predicted: np.ndarray, sums: DaySums, thresholds: list[float]
) -> Scores:
    """The point scores of a predictor: its day sums over every day, plus QWK of the levels cut on
    the grid resolution's thresholds against the realised counts' levels."""
    values = {key: float(value) for key, value in sums.metrics().items()}
    qwk = quadratic_kappa(
        assign_levels(grid.observed.ravel(), thresholds),
        assign_levels(predicted.ravel(), thresholds),
    )
    return Scores(
        **values,
        qwk=qwk,
        predicted_total=float(sums.predicted.sum()),
        observed_total=float(sums.observed.sum()),
    )


class BootstrapConfig(BaseModel):
    """How the intervals are drawn: shared by the evaluation (training run) and the forward
    evaluation (monitoring run), so a holdout interval and a forward interval mean the same."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    bootstrap_reps: int = Field(1000, ge=100, description="day-block bootstrap draws")
    block_days: int = Field(
        7, ge=1, description="consecutive days per bootstrap block: keeps weekly dependence"
    )
    seed: int = Field(7, description="seed of the bootstrap")

    def draws(self, days_per_part: list[int]) -> np.ndarray:
        return block_bootstrap(days_per_part, self.block_days, self.bootstrap_reps, self.seed)


def block_bootstrap(days_per_part: list[int], block_days: int, reps: int, seed: int) -> np.ndarray:
    """[reps, total days] row indices: each part (a holdout or a backtest origin) resampled on its
    own, in runs of `block_days` consecutive days (moving blocks keep weekly and weather
    dependence inside a draw), then concatenated."""
    rng = np.random.default_rng(seed)
    draws, offset = [], 0
    for n_days in days_per_part:
        length = min(block_days, n_days)
        n_blocks = -(-n_days // length)
        starts = rng.integers(0, n_days - length + 1, size=(reps, n_blocks))
        rows = (starts[:, :, None] + np.arange(length)).reshape(reps, -1)[:, :n_days]
        draws.append(rows + offset)
        offset += n_days
    return np.concatenate(draws, axis=1)


def intervals(
    sums: dict[str, DaySums], draws: np.ndarray
) -> tuple[dict[str, dict[str, Interval]], dict[str, dict[str, Interval]]]:
    """Each role's metrics with intervals, and the candidate's differences to every other role
    (`vs_<role>`), paired: one draw of days scores all roles."""
    point = {role: s.metrics() for role, s in sums.items()}
    boot = {role: s.metrics(draws) for role, s in sums.items()}

    def interval(estimate: float, samples: np.ndarray) -> Interval:
        low, high = np.nanpercentile(samples, [2.5, 97.5])
        return Interval(estimate=float(estimate), low=float(low), high=float(high))

    own = {
        role: {key: interval(point[role][key], boot[role][key]) for key in INTERVAL_KEYS}
        for role in sums
    }
    differences = {
        f"vs_{role}": {
            key: interval(
                point["candidate"][key] - point[role][key],
                boot["candidate"][key] - boot[role][key],
            )
            for key in INTERVAL_KEYS
        }
        for role in sums
        if role != "candidate"
    }
    return own, differences
