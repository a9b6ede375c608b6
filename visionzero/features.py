"""Features shared by training and serving: zones, time blocks, day features, weather with fallbacks."""
from __future__ import annotations

from functools import lru_cache

import h3
import holidays
import numpy as np
import pandas as pd

from visionzero.settings import NYC_BOX

WEATHER_FIELDS = ["prcp", "snow", "snwd", "tmax", "tmin", "awnd"]
DAY_FEATURES = ["dow", "month", "is_holiday", "year_frac", "doy_sin", "doy_cos", *WEATHER_FIELDS]
DAYTYPE_NAMES = ["weekday", "saturday", "sunday_or_holiday"]


def time_blocks(block_hours: int) -> list[tuple[int, int]]:
    if 24 % block_hours:
        raise ValueError(f"block_hours must divide 24, got {block_hours}")
    return [(start, start + block_hours) for start in range(0, 24, block_hours)]


def zones_for(lat: np.ndarray, lon: np.ndarray, resolution: int) -> np.ndarray:
    """H3 cell of each point (the one mapping used in training and serving); "" where no coordinate."""
    lat = np.asarray(lat, dtype=float)
    lon = np.asarray(lon, dtype=float)
    ok = np.isfinite(lat) & np.isfinite(lon)
    out = np.full(lat.shape, "", dtype=object)
    out[ok] = [h3.latlng_to_cell(a, b, resolution) for a, b in zip(lat[ok], lon[ok])]
    return out


def inside_nyc(lat: np.ndarray, lon: np.ndarray) -> np.ndarray:
    return ((lat >= NYC_BOX["lat_min"]) & (lat <= NYC_BOX["lat_max"])
            & (lon >= NYC_BOX["lon_min"]) & (lon <= NYC_BOX["lon_max"]))


@lru_cache(maxsize=64)
def _holidays_for(year: int) -> frozenset:
    return frozenset(holidays.country_holidays("US", subdiv="NY", years=year).keys())


def is_holiday(dates: pd.DatetimeIndex) -> np.ndarray:
    return np.array([d.date() in _holidays_for(d.year) for d in dates], dtype=bool)


def daytype(dates: pd.DatetimeIndex) -> np.ndarray:
    """0 weekday, 1 Saturday, 2 Sunday or public holiday: the day types whose hourly patterns differ."""
    dow = dates.dayofweek.to_numpy()
    out = np.where(dow == 5, 1, np.where(dow == 6, 2, 0))
    return np.where(is_holiday(dates), 2, out)


def climatology(weather: pd.DataFrame) -> dict[str, list[float]]:
    """Monthly means of each weather field: the fallback when neither the request nor a record has weather."""
    by_month = weather.assign(month=weather["date"].dt.month).groupby("month")[WEATHER_FIELDS].mean()
    return {f: [float(by_month.loc[m, f]) for m in range(1, 13)] for f in WEATHER_FIELDS}


def recorded_weather(dates: pd.DatetimeIndex, weather: pd.DataFrame | None) -> pd.DataFrame:
    """Recorded weather values aligned with `dates` (NaN where there is no record)."""
    known = pd.DataFrame({"date": pd.DatetimeIndex(dates).normalize()})
    if weather is None:
        return known.assign(**{f: np.nan for f in WEATHER_FIELDS})[WEATHER_FIELDS]
    return known.merge(weather[["date", *WEATHER_FIELDS]].drop_duplicates("date"), on="date",
                       how="left")[WEATHER_FIELDS]


def day_frame(dates: pd.DatetimeIndex, known: pd.DataFrame,
              clim: dict[str, list[float]]) -> tuple[pd.DataFrame, np.ndarray]:
    """Day-level features for `dates` and whether key weather (rain, temperatures) was filled.

    `known` holds weather values aligned with `dates` (recorded, or given by a request), NaN where
    unknown; a missing value is filled from the monthly climatology, never invented otherwise.
    """
    dates = pd.DatetimeIndex(dates).normalize()
    frame = pd.DataFrame({
        "dow": dates.dayofweek, "month": dates.month, "is_holiday": is_holiday(dates).astype(int),
        "year_frac": dates.year + (dates.dayofyear - 1) / 365.25,
        "doy_sin": np.sin(2 * np.pi * dates.dayofyear / 365.25),
        "doy_cos": np.cos(2 * np.pi * dates.dayofyear / 365.25),
    }, index=range(len(dates)))
    filled = np.zeros(len(dates), dtype=bool)
    months = dates.month.to_numpy() - 1
    for field in WEATHER_FIELDS:
        values = pd.to_numeric(known[field], errors="coerce").to_numpy(dtype=float, copy=True)
        missing = np.isnan(values)
        if field in ("prcp", "tmax", "tmin"):
            filled |= missing
        values[missing] = np.asarray(clim[field])[months[missing]]
        frame[field] = values
    return frame[DAY_FEATURES], filled


def block_of_minute(minutes: np.ndarray, block_hours: int) -> np.ndarray:
    return (np.asarray(minutes) // 60 // block_hours).astype(int)
