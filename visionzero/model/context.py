"""What the people-facing answers need besides the forecast, fixed at training time and saved with
the model (a Bento carries no crash data): each zone's observed crashes by block, borough outlines
to draw the city without map tiles, and each season's spread of daily volumes to say whether a
day is a quiet or a bad one.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import h3
import numpy as np
import pandas as pd

from visionzero.model.grain import ancestors
from visionzero.model.levels import QUINTILES

CONTEXT_FILE = "context.json"
# Borough outlines are drawn from res-8 cells (~0.7 km2): res 9 is ragged, res 7 too coarse. A cell
# needs a few crashes to vote, so a stray mis-boroughed crash draws no island.
OUTLINE_RESOLUTION = 8
OUTLINE_MIN_CRASHES = 3
SEASON_DAYS = 365  # the daily volumes a day is compared with: the training window's last year


def majority_borough(zones: np.ndarray, boroughs: pd.Series) -> dict[str, str]:
    """Each zone's most frequent borough among its crashes (crashes without one are not counted)."""
    known = boroughs.notna().to_numpy()
    frame = pd.DataFrame({"zone": zones[known], "borough": boroughs.to_numpy()[known]})
    counts = frame.groupby(["zone", "borough"]).size().rename("n").reset_index()
    top = counts.sort_values(["zone", "n", "borough"], ascending=[True, False, True])
    return dict(top.drop_duplicates("zone")[["zone", "borough"]].itertuples(index=False))


def borough_outlines(cells: np.ndarray, boroughs: pd.Series) -> dict:
    """A GeoJSON FeatureCollection of borough outlines: the union of the res-8 cells whose crashes
    are mostly in that borough (coordinates rounded to ~1 m)."""
    coarse = ancestors(cells, OUTLINE_RESOLUTION)
    enough = pd.Series(coarse).value_counts()
    enough = set(enough[enough >= OUTLINE_MIN_CRASHES].index) - {""}
    by_cell = majority_borough(coarse, boroughs)
    features = []
    for name in sorted(set(by_cell.values())):
        mine = [cell for cell, borough in by_cell.items() if borough == name and cell in enough]
        if not mine:
            continue
        geometry = h3.cells_to_geo(mine)
        features.append(
            {
                "type": "Feature",
                "properties": {"name": name},
                "geometry": {
                    "type": geometry["type"],
                    "coordinates": _rounded(geometry["coordinates"]),
                },
            }
        )
    return {"type": "FeatureCollection", "features": features}


def _rounded(coordinates: list | tuple | float) -> list | float:
    if isinstance(coordinates, float):
        return round(coordinates, 5)
    return [_rounded(part) for part in coordinates]


def season_cuts(day_volumes: pd.Series) -> dict[str, list[float]]:
    """Quintile cuts of the predicted daily volume per calendar month, each over that month and its
    two neighbours (a season), so December is compared with winter days, not with June. Equal
    cuts are kept (a model whose volume barely moves): a day then takes the highest level it
    reaches, as assign_levels reads them."""
    months = day_volumes.index.month.to_numpy()
    out = {}
    for month in range(1, 13):
        season = {(month - 2) % 12 + 1, month, month % 12 + 1}
        in_season = day_volumes.to_numpy()[np.isin(months, list(season))]
        out[str(month)] = np.quantile(in_season, QUINTILES).tolist()
    return out


@dataclass
class ModelContext:
    history_days: list[str]  # first and last training day
    history_day_count: int
    history: dict[str, list[int]]  # zone (every served resolution) -> crashes per block
    boroughs: dict  # GeoJSON FeatureCollection
    day_cuts: dict[str, list[float]]  # month -> quintile cuts of that season's daily volume

    @classmethod
    def build(
        cls,
        crashes: pd.DataFrame,
        train_days: pd.DatetimeIndex,
        resolutions: list[int],
        n_blocks: int,
        day_volumes: pd.Series,
    ) -> ModelContext:
        """From the timed, geocoded crashes of the training days (columns cell, block, borough)."""
        rows = crashes[crashes["crash_date"].isin(train_days) & (crashes["block"] >= 0)]
        cells = rows["cell"].to_numpy()
        history: dict[str, list[int]] = {}
        for resolution in resolutions:
            counts = (
                pd.DataFrame({"zone": ancestors(cells, resolution), "block": rows["block"]})
                .groupby(["zone", "block"])
                .size()
                .unstack(fill_value=0)
                .reindex(columns=range(n_blocks), fill_value=0)
            )
            history.update(zip(counts.index, counts.to_numpy().tolist(), strict=True))
        return cls(
            history_days=[str(train_days.min().date()), str(train_days.max().date())],
            history_day_count=len(train_days),
            history=history,
            boroughs=borough_outlines(cells, rows["borough"]),
            day_cuts=season_cuts(day_volumes),
        )

    def save(self, directory: Path) -> None:
        (directory / CONTEXT_FILE).write_text(json.dumps(self.__dict__))

    @classmethod
    def load(cls, directory: Path) -> ModelContext | None:
        """None for a model saved before the context existed: its answers say so."""
        path = directory / CONTEXT_FILE
        return cls(**json.loads(path.read_text())) if path.exists() else None
