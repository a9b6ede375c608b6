"""Where the prediction log's encoded rows go: this worker's own file per stage and UTC day, or
stdout. Each sink keeps the day's byte cap itself, because only it knows what the day holds so
far (on disk: every worker's files of the day together; on stdout: this worker's share).
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import re
import select
import shutil
import socket
import sys
import time
from collections.abc import Iterator
from datetime import date, timedelta
from pathlib import Path
from typing import BinaryIO

from visionzero.platform.settings import settings

DAY_FOLDER = re.compile(r"\d{4}-\d{2}-\d{2}")
WRITERS_LOCK = ".writers.lock"  # in the stage folder: one day total checked and written at a time
log = logging.getLogger("bentoml.crash_risk.prediction_log")


class Sink:
    """Where encoded batches go: `write(day, lines)`, with every line ending in a newline; it
    returns how many of the lines it dropped because the day's bytes are used up."""

    max_day_bytes = 0

    def write(self, day: str, lines: bytes) -> int:
        raise NotImplementedError

    def close(self) -> None:
        """Release what the sink holds."""


def whole_lines(lines: bytes, room: int) -> tuple[bytes, int]:
    """The leading whole lines that fit in `room` bytes, and how many lines did not."""
    if len(lines) <= room:
        return lines, 0
    cut = lines.rfind(b"\n", 0, max(room, 0)) + 1
    return lines[:cut], lines.count(b"\n", cut)


class DailyFiles(Sink):
    """This process's own file per UTC day: `<root>/<stage>/<day>/<host>-<pid>-<start ms>.jsonl`,
    the day's folder kept under `max_day_bytes` together with the other workers' files, and the
    stage's folders of the last `keep_days` days kept."""

    def __init__(
        self, root: Path, stage: str, max_day_bytes: int | None = None, keep_days: int | None = None
    ) -> None:
        current = settings()
        self.directory = root / stage
        self.name = f"{socket.gethostname()}-{os.getpid()}-{int(time.time() * 1000)}.jsonl"
        self.max_day_bytes = max_day_bytes or current.vz_prediction_log_max_day_bytes
        self.keep_days = keep_days or current.vz_prediction_log_keep_days
        self.day: str | None = None
        self.file: BinaryIO | None = None

    def write(self, day: str, lines: bytes) -> int:
        if day != self.day:
            self.close()
            folder = self.directory / day
            folder.mkdir(parents=True, exist_ok=True)
            self.delete_old_days(day)
            self.file = open(folder / self.name, "ab")  # noqa: SIM115 - kept open for the day
            self.day = day
        assert self.file is not None
        with self._writers_lock():  # the total and the write as one step across the workers
            kept, dropped = whole_lines(lines, self.max_day_bytes - self.day_bytes(day))
            self.file.write(kept)
            self.file.flush()  # the size the next writer reads
        if kept:
            os.fsync(self.file.fileno())
        return dropped

    @contextlib.contextmanager
    def _writers_lock(self) -> Iterator[None]:
        with open(self.directory / WRITERS_LOCK, "ab") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            yield  # closing the file releases the lock

    def day_bytes(self, day: str) -> int:
        """What every writer of the stage has written on `day` so far: a few stats."""
        with os.scandir(self.directory / day) as entries:
            return sum(e.stat().st_size for e in entries if e.name.endswith(".jsonl"))

    def delete_old_days(self, day: str) -> None:
        """The stage's day folders before the last `keep_days` (counting `day`) are deleted."""
        first_kept = (date.fromisoformat(day) - timedelta(days=self.keep_days - 1)).isoformat()
        for folder in self.directory.iterdir():
            if DAY_FOLDER.fullmatch(folder.name) and folder.name < first_kept:
                shutil.rmtree(folder, ignore_errors=True)  # another worker may delete it too
                log.info("prediction log: deleted %s (older than %d days)", folder, self.keep_days)

    def close(self) -> None:
        if self.file is not None:
            self.file.close()
        self.file, self.day = None, None


class Stdout(Sink):
    """Rows as JSON lines on stdout. Workers share it, so each write is whole lines of at most
    PIPE_BUF bytes: a pipe never interleaves such a write with another process's. Each worker
    writes at most `max_day_bytes` a day (its share of the stage's cap)."""

    def __init__(self, max_day_bytes: int | None = None) -> None:
        current = settings()
        self.max_day_bytes = max_day_bytes or (
            current.vz_prediction_log_max_day_bytes // current.vz_workers
        )
        self.day: str | None = None
        self.written = 0

    def write(self, day: str, lines: bytes) -> int:
        if day != self.day:
            self.day, self.written = day, 0
        lines, dropped = whole_lines(lines, self.max_day_bytes - self.written)
        self.written += len(lines)
        fd = sys.stdout.fileno()
        chunk_start = 0
        while chunk_start < len(lines):
            end = lines.rfind(b"\n", chunk_start, chunk_start + select.PIPE_BUF)
            if end < 0:  # one line longer than PIPE_BUF: written whole
                end = lines.index(b"\n", chunk_start)
            view = memoryview(lines)[chunk_start : end + 1]
            while view:
                view = view[os.write(fd, view) :]
            chunk_start = end + 1
        return dropped
