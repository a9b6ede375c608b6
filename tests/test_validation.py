"""Validation and quarantine, pinned on rows built by hand in the CSV export's format."""

from __future__ import annotations

import pandas as pd

from visionzero.data.schema import CSV_COLUMNS
from visionzero.data.validation import dedupe, validate


def row(**values: str) -> dict[str, str]:
    base = {col: "" for col in CSV_COLUMNS}
    base.update(
        {
            "CRASH DATE": "03/15/2023",
            "CRASH TIME": "8:05",
            "LATITUDE": "40.7128",
            "LONGITUDE": "-74.0060",
            "COLLISION_ID": "4610001",
            "BOROUGH": "manhattan",
            "NUMBER OF PERSONS INJURED": "1",
        }
    )
    base.update(values)
    return base


def test_valid_row_is_typed() -> None:
    typed, quarantine = validate(pd.DataFrame([row()]), "snapshot")
    assert quarantine.empty
    assert typed.loc[0, "collision_id"] == 4610001
    assert typed.loc[0, "crash_date"] == pd.Timestamp("2023-03-15")
    assert typed.loc[0, "crash_minute"] == 8 * 60 + 5
    assert typed.loc[0, "borough"] == "MANHATTAN"
    assert bool(typed.loc[0, "geocoded"])


def test_each_reason_is_quarantined_with_its_name() -> None:
    rows = [
        row(COLLISION_ID=""),
        row(COLLISION_ID="abc"),
        {**row(), "CRASH DATE": "2023-13-45"},
        {**row(), "CRASH TIME": "25:00"},
        {**row(), "LATITUDE": "north"},
        {**row(), "NUMBER OF PERSONS INJURED": "-1"},
        {**row(), "NUMBER OF PERSONS INJURED": "1.5"},
        row(),
    ]
    typed, quarantine = validate(pd.DataFrame(rows), "api")
    assert len(typed) == 1 and len(quarantine) == 7
    assert quarantine["reason"].value_counts().to_dict() == {
        "collision_id": 2,
        "crash_date": 1,
        "crash_time": 1,
        "coordinates": 1,
        "counts": 2,
    }
    assert set(quarantine["source"]) == {"api"}
    assert len(typed) + len(quarantine) == len(rows)  # nothing dropped silently


def test_placeholder_and_outside_coordinates_are_kept_but_not_geocoded() -> None:
    rows = [
        {**row(), "LATITUDE": "0", "LONGITUDE": "0"},
        {**row(), "LATITUDE": "42.0"},
        {**row(), "LATITUDE": "", "LONGITUDE": ""},
        {**row(), "CRASH TIME": ""},
    ]
    typed, quarantine = validate(pd.DataFrame(rows), "snapshot")
    assert quarantine.empty
    assert typed["geocoded"].tolist() == [False, False, False, True]
    assert typed["latitude"].isna().tolist() == [True, True, True, False]
    assert pd.isna(typed.loc[3, "crash_minute"])  # a missing time is allowed (W05 has none)


def test_dedupe_keeps_the_later_source() -> None:
    snapshot, _ = validate(pd.DataFrame([row()]), "snapshot")
    api, _ = validate(pd.DataFrame([{**row(), "NUMBER OF PERSONS INJURED": "2"}]), "api")
    merged, duplicates = dedupe(pd.concat([snapshot, api], ignore_index=True))
    assert duplicates == 1
    assert merged.loc[0, "source"] == "api" and merged.loc[0, "persons_injured"] == 2
