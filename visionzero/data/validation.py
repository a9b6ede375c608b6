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


def _collision_ids(raw: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
    """COLLISION_ID as numbers, and where it is not a positive integer."""
    cid = _Column(raw, "COLLISION_ID").parse(_number)
    with np.errstate(invalid="ignore"):
        return cid, np.isnan(cid) | (cid <= 0) | (cid % 1 != 0)


def _crash_minutes(raw: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
    """CRASH TIME as minutes after midnight (NaN when blank: the crash stays, untimed), and where
    it is given but not a time of day."""
    column = _Column(raw, "CRASH TIME")
    parts = column.values.str.extract(TIME_PATTERN).astype(float)
    hour, minute = parts[0].to_numpy()[column.codes], parts[1].to_numpy()[column.codes]
    blank = column.blank()
    bad = ~blank & (np.isnan(hour) | (hour > 23) | (minute > 59))
    return np.where(blank, np.nan, hour * 60 + minute), bad


def _coordinates(raw: pd.DataFrame) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """LATITUDE and LONGITUDE as numbers, and where one is given but not a number (a blank one
    only leaves the crash without a zone)."""
    lat_column, lon_column = _Column(raw, "LATITUDE"), _Column(raw, "LONGITUDE")
    lat, lon = lat_column.parse(_number), lon_column.parse(_number)
    unparsable = (~lat_column.blank() & np.isnan(lat)) | (~lon_column.blank() & np.isnan(lon))
    return lat, lon, unparsable


def _counts(raw: pd.DataFrame) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """The injured and killed counts by field name, and where any is not a non-negative integer."""
    counts = {}
    bad = np.zeros(len(raw), dtype=bool)
    for col in COUNT_COLUMNS:
        column = _Column(raw, col)
        values = column.parse(_number)
        with np.errstate(invalid="ignore"):
            bad |= ~column.blank() & (np.isnan(values) | (values < 0) | (values % 1 != 0))
        counts[COUNT_FIELDS[col]] = values
    return counts, bad


def _first_failure(failures: dict[str, np.ndarray], rows: int) -> np.ndarray:
    """Each row's reason: the first check (in `failures`' order) it fails, "" when none."""
    reason = np.full(rows, "", dtype=object)
    for name, mask in failures.items():
        reason[(reason == "") & mask] = name
    return reason


def _geocoded(lat: np.ndarray, lon: np.ndarray) -> dict[str, np.ndarray]:
    """Coordinates inside the NYC box, NaN elsewhere (0/0 placeholders, typos), and which are."""
    with np.errstate(invalid="ignore"):
        inside = (
            (lat >= NYC_BOX["lat_min"])
            & (lat <= NYC_BOX["lat_max"])
            & (lon >= NYC_BOX["lon_min"])
            & (lon <= NYC_BOX["lon_max"])
        )
    return {
        "latitude": np.where(inside, lat, np.nan),
        "longitude": np.where(inside, lon, np.nan),
        "geocoded": inside,
    }


def validate(raw: pd.DataFrame, source: str) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Split raw CSV-shaped rows into (typed rows, quarantined raw rows with a `reason` column).

    Reasons, checked in this order (a row is quarantined under the first it fails): collision_id,
    crash_date, crash_time, coordinates (present but not numbers), counts (negative or not
    integers)."""
    cid, bad_cid = _collision_ids(raw)
    day = crash_days(raw)
    minutes, bad_time = _crash_minutes(raw)
    lat, lon, bad_coordinates = _coordinates(raw)
    counts, bad_counts = _counts(raw)
    reason = _first_failure(
        {
            "collision_id": bad_cid,
            "crash_date": pd.isna(day),
            "crash_time": bad_time,
            "coordinates": bad_coordinates,
            "counts": bad_counts,
        },
        len(raw),
    )
    ok = reason == ""
    typed = pd.DataFrame(
        {
            "collision_id": cid[ok].astype("int64"),
            "crash_date": pd.DatetimeIndex(day[ok]),
            "crash_minute": pd.array(minutes[ok], dtype="Float64").astype("Int16"),
            "borough": pd.array(
                _Column(raw, "BOROUGH").parse(lambda v: _text(v, strip=True))[ok], dtype="string"
            ),
            **{name: values[ok] for name, values in _geocoded(lat, lon).items()},
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
