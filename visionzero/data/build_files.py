"""The files a build keeps beside the crash partitions (complete days, quarantine, flagged days,
manifest, kept API input): their names, how the next build reads them back, and how a build
assembles them anew. Split from dataset.py, which runs the build's phases in order.
"""

from __future__ import annotations

import hashlib
from datetime import date
from pathlib import Path

import pandas as pd

from visionzero.data.store import ApiInput, from_parquet

COMPLETE_DAYS = "complete_days.csv"
WEATHER = "weather.parquet"
QUARANTINE = "quarantine.parquet"
API_MALFORMED = (
    "api_malformed.parquet"  # API records that were not objects, kept for the quarantine
)
FLAGGED_DAYS = "flagged_days.csv"  # settled API days that are not complete, and why
MANIFEST = "manifest.json"  # what the partitions were built from, and the backfill's windows
LEGACY_API_ROWS = "api_rows.parquet"  # the single-file layout's API rows, moved into partitions
# Bump when validation or the partitions change meaning: the next build then rebuilds every month
# instead of only the months new rows touch.
LAYOUT = 2


def merge_kept(old: pd.DataFrame, new: pd.DataFrame, key: str) -> pd.DataFrame:
    """Newly fetched raw input on top of what earlier runs kept: the overlap re-fetched for late
    reports replaces its earlier copy."""
    both = pd.concat([old, new], ignore_index=True)
    keyed = both[key].str.strip() != ""
    return pd.concat(
        [both[keyed].drop_duplicates(key, keep="last"), both[~keyed]], ignore_index=True
    )


def read_kept(path: Path, columns: list[str]) -> pd.DataFrame:
    return pd.read_parquet(path) if path.exists() else pd.DataFrame(columns=columns)


def judged_days(data_dir: Path) -> pd.DatetimeIndex:
    """API days an earlier build judged (complete or flagged): each had settled and was covered
    by a fetch that received every page, so each is judged again on today's evidence."""
    days = []
    if (data_dir / COMPLETE_DAYS).exists():
        complete = pd.read_csv(data_dir / COMPLETE_DAYS, parse_dates=["date"])
        days.append(complete.loc[complete["source"] == "api", "date"])
    if (data_dir / FLAGGED_DAYS).exists():
        days.append(pd.read_csv(data_dir / FLAGGED_DAYS, parse_dates=["date"])["date"])
    return pd.DatetimeIndex(pd.concat(days)).unique() if days else pd.DatetimeIndex([])


def record_quarantine(records: pd.Series, reason: pd.Series | str, source: str) -> pd.DataFrame:
    """Quarantine rows for records that are no CSV row: the raw text goes where a row's would."""
    return pd.DataFrame({"LOCATION": records, "reason": reason, "source": source})


def snapshot_signature(snapshot_dir: Path, snapshot_until: date | None) -> dict[str, str | int]:
    """What the snapshot rows in the partitions depend on: a change rebuilds every month."""
    digest = hashlib.sha256()
    for name in ("nyc_collisions.csv.gz", "nyc_collisions_complete_days.csv"):
        digest.update((snapshot_dir / name).read_bytes())
    return {
        "layout": LAYOUT,
        "snapshot_sha256": digest.hexdigest(),
        "snapshot_until": str(snapshot_until),
    }


def legacy_input(data_dir: Path) -> list[ApiInput]:
    """The single-file layout's API rows, merged into the partitions once: nothing is lost."""
    path = data_dir / LEGACY_API_ROWS
    if not path.exists():
        return []
    return [ApiInput(LEGACY_API_ROWS, from_parquet(path))]


def new_api_rows(inputs: list[ApiInput], merged_rows: list[int]) -> int:
    """API rows this build received: the legacy file's rows were received by an earlier one."""
    return sum(
        rows
        for api_input, rows in zip(inputs, merged_rows, strict=True)
        if api_input.name != LEGACY_API_ROWS
    )


def quarantine_frame(
    data_dir: Path,
    snapshot_rejected: pd.DataFrame,
    rebuild: bool,
    revalidated: tuple[pd.DataFrame, set[str]],
    api_malformed: pd.DataFrame,
    weather_rejected: pd.DataFrame,
) -> pd.DataFrame:
    """Every rejected record, as strings: the snapshot's, the revalidated API months' (with the
    kept rejections of API months not revalidated), malformed API records and NOAA's."""
    api_quarantine, api_months = revalidated
    parts = [snapshot_rejected.assign(partition="")]
    if not rebuild and (data_dir / QUARANTINE).exists():  # API months not revalidated
        kept = pd.read_parquet(data_dir / QUARANTINE)
        parts.append(kept[(kept["partition"] != "") & ~kept["partition"].isin(api_months)])
    parts += [
        api_quarantine,
        record_quarantine(api_malformed["record"], "malformed_record", "api"),
        record_quarantine(weather_rejected["record"], weather_rejected["reason"], "noaa"),
    ]
    quarantine = pd.concat(  # the snapshot's part first, even empty: it fixes the columns
        parts[:1] + [part for part in parts[1:] if len(part)], ignore_index=True
    )
    return quarantine.fillna("").astype(str)
