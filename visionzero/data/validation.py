"""Row validation.

Every raw (string) row either becomes a typed row or goes to quarantine with its reason.
Each column is parsed once per distinct value and mapped back to the rows: a crash column holds
few distinct values (dates, times, counts), so 2.5 million rows validate in seconds, not minutes.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pandas as pd

from visionzero.data.schema import COUNT_COLUMNS, COUNT_FIELDS, CSV_COLUMNS, NYC_BOX

TIME_PATTERN = r"^\s*(\d{1,2}):(\d{2})(?::\d{2})?\s*$"


class _Column:
    """One raw column as (codes, distinct values as strings): a missing column or cell is ""."""

    def __init__(self, raw: pd.DataFrame, name: str) -> None:
        if name in raw:
            codes, uniques = pd.factorize(raw[name], use_na_sentinel=True)
            values = pd.Series(uniques, dtype=object).astype(str)
        else:
            codes, values = np.full(len(raw), -1, dtype=np.intp), pd.Series([], dtype=object)
        if (codes == -1).any():  # missing cells read as "", as the CSV export writes them
            codes = np.where(codes == -1, len(values), codes)
            values = pd.concat([values, pd.Series([""], dtype=object)], ignore_index=True)
        self.codes, self.values = codes, values.reset_index(drop=True)

    def parse(self, parser: Callable[[pd.Series], pd.Series]) -> np.ndarray:
        """parser applied to each distinct value, spread over the rows."""
        return parser(self.values).to_numpy()[self.codes]

    def blank(self) -> np.ndarray:
        return self.parse(lambda v: v.str.strip() == "")


def _day(values: pd.Series) -> pd.Series:
    return pd.to_datetime(values, format="%m/%d/%Y", errors="coerce")


def crash_days(raw: pd.DataFrame) -> np.ndarray:
    """Each raw row's CRASH DATE as validate reads it (NaT where it does not parse)."""
    return _Column(raw, "CRASH DATE").parse(_day)


def _number(values: pd.Series) -> pd.Series:
    return pd.to_numeric(values, errors="coerce").astype("float64")


def _text(values: pd.Series, strip: bool) -> pd.Series:
    out = (values.str.strip().str.upper() if strip else values).astype(object)
    return out.where(out != "", pd.NA)


def validate(raw: pd.DataFrame, source: str) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Split raw CSV-shaped rows into (typed rows, quarantined raw rows with a `reason` column).

    Reasons, checked in this order (a row is quarantined under the first it fails): collision_id,
    crash_date, crash_time, coordinates (present but not numbers), counts (negative or not
    integers)."""
    reason = np.full(len(raw), "", dtype=object)

    def flag(mask: np.ndarray, name: str) -> None:
        reason[(reason == "") & mask] = name

    cid = _Column(raw, "COLLISION_ID").parse(_number)
    with np.errstate(invalid="ignore"):
        flag(np.isnan(cid) | (cid <= 0) | (cid % 1 != 0), "collision_id")

    day = crash_days(raw)
    flag(pd.isna(day), "crash_date")

    time_column = _Column(raw, "CRASH TIME")
    parts = time_column.values.str.extract(TIME_PATTERN).astype(float)
    hour, minute = parts[0].to_numpy()[time_column.codes], parts[1].to_numpy()[time_column.codes]
    time_blank = time_column.blank()
    flag(~time_blank & (np.isnan(hour) | (hour > 23) | (minute > 59)), "crash_time")

    lat_column, lon_column = _Column(raw, "LATITUDE"), _Column(raw, "LONGITUDE")
    lat, lon = lat_column.parse(_number), lon_column.parse(_number)
    unparsable = (~lat_column.blank() & np.isnan(lat)) | (~lon_column.blank() & np.isnan(lon))
    flag(unparsable, "coordinates")

    counts = {}
    bad_count = np.zeros(len(raw), dtype=bool)
    for col in COUNT_COLUMNS:
        column = _Column(raw, col)
        values = column.parse(_number)
        with np.errstate(invalid="ignore"):
            bad_count |= ~column.blank() & (np.isnan(values) | (values < 0) | (values % 1 != 0))
        counts[COUNT_FIELDS[col]] = values
    flag(bad_count, "counts")

    ok = reason == ""
    minutes = np.where(ok & ~time_blank, hour * 60 + minute, np.nan)
    with np.errstate(invalid="ignore"):
        inside = (
            (lat >= NYC_BOX["lat_min"])
            & (lat <= NYC_BOX["lat_max"])
            & (lon >= NYC_BOX["lon_min"])
            & (lon <= NYC_BOX["lon_max"])
        )
    typed = pd.DataFrame(
        {
            "collision_id": cid[ok].astype("int64"),
            "crash_date": pd.DatetimeIndex(day[ok]),
            "crash_minute": pd.array(minutes[ok], dtype="Float64").astype("Int16"),
            "borough": pd.array(
                _Column(raw, "BOROUGH").parse(lambda v: _text(v, strip=True))[ok], dtype="string"
            ),
            "latitude": np.where(inside, lat, np.nan)[ok],
            "longitude": np.where(inside, lon, np.nan)[ok],
            "geocoded": inside[ok],
            **{
                name: pd.array(v[ok], dtype="Float64").round().astype("Int16")
                for name, v in counts.items()
            },
            "factor_1": pd.array(
                _Column(raw, "CONTRIBUTING FACTOR VEHICLE 1").parse(
                    lambda v: _text(v, strip=False)
                )[ok],
                dtype="string",
            ),
            "source": source,
        }
    )
    quarantine = raw[~ok].reindex(columns=CSV_COLUMNS).fillna("").astype(str)
    quarantine["reason"] = reason[~ok]
    quarantine["source"] = source
    return typed, quarantine.reset_index(drop=True)


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
