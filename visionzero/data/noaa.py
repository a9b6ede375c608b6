"""Central Park daily weather (NOAA GHCN-Daily, station USW00094728).

Bundled file plus NOAA's web service.
"""

from __future__ import annotations

import logging
from datetime import date
from pathlib import Path

import pandas as pd

from visionzero.data.http import RetryPolicy, get_json, retrying_session
from visionzero.platform.settings import settings

log = logging.getLogger(__name__)
STATION = "USW00094728"
WEATHER_COLUMNS = ["AWND", "PRCP", "SNOW", "SNWD", "TMAX", "TMIN"]


def _typed(frame: pd.DataFrame) -> pd.DataFrame:
    out = pd.DataFrame({"date": pd.to_datetime(frame["DATE"]).dt.normalize()})
    for col in WEATHER_COLUMNS:
        values = frame[col] if col in frame else pd.Series(index=frame.index, dtype=float)
        out[col.lower()] = pd.to_numeric(values, errors="coerce").astype("float64")
    return out


def read_bundled(path: Path) -> pd.DataFrame:
    return _typed(pd.read_csv(path, dtype=str))


def fetch_noaa(start: date, end: date, policy: RetryPolicy | None = None) -> pd.DataFrame:
    """Daily summaries from NOAA's access-data service; values as published, gaps left as NaN."""
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
    body = get_json(retrying_session(policy), settings().noaa_url, params, {}, policy)
    frame = pd.DataFrame([r for r in body if isinstance(r, dict)] if isinstance(body, list) else [])
    if frame.empty:
        return _typed(pd.DataFrame({"DATE": []}))
    return _typed(frame)


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
