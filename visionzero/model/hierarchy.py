"""Finer zones inside the base zones: P(child | parent, block), one H3 resolution at a time.

A small cell's share of its parent is stable over years, while its own daily counts are mostly
zero. So a child's share is estimated from long, recency-weighted history and shrunk
(empirical Bayes, pseudo-crashes) toward a prior split of its parent, and a block-specific
share is shrunk toward the child's all-day share. The prior mixes the uniform split with the
split of the children's ring-1 H3 neighbourhoods (neighbours' crashes, across parents): a cell
with no crashes of its own beside busy streets is likelier to have some than one beside a park.
Each parent's children sum to exactly 1 in every block, so finer predictions always add up to
the coarser ones.
"""

from __future__ import annotations

from dataclasses import dataclass

import h3
import numpy as np
import pandas as pd


@dataclass
class ChildShares:
    """One resolution step: `zones` (children of every parent, grouped by parent) and their shares.

    `parent_rows[i]` is the row of child i's parent in the parent level's zone list and
    `share[i, b]` is P(child i | its parent, block b)."""

    resolution: int
    zones: list[str]
    parent_rows: np.ndarray  # [Z] int
    share: np.ndarray  # [Z, B]

    @classmethod
    def fit(
        cls,
        parents: list[str],
        child_cells: np.ndarray,
        blocks: np.ndarray,
        weights: np.ndarray,
        n_blocks: int,
        zone_strength: float,
        block_strength: float,
        neighbour_weight: float = 0.0,
    ) -> ChildShares:
        """Shares of the children of `parents` from crashes at `child_cells` (one per crash).

        `zone_strength` pseudo-crashes pull a child's all-day share toward its prior: 1/(number of
        children) mixed, with `neighbour_weight`, with its neighbourhood's share of its siblings'
        neighbourhoods; `block_strength` pull its share in a block toward its all-day share.
        Crashes whose cell has no parent among `parents` count only as neighbours."""
        resolution = h3.get_resolution(parents[0]) + 1
        kids = [h3.cell_to_children(parent, resolution) for parent in parents]
        zones = [child for group in kids for child in group]
        parent_rows = np.repeat(np.arange(len(parents)), [len(group) for group in kids])
        row_of = pd.Index(zones)
        rows = row_of.get_indexer(child_cells)
        inside = rows >= 0
        counts = np.zeros((len(zones), n_blocks))
        np.add.at(
            counts,
            (rows[inside], np.asarray(blocks, dtype=np.int64)[inside]),
            np.asarray(weights, dtype=float)[inside],
        )
        siblings = np.bincount(parent_rows)[parent_rows].astype(float)  # children of my parent

        def within_parent(values: np.ndarray) -> np.ndarray:
            """Sum of `values` over each child's siblings (its parent's children), per column."""
            totals = np.zeros((len(parents), values.shape[1]))
            np.add.at(totals, parent_rows, values)
            return totals[parent_rows]

        all_day = counts.sum(axis=1, keepdims=True)
        target = 1 / siblings[:, None]  # sums to 1 over each parent's children, as does split
        if neighbour_weight > 0:
            around = neighbourhood_counts(zones, child_cells, weights)[:, None]
            total = within_parent(around)
            split = np.divide(around, total, out=target.copy(), where=total > 0)
            target = (1 - neighbour_weight) * target + neighbour_weight * split
        prior = (all_day + zone_strength * target) / (within_parent(all_day) + zone_strength)
        share = (counts + block_strength * prior) / (within_parent(counts) + block_strength)
        return cls(resolution=resolution, zones=zones, parent_rows=parent_rows, share=share)

    def to_json(self) -> dict:
        return {
            "resolution": self.resolution,
            "zones": self.zones,
            "parent_rows": self.parent_rows.tolist(),
            "share": self.share.tolist(),
        }

    @classmethod
    def from_json(cls, data: dict) -> ChildShares:
        return cls(
            resolution=int(data["resolution"]),
            zones=list(data["zones"]),
            parent_rows=np.asarray(data["parent_rows"], dtype=np.int64),
            share=np.asarray(data["share"], dtype=float),
        )


def neighbourhood_counts(zones: list[str], cells: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """Weighted crashes in the six ring-1 neighbours of each zone (itself excluded), wherever
    those neighbours' parents are."""
    per_cell = pd.Series(np.asarray(weights, dtype=float), index=pd.Index(cells, dtype=object))
    per_cell = per_cell.groupby(level=0).sum()
    rings = [[cell for cell in h3.grid_disk(zone, 1) if cell != zone] for zone in zones]
    found = per_cell.index.get_indexer([cell for ring in rings for cell in ring])
    values = np.append(per_cell.to_numpy(), 0.0)[found]  # found -1 (no crashes): the 0
    owner = np.repeat(np.arange(len(zones)), [len(ring) for ring in rings])
    return np.bincount(owner, weights=values, minlength=len(zones))
