"""Backfill: the whole public history through the Socrata API, one calendar month per window.

Each window is fetched in full (ordered paging until a short page), spooled to
$VZ_HOME/backfill/<YYYY-MM>.parquet and recorded in checkpoint.json with its row count and the
files' sha256, each written atomically (a temporary file renamed): a killed run resumes at the
first window not recorded and fetches no recorded window again. The spooled windows are then
merged into data/ by one build (deduplicated on collision_id, validated and quarantined, all or
nothing), recorded in data/manifest.json, versioned with DVC, and removed from the spool.

Polite: the app token (SOCRATA_APP_TOKEN), at most `backfill_concurrency` windows at a time,
Retry-After honoured (http.py), and the first window that still fails after its retries stops the
run: the windows in flight finish and are kept, the rest wait for the next run.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Callable
from concurrent.futures import CancelledError, Future, ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import pandas as pd

from visionzero.data.dataset import (
    DatasetSummary,
    LoadConfig,
    build_dataset,
    read_manifest,
    socrata_client,
)
from visionzero.data.http import SourceUnavailable
from visionzero.data.socrata import FetchResult
from visionzero.data.store import ApiInput, from_parquet
from visionzero.data.versioning import version_data_dir
from visionzero.platform.settings import paths

log = logging.getLogger(__name__)

HISTORY_START = date(2012, 7, 1)  # the dataset's first crash date
CHECKPOINT = "checkpoint.json"


@dataclass(frozen=True)
class Window:
    """Crash dates start <= day < end: one calendar month (the first may start later)."""

    start: date
    end: date

    @property
    def name(self) -> str:
        return self.start.strftime("%Y-%m")

    def covered_by(self, entry: dict | None) -> bool:
        """Whether a checkpoint or manifest entry fetched at least this window."""
        return (
            bool(entry)
            and entry["start"] <= self.start.isoformat()
            and entry["end"] >= self.end.isoformat()
        )


def month_windows(since: date, until: date) -> list[Window]:
    """The calendar months from since's to until's, the first one starting on since."""
    windows, start = [], since
    while start <= until:
        end = (start.replace(day=1) + timedelta(days=32)).replace(day=1)
        windows.append(Window(start, end))
        start = end
    return windows


def _write_atomically(path: Path, write: Callable[[Path], None]) -> None:
    """Write through a temporary file, flushed to disk, then renamed: a kill leaves the old file
    or the new one, never half of one."""
    temporary = path.with_name(f".{path.name}.tmp")
    write(temporary)
    with open(temporary, "rb") as handle:
        os.fsync(handle.fileno())
    os.replace(temporary, path)


class Spool:
    """Fetched windows waiting to be merged: one Parquet file of raw rows each (and one of
    malformed records when there are any), listed in checkpoint.json with counts and hash."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.checkpoint = folder / CHECKPOINT

    def entries(self) -> dict[str, dict]:
        return json.loads(self.checkpoint.read_text()) if self.checkpoint.exists() else {}

    def _files(self, name: str) -> list[Path]:
        return [self.folder / f"{name}.parquet", self.folder / f"{name}.malformed.parquet"]

    def _sha256(self, name: str) -> str:
        digest = hashlib.sha256()
        for path in self._files(name):
            if path.exists():
                digest.update(path.read_bytes())
        return digest.hexdigest()

    def holds(self, window: Window) -> bool:
        """The window is spooled and its files are the ones recorded."""
        entry = self.entries().get(window.name)
        return window.covered_by(entry) and self._sha256(window.name) == entry["sha256"]

    def add(self, window: Window, result: FetchResult, fetched_at: datetime) -> dict:
        """Spool a fully fetched window, then record it: files first, checkpoint last."""
        self.folder.mkdir(parents=True, exist_ok=True)
        rows_file, malformed_file = self._files(window.name)
        _write_atomically(rows_file, lambda path: result.rows.to_parquet(path, index=False))
        malformed_file.unlink(missing_ok=True)
        if result.malformed:
            malformed = pd.DataFrame(result.malformed, columns=["page", "record"]).astype(str)
            malformed["page"] = window.name + " page " + malformed["page"]
            _write_atomically(malformed_file, lambda path: malformed.to_parquet(path, index=False))
        entry = {
            "start": window.start.isoformat(),
            "end": window.end.isoformat(),
            "rows": len(result.rows),
            "malformed": len(result.malformed),
            "pages": result.pages,
            "fetched_at": fetched_at.isoformat(),
            "sha256": self._sha256(window.name),
        }
        entries = self.entries() | {window.name: entry}
        _write_atomically(
            self.checkpoint,
            lambda path: path.write_text(json.dumps(entries, indent=1, sort_keys=True) + "\n"),
        )
        return entry

    def inputs(self, settle_days: int) -> list[ApiInput]:
        """The spooled windows whose files are intact, as a build's inputs; the days each
        received in full and that had settled when it was fetched are judged."""
        inputs = []
        for name, entry in sorted(self.entries().items()):
            if self._sha256(name) != entry["sha256"]:
                log.warning("backfill window %s: spooled files changed; it is fetched again", name)
                continue
            rows_file, malformed_file = self._files(name)
            start, end = date.fromisoformat(entry["start"]), date.fromisoformat(entry["end"])
            settled = datetime.fromisoformat(entry["fetched_at"]).date() - timedelta(settle_days)
            judged = pd.date_range(start, min(end - timedelta(days=1), settled), freq="D")
            malformed = (
                pd.read_parquet(malformed_file)
                if malformed_file.exists()
                else pd.DataFrame(columns=["page", "record"])
            )
            inputs.append(
                ApiInput(
                    name=name,
                    load=from_parquet(rows_file),
                    malformed=malformed,
                    judged=judged,
                    ledger=entry,
                )
            )
        return inputs

    def clear(self, names: set[str]) -> None:
        """Forget merged windows: checkpoint first, so a kill in between leaves files unlisted
        (ignored, overwritten by a later fetch), never a listed window without its files."""
        entries = {name: e for name, e in self.entries().items() if name not in names}
        _write_atomically(
            self.checkpoint,
            lambda path: path.write_text(json.dumps(entries, indent=1, sort_keys=True) + "\n"),
        )
        for name in names:
            for path in self._files(name):
                path.unlink(missing_ok=True)


@dataclass
class BackfillReport:
    """What a backfill run did, for the command line and the tests."""

    windows: int  # windows from --since to today
    already: int  # merged or spooled by an earlier run: not fetched again
    fetched: list[str] = field(default_factory=list)
    rows: int = 0  # rows fetched by this run
    failed: dict[str, str] = field(default_factory=dict)  # window -> why it stays unfinished
    unfetched: int = 0  # windows left for the next run after a failure
    summary: DatasetSummary | None = None  # the merge build, when something was merged
    version: str | None = None  # the DVC data version after the merge

    def lines(self) -> list[str]:
        done = self.already + len(self.fetched)
        lines = [
            f"Backfill: {done} of {self.windows} windows done ({self.already} from earlier runs,"
            f" {len(self.fetched)} fetched now, {self.rows} rows)"
        ]
        if self.summary is not None:
            lines.append(
                f"Merged: {self.summary.rows} crash rows, {self.summary.complete_days} complete"
                f" days, data version {self.version}"
            )
        for name, reason in self.failed.items():
            lines.append(f"Unfinished: {name}: {reason}")
        if self.failed or self.unfetched:
            lines.append(
                f"{len(self.failed) + self.unfetched} windows left: run the backfill again to"
                " resume"
            )
        return lines


def _fetch(window: Window, cfg: LoadConfig) -> FetchResult:
    """One window, every page; a window cut off by max_pages is no full window."""
    result = socrata_client(cfg).fetch_window(window.start, window.end)
    if not result.complete:
        raise SourceUnavailable(
            f"more than max_pages={cfg.max_pages} pages of {cfg.page_size} rows: raise either"
        )
    return result


def backfill(
    cfg: LoadConfig,
    since: date = HISTORY_START,
    now: datetime | None = None,
    progress: Callable[[str], None] = log.info,
) -> BackfillReport:
    """Fetch every window from `since` to today that no earlier run finished, then merge every
    spooled window into the dataset and version it. A window that fails is reported in the
    result and fetched by the next run; the windows finished before it are merged all the same."""
    now = now or datetime.now(UTC)
    data_dir, spool = paths().data_dir, Spool(paths().backfill)
    windows = month_windows(since, now.date())
    merged = read_manifest(data_dir).get("backfill", {})
    todo = [w for w in windows if not w.covered_by(merged.get(w.name)) and not spool.holds(w)]
    report = BackfillReport(windows=len(windows), already=len(windows) - len(todo))
    progress(
        f"Backfill from {since}: {len(windows)} monthly windows, {report.already} done earlier,"
        f" {len(todo)} to fetch ({cfg.backfill_concurrency} at a time)"
    )
    pool = ThreadPoolExecutor(max_workers=cfg.backfill_concurrency, thread_name_prefix="backfill")
    try:
        futures: dict[Future, Window] = {pool.submit(_fetch, w, cfg): w for w in todo}
        for future in as_completed(futures):
            window = futures[future]
            try:
                result = future.result()
            except CancelledError:
                report.unfetched += 1
                continue
            except SourceUnavailable as exc:  # stop asking a failing API; in flight finishes
                report.failed[window.name] = str(exc)
                for pending in futures:
                    pending.cancel()
                continue
            entry = spool.add(window, result, now)
            report.fetched.append(window.name)
            report.rows += entry["rows"]
            progress(
                f"  {window.name}: {entry['rows']} rows in {entry['pages']} pages"
                f" [{report.already + len(report.fetched)}/{report.windows}]"
            )
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
    inputs = spool.inputs(cfg.settle_days)
    if inputs:
        offline = cfg.model_copy(update={"offline": True})  # the merge fetches nothing else
        report.summary = build_dataset(data_dir, offline, now=now, merge=inputs)
        report.version = version_data_dir(data_dir)
        spool.clear({api_input.name for api_input in inputs})
    return report
