"""Typed artifacts passed between pipeline steps (small pydantic records; bulk data stays on disk)."""
from __future__ import annotations

from pydantic import BaseModel


class DatasetRef(BaseModel):
    """The dataset a run used: where it lives, its DVC version and what loading it found."""

    data_dir: str
    version: str | None
    rows: int
    complete_days: int
    quarantined: dict[str, int]
    source: str
    source_note: str
    duplicates_merged: int
    flags: dict[str, int]
    first_date: str
    last_date: str
    weather_gaps: dict[str, int]
    api_rows_new: int
