"""`$VZ_HOME/serve.json`: the record of a running `python run.py serve`.

Written by the local canary the moment a child starts (so the next `serve` can stop what a crashed
one left), read by the monitor (which backends and which Prometheus to ask). `ServeRecord` is its
one typed form and the functions below the only code that reads or writes the file.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from pydantic import BaseModel

from visionzero.platform.settings import paths

SERVE_RECORD_FILE = "serve.json"


class ServeRecord(BaseModel):
    """Who serves and the process group of every child; what the monitor may query."""

    pid: int
    port: int
    workdir: str
    groups: dict[str, int]  # child name -> its process group
    backends: dict[str, str] = {}  # stage -> base URL of its running backend
    prometheus_url: str | None = None  # set once `serve --monitor`'s Prometheus is ready


def serve_record_path() -> Path:
    return paths().home / SERVE_RECORD_FILE


def save_serve_record(path: Path, record: ServeRecord) -> None:
    """Atomically (a temp file renamed over it): a reader never sees half a record."""
    partial = path.with_suffix(".partial")
    partial.write_text(json.dumps(record.model_dump(mode="json")))
    os.replace(partial, path)


def load_serve_record(path: Path) -> ServeRecord | None:
    """The record, or None when there is none or it cannot be read (a serve that crashed while
    writing it, or a file someone else wrote)."""
    try:
        return ServeRecord.model_validate_json(path.read_text())
    except (OSError, ValueError):
        return None
