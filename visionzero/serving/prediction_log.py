"""The prediction log: every `/predict` answer of every stage, one row per item, so the monitor can
later check each served forecast against the crashes that followed.

Logging must not slow a request: the handler only appends the request's answer (one tuple, no
I/O, no encoding) to an in-memory buffer; a background thread turns it into JSON lines every
second (or sooner when the buffer fills) and writes them. The buffer is bounded: past the bound a
request's rows are dropped and counted (`crash_risk_prediction_log_dropped`), never waited for.

Where (`VZ_PREDICTION_LOG`): a directory, by default `$VZ_HOME/predictions`, laid out as
`<stage>/<YYYY-MM-DD (UTC)>/<hostname>-<pid>-<start epoch ms>.jsonl`: one file per worker
process and day, appended to and fsynced per batch. A process never opens another's file, so a
restart neither loses nor duplicates rows. `stdout` writes the same rows as JSON lines on stdout
(in Kubernetes the cluster's log shipper collects them), `off` logs nothing. No client address is
ever logged.

Bounded on disk: a stage keeps at most VZ_PREDICTION_LOG_MAX_DAY_BYTES per UTC day, all its
workers together (each write checks the day folder's total under a lock the stage's writers
share); rows past it are dropped and counted (reason `day_cap`). A writer deletes its stage's day
folders older than VZ_PREDICTION_LOG_KEEP_DAYS when it starts a day. On stdout each worker keeps
its share of the day's bytes (the cap over VZ_WORKERS). The sinks are in prediction_sinks.py.

Never inside a Bento: with no VZ_HOME a model server run by hand from a Bento would log under the
Bento's own folder (its `REPO_ROOT`), where no monitor reads and a new build never looks. The log
is then off, with a warning naming VZ_HOME and VZ_PREDICTION_LOG.
"""

from __future__ import annotations

import logging
import random
import re
import threading
import time
from collections.abc import Callable, Sequence
from datetime import UTC, date
from pathlib import Path

import numpy as np
import orjson
import pandas as pd

from visionzero.platform.settings import BENTO_ROOT, paths, settings, unlogged_request_id
from visionzero.serving.prediction_sinks import DailyFiles, Sink, Stdout

COLUMNS = [
    "request_id",
    "item",
    "time",
    "stage",
    "model_version",
    "zone",
    "resolution",
    "date",
    "block",
    "expected",
    "level",
]
MAX_ROWS = 200_000  # about 100 MB of buffered answers: ten full 10,000-item requests per second
FLUSH_ROWS = 20_000
FLUSH_SECONDS = 1.0
DROP_WARNING_SECONDS = 10.0
UUID4_CLEAR = ~((0xF000 << 64) | (0xC000 << 48))  # version and variant bits of a uuid4
UUID4_SET = (4 << 76) | (0x8000 << 48)
REQUEST_ID = re.compile(r"[A-Za-z0-9._:@/+=-]{1,128}")
STDOUT_EVENT = "crash_risk_prediction"  # tells the log shipper which stdout lines are rows
log = logging.getLogger("bentoml.crash_risk.prediction_log")


def logged_request_id(header: str | None) -> str:
    """The client's X-Request-ID when it is a plain token (letters, digits, `._:@/+=-`, at most
    128), else a new uuid4: a header is free text, and a row must stay one short JSON line."""
    if header is not None and REQUEST_ID.fullmatch(header):
        return header
    # uuid.uuid4() reads urandom and uuid.UUID validates: ~8 us each here; the same bits directly
    return f"{random.getrandbits(128) & UUID4_CLEAR | UUID4_SET:032x}"


def prediction_log_target() -> Path | str | None:
    """The configured destination: a directory, "stdout", or None when off (or when the directory
    would be inside the Bento this code runs from: warned)."""
    value = settings().vz_prediction_log
    if value is None or not value.strip():
        target = paths().home / "predictions"
    elif value.strip().lower() == "off":
        return None
    elif value.strip().lower() == "stdout":
        return "stdout"
    else:
        target = Path(value).expanduser().resolve()
    if BENTO_ROOT is not None and target.is_relative_to(BENTO_ROOT):
        log.warning(
            "prediction log off: %s is inside the Bento %s, where no monitor reads it; set "
            "VZ_HOME (the project's state folder, as `python run.py serve` does) or "
            "VZ_PREDICTION_LOG (a folder, or `stdout`)",
            target,
            BENTO_ROOT,
        )
        return None
    return target


def prediction_log_root() -> Path | None:
    """The directory the log is written to and read from; None when it is off or on stdout."""
    target = prediction_log_target()
    return target if isinstance(target, Path) else None


def open_sink(stage: str) -> Sink | None:
    """The sink the settings ask for, or None when the log is off."""
    target = prediction_log_target()
    if target is None:
        return None
    if target == "stdout":
        return Stdout()
    return DailyFiles(Path(target), stage)


class PredictionLog:
    """A bounded buffer of answered requests and the thread that writes them.

    `record` is the only part on the request path: a lock, an append and a counter. Rows are
    built and encoded by the writer thread. Rows that do not fit, or that a failing write loses,
    are counted in `dropped` and reported to `on_drop(rows, reason)`."""

    def __init__(
        self,
        sink: Sink,
        stage: str,
        model_version: str,
        block_starts: Sequence[int],
        *,
        max_rows: int = MAX_ROWS,
        flush_rows: int = FLUSH_ROWS,
        flush_seconds: float = FLUSH_SECONDS,
        on_drop: Callable[[int, str], None] | None = None,
    ) -> None:
        self.sink = sink
        self.stage = stage
        self.model_version = int(model_version) if str(model_version).isdigit() else -1
        self.block_of_start = {start: index for index, start in enumerate(block_starts)}
        self.max_rows = max_rows
        self.flush_rows = flush_rows
        self.flush_seconds = flush_seconds
        self.on_drop = on_drop
        self.extra = {"event": STDOUT_EVENT} if isinstance(sink, Stdout) else {}
        self.unlogged_request_id = unlogged_request_id()
        self.dropped = 0
        self._last_warning = -DROP_WARNING_SECONDS
        self._buffer: list[tuple[str | None, float, list[dict]]] = []
        self._rows = 0
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="prediction-log", daemon=True)
        self._thread.start()

    def record(self, request_id: str | None, predictions: list[dict]) -> None:
        """Keep one request's answer under the client's X-Request-ID (None: the writer gives it
        a uuid4). The dicts are not copied: they must not change after. `serve`'s own check of the
        backend is not kept."""
        if request_id is not None and request_id == self.unlogged_request_id:
            return
        rows = len(predictions)
        with self._lock:
            if self._rows + rows > self.max_rows:
                self.dropped += rows
                full = True
            else:
                self._buffer.append((request_id, time.time(), predictions))
                self._rows += rows
                full = False
        if full:
            self._count_drop(rows, "buffer_full", "the writer cannot keep up")
        elif self._rows >= self.flush_rows:
            self._wake.set()

    def _count_drop(self, rows: int, reason: str, why: str) -> None:
        """Count dropped rows; say so at most every DROP_WARNING_SECONDS (a broken disk fails
        every batch, a flood hits the day's cap with every batch)."""
        if self.on_drop is not None:
            self.on_drop(rows, reason)
        now = time.monotonic()
        if now - self._last_warning >= DROP_WARNING_SECONDS:
            self._last_warning = now
            log.warning(
                "prediction log: %d rows dropped so far, now %d (%s: %s)",
                self.dropped,
                rows,
                reason,
                why,
            )

    def _run(self) -> None:
        while not self._stop.is_set():
            self._wake.wait(self.flush_seconds)
            self._wake.clear()
            self.flush()

    def flush(self) -> None:
        """Write everything buffered so far (the writer thread's job; also called on close)."""
        with self._lock:
            batch, self._buffer, self._rows = self._buffer, [], 0
        if not batch:
            return
        try:
            encoded = self._encode(batch)
        except Exception as error:  # a bug here must not stop the writer thread: count, say why
            encoded = []
            rows = sum(len(predictions) for _, _, predictions in batch)
            self._lost(rows, "encode_error", repr(error))
        for day, lines, rows in encoded:
            try:
                over_cap = self.sink.write(day, lines)
            except Exception as error:  # a full disk must not take the service down
                self._lost(rows, "write_error", repr(error))
                continue
            if over_cap:
                self._lost(
                    over_cap,
                    "day_cap",
                    f"{day}'s {self.sink.max_day_bytes} bytes are used up "
                    "(VZ_PREDICTION_LOG_MAX_DAY_BYTES)",
                )

    def _lost(self, rows: int, reason: str, why: str) -> None:
        with self._lock:
            self.dropped += rows
        self._count_drop(rows, reason, why)

    def _encode(
        self, batch: list[tuple[str | None, float, list[dict]]]
    ) -> list[tuple[str, bytes, int]]:
        """JSON lines grouped by the UTC day they were answered on. One orjson call per day then
        splits the array into lines (twice as fast as a call per row): safe because no value
        can hold `},{`: request ids are checked (`logged_request_id`), the rest are ours."""
        days: dict[str, list[dict]] = {}
        stage, version, blocks, extra = (
            self.stage,
            self.model_version,
            self.block_of_start,
            self.extra,
        )
        second, prefix = -1, ""
        for request_id, answered, predictions in batch:
            if int(answered) != second:  # formatted once a second: most requests share one
                second = int(answered)
                prefix = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
            stamp = f"{prefix}.{int((answered - second) * 1000):03d}Z"
            rid = logged_request_id(request_id)
            days.setdefault(prefix[:10], []).extend(
                {
                    "request_id": rid,
                    "item": item,
                    "time": stamp,
                    "stage": stage,
                    "model_version": version,
                    "zone": p["zone"],
                    "resolution": p["resolution"],
                    "date": p["date"],
                    "block": blocks[p["block"][0]],
                    "expected": p["expected_crashes"],
                    "level": p["risk_level"],
                    **extra,
                }
                for item, p in enumerate(predictions)
            )
        return [
            (day, orjson.dumps(rows)[1:-1].replace(b"},{", b"}\n{") + b"\n", len(rows))
            for day, rows in days.items()
        ]

    def close(self, timeout: float = 10.0) -> None:
        """Stop the writer thread and write what is left (the worker is shutting down)."""
        self._stop.set()
        self._wake.set()
        self._thread.join(timeout)
        self.flush()
        self.sink.close()


def _empty_frame() -> pd.DataFrame:
    return pd.DataFrame(
        {
            "request_id": pd.Series(dtype=object),
            "item": pd.Series(dtype=np.int64),
            "time": pd.Series(dtype="datetime64[ns, UTC]"),
            "stage": pd.Series(dtype=object),
            "model_version": pd.Series(dtype=np.int64),
            "zone": pd.Series(dtype=object),
            "resolution": pd.Series(dtype=np.int64),
            "date": pd.Series(dtype="datetime64[ns]"),
            "block": pd.Series(dtype=np.int64),
            "expected": pd.Series(dtype=np.float64),
            "level": pd.Series(dtype=object),
        }
    )


def _read_file(path: Path) -> tuple[list[dict], int]:
    """A file's rows and how many lines could not be read: a process killed mid-write leaves a
    truncated last line, which is skipped (its request's other rows are still read)."""
    rows: list[dict] = []
    bad = 0
    for line in path.read_bytes().splitlines():
        if not line.strip():
            continue
        try:
            row = orjson.loads(line)
        except orjson.JSONDecodeError:
            bad += 1
            continue
        if not isinstance(row, dict) or not set(COLUMNS) <= row.keys():
            bad += 1
            continue
        rows.append(row)
    return rows, bad


def read_predictions(
    root: Path, since: date | None = None, stages: Sequence[str] | None = None
) -> pd.DataFrame:
    """Every logged prediction under root (answered on or after `since`, UTC, of `stages`), typed:
    `time` UTC datetime64, `date` datetime64[ns] (midnight), int item/model_version/resolution/
    block, one row per (request_id, item, stage). Unreadable lines are skipped, counted in
    `frame.attrs["skipped_lines"]` and logged."""
    root = Path(root)
    stage_dirs = sorted(p for p in root.iterdir() if p.is_dir()) if root.is_dir() else []
    if stages is not None:
        stage_dirs = [p for p in stage_dirs if p.name in set(stages)]
    first_day = since.isoformat() if since is not None else ""
    rows: list[dict] = []
    skipped = 0
    for stage_dir in stage_dirs:
        for day_dir in sorted(stage_dir.iterdir()):
            if not day_dir.is_dir() or day_dir.name < first_day:
                continue
            for path in sorted(day_dir.glob("*.jsonl")):
                file_rows, bad = _read_file(path)
                rows.extend(file_rows)
                skipped += bad
    if skipped:
        log.warning("prediction log: skipped %d unreadable lines under %s", skipped, root)
    if not rows:
        frame = _empty_frame()
    else:
        frame = pd.DataFrame.from_records(rows, columns=COLUMNS)
        frame["time"] = pd.to_datetime(frame["time"], utc=True, format="ISO8601")
        frame["date"] = pd.to_datetime(frame["date"], format="%Y-%m-%d").astype("datetime64[ns]")
        for column in ("item", "model_version", "resolution", "block"):
            frame[column] = frame[column].astype(np.int64)
        frame["expected"] = frame["expected"].astype(np.float64)
        if since is not None:
            frame = frame[frame["time"] >= pd.Timestamp(since, tz=UTC)]
        frame = (
            frame.drop_duplicates(["request_id", "item", "stage"])
            .sort_values(["time", "request_id", "item"], kind="stable")
            .reset_index(drop=True)
        )
    frame.attrs["skipped_lines"] = skipped
    return frame
