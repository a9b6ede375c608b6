"""The model's grain: an H3 zone at one resolution x a time block of a fixed number of hours.

Training, evaluation and serving derive zones and blocks from one Grain so they cannot disagree.
"""

from __future__ import annotations

from dataclasses import dataclass

import h3
import numpy as np

H3_RESOLUTIONS = range(16)


@dataclass(frozen=True)
class Grain:
    resolution: int  # H3 resolution of a zone
    block_hours: int  # length of a time block; blocks start at midnight

    def __post_init__(self) -> None:
        if self.resolution not in H3_RESOLUTIONS:
            raise ValueError(f"resolution must be an H3 resolution 0..15, got {self.resolution}")
        if self.block_hours not in range(1, 25) or 24 % self.block_hours:
            raise ValueError(f"block_hours must divide 24, got {self.block_hours}")

    @property
    def n_blocks(self) -> int:
        return 24 // self.block_hours

    @property
    def spans(self) -> list[tuple[int, int]]:
        """[start hour, end hour) of each block, in block order."""
        return [(start, start + self.block_hours) for start in range(0, 24, self.block_hours)]

    @property
    def labels(self) -> list[str]:
        """Readable block names ("04-08") for reports, in block order."""
        return [f"{start:02d}-{end:02d}" for start, end in self.spans]

    def block_of_minute(self, minutes: np.ndarray) -> np.ndarray:
        """Block of each minute of the day (0..1439)."""
        return (np.asarray(minutes) // 60 // self.block_hours).astype(int)

    def block_of_datetime(self, stamps: np.ndarray) -> np.ndarray:
        """Block of each local datetime64 (any unit): its minute of the day, then its block."""
        minutes = np.asarray(stamps, dtype="datetime64[m]")
        return self.block_of_minute((minutes - minutes.astype("datetime64[D]")).astype(np.int64))

    def zones_of(self, lat: np.ndarray, lon: np.ndarray, finest: int | None = None) -> np.ndarray:
        """Zone of each point, the one mapping used in training and serving; "" where a coordinate
        is missing. With `finest`, the ancestor of the point's cell at that finer resolution: H3
        cells nest by index, not exactly in space, so only this way does a point's coarse zone
        contain its fine zone, as the child shares (and their sums) assume."""
        lat = np.asarray(lat, dtype=float)
        lon = np.asarray(lon, dtype=float)
        ok = np.isfinite(lat) & np.isfinite(lon)
        at = max(finest or self.resolution, self.resolution)
        out = np.full(lat.shape, "", dtype=object)
        out[ok] = [h3.latlng_to_cell(a, b, at) for a, b in zip(lat[ok], lon[ok], strict=True)]
        return out if at == self.resolution else ancestors(out, self.resolution)


def ancestors(cells: np.ndarray, resolution: int) -> np.ndarray:
    """Each H3 cell's ancestor at `resolution` (a cell already that coarse, or "", stays as it
    is); h3 runs once per distinct cell."""
    parent = {
        cell: h3.cell_to_parent(cell, resolution)
        if cell and h3.get_resolution(cell) > resolution
        else cell
        for cell in set(cells)
    }
    return np.array([parent[cell] for cell in cells], dtype=object)
