"""Build the typed dataset.

Bundled snapshot + new API rows, validated, deduplicated, versioned with DVC.
"""

from __future__ import annotations

import logging
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import pandas as pd
from pydantic import BaseModel, ConfigDict, Field

from visionzero.data import noaa
from visionzero.data.http import RetryPolicy, SourceUnavailable
from visionzero.data.schema import CSV_COLUMNS
from visionzero.data.socrata import SocrataClient
from visionzero.data.validation import coordinate_flags, dedupe, validate
from visionzero.platform.settings import SNAPSHOT_DIR

log = logging.getLogger(__name__)

CRASHES = "crashes.parquet"
COMPLETE_DAYS = "complete_days.csv"
WEATHER = "weather.parquet"
QUARANTINE = "quarantine.parquet"
API_ROWS = (
    "api_rows.parquet"  # every raw row the API ever gave us, kept so offline rebuilds lose nothing
)
API_MALFORMED = (
    "api_malformed.parquet"  # API records that were not objects, kept for the quarantine
)


class LoadConfig(BaseModel):
    """The data_loader's parameters (configs/training.yaml `parameters.data`)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    offline: bool = Field(False, description="never touch the network (`run.py --offline`)")
    settle_days: int = Field(
        30,
        ge=0,
        description="an API day is complete once it is this old: late reports have arrived by then",
    )
    page_size: int = Field(50_000, ge=1, description="Socrata `$limit` per page")
    max_pages: int = Field(20, ge=1, description="at most this many pages per run")
    max_attempts: int = Field(4, ge=1, description="tries per HTTP request")
    backoff_seconds: float = Field(0.5, ge=0, description="first retry wait, doubled each retry")


class DatasetSummary(BaseModel):
    """What loading found: the data_loader's metadata and `status`'s data section."""

    version: str | None
    rows: int
    complete_days: int
    quarantined: dict[str, int]
    source: str  # "api" when new API rows were merged on top of the snapshot, else "snapshot"
    source_note: str
    duplicates_merged: int
    flags: dict[str, int]
    first_date: str
    last_date: str
    weather_gaps: dict[str, int] = {}
    api_rows_new: int = 0


class DatasetRef(DatasetSummary):
    """The dataset artifact a run hands to its steps: where the data lives and what it holds."""

    data_dir: str


def read_snapshot_raw(snapshot_dir: Path = SNAPSHOT_DIR) -> pd.DataFrame:
    return pd.read_csv(snapshot_dir / "nyc_collisions.csv.gz", dtype=str, keep_default_na=False)


def read_snapshot_complete_days(snapshot_dir: Path = SNAPSHOT_DIR) -> pd.DataFrame:
    days = pd.read_csv(snapshot_dir / "nyc_collisions_complete_days.csv")
    return pd.DataFrame(
        {
            "date": pd.to_datetime(days["DATE"]),
            "window": days["WINDOW"],
            "confidence": days["CONFIDENCE"],
            "source": "snapshot",
        }
    )


def api_complete_days(since: date, fetched_at: date, settle_days: int) -> pd.DataFrame:
    """Documented rule: after a fetch that received every page since `since`, each day from `since`
    to `fetched_at - settle_days` holds every crash NYPD will publish for it."""
    last = fetched_at - timedelta(days=settle_days)
    dates = pd.date_range(since, last, freq="D") if last >= since else pd.DatetimeIndex([])
    return pd.DataFrame({"date": dates, "window": "API", "confidence": "high", "source": "api"})


def _fetch_api(cfg: LoadConfig, since: date) -> tuple[pd.DataFrame, pd.DataFrame, bool]:
    client = SocrataClient(
        page_size=cfg.page_size,
        max_pages=cfg.max_pages,
        policy=RetryPolicy(max_attempts=cfg.max_attempts, backoff_seconds=cfg.backoff_seconds),
    )
    result = client.fetch_since(since)
    return (
        result.rows,
        pd.DataFrame(result.malformed, columns=["page", "record"]).astype(str),
        result.complete,
    )


def _keep(path: Path, old: pd.DataFrame, new: pd.DataFrame, key: str | None = None) -> pd.DataFrame:
    """Append newly fetched raw input to what earlier runs kept (the overlap re-fetched for late
    reports replaces its earlier copy when `key` is given) and write it back."""
    both = pd.concat([old, new], ignore_index=True)
    if key is not None:
        keyed = both[key].str.strip() != ""
        both = pd.concat(
            [both[keyed].drop_duplicates(key, keep="last"), both[~keyed]], ignore_index=True
        )
    if len(both):
        both.to_parquet(path, index=False)
    return both


def _read_kept(path: Path, columns: list[str]) -> pd.DataFrame:
    return pd.read_parquet(path) if path.exists() else pd.DataFrame(columns=columns)


def build_dataset(
    data_dir: Path, cfg: LoadConfig, snapshot_dir: Path = SNAPSHOT_DIR, now: datetime | None = None
) -> DatasetSummary:
    """Write crashes, complete days, weather and quarantine under data_dir; return the summary."""
    now = now or datetime.now(UTC)
    data_dir.mkdir(parents=True, exist_ok=True)
    raw = read_snapshot_raw(snapshot_dir)
    typed, quarantine = validate(raw, "snapshot")
    complete = read_snapshot_complete_days(snapshot_dir)

    api_raw = _read_kept(data_dir / API_ROWS, CSV_COLUMNS)
    api_malformed = _read_kept(data_dir / API_MALFORMED, ["page", "record"])
    previous_api_days = (
        pd.read_csv(data_dir / COMPLETE_DAYS, parse_dates=["date"]).query("source == 'api'")
        if (data_dir / COMPLETE_DAYS).exists()
        else complete.iloc[0:0]
    )
    source, note, new_rows = "snapshot", "offline: bundled snapshot only", 0
    level = logging.INFO
    if not cfg.offline:
        newest = max(
            typed["crash_date"].max(),
            pd.to_datetime(api_raw["CRASH DATE"], format="%m/%d/%Y", errors="coerce").max()
            if len(api_raw)
            else pd.NaT,
        )
        since = min(newest.date(), (now - timedelta(days=cfg.settle_days)).date())
        try:
            fetched, malformed, fetched_all = _fetch_api(cfg, since)
            new_rows = len(fetched)
            api_raw = _keep(data_dir / API_ROWS, api_raw, fetched, key="COLLISION_ID")
            api_malformed = _keep(data_dir / API_MALFORMED, api_malformed, malformed, key="record")
            source, note = "api", f"snapshot + {new_rows} API rows since {since}"
            if fetched_all:
                previous_api_days = pd.concat(
                    [previous_api_days, api_complete_days(since, now.date(), cfg.settle_days)]
                )
        except SourceUnavailable as exc:  # the only line about it: retries log at DEBUG
            note, level = f"API unreachable, using the bundled snapshot ({exc})", logging.WARNING
    log.log(level, "data source: %s", note)

    if len(api_raw):
        api_typed, api_quarantine = validate(api_raw, "api")
        typed = pd.concat([typed, api_typed], ignore_index=True)
        quarantine = pd.concat([quarantine, api_quarantine], ignore_index=True)
    if len(api_malformed):  # the raw record text goes where a row's text would be
        quarantine = pd.concat(
            [
                quarantine,
                pd.DataFrame(
                    {
                        "LOCATION": api_malformed["record"],
                        "reason": "malformed_record",
                        "source": "api",
                    }
                ),
            ],
            ignore_index=True,
        )
    typed, duplicates = dedupe(typed)
    complete = (
        pd.concat([complete, previous_api_days], ignore_index=True)
        .drop_duplicates("date", keep="first")
        .sort_values("date")
        .reset_index(drop=True)
    )

    weather = noaa.read_bundled(snapshot_dir / "nyc_weather_daily.csv")
    if not cfg.offline and source == "api":
        start = (weather["date"].max() + pd.Timedelta(days=1)).date()
        try:
            weather = noaa.merge(weather, noaa.fetch_noaa(start, now.date()))
        except SourceUnavailable as exc:
            log.warning("NOAA unreachable (%s): weather after %s stays missing", exc, start)
    gaps = noaa.gaps(weather, complete["date"])

    typed.to_parquet(data_dir / CRASHES, index=False)
    complete.to_csv(data_dir / COMPLETE_DAYS, index=False, date_format="%Y-%m-%d")
    weather.to_parquet(data_dir / WEATHER, index=False)
    quarantine.astype(str).to_parquet(data_dir / QUARANTINE, index=False)

    summary = DatasetSummary(
        version=None,
        rows=len(typed),
        complete_days=len(complete),
        quarantined={str(k): int(v) for k, v in quarantine["reason"].value_counts().items()},
        source=source,
        source_note=note,
        duplicates_merged=duplicates,
        flags=coordinate_flags(typed),
        first_date=str(typed["crash_date"].min().date()),
        last_date=str(typed["crash_date"].max().date()),
        weather_gaps=gaps,
        api_rows_new=new_rows,
    )
    return summary


def load_frames(data_dir: Path) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """(crashes, complete_days, weather) as written by build_dataset."""
    complete = pd.read_csv(data_dir / COMPLETE_DAYS, parse_dates=["date"])
    return (pd.read_parquet(data_dir / CRASHES), complete, pd.read_parquet(data_dir / WEATHER))
