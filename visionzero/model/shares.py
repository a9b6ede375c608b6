"""The share stage of the crash-risk model: where and when a day's crashes happen.

P(block | day type) x P(zone | block, day type) at the base resolution (`ShareTable`), child
shares down to the finest cells (`fit_children`), and one lookup of every zone at every
resolution (`ZoneTable`). All from a recency-weighted, shrunken history of training days only.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from visionzero.model import features as F
from visionzero.model.config import ModelConfig
from visionzero.model.grain import ancestors
from visionzero.model.hierarchy import ChildShares


@dataclass
class ShareTable:
    """P(block | daytype) [3, B] and P(zone | block, daytype) [Z, B, 3] with the zone list."""

    zones: list[str]
    p_block: np.ndarray
    p_zone: np.ndarray
    unknown_zone_share: float

    @classmethod
    def fit(cls, slots: pd.DataFrame, train_days: pd.DatetimeIndex, cfg: ModelConfig) -> ShareTable:
        """Recency-weighted shares of the training days' zone-slot counts, each level shrunk
        toward the coarser one, so a zone seen once is not certain to crash there again."""
        slots = slots[slots["date"].isin(train_days)]
        zones = sorted(slots["zone"].unique())
        age = (train_days.max() - slots["date"]).dt.days.to_numpy()
        weight = 0.5 ** (age / cfg.share_halflife_days) * slots["count"].to_numpy()
        z_index = pd.Index(zones).get_indexer(slots["zone"])
        dt = F.daytype(slots["date"])
        counts = np.zeros((len(zones), cfg.grain.n_blocks, 3))
        np.add.at(counts, (z_index, slots["block"].to_numpy(), dt), weight)
        per_block_dt = counts.sum(axis=0)  # [B, 3]
        p_block = (per_block_dt / per_block_dt.sum(axis=0, keepdims=True)).T  # [3, B]
        zone_total = counts.sum(axis=(1, 2))
        p_z = zone_total / zone_total.sum()  # [Z]
        zb = counts.sum(axis=2)  # [Z, B]
        k1 = cfg.zone_prior_strength
        p_zb = (zb + k1 * p_z[:, None]) / (zb.sum(axis=0, keepdims=True) + k1)  # [Z, B]
        k2 = cfg.daytype_prior_strength
        p_zbd = (counts + k2 * p_zb[:, :, None]) / (counts.sum(axis=0, keepdims=True) + k2)
        return cls(
            zones=zones, p_block=p_block, p_zone=p_zbd, unknown_zone_share=float(p_zbd.min())
        )

    def share(self, zone_idx: np.ndarray, block: np.ndarray, dtype: np.ndarray) -> np.ndarray:
        known = zone_idx >= 0
        out = np.full(len(zone_idx), self.unknown_zone_share)
        out[known] = self.p_zone[zone_idx[known], block[known], dtype[known]]
        return out * self.p_block[dtype, block]


def fit_children(
    crashes: pd.DataFrame, train_days: pd.DatetimeIndex, cfg: ModelConfig, base_zones: list[str]
) -> list[ChildShares]:
    """Child shares one resolution at a time, from the base zones down to the finest cells, on the
    timed crashes of training days only."""
    rows = crashes[crashes["crash_date"].isin(train_days) & (crashes["block"] >= 0)]
    age = (train_days.max() - rows["crash_date"]).dt.days.to_numpy()
    weights = 0.5 ** (age / cfg.child_halflife_days)
    finest = rows["cell"].to_numpy()
    levels: list[ChildShares] = []
    parents = base_zones
    for resolution in range(cfg.resolution + 1, cfg.finest_resolution + 1):
        level = ChildShares.fit(
            parents,
            ancestors(finest, resolution),
            rows["block"].to_numpy(),
            weights,
            cfg.grain.n_blocks,
            cfg.child_zone_strength,
            cfg.child_block_strength,
            cfg.child_neighbour_weight,
        )
        levels.append(level)
        parents = level.zones
    return levels


@dataclass
class ZoneTable:
    """Every zone the model answers for, at every resolution, in one lookup: the row of its base
    zone in the share table and the product of its child shares per block (1 for a base zone)."""

    row_of: dict[str, int]
    resolution: np.ndarray  # [N]
    base_rows: np.ndarray  # [N]
    factor: np.ndarray  # [N, B]

    @classmethod
    def build(cls, shares: ShareTable, children: list[ChildShares], resolution: int) -> ZoneTable:
        n_blocks = shares.p_zone.shape[1]
        zones = list(shares.zones)
        base = np.arange(len(zones))
        factor = np.ones((len(zones), n_blocks))
        parts = [(np.full(len(zones), resolution), base, factor)]
        for level in children:
            base, factor = base[level.parent_rows], factor[level.parent_rows] * level.share
            zones += level.zones
            parts.append((np.full(len(level.zones), level.resolution), base, factor))
        return cls(
            row_of={zone: row for row, zone in enumerate(zones)},
            resolution=np.concatenate([p[0] for p in parts]),
            base_rows=np.concatenate([p[1] for p in parts]),
            factor=np.concatenate([p[2] for p in parts]),
        )
