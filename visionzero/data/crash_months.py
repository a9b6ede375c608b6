"""The crash partitions a build rewrites: only the months its rows change, so a daily run's cost
does not grow with history (partitions.py holds the layout, store.py the all-or-nothing commit).
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from visionzero.data.partitions import CRASHES, UNDATED, month_keys, partition_keys, read_partitions
from visionzero.data.store import API_ROWS, Staging, Validated
from visionzero.data.validation import dedupe, validate

OVERVIEW = ["collision_id", "crash_date", "source", "geocoded"]  # what a build reads of every row


def held_overview(data_dir: Path) -> pd.DataFrame:
    """Every crash row held (id, date, source, geocoded) with its month: enough to count days and
    to know which months a change touches, without reading whole partitions."""
    frames = [
        read_partitions(data_dir, CRASHES, [key], OVERVIEW).assign(month=key)
        for key in partition_keys(data_dir, CRASHES)
    ]
    empty = read_partitions(data_dir, CRASHES, [], OVERVIEW).assign(month="")
    return pd.concat([empty, *frames], ignore_index=True)


def rebuild_crashes(
    staging: Staging,
    typed_snapshot: pd.DataFrame,
    held: pd.DataFrame,
    rebuild: bool,
    merged: dict[str, Validated],
) -> tuple[pd.DataFrame, pd.DataFrame, set[str], int]:
    """Rewrite the crash partitions whose rows change: (overview of every row now held, API
    quarantine of the revalidated API months, those months, crash months written).

    An API row replaces the snapshot row with its collision_id (a later correction), wherever
    that row's month is; so a month is rewritten when its API rows changed, or when a snapshot row
    in it gains or loses its API replacement."""
    validated = dict(merged)
    if rebuild:  # the months no new row touched are validated again too
        for key in set(staging.keys(API_ROWS)) - set(merged):
            validated[key] = validate(staging.read(API_ROWS, key), "api")
    api_months = set(validated)
    api_typed = {key: typed for key, (typed, _) in validated.items()}
    quarantine = [rejected.assign(partition=key) for key, (_, rejected) in validated.items()]
    held_api = held[held["source"] == "api"]
    before = held_api.loc[held_api["month"].isin(api_months), "collision_id"]
    fresh = pd.concat([frame["collision_id"] for frame in api_typed.values()] + [before.iloc[:0]])
    api_ids = pd.Index(
        pd.concat([held_api.loc[~held_api["month"].isin(api_months), "collision_id"], fresh])
    ).unique()
    snapshot_kept = typed_snapshot[~typed_snapshot["collision_id"].isin(api_ids)]
    snapshot_of = dict(tuple(snapshot_kept.groupby(month_keys(snapshot_kept["crash_date"]))))
    if rebuild:
        months = api_months | set(snapshot_of)
        for key in set(partition_keys(staging.data_dir, CRASHES)) - months:
            staging.write(CRASHES, key, snapshot_kept.iloc[:0])
    else:
        flipped = pd.Index(before).symmetric_difference(pd.Index(fresh))
        touched = typed_snapshot.loc[typed_snapshot["collision_id"].isin(flipped), "crash_date"]
        months = api_months | set(month_keys(touched))
    months.discard(UNDATED)
    rewritten = []
    for key in sorted(months):
        api_part = api_typed.get(key)
        if api_part is None:  # only its snapshot rows change: its API rows stay as they are
            held_rows = staging.read(CRASHES, key)
            api_part = held_rows[held_rows["source"] == "api"] if held_rows is not None else None
        parts = [
            part for part in (snapshot_of.get(key), api_part) if part is not None and len(part)
        ]
        frame = dedupe(pd.concat(parts, ignore_index=True))[0] if parts else snapshot_kept.iloc[:0]
        staging.write(CRASHES, key, frame)
        rewritten.append(frame[OVERVIEW].assign(month=key))
    overview = pd.concat([held[~held["month"].isin(months)], *rewritten], ignore_index=True)
    api_quarantine = pd.concat(quarantine, ignore_index=True) if quarantine else pd.DataFrame()
    return overview, api_quarantine, api_months, len(months)
