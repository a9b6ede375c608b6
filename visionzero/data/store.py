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
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from visionzero.data.partitions import (
    API_ROWS,
    CRASHES,
    month_keys,
    partition_file,
    partition_keys,
    write_partition,
)
from visionzero.data.validation import crash_days, validate

PARTITIONED = (CRASHES, API_ROWS)


@dataclass(frozen=True)
class ApiInput:
    """API rows a build merges: one fetch (the incremental one or a backfill window). `load` reads
    them when they are merged, so a backfill's windows are never all in memory at once."""

    name: str
    load: Callable[[list[str] | None], pd.DataFrame]  # raw rows (those columns, or all), strings
    malformed: pd.DataFrame = field(
        default_factory=lambda: pd.DataFrame(columns=["page", "record"])
    )
    # settled days the fetch received in full: they are judged
    judged: pd.DatetimeIndex = field(default_factory=lambda: pd.DatetimeIndex([]))
    ledger: dict | None = None  # a backfill window's record, kept in the manifest once merged


def in_memory(rows: pd.DataFrame) -> Callable[[list[str] | None], pd.DataFrame]:
    """`ApiInput.load` for rows already fetched."""
    return lambda columns: rows if columns is None else rows[columns]


def from_parquet(path: Path) -> Callable[[list[str] | None], pd.DataFrame]:
    """`ApiInput.load` for rows spooled to a file: read when needed, only the columns needed."""
    return lambda columns: pd.read_parquet(path, columns=columns)


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

    def read_column(self, kind: str, key: str, column: str) -> pa.ChunkedArray:
        """One column of a partition as Arrow, without converting it to Python objects."""
        return pq.read_table(self.current(kind, key), columns=[column]).column(column)

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


Validated = tuple[pd.DataFrame, pd.DataFrame]  # (typed rows, quarantined rows) of one month


def _months_holding(staging: Staging, ids: pd.Index) -> set[str]:
    """The api_rows months that hold a copy of any of these collision ids: one vectorised lookup
    over the id column of every month (millions of rows), never a row at a time."""
    keys = staging.keys(API_ROWS)
    columns = [staging.read_column(API_ROWS, key, "COLLISION_ID") for key in keys]
    if not columns or not len(ids):
        return set()
    chunks = [chunk for column in columns for chunk in column.chunks]
    held = pc.utf8_trim_whitespace(pa.chunked_array(chunks, type=pa.string()))
    found = pc.is_in(held, value_set=pa.array(ids, type=pa.string())).to_numpy(zero_copy_only=False)
    ends = np.cumsum([len(column) for column in columns])
    return {key for key, part in zip(keys, np.split(found, ends[:-1]), strict=True) if part.any()}


def merge_api_rows(
    staging: Staging, inputs: Sequence[ApiInput]
) -> tuple[dict[str, Validated], list[int]]:
    """Merge the inputs' raw rows into the api_rows partitions (by crash month); return (each
    rewritten month validated, rows per input). One row per collision_id across all months: the
    copy fetched last wins (a late correction of a crash's date moves it to its new month); rows
    without an id are kept once. Each month is read, merged, written and validated in turn, so
    memory holds one month of raw rows, whatever the number of inputs."""
    placed = []  # where each input row goes: its id and month, in fetch order
    for number, api_input in enumerate(inputs):
        rows = api_input.load(["COLLISION_ID", "CRASH DATE"])
        placed.append(
            pd.DataFrame(
                {"id": _collision_ids(rows), "key": month_keys(crash_days(rows)), "input": number}
            )
        )
    if not placed:
        return {}, []
    new = pd.concat(placed, ignore_index=True)
    keyed = new[new["id"] != ""]
    last_copies = keyed.drop_duplicates("id", keep="last")
    winners = pd.Index(last_copies["id"])
    new["take"] = new["id"] == ""
    new.loc[last_copies.index, "take"] = True

    moved = _months_holding(staging, winners)
    taken = new[new["take"]]
    inputs_of = taken.groupby("key")["input"].unique().to_dict()
    rows_of = {key: frame.index for key, frame in taken.groupby(["key", "input"])}
    offsets = np.cumsum([0] + [len(frame) for frame in placed])
    validated = {}
    for key in sorted(set(new["key"]) | moved):
        parts = []
        old = staging.read(API_ROWS, key)
        if old is not None:
            parts.append(old[winners.get_indexer(_collision_ids(old)) < 0])
        for number in sorted(inputs_of.get(key, [])):
            rows = inputs[number].load(None)
            parts.append(rows.iloc[rows_of[(key, number)] - offsets[number]])
        merged = pd.concat(parts, ignore_index=True)
        anonymous = (_collision_ids(merged) == "").to_numpy()
        if anonymous.any():  # no id to dedupe on: the same row is kept once
            merged = merged[~(anonymous & merged.duplicated(keep="last").to_numpy())]
        staging.write(API_ROWS, key, merged)
        validated[key] = validate(merged, "api")
    return validated, [len(frame) for frame in placed]
