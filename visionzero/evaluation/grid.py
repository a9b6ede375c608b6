"""Dense zone-slot grids at any served resolution: observed crashes as an array [day, zone, block]
and every predictor's expected counts on the same cells.

Dense arrays because a resolution-9 holdout has millions of zone-slots: ranking, deviance and the
bootstrap are then array sums, and per-day sums are all the bootstrap needs.
"""

from __future__ import annotations

from dataclasses import dataclass

import h3
import numpy as np
import pandas as pd

from visionzero.model.crash_risk import CrashRiskModel, Prepared, zone_slot_grid
from visionzero.model.grain import ancestors


def crash_zones(prepared: Prepared, resolution: int) -> np.ndarray:
    """Zone of each crash row at `resolution`: its finest cell's ancestor, the mapping training
    and serving use (`Grain.zones_of`)."""
    return ancestors(prepared.crashes["cell"].to_numpy(), resolution)


def model_zones(model: CrashRiskModel, resolution: int) -> list[str]:
    """Every zone the model answers for at one resolution, in its zone table's order."""
    table = model.zone_table
    return [zone for zone, row in table.row_of.items() if table.resolution[row] == resolution]


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
        zones: list[str],
        days: pd.DatetimeIndex,
        n_blocks: int,
    ) -> DenseGrid:
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


def status_quo_expected(
    prepared: Prepared, zones_by_crash: np.ndarray, train_days: pd.DatetimeIndex, grid: DenseGrid
) -> np.ndarray:
    """The status quo at the grid's resolution: mean crashes per zone x weekday x block over the
    training days (zero for a zone without training crashes). [D, Z, B]"""
    crashes = prepared.crashes
    mine = crashes["crash_date"].isin(train_days).to_numpy() & (crashes["block"].to_numpy() >= 0)
    zone_rows = pd.Index(grid.zones).get_indexer(zones_by_crash[mine])
    inside = zone_rows >= 0
    weekday = crashes["crash_date"].dt.dayofweek.to_numpy()[mine][inside]
    blocks = crashes["block"].to_numpy()[mine][inside]
    totals = np.zeros((len(grid.zones), 7, grid.n_blocks))
    np.add.at(totals, (zone_rows[inside], weekday, blocks), 1.0)
    days_per_weekday = np.bincount(train_days.dayofweek, minlength=7).astype(float)
    mean = np.divide(
        totals,
        days_per_weekday[None, :, None],
        out=np.zeros_like(totals),
        where=days_per_weekday[None, :, None] > 0,
    )
    return mean[:, grid.days.dayofweek.to_numpy(), :].transpose(1, 0, 2)


def base_expected(
    model: CrashRiskModel, days: pd.DatetimeIndex, weather: pd.DataFrame
) -> tuple[np.ndarray, np.ndarray]:
    """A model's expected counts on its base zones [D, Zbase, B] and each day's weather source:
    every finer resolution reuses them, so the volume model runs once per origin."""
    base_zones = model.shares.zones
    base_grid = zone_slot_grid(base_zones, days, model.grain)
    base, source = model.expected(
        base_grid["zone"].to_numpy(),
        pd.DatetimeIndex(base_grid["date"]),
        base_grid["block"].to_numpy(),
        weather,
    )
    n_blocks = model.grain.n_blocks
    return base.reshape(len(days), len(base_zones), n_blocks), source.reshape(len(days), -1)[:, 0]


def model_expected(
    model: CrashRiskModel, grid: DenseGrid, weather: pd.DataFrame, base: np.ndarray
) -> np.ndarray:
    """A model's expected counts on the grid [D, Z, B] from its base-zone counts (`base_expected`):
    a finer zone is its base zone's count times its child shares, exactly what serving computes."""
    n_days, n_blocks = len(grid.days), grid.n_blocks
    rows = model.zone_index(np.asarray(grid.zones, dtype=object))
    known = rows >= 0
    table = model.zone_table
    out = np.empty((n_days, len(grid.zones), n_blocks))
    out[:, known, :] = base[:, table.base_rows[rows[known]], :] * table.factor[rows[known]][None]
    if not known.all():  # zones this model never saw: its own unknown-zone answer
        unknown = [zone for zone, row in zip(grid.zones, rows, strict=True) if row < 0]
        long = zone_slot_grid(unknown, grid.days, model.grain)
        values, _ = model.expected(
            long["zone"].to_numpy(),
            pd.DatetimeIndex(long["date"]),
            long["block"].to_numpy(),
            weather,
        )
        out[:, ~known, :] = values.reshape(n_days, len(unknown), n_blocks)
    return out
