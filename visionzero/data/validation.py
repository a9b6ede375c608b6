"""Row validation.

Every raw (string) row either becomes a typed row or goes to quarantine with its reason.
"""

from __future__ import annotations

import pandas as pd

from visionzero.data.schema import COUNT_COLUMNS, COUNT_FIELDS, CSV_COLUMNS, NYC_BOX


def _blank(s: pd.Series) -> pd.Series:
    return s.isna() | (s.astype(str).str.strip() == "")


def validate(raw: pd.DataFrame, source: str) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Split raw CSV-shaped rows into (typed rows, quarantined raw rows with a `reason` column).

    Reasons, checked in this order (a row is quarantined under the first it fails): collision_id,
    crash_date, crash_time, coordinates (present but not numbers), counts (negative or not
    integers)."""
    raw = raw.reindex(columns=CSV_COLUMNS).fillna("").astype(str)
    reason = pd.Series("", index=raw.index, dtype=object)

    def flag(mask: pd.Series, name: str) -> None:
        reason[(reason == "") & mask] = name

    cid = pd.to_numeric(raw["COLLISION_ID"], errors="coerce")
    flag(cid.isna() | (cid <= 0) | (cid % 1 != 0), "collision_id")

    day = pd.to_datetime(raw["CRASH DATE"], format="%m/%d/%Y", errors="coerce")
    flag(day.isna(), "crash_date")

    time_parts = (
        raw["CRASH TIME"].str.extract(r"^\s*(\d{1,2}):(\d{2})(?::\d{2})?\s*$").astype(float)
    )
    time_blank = _blank(raw["CRASH TIME"])
    bad_time = ~time_blank & (time_parts[0].isna() | (time_parts[0] > 23) | (time_parts[1] > 59))
    flag(bad_time, "crash_time")

    lat = pd.to_numeric(raw["LATITUDE"], errors="coerce")
    lon = pd.to_numeric(raw["LONGITUDE"], errors="coerce")
    unparsable = (~_blank(raw["LATITUDE"]) & lat.isna()) | (~_blank(raw["LONGITUDE"]) & lon.isna())
    flag(unparsable, "coordinates")

    counts = {}
    bad_count = pd.Series(False, index=raw.index)
    for col in COUNT_COLUMNS:
        values = pd.to_numeric(raw[col], errors="coerce")
        bad_count |= ~_blank(raw[col]) & (values.isna() | (values < 0) | (values % 1 != 0))
        counts[COUNT_FIELDS[col]] = values
    flag(bad_count, "counts")

    ok = reason == ""
    minutes = (time_parts[0] * 60 + time_parts[1]).where(ok & ~time_blank)
    inside = lat.between(NYC_BOX["lat_min"], NYC_BOX["lat_max"]) & lon.between(
        NYC_BOX["lon_min"], NYC_BOX["lon_max"]
    )
    typed = pd.DataFrame(
        {
            "collision_id": cid.where(ok).astype("Int64"),
            "crash_date": day,
            "crash_minute": minutes.astype("Int16"),
            "borough": raw["BOROUGH"].str.strip().str.upper().replace("", pd.NA).astype("string"),
            "latitude": lat.where(inside).astype("float64"),
            "longitude": lon.where(inside).astype("float64"),
            "geocoded": inside.astype(bool),
            **{name: v.where(ok).round().astype("Int16") for name, v in counts.items()},
            "factor_1": raw["CONTRIBUTING FACTOR VEHICLE 1"].replace("", pd.NA).astype("string"),
            "source": source,
        }
    )[ok.to_numpy()]
    typed["collision_id"] = typed["collision_id"].astype("int64")
    quarantine = raw[~ok.to_numpy()].copy()
    quarantine["reason"] = reason[~ok]
    quarantine["source"] = source
    return typed.reset_index(drop=True), quarantine.reset_index(drop=True)


def coordinate_flags(typed: pd.DataFrame) -> dict[str, int]:
    """Rows kept but not usable for zones.

    No coordinates, 0/0 placeholders, or outside the NYC box.
    """
    return {"not_geocoded": int((~typed["geocoded"]).sum())}


def dedupe(typed: pd.DataFrame) -> tuple[pd.DataFrame, int]:
    """Keep one row per collision_id; later sources (API after snapshot) win as corrections."""
    before = len(typed)
    out = (
        typed.drop_duplicates("collision_id", keep="last")
        .sort_values(["crash_date", "collision_id"], kind="stable")
        .reset_index(drop=True)
    )
    return out, before - len(out)
