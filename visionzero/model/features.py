"""Features shared by training and serving: day features, weather with fallbacks (zones and time
blocks come from the model's Grain)."""

from __future__ import annotations

from functools import lru_cache

import holidays
import numpy as np
import pandas as pd

from visionzero.data.schema import NYC_BOX

WEATHER_FIELDS = ["prcp", "snow", "snwd", "tmax", "tmin", "awnd"]
DAY_FEATURES = ["dow", "month", "is_holiday", "year_frac", "doy_sin", "doy_cos", *WEATHER_FIELDS]


def inside_nyc(lat: np.ndarray, lon: np.ndarray) -> np.ndarray:
    return (
        (lat >= NYC_BOX["lat_min"])
        & (lat <= NYC_BOX["lat_max"])
        & (lon >= NYC_BOX["lon_min"])
        & (lon <= NYC_BOX["lon_max"])
    )


def as_days(dates: object) -> np.ndarray:
    """Any dates (DatetimeIndex, Series, datetime64 array) as a numpy datetime64[D] array."""
    values = dates.to_numpy() if hasattr(dates, "to_numpy") else np.asarray(dates)
    return values.astype("datetime64[D]")


@lru_cache(maxsize=1)
def _holiday_days() -> np.ndarray:
    """New York public holidays 2000-2040 as sorted datetime64[D].

    One lookup table for all calls.
    """
    return np.array(sorted(_holiday_names().keys()), dtype="datetime64[D]")


@lru_cache(maxsize=1)
def _holiday_names() -> holidays.HolidayBase:
    return holidays.country_holidays("US", subdiv="NY", years=range(2000, 2041))


def holiday_name(day: object) -> str | None:
    """The New York public holiday on a date (datetime.date or anything pandas reads), if any."""
    return _holiday_names().get(day)


def is_holiday(days: np.ndarray) -> np.ndarray:
    table = _holiday_days()
    days = as_days(days)
    pos = np.minimum(np.searchsorted(table, days), len(table) - 1)
    return table[pos] == days


def day_of_week(days: np.ndarray) -> np.ndarray:
    """Monday 0 .. Sunday 6 (1970-01-01, day 0, was a Thursday)."""
    return (as_days(days).astype(np.int64) + 3) % 7


def daytype(days: np.ndarray) -> np.ndarray:
    """0 weekday, 1 Saturday, 2 Sunday or public holiday.

    The day types whose hourly patterns differ.
    """
    return daytype_of(day_of_week(days), is_holiday(days))


def daytype_of(dow: np.ndarray, holiday: np.ndarray) -> np.ndarray:
    return np.where(holiday.astype(bool) | (dow == 6), 2, np.where(dow == 5, 1, 0))


def climatology(weather: pd.DataFrame) -> dict[str, list[float]]:
    """Monthly means of each weather field.

    The fallback when neither the request nor a record has weather.
    """
    by_month = (
        weather.assign(month=weather["date"].dt.month).groupby("month")[WEATHER_FIELDS].mean()
    )
    return {f: [float(by_month.loc[m, f]) for m in range(1, 13)] for f in WEATHER_FIELDS}


def recorded_weather(days: np.ndarray, weather: pd.DataFrame | None) -> np.ndarray:
    """Recorded weather aligned with `days`, shape [n, len(WEATHER_FIELDS)].

    NaN where there is none.
    """
    days = as_days(days)
    out = np.full((len(days), len(WEATHER_FIELDS)), np.nan)
    if weather is None or not len(weather):
        return out
    known_days = as_days(weather["date"])
    order = np.argsort(known_days)
    known_days, values = known_days[order], weather[WEATHER_FIELDS].to_numpy(dtype=float)[order]
    pos = np.clip(np.searchsorted(known_days, days), 0, len(known_days) - 1)
    hit = known_days[pos] == days
    out[hit] = values[pos[hit]]
    return out


def day_matrix(
    days: np.ndarray, known: np.ndarray, clim: dict[str, list[float]]
) -> tuple[np.ndarray, np.ndarray]:
    """Day-level features (columns DAY_FEATURES, float32) and whether key weather was filled.

    `known` holds weather aligned with `days` (recorded, or given by a request), NaN where unknown;
    a missing value is filled from the monthly climatology, never invented otherwise. Pure numpy:
    the serving path calls this for every request.
    """
    days = as_days(days)
    years = days.astype("datetime64[Y]")
    month = days.astype("datetime64[M]").astype(np.int64) % 12
    doy = (days - years).astype(np.int64) + 1
    X = np.empty((len(days), len(DAY_FEATURES)), dtype=np.float64)
    X[:, 0] = day_of_week(days)
    X[:, 1] = month + 1
    X[:, 2] = is_holiday(days)
    X[:, 3] = years.astype(np.int64) + 1970 + (doy - 1) / 365.25
    X[:, 4] = np.sin(2 * np.pi * doy / 365.25)
    X[:, 5] = np.cos(2 * np.pi * doy / 365.25)
    weather = np.array(known, dtype=float, copy=True)
    missing = np.isnan(weather)
    fill = np.array([clim[f] for f in WEATHER_FIELDS]).T[month]  # [n, fields]
    weather[missing] = fill[missing]
    X[:, 6:] = weather
    key_fields = [WEATHER_FIELDS.index(f) for f in ("prcp", "tmax", "tmin")]
    return X.astype(np.float32), missing[:, key_fields].any(axis=1)
