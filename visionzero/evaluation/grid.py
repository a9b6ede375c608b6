"""Every predictor's expected counts on the cells of a dense zone-slot grid at any served
resolution; the grid of observed crashes itself (`DenseGrid`) is the model stage's
(`model/scoring.py`), shared with the tuner.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from visionzero.model.crash_risk import CrashRiskModel, Prepared, zone_slot_grid
from visionzero.model.grain import ancestors
from visionzero.model.scoring import DenseGrid


def crash_zones(prepared: Prepared, resolution: int) -> np.ndarray:
    """Zone of each crash row at `resolution`: its finest cell's ancestor, the mapping training
    and serving use (`Grain.zones_of`)."""
    return ancestors(prepared.crashes["cell"].to_numpy(), resolution)


def model_zones(model: CrashRiskModel, resolution: int) -> list[str]:
    """Every zone the model answers for at one resolution, in its zone table's order."""
    table = model.zone_table
    return [zone for zone, row in table.row_of.items() if table.resolution[row] == resolution]


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
