"""Central Park daily weather (NOAA GHCN-Daily, station USW00094728).

Bundled file plus NOAA's web service.
"""

from __future__ import annotations

import json
import logging
from datetime import date
from pathlib import Path

import pandas as pd

from visionzero.data.http import RetryPolicy, SourceUnavailable, get_json, retrying_session
from visionzero.platform.settings import settings

log = logging.getLogger(__name__)
STATION = "USW00094728"
WEATHER_COLUMNS = ["AWND", "PRCP", "SNOW", "SNWD", "TMAX", "TMIN"]
DATE_FORMAT = "%Y-%m-%d"


def _typed(frame: pd.DataFrame) -> pd.DataFrame:
    out = pd.DataFrame({"date": pd.to_datetime(frame["DATE"], format=DATE_FORMAT)})
    for col in WEATHER_COLUMNS:
        values = frame[col] if col in frame else pd.Series(index=frame.index, dtype=float)
        out[col.lower()] = pd.to_numeric(values, errors="coerce").astype("float64")
    return out


def read_bundled(path: Path) -> pd.DataFrame:
    return _typed(pd.read_csv(path, dtype=str))


def _reason(record: object) -> str:
    """Why a NOAA record cannot be weather ("" when it can)."""
    if not isinstance(record, dict):
        return "malformed_record"
    day = pd.to_datetime(str(record.get("DATE", "")).strip(), format=DATE_FORMAT, errors="coerce")
    if pd.isna(day):
        return "weather_date"
    values = [record[col] for col in WEATHER_COLUMNS if record.get(col) is not None]
    if any(str(v).strip() and pd.isna(pd.to_numeric(str(v), errors="coerce")) for v in values):
        return "weather_values"
    return ""


def validate_records(records: list) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Split NOAA records into (typed weather, quarantined records with a `reason`).

    Reasons: malformed_record (not an object), weather_date (no DATE, or not YYYY-MM-DD),
    weather_values (a value present but not a number). A bad record must neither crash the load
    nor become weather, and nothing is dropped silently."""
    reasons = [_reason(record) for record in records]
    good = [
        {**record, "DATE": str(record["DATE"]).strip()}
        for record, reason in zip(records, reasons, strict=True)
        if not reason
    ]
    bad = [
        {"record": json.dumps(record)[:500], "reason": reason}
        for record, reason in zip(records, reasons, strict=True)
        if reason
    ]
    typed = _typed(pd.DataFrame(good, columns=["DATE", *WEATHER_COLUMNS]))
    return typed, pd.DataFrame(bad, columns=["record", "reason"])


def fetch_noaa(
    start: date, end: date, policy: RetryPolicy | None = None
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Daily summaries from NOAA's access-data service, validated: (weather, quarantined).

    Values as published, gaps left as NaN. Raises SourceUnavailable when NOAA cannot be read."""
    params = {
        "dataset": "daily-summaries",
        "stations": STATION,
        "startDate": start.isoformat(),
        "endDate": end.isoformat(),
        "dataTypes": ",".join(WEATHER_COLUMNS),
        "units": "standard",
        "format": "json",
    }
    policy = policy or RetryPolicy()
    url = settings().noaa_url
    body = get_json(retrying_session(policy), url, params, {}, policy)
    if not isinstance(body, list):
        raise SourceUnavailable(f"{url} did not answer a JSON array: {str(body)[:200]}")
    return validate_records(body)


def merge(bundled: pd.DataFrame, fetched: pd.DataFrame) -> pd.DataFrame:
    both = pd.concat([bundled, fetched], ignore_index=True)
    return both.drop_duplicates("date", keep="last").sort_values("date").reset_index(drop=True)


def gaps(weather: pd.DataFrame, days: pd.Series) -> dict[str, int]:
    """Complete days with no weather row, and per-field missing values: recorded, never filled."""
    present = weather[weather["date"].isin(days)]
    out = {"missing_days": int((~days.isin(weather["date"])).sum())}
    for col in ("prcp", "tmax", "tmin", "awnd", "snow"):
        out[f"missing_{col}"] = int(present[col].isna().sum())
    return out
