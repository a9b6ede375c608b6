"""Build the typed dataset.

Bundled snapshot + new API rows (the incremental fetch, the backfill's windows), validated,
deduplicated, every API day judged on evidence (completeness.py), stored by month (partitions.py)
and committed all at once (store.py: a failed run changes nothing), versioned with DVC. A build
rewrites only the months its new rows touch: the cost of a daily run does not grow with history.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Sequence
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import pandas as pd
from pydantic import BaseModel, ConfigDict, Field, field_validator

from visionzero.data import noaa
from visionzero.data.completeness import covered_days, describe, judge_days
from visionzero.data.http import RetryPolicy, SourceUnavailable
from visionzero.data.partitions import (
    CRASHES,
    UNDATED,
    month_keys,
    partition_keys,
    read_partitions,
)
from visionzero.data.socrata import FetchResult, SocrataClient
from visionzero.data.store import (
    API_ROWS,
    ApiInput,
    Staging,
    Validated,
    from_parquet,
    in_memory,
    merge_api_rows,
)
from visionzero.data.validation import dedupe, validate
from visionzero.platform.settings import SNAPSHOT_DIR

log = logging.getLogger(__name__)

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
DETAILS_SHOWN = 10  # flagged days spelt out in the summary and the alert
OVERVIEW = ["collision_id", "crash_date", "source", "geocoded"]  # what a build reads of every row


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
    backfill_concurrency: int = Field(
        2,
        ge=1,
        le=8,
        description="backfill windows (months) fetched at a time: the API is shared, be polite",
    )
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
    months_rewritten: int = 0  # crash partitions this build wrote; the others were carried over
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


def socrata_client(cfg: LoadConfig) -> SocrataClient:
    """The SODA client with the configured paging and retries (incremental fetch and backfill)."""
    return SocrataClient(
        page_size=cfg.page_size,
        max_pages=cfg.max_pages,
        policy=RetryPolicy(max_attempts=cfg.max_attempts, backoff_seconds=cfg.backoff_seconds),
    )


def _fetch_api(cfg: LoadConfig, since: date) -> FetchResult:
    return socrata_client(cfg).fetch_since(since)


def _fetch_incremental(
    cfg: LoadConfig, newest: pd.Timestamp, judged: pd.DatetimeIndex, now: datetime
) -> tuple[ApiInput | None, str]:
    """(the API rows since the cursor as a build input, or None when the API is unreachable;
    the note saying which). The days a fetch received in full and that have settled are judged."""
    cursor = newest.date() if pd.notna(newest) else now.date()  # nothing held: the last days
    since = fetch_start(cursor, judged, now, cfg.settle_days)
    try:
        result = _fetch_api(cfg, since)
    except SourceUnavailable as exc:  # the only line about it: retries log at DEBUG
        return None, f"API unreachable, using the bundled snapshot ({exc})"
    covered = (
        covered_days(since, now.date(), cfg.settle_days)
        if result.complete
        else pd.DatetimeIndex([])
    )
    malformed = pd.DataFrame(result.malformed, columns=["page", "record"]).astype(str)
    fetched = ApiInput("incremental", in_memory(result.rows), malformed, covered)
    return fetched, f"snapshot + {len(result.rows)} API rows since {since}"


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


def read_manifest(data_dir: Path) -> dict:
    """What data_dir's partitions were built from ({} for none or the single-file layout)."""
    path = data_dir / MANIFEST
    return json.loads(path.read_text()) if path.exists() else {}


def _snapshot_signature(snapshot_dir: Path, cfg: LoadConfig) -> dict[str, str | int]:
    """What the snapshot rows in the partitions depend on: a change rebuilds every month."""
    digest = hashlib.sha256()
    for name in ("nyc_collisions.csv.gz", "nyc_collisions_complete_days.csv"):
        digest.update((snapshot_dir / name).read_bytes())
    return {
        "layout": LAYOUT,
        "snapshot_sha256": digest.hexdigest(),
        "snapshot_until": str(cfg.snapshot_until),
    }


def _legacy_input(data_dir: Path) -> list[ApiInput]:
    """The single-file layout's API rows, merged into the partitions once: nothing is lost."""
    path = data_dir / LEGACY_API_ROWS
    if not path.exists():
        return []
    return [ApiInput(LEGACY_API_ROWS, from_parquet(path))]


def _held_overview(data_dir: Path) -> pd.DataFrame:
    """Every crash row held (id, date, source, geocoded) with its month: enough to count days and
    to know which months a change touches, without reading whole partitions."""
    frames = [
        read_partitions(data_dir, CRASHES, [key], OVERVIEW).assign(month=key)
        for key in partition_keys(data_dir, CRASHES)
    ]
    empty = read_partitions(data_dir, CRASHES, [], OVERVIEW).assign(month="")
    return pd.concat([empty, *frames], ignore_index=True)


def _rebuild_crashes(
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


def build_dataset(
    data_dir: Path,
    cfg: LoadConfig,
    snapshot_dir: Path = SNAPSHOT_DIR,
    now: datetime | None = None,
    merge: Sequence[ApiInput] = (),
) -> DatasetSummary:
    """Write crashes (partitioned by month), complete days, weather and quarantine (and the kept
    API input and flagged days) under data_dir, all or nothing; return the summary. `merge`:
    API rows fetched elsewhere (the backfill's windows), merged like the incremental fetch's."""
    staging = Staging(data_dir)
    try:
        summary = _build(staging, cfg, snapshot_dir, now or datetime.now(UTC), merge)
        staging.commit()
    except BaseException:
        staging.discard()
        raise
    return summary


def _build(
    staging: Staging,
    cfg: LoadConfig,
    snapshot_dir: Path,
    now: datetime,
    merge: Sequence[ApiInput],
) -> DatasetSummary:
    data_dir = staging.data_dir
    raw, snapshot_complete = (
        read_snapshot_raw(snapshot_dir),
        read_snapshot_complete_days(snapshot_dir),
    )
    if cfg.snapshot_until is not None:
        raw, snapshot_complete = hold_back(raw, snapshot_complete, cfg.snapshot_until)
    typed_snapshot, snapshot_quarantine = validate(raw, "snapshot")
    manifest = read_manifest(data_dir)
    signature = _snapshot_signature(snapshot_dir, cfg)
    rebuild = manifest.get("signature") != signature
    held = _held_overview(data_dir)
    inputs = [*_legacy_input(data_dir), *merge]
    api_malformed = _read_kept(data_dir / API_MALFORMED, ["page", "record"])
    judged = _judged_days(data_dir)
    weather = noaa.read_bundled(snapshot_dir / "nyc_weather_daily.csv")
    weather_quarantine = pd.DataFrame(columns=["record", "reason"])
    source, note, level = "snapshot", "offline: bundled snapshot only", logging.INFO
    if merge:
        source, note = "api", f"snapshot + {len(merge)} backfill windows"
    if not cfg.offline:
        newest = pd.concat([typed_snapshot["crash_date"], held["crash_date"]]).max()
        fetched, note = _fetch_incremental(cfg, newest, judged, now)
        if fetched is None:
            level = logging.WARNING
        else:
            source = "api"
            inputs.append(fetched)
            weather, weather_quarantine = _fetch_weather(weather, now)
    log.log(level, "data source: %s", note)
    for api_input in inputs:
        api_malformed = _merge_kept(api_malformed, api_input.malformed, "record")
        judged = judged.union(api_input.judged)

    merged, merged_rows = merge_api_rows(staging, inputs)
    new_rows = sum(
        rows
        for api_input, rows in zip(inputs, merged_rows, strict=True)
        if api_input.name != LEGACY_API_ROWS
    )
    overview, api_quarantine, api_months, months_written = _rebuild_crashes(
        staging, typed_snapshot, held.iloc[:0] if rebuild else held, rebuild, merged
    )
    quarantine_parts = [snapshot_quarantine.assign(partition="")]
    if not rebuild and (data_dir / QUARANTINE).exists():  # rows of API months not revalidated
        kept = pd.read_parquet(data_dir / QUARANTINE)
        quarantine_parts.append(
            kept[(kept["partition"] != "") & ~kept["partition"].isin(api_months)]
        )
    quarantine_parts += [
        api_quarantine,
        _record_quarantine(api_malformed["record"], "malformed_record", "api"),
        _record_quarantine(weather_quarantine["record"], weather_quarantine["reason"], "noaa"),
    ]
    quarantine = pd.concat(  # the snapshot's part first, even empty: it fixes the columns
        quarantine_parts[:1] + [part for part in quarantine_parts[1:] if len(part)],
        ignore_index=True,
    )
    quarantine = quarantine.fillna("").astype(str)

    reference = (  # crashes on each snapshot complete day: what an API day is compared with
        typed_snapshot.loc[
            typed_snapshot["crash_date"].isin(snapshot_complete["date"]), "crash_date"
        ]
        .value_counts()
        .reindex(snapshot_complete["date"], fill_value=0)
    )
    api_counts = overview.loc[overview["source"] == "api", "crash_date"].value_counts()
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
    ledger = manifest.get("backfill", {}) | {
        api_input.name: api_input.ledger for api_input in merge if api_input.ledger is not None
    }
    staging.write_file(MANIFEST, {"signature": signature, "backfill": ledger})
    staging.write_file(COMPLETE_DAYS, complete)
    staging.write_file(WEATHER, weather)
    staging.write_file(QUARANTINE, quarantine)
    if len(api_malformed):
        staging.write_file(API_MALFORMED, api_malformed)
    if len(flagged):
        staging.write_file(FLAGGED_DAYS, flagged)

    details = [
        describe(flag, cfg.reference_days) for _, flag in flagged.head(DETAILS_SHOWN).iterrows()
    ]
    if len(flagged) > DETAILS_SHOWN:
        details.append(f"... and {len(flagged) - DETAILS_SHOWN} more in {FLAGGED_DAYS}")
    snapshot_rows = int((overview["source"] == "snapshot").sum())
    days = overview["crash_date"]
    return DatasetSummary(
        version=None,
        rows=len(overview),
        complete_days=len(complete),
        quarantined={str(k): int(v) for k, v in quarantine["reason"].value_counts().items()},
        source=source,
        source_note=note,
        duplicates_merged=len(typed_snapshot) - snapshot_rows,
        flags={"not_geocoded": int((~overview["geocoded"].astype(bool)).sum())},
        first_date=str(days.min().date()) if len(days) else "-",
        last_date=str(days.max().date()) if len(days) else "-",
        weather_gaps=noaa.gaps(weather, complete["date"]),
        api_rows_new=new_rows,
        day_flags={str(k): int(v) for k, v in flagged["reason"].value_counts().items()},
        flag_details=details,
        months_rewritten=months_written,
    )


def load_frames(data_dir: Path) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """(crashes, complete_days, weather) as written by build_dataset: the crash months read back
    as one frame in date order."""
    complete = pd.read_csv(data_dir / COMPLETE_DAYS, parse_dates=["date"])
    crashes = read_partitions(data_dir, CRASHES)
    return crashes, complete, pd.read_parquet(data_dir / WEATHER)
