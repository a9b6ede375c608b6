"""Build the typed dataset.

Bundled snapshot + new API rows (the incremental fetch, the backfill's windows), validated,
deduplicated, every API day judged on evidence (completeness.py), stored by month (partitions.py)
and committed all at once (store.py: a failed run changes nothing), versioned with DVC. A build
rewrites only the months its new rows touch: the cost of a daily run does not grow with history.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import pandas as pd
from pydantic import BaseModel

from visionzero.data import noaa
from visionzero.data.build_files import (
    API_MALFORMED,
    COMPLETE_DAYS,
    FLAGGED_DAYS,
    MANIFEST,
    QUARANTINE,
    WEATHER,
    judged_days,
    legacy_input,
    merge_kept,
    new_api_rows,
    quarantine_frame,
    read_kept,
    snapshot_signature,
)
from visionzero.data.completeness import covered_days, describe, judge_days
from visionzero.data.crash_months import held_overview, rebuild_crashes
from visionzero.data.http import RetryPolicy, SourceUnavailable
from visionzero.data.load_config import LoadConfig
from visionzero.data.partitions import CRASHES, read_partitions
from visionzero.data.socrata import FetchResult, SocrataClient
from visionzero.data.store import ApiInput, Staging, in_memory, merge_api_rows
from visionzero.data.validation import validate
from visionzero.platform.settings import SNAPSHOT_DIR

log = logging.getLogger(__name__)

DETAILS_SHOWN = 10  # flagged days spelt out in the summary and the alert


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


def read_manifest(data_dir: Path) -> dict:
    """What data_dir's partitions were built from ({} for none or the single-file layout)."""
    path = data_dir / MANIFEST
    return json.loads(path.read_text()) if path.exists() else {}


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


@dataclass(frozen=True)
class Snapshot:
    """The bundled snapshot as this build sees it: held back to `snapshot_until` (a replay),
    validated once; `complete` its complete days, the reference every API day is judged by."""

    typed: pd.DataFrame
    quarantine: pd.DataFrame
    complete: pd.DataFrame


def _read_snapshot(snapshot_dir: Path, cfg: LoadConfig) -> Snapshot:
    """The snapshot's rows validated and its complete days, both as they stood on
    `snapshot_until` when one is set."""
    raw, complete = read_snapshot_raw(snapshot_dir), read_snapshot_complete_days(snapshot_dir)
    if cfg.snapshot_until is not None:
        raw, complete = hold_back(raw, complete, cfg.snapshot_until)
    typed, quarantine = validate(raw, "snapshot")
    return Snapshot(typed, quarantine, complete)


@dataclass(frozen=True)
class Held:
    """What earlier builds left in data_dir and this one carries on: `rebuild` when the snapshot
    or the layout changed since (every month is then rewritten, nothing held is trusted)."""

    manifest: dict
    signature: dict[str, str | int]
    rebuild: bool
    overview: pd.DataFrame  # every crash row held, with its month (crash_months.held_overview)
    api_malformed: pd.DataFrame
    judged: pd.DatetimeIndex


def _read_held(data_dir: Path, snapshot_dir: Path, cfg: LoadConfig) -> Held:
    """data_dir's manifest, crash overview, kept malformed API records and judged API days."""
    manifest = read_manifest(data_dir)
    signature = snapshot_signature(snapshot_dir, cfg.snapshot_until)
    return Held(
        manifest=manifest,
        signature=signature,
        rebuild=manifest.get("signature") != signature,
        overview=held_overview(data_dir),
        api_malformed=read_kept(data_dir / API_MALFORMED, ["page", "record"]),
        judged=judged_days(data_dir),
    )


@dataclass
class Sources:
    """This build's new input: API rows (legacy file, backfill windows, incremental fetch), the
    weather, and where they came from for the summary (`source`, `note`)."""

    inputs: list[ApiInput]
    weather: pd.DataFrame
    weather_quarantine: pd.DataFrame
    source: str
    note: str


def _gather_sources(
    cfg: LoadConfig,
    snapshot: Snapshot,
    held: Held,
    data_dir: Path,
    snapshot_dir: Path,
    now: datetime,
    merge: Sequence[ApiInput],
) -> Sources:
    """Every API input of this build and the weather; online, the incremental fetch and NOAA.
    An unreachable API is one WARNING line and a snapshot-only build, not a failure."""
    sources = Sources(
        inputs=[*legacy_input(data_dir), *merge],
        weather=noaa.read_bundled(snapshot_dir / "nyc_weather_daily.csv"),
        weather_quarantine=pd.DataFrame(columns=["record", "reason"]),
        source="api" if merge else "snapshot",
        note=f"snapshot + {len(merge)} backfill windows"
        if merge
        else "offline: bundled snapshot only",
    )
    level = logging.INFO
    if not cfg.offline:
        newest = pd.concat([snapshot.typed["crash_date"], held.overview["crash_date"]]).max()
        fetched, sources.note = _fetch_incremental(cfg, newest, held.judged, now)
        if fetched is None:
            level = logging.WARNING
        else:
            sources.source = "api"
            sources.inputs.append(fetched)
            sources.weather, sources.weather_quarantine = _fetch_weather(sources.weather, now)
    log.log(level, "data source: %s", sources.note)
    return sources


def _complete_days(
    cfg: LoadConfig, snapshot: Snapshot, overview: pd.DataFrame, judged: pd.DatetimeIndex
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(complete days: the snapshot's and the API days judged complete, in date order; the
    flagged API days and why). An API day is compared with the snapshot's complete days."""
    typed, snapshot_complete = snapshot.typed, snapshot.complete
    reference = (  # crashes on each snapshot complete day
        typed.loc[typed["crash_date"].isin(snapshot_complete["date"]), "crash_date"]
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
    return complete, flagged


def _write_files(
    staging: Staging,
    held: Held,
    merge: Sequence[ApiInput],
    frames: dict[str, pd.DataFrame],
) -> None:
    """The files beside the crash partitions, staged with them; the manifest keeps the
    backfill's ledger of every window merged so far. An empty optional file is not written."""
    ledger = held.manifest.get("backfill", {}) | {
        api_input.name: api_input.ledger for api_input in merge if api_input.ledger is not None
    }
    staging.write_file(MANIFEST, {"signature": held.signature, "backfill": ledger})
    for name in (COMPLETE_DAYS, WEATHER, QUARANTINE):
        staging.write_file(name, frames[name])
    for name in (API_MALFORMED, FLAGGED_DAYS):
        if len(frames[name]):
            staging.write_file(name, frames[name])


def _summary(
    cfg: LoadConfig,
    snapshot: Snapshot,
    sources: Sources,
    overview: pd.DataFrame,
    frames: dict[str, pd.DataFrame],
    counts: tuple[int, int],
) -> DatasetSummary:
    """What the build found, for the data_loader's metadata, `status` and the alert: the first
    DETAILS_SHOWN flagged days spelt out."""
    complete, quarantine, flagged = frames[COMPLETE_DAYS], frames[QUARANTINE], frames[FLAGGED_DAYS]
    new_rows, months_written = counts
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
        source=sources.source,
        source_note=sources.note,
        duplicates_merged=len(snapshot.typed) - snapshot_rows,
        flags={"not_geocoded": int((~overview["geocoded"].astype(bool)).sum())},
        first_date=str(days.min().date()) if len(days) else "-",
        last_date=str(days.max().date()) if len(days) else "-",
        weather_gaps=noaa.gaps(sources.weather, complete["date"]),
        api_rows_new=new_rows,
        day_flags={str(k): int(v) for k, v in flagged["reason"].value_counts().items()},
        flag_details=details,
        months_rewritten=months_written,
    )


def _build(
    staging: Staging,
    cfg: LoadConfig,
    snapshot_dir: Path,
    now: datetime,
    merge: Sequence[ApiInput],
) -> DatasetSummary:
    """The build's phases in order: read the snapshot and what earlier builds left, gather the
    new input, rewrite the crash months it touches, quarantine, judge API days, stage the files."""
    data_dir = staging.data_dir
    snapshot = _read_snapshot(snapshot_dir, cfg)
    held = _read_held(data_dir, snapshot_dir, cfg)
    sources = _gather_sources(cfg, snapshot, held, data_dir, snapshot_dir, now, merge)
    api_malformed, judged = held.api_malformed, held.judged
    for api_input in sources.inputs:
        api_malformed = merge_kept(api_malformed, api_input.malformed, "record")
        judged = judged.union(api_input.judged)
    merged, merged_rows = merge_api_rows(staging, sources.inputs)
    overview, api_quarantine, api_months, months_written = rebuild_crashes(
        staging,
        snapshot.typed,
        held.overview.iloc[:0] if held.rebuild else held.overview,
        held.rebuild,
        merged,
    )
    complete, flagged = _complete_days(cfg, snapshot, overview, judged)
    frames = {
        COMPLETE_DAYS: complete,
        WEATHER: sources.weather,
        QUARANTINE: quarantine_frame(
            data_dir,
            snapshot.quarantine,
            held.rebuild,
            (api_quarantine, api_months),
            api_malformed,
            sources.weather_quarantine,
        ),
        API_MALFORMED: api_malformed,
        FLAGGED_DAYS: flagged,
    }
    _write_files(staging, held, merge, frames)
    counts = (new_api_rows(sources.inputs, merged_rows), months_written)
    return _summary(cfg, snapshot, sources, overview, frames, counts)


def load_frames(data_dir: Path) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """(crashes, complete_days, weather) as written by build_dataset: the crash months read back
    as one frame in date order."""
    complete = pd.read_csv(data_dir / COMPLETE_DAYS, parse_dates=["date"])
    crashes = read_partitions(data_dir, CRASHES)
    return crashes, complete, pd.read_parquet(data_dir / WEATHER)
