"""Build the typed dataset.

Bundled snapshot + new API rows, validated, deduplicated, every API day judged on evidence
(completeness.py), committed all at once (a failed run changes nothing), versioned with DVC.
"""

from __future__ import annotations

import logging
import shutil
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import pandas as pd
from pydantic import BaseModel, ConfigDict, Field, field_validator

from visionzero.data import noaa
from visionzero.data.completeness import covered_days, describe, judge_days
from visionzero.data.http import RetryPolicy, SourceUnavailable
from visionzero.data.schema import CSV_COLUMNS
from visionzero.data.socrata import FetchResult, SocrataClient
from visionzero.data.validation import coordinate_flags, dedupe, validate
from visionzero.platform.settings import SNAPSHOT_DIR

log = logging.getLogger(__name__)

CRASHES = "crashes.parquet"
COMPLETE_DAYS = "complete_days.csv"
WEATHER = "weather.parquet"
QUARANTINE = "quarantine.parquet"
# every raw row the API ever gave us, kept so offline rebuilds lose nothing
API_ROWS = "api_rows.parquet"
API_MALFORMED = (
    "api_malformed.parquet"  # API records that were not objects, kept for the quarantine
)
FLAGGED_DAYS = "flagged_days.csv"  # settled API days that are not complete, and why
DETAILS_SHOWN = 10  # flagged days spelt out in the summary and the alert


class LoadConfig(BaseModel):
    """The data_loader's parameters (configs/training.yaml `parameters.data`)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    offline: bool = Field(False, description="never touch the network (`run.py --offline`)")
    settle_days: int = Field(
        30,
        ge=0,
        description="an API day is judged once it is this old: late reports have arrived by then",
    )
    reference_days: int = Field(
        8,
        ge=1,
        description="an API day's crash count is compared with the median of the last this many"
        " complete days of the same weekday",
    )
    day_count_range: tuple[float, float] = Field(
        (0.4, 1.75),
        description="plausible crash count of an API day, as multiples of that median (holidays"
        " reach 0.5, one borough alone is under 0.4, a doubled answer is 2)",
    )
    page_size: int = Field(50_000, ge=1, description="Socrata `$limit` per page")
    max_pages: int = Field(20, ge=1, description="at most this many pages per run")
    max_attempts: int = Field(4, ge=1, description="tries per HTTP request")
    backoff_seconds: float = Field(0.5, ge=0, description="first retry wait, doubled each retry")
    snapshot_until: date | None = Field(
        None,
        description="bundled snapshot rows and complete days after this day are held back: a "
        "replay lets later days arrive through the API, as they would have",
    )

    @field_validator("day_count_range")
    @classmethod
    def _ordered(cls, value: tuple[float, float]) -> tuple[float, float]:
        if not 0 < value[0] < value[1]:
            raise ValueError("must be two multiples 0 < low < high")
        return value


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
    day_flags: dict[str, int] = {}  # settled API days never made complete, per reason
    flag_details: list[str] = []  # the first of them, one line each


class DatasetRef(DatasetSummary):
    """The dataset artifact a run hands to its steps: its data version and the folder holding
    exactly that version ($VZ_HOME/datasets/<md5>), which no later run writes."""

    version: str
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


def hold_back(
    raw: pd.DataFrame, complete_days: pd.DataFrame, until: date
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The snapshot as it stood on `until`: crash rows and complete days after it dropped. A row
    whose date does not parse stays, so validation quarantines it as it would have."""
    dates = pd.to_datetime(raw["CRASH DATE"], format="%m/%d/%Y", errors="coerce")
    last = pd.Timestamp(until)
    return (
        raw[dates.isna() | (dates <= last)].reset_index(drop=True),
        complete_days[complete_days["date"] <= last].reset_index(drop=True),
    )


def fetch_start(newest: date, judged: pd.DatetimeIndex, now: datetime, settle_days: int) -> date:
    """Where the incremental fetch starts: the cursor, i.e. the newest validated crash date (it
    is fetched again: it may be partial), or the first unjudged day after the newest judged API
    day when that is earlier, and never later than `settle_days` ago (late reports)."""
    start = min(newest, (now - timedelta(days=settle_days)).date())
    if len(judged):
        start = min(start, (judged.max() + pd.Timedelta(days=1)).date())
    return start


def _fetch_api(cfg: LoadConfig, since: date) -> FetchResult:
    client = SocrataClient(
        page_size=cfg.page_size,
        max_pages=cfg.max_pages,
        policy=RetryPolicy(max_attempts=cfg.max_attempts, backoff_seconds=cfg.backoff_seconds),
    )
    return client.fetch_since(since)


def _fetch_weather(bundled: pd.DataFrame, now: datetime) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(bundled + validated NOAA weather, quarantined NOAA records)."""
    start = (bundled["date"].max() + pd.Timedelta(days=1)).date()
    try:
        fetched, quarantined = noaa.fetch_noaa(start, now.date())
    except SourceUnavailable as exc:
        log.warning("NOAA unreachable (%s): weather after %s stays missing", exc, start)
        return bundled, pd.DataFrame(columns=["record", "reason"])
    return noaa.merge(bundled, fetched), quarantined


def _merge_kept(old: pd.DataFrame, new: pd.DataFrame, key: str) -> pd.DataFrame:
    """Newly fetched raw input on top of what earlier runs kept: the overlap re-fetched for late
    reports replaces its earlier copy."""
    both = pd.concat([old, new], ignore_index=True)
    keyed = both[key].str.strip() != ""
    return pd.concat(
        [both[keyed].drop_duplicates(key, keep="last"), both[~keyed]], ignore_index=True
    )


def _read_kept(path: Path, columns: list[str]) -> pd.DataFrame:
    return pd.read_parquet(path) if path.exists() else pd.DataFrame(columns=columns)


def _judged_days(data_dir: Path) -> pd.DatetimeIndex:
    """API days an earlier build judged (complete or flagged): each had settled and was covered
    by a fetch that received every page, so each is judged again on today's evidence."""
    days = []
    if (data_dir / COMPLETE_DAYS).exists():
        complete = pd.read_csv(data_dir / COMPLETE_DAYS, parse_dates=["date"])
        days.append(complete.loc[complete["source"] == "api", "date"])
    if (data_dir / FLAGGED_DAYS).exists():
        days.append(pd.read_csv(data_dir / FLAGGED_DAYS, parse_dates=["date"])["date"])
    return pd.DatetimeIndex(pd.concat(days)).unique() if days else pd.DatetimeIndex([])


def _record_quarantine(records: pd.Series, reason: pd.Series | str, source: str) -> pd.DataFrame:
    """Quarantine rows for records that are no CSV row: the raw text goes where a row's would."""
    return pd.DataFrame({"LOCATION": records, "reason": reason, "source": source})


def _staging(data_dir: Path, role: str) -> Path:
    return data_dir.with_name(f".{data_dir.name}.{role}")


def _recover(data_dir: Path) -> None:
    """Undo what a run that died while committing left: its staging folder, or a swap cut between
    its two renames (the previous data goes back)."""
    previous = _staging(data_dir, "previous")
    if previous.exists() and not data_dir.exists():
        previous.rename(data_dir)
    shutil.rmtree(previous, ignore_errors=True)
    shutil.rmtree(_staging(data_dir, "staging"), ignore_errors=True)


def _commit(data_dir: Path, files: dict[str, pd.DataFrame]) -> None:
    """Write every file into a staging folder, then swap it in by renaming: until then a failing
    or killed run has changed neither the data nor the cursor derived from it."""
    staging, previous = _staging(data_dir, "staging"), _staging(data_dir, "previous")
    staging.mkdir(parents=True)
    for name, frame in files.items():
        if name.endswith(".csv"):
            frame.to_csv(staging / name, index=False, date_format="%Y-%m-%d")
        else:
            frame.to_parquet(staging / name, index=False)
    if data_dir.exists():
        data_dir.rename(previous)
    staging.rename(data_dir)
    shutil.rmtree(previous, ignore_errors=True)


def build_dataset(
    data_dir: Path, cfg: LoadConfig, snapshot_dir: Path = SNAPSHOT_DIR, now: datetime | None = None
) -> DatasetSummary:
    """Write crashes, complete days, weather and quarantine (and the kept API input and flagged
    days) under data_dir, all or nothing; return the summary."""
    now = now or datetime.now(UTC)
    _recover(data_dir)
    raw, snapshot_complete = (
        read_snapshot_raw(snapshot_dir),
        read_snapshot_complete_days(snapshot_dir),
    )
    if cfg.snapshot_until is not None:
        raw, snapshot_complete = hold_back(raw, snapshot_complete, cfg.snapshot_until)
    typed, quarantine = validate(raw, "snapshot")
    api_raw = _read_kept(data_dir / API_ROWS, CSV_COLUMNS)
    api_malformed = _read_kept(data_dir / API_MALFORMED, ["page", "record"])
    judged = _judged_days(data_dir)
    weather = noaa.read_bundled(snapshot_dir / "nyc_weather_daily.csv")
    weather_quarantine = pd.DataFrame(columns=["record", "reason"])
    source, note, new_rows, level = "snapshot", "offline: bundled snapshot only", 0, logging.INFO
    if not cfg.offline:
        newest = typed["crash_date"].max()
        if len(api_raw):
            newest = max(newest, validate(api_raw, "api")[0]["crash_date"].max())
        since = fetch_start(newest.date(), judged, now, cfg.settle_days)
        try:
            result = _fetch_api(cfg, since)
        except SourceUnavailable as exc:  # the only line about it: retries log at DEBUG
            note, level = f"API unreachable, using the bundled snapshot ({exc})", logging.WARNING
        else:
            new_rows = len(result.rows)
            malformed = pd.DataFrame(result.malformed, columns=["page", "record"]).astype(str)
            api_raw = _merge_kept(api_raw, result.rows, "COLLISION_ID")
            api_malformed = _merge_kept(api_malformed, malformed, "record")
            source, note = "api", f"snapshot + {new_rows} API rows since {since}"
            if result.complete:
                judged = judged.union(covered_days(since, now.date(), cfg.settle_days))
    log.log(level, "data source: %s", note)
    if source == "api":
        weather, weather_quarantine = _fetch_weather(weather, now)

    reference = (  # crashes on each snapshot complete day: what an API day is compared with
        typed.loc[typed["crash_date"].isin(snapshot_complete["date"]), "crash_date"]
        .value_counts()
        .reindex(snapshot_complete["date"], fill_value=0)
    )
    api_counts = pd.Series(dtype="int64")
    typed_parts, quarantine_parts = [typed], [quarantine]
    if len(api_raw):
        api_typed, api_quarantine = validate(api_raw, "api")
        api_counts = api_typed["crash_date"].value_counts()
        typed_parts.append(api_typed)
        quarantine_parts.append(api_quarantine)
    if len(api_malformed):
        quarantine_parts.append(
            _record_quarantine(api_malformed["record"], "malformed_record", "api")
        )
    if len(weather_quarantine):
        quarantine_parts.append(
            _record_quarantine(weather_quarantine["record"], weather_quarantine["reason"], "noaa")
        )
    typed, duplicates = dedupe(pd.concat(typed_parts, ignore_index=True))
    quarantine = pd.concat(quarantine_parts, ignore_index=True)
    api_days, flagged = judge_days(
        judged, api_counts, reference, cfg.reference_days, cfg.day_count_range
    )
    api_complete = pd.DataFrame(
        {"date": api_days, "window": "API", "confidence": "high", "source": "api"}
    )
    complete = (
        pd.concat([snapshot_complete, api_complete], ignore_index=True)
        .sort_values("date")
        .reset_index(drop=True)
    )

    files = {
        CRASHES: typed,
        COMPLETE_DAYS: complete,
        WEATHER: weather,
        QUARANTINE: quarantine.astype(str),
    }
    kept = {API_ROWS: api_raw, API_MALFORMED: api_malformed, FLAGGED_DAYS: flagged}
    _commit(data_dir, files | {name: frame for name, frame in kept.items() if len(frame)})

    details = [
        describe(flag, cfg.reference_days) for _, flag in flagged.head(DETAILS_SHOWN).iterrows()
    ]
    if len(flagged) > DETAILS_SHOWN:
        details.append(f"... and {len(flagged) - DETAILS_SHOWN} more in {FLAGGED_DAYS}")
    return DatasetSummary(
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
        weather_gaps=noaa.gaps(weather, complete["date"]),
        api_rows_new=new_rows,
        day_flags={str(k): int(v) for k, v in flagged["reason"].value_counts().items()},
        flag_details=details,
    )


def load_frames(data_dir: Path) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """(crashes, complete_days, weather) as written by build_dataset."""
    complete = pd.read_csv(data_dir / COMPLETE_DAYS, parse_dates=["date"])
    return (pd.read_parquet(data_dir / CRASHES), complete, pd.read_parquet(data_dir / WEATHER))
