"""How a build writes the data folder: all or nothing, and only what changed.

A build writes new files into a staging folder beside data/, hard-links every partition it did not
rewrite into it, and swaps it in by renaming. Until the swap a failing or killed build has changed
nothing; the swap costs the same whatever the dataset's size, and an unchanged partition keeps its
bytes and inode, so DVC does not hash it again.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq

from visionzero.data.partitions import (
    API_ROWS,
    CRASHES,
    month_keys,
    partition_file,
    partition_keys,
    write_partition,
)
from visionzero.data.validation import crash_days

PARTITIONED = (CRASHES, API_ROWS)


@dataclass(frozen=True)
class ApiInput:
    """API rows a build merges: one fetch (the incremental one or a backfill window). `load` reads
    them when they are merged, so a backfill's windows are never all in memory at once."""

    name: str
    load: Callable[[], pd.DataFrame]  # raw rows, CSV columns, strings
    malformed: pd.DataFrame = field(
        default_factory=lambda: pd.DataFrame(columns=["page", "record"])
    )
    judged: pd.DatetimeIndex = field(default_factory=lambda: pd.DatetimeIndex([]))  # settled
    # days the fetch received in full
    ledger: dict | None = None  # a backfill window's record, kept in the manifest once merged


def staging_dir(data_dir: Path, role: str) -> Path:
    return data_dir.with_name(f".{data_dir.name}.{role}")


def recover(data_dir: Path) -> None:
    """Undo what a build that died while committing left: its staging folder, or a swap cut
    between its two renames (the previous data goes back)."""
    previous = staging_dir(data_dir, "previous")
    if previous.exists() and not data_dir.exists():
        previous.rename(data_dir)
    shutil.rmtree(previous, ignore_errors=True)
    shutil.rmtree(staging_dir(data_dir, "staging"), ignore_errors=True)


class Staging:
    """The next version of data_dir, built beside it. Partitions written or removed here replace
    data_dir's; every other partition is carried over by `commit`; plain files (complete days,
    quarantine, ...) are written in full by every build."""

    def __init__(self, data_dir: Path) -> None:
        recover(data_dir)
        self.data_dir = data_dir
        self.folder = staging_dir(data_dir, "staging")
        self.folder.mkdir(parents=True)
        self.replaced: dict[str, set[str]] = {kind: set() for kind in PARTITIONED}

    def current(self, kind: str, key: str) -> Path | None:
        """Where partition `key` stands now: rewritten by this build, or as committed."""
        if key in self.replaced[kind]:
            path = partition_file(self.folder, kind, key)
            return path if path.exists() else None
        path = partition_file(self.data_dir, kind, key)
        return path if path.exists() else None

    def read(self, kind: str, key: str, columns: list[str] | None = None) -> pd.DataFrame | None:
        path = self.current(kind, key)
        return None if path is None else pq.read_table(path, columns=columns).to_pandas()

    def keys(self, kind: str) -> list[str]:
        """The partitions the committed folder will hold."""
        held = set(partition_keys(self.data_dir, kind)) - self.replaced[kind]
        return sorted(held | set(partition_keys(self.folder, kind)))

    def write(self, kind: str, key: str, frame: pd.DataFrame) -> None:
        """Replace partition `key` (an empty frame removes it)."""
        path = partition_file(self.folder, kind, key)
        path.unlink(missing_ok=True)
        self.replaced[kind].add(key)
        if len(frame):
            write_partition(path, kind, frame)

    def write_file(self, name: str, content: pd.DataFrame | dict) -> None:
        path = self.folder / name
        if isinstance(content, dict):
            path.write_text(json.dumps(content, indent=1, sort_keys=True) + "\n")
        elif name.endswith(".csv"):
            content.to_csv(path, index=False, date_format="%Y-%m-%d")
        else:
            content.to_parquet(path, index=False)

    def commit(self) -> None:
        """Carry the untouched partitions over (hard links), then swap the folder in."""
        for kind in PARTITIONED:
            for key in set(partition_keys(self.data_dir, kind)) - self.replaced[kind]:
                source = partition_file(self.data_dir, kind, key)
                target = partition_file(self.folder, kind, key)
                target.parent.mkdir(parents=True, exist_ok=True)
                try:
                    os.link(source, target)
                except OSError:  # a file system without hard links: a copy does the same
                    shutil.copy2(source, target)
        previous = staging_dir(self.data_dir, "previous")
        if self.data_dir.exists():
            self.data_dir.rename(previous)
        self.folder.rename(self.data_dir)
        shutil.rmtree(previous, ignore_errors=True)

    def discard(self) -> None:
        shutil.rmtree(self.folder, ignore_errors=True)


def _collision_ids(rows: pd.DataFrame) -> pd.Series:
    return rows["COLLISION_ID"].astype(str).str.strip()


def merge_api_rows(staging: Staging, inputs: Sequence[ApiInput]) -> tuple[set[str], list[int]]:
    """Merge the inputs' raw rows into the api_rows partitions (by crash month); return (the
    months rewritten, rows per input). One row per collision_id across all months: the copy
    fetched last wins (a late correction of a crash's date moves it to its new month); rows
    without an id are kept once."""
    placed = []  # where each input row goes: its id and month, in fetch order
    for number, api_input in enumerate(inputs):
        rows = api_input.load()
        placed.append(
            pd.DataFrame(
                {"id": _collision_ids(rows), "key": month_keys(crash_days(rows)), "input": number}
            )
        )
    if not placed:
        return set(), []
    new = pd.concat(placed, ignore_index=True)
    keyed = new[new["id"] != ""]
    winners = pd.Index(keyed["id"].drop_duplicates(keep="last"))
    is_winner = np.zeros(len(new), dtype=bool)
    is_winner[keyed.drop_duplicates("id", keep="last").index] = True

    held = [(key, staging.read(API_ROWS, key, ["COLLISION_ID"])) for key in staging.keys(API_ROWS)]
    moved = {  # months holding an older copy of a crash fetched again
        key for key, ids in held if (winners.get_indexer(_collision_ids(ids)) >= 0).any()
    }
    offsets = np.cumsum([0] + [len(frame) for frame in placed])
    for key in sorted(set(new["key"]) | moved):
        parts = []
        old = staging.read(API_ROWS, key)
        if old is not None:
            parts.append(old[winners.get_indexer(_collision_ids(old)) < 0])
        for number in sorted(set(new.loc[new["key"] == key, "input"])):
            rows = inputs[number].load()
            at = slice(offsets[number], offsets[number + 1])
            take = (new["key"].to_numpy()[at] == key) & (
                is_winner[at] | (new["id"].to_numpy()[at] == "")
            )
            parts.append(rows[take])
        merged = pd.concat(parts, ignore_index=True)
        anonymous = _collision_ids(merged) == ""  # no id to dedupe on: the same row is kept once
        merged = merged[~(anonymous & merged.duplicated(keep="last"))]
        staging.write(API_ROWS, key, merged.reset_index(drop=True))
    return set(new["key"]) | moved, [len(frame) for frame in placed]
