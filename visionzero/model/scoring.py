"""What a crash forecast is scored against, once for the tuner's CV and the evaluation: observed
crashes on a dense grid [day, zone, block] and the top-k hit count.

It sits in the model stage because the tuner is its lowest user; the evaluation imports it from
here, so `hit_rate_at_10` has one definition whether it is a CV objective or a holdout score.
Dense arrays because a resolution-9 holdout has millions of zone-slots: ranking, deviance and the
bootstrap are then array sums, and per-day sums are all the bootstrap needs.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import h3
import numpy as np
import pandas as pd

from visionzero.model.crash_risk import Prepared


def top_k_hits(
    observed: np.ndarray, ranking: np.ndarray, fractions: Sequence[float] | np.ndarray
) -> np.ndarray:
    """[D, len(fractions)]: each day's observed crashes in the top ceil(k x zones) zones of each
    block, summed over blocks. Zones are ranked by `ranking` [D, Z, B] (highest first) within each
    date x block, ties broken by zone order, so equal rankings always pick the same zones."""
    n_zones = observed.shape[1]
    order = np.argsort(-ranking, axis=1, kind="stable")
    ranked = np.take_along_axis(observed, order, axis=1).cumsum(axis=1)
    top = np.ceil(np.asarray(fractions) * n_zones).astype(int) - 1
    return ranked[:, top, :].sum(axis=2)


@dataclass
class DenseGrid:
    """Timed, geocoded crashes of some days on a fixed zone list at one resolution."""

    resolution: int
    zones: list[str]
    days: pd.DatetimeIndex
    observed: np.ndarray  # [D, Z, B] crash counts
    outside: np.ndarray  # [D] crashes of the day in no zone of the list: misses for every ranking

    @property
    def n_blocks(self) -> int:
        return self.observed.shape[2]

    @classmethod
    def build(
        cls,
        prepared: Prepared,
        zones_by_crash: np.ndarray,
        zones: Sequence[str],
        days: pd.DatetimeIndex,
        n_blocks: int,
    ) -> DenseGrid:
        """The crashes of `days` with a time block counted per day x zone x block; `zones_by_crash`
        is each crash row's zone at the grid's resolution."""
        crashes = prepared.crashes
        day_rows = days.get_indexer(crashes["crash_date"])
        mine = (day_rows >= 0) & (crashes["block"].to_numpy() >= 0)
        zone_rows = pd.Index(zones).get_indexer(zones_by_crash[mine])
        day_rows, blocks = day_rows[mine], crashes["block"].to_numpy()[mine]
        inside = zone_rows >= 0
        observed = np.zeros((len(days), len(zones), n_blocks))
        np.add.at(observed, (day_rows[inside], zone_rows[inside], blocks[inside]), 1.0)
        outside = np.bincount(day_rows[~inside], minlength=len(days)).astype(float)
        resolution = h3.get_resolution(zones[0])
        return cls(resolution, list(zones), days, observed, outside)

    def crashes_per_day(self) -> np.ndarray:
        """[D] every timed crash of each day, those outside the zones too: the denominator of
        every hit rate, so a zone list that drops crashes cannot raise it."""
        return self.observed.sum(axis=(1, 2)) + self.outside

    def hit_rate(self, ranking: np.ndarray, fraction: float) -> float:
        """Share of all the grid's crashes in the top `fraction` of zones of each date x block
        under `ranking` [D, Z, B]; NaN without crashes."""
        total = self.crashes_per_day().sum()
        if not total:
            return float("nan")
        return float(top_k_hits(self.observed, ranking, [fraction]).sum() / total)
