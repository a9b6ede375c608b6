"""Request validation and vectorised prediction for the HTTP services (BentoML, and the benchmark's
plain FastAPI reference): both call `predict_items` so they compute exactly the same thing."""

from __future__ import annotations

import re

import h3
import numpy as np
from pydantic import BaseModel, Field

from visionzero.data.schema import NYC_BOX
from visionzero.model import features as F
from visionzero.model.crash_risk import CrashRiskModel
from visionzero.model.levels import RISK_LEVELS, p_at_least_one

MAX_ITEMS = 10_000
# Request field -> model weather field (units as NOAA GHCN-Daily: inches, deg F, mph).
WEATHER_REQUEST_FIELDS = {
    "precipitation": "prcp",
    "snow": "snow",
    "snow_depth": "snwd",
    "temperature_max": "tmax",
    "temperature_min": "tmin",
    "wind": "awnd",
}


class Item(BaseModel):
    """A place (latitude/longitude or an H3 zone) and a time; weather is optional."""

    latitude: float | None = None
    longitude: float | None = None
    zone: str | None = None
    datetime: str = Field(description="local time, YYYY-MM-DDTHH:MM")
    precipitation: float | None = Field(None, ge=0, description="inches")
    snow: float | None = Field(None, ge=0, description="inches")
    snow_depth: float | None = Field(None, ge=0, description="inches")
    temperature_max: float | None = Field(None, ge=-40, le=130, description="deg F")
    temperature_min: float | None = Field(None, ge=-40, le=130, description="deg F")
    wind: float | None = Field(None, ge=0, le=150, description="mph")


class Prediction(BaseModel):
    zone: str
    date: str
    block: list[int]
    expected_crashes: float
    risk_level: str
    risk_index: int
    p_at_least_one: float
    weather_source: str
    model_version: str
    stage: str


class InvalidItems(ValueError):
    """Raised with a message naming the offending field (`items[i].field`)."""


def _fail(index: np.ndarray, field: str, why: str) -> None:
    if len(index):
        more = f" (and {len(index) - 1} more items)" if len(index) > 1 else ""
        raise InvalidItems(f"items[{int(index[0])}].{field}: {why}{more}")


def _zones(items: list[Item], model: CrashRiskModel) -> np.ndarray:
    n = len(items)
    lat = np.array([np.nan if it.latitude is None else it.latitude for it in items], dtype=float)
    lon = np.array([np.nan if it.longitude is None else it.longitude for it in items], dtype=float)
    given = [it.zone for it in items]
    has_zone = np.array([z is not None for z in given])
    has_point = ~np.isnan(lat) & ~np.isnan(lon)
    _fail(
        np.flatnonzero(~has_zone & ~has_point), "latitude", "give latitude and longitude, or zone"
    )
    _fail(
        np.flatnonzero(~has_zone & (np.isnan(lat) != np.isnan(lon))),
        "longitude",
        "latitude and longitude go together",
    )
    outside = has_point & ~has_zone & ~F.inside_nyc(lat, lon)
    _fail(
        np.flatnonzero(outside),
        "latitude",
        "coordinates outside the New York City box "
        f"(lat {NYC_BOX['lat_min']}..{NYC_BOX['lat_max']}, "
        f"lon {NYC_BOX['lon_min']}..{NYC_BOX['lon_max']})",
    )
    zones = np.empty(n, dtype=object)
    located = has_point & ~has_zone
    zones[located] = model.grain.zones_of(lat[located], lon[located])
    for i in np.flatnonzero(has_zone):
        try:
            cell = model.grain.parse_zone(given[i])
        except ValueError as exc:
            _fail(np.array([i]), "zone", str(exc))
        clat, clon = h3.cell_to_latlng(cell)
        if not F.inside_nyc(np.array([clat]), np.array([clon]))[0]:
            _fail(np.array([i]), "zone", f"{given[i]!r} is outside New York City")
        zones[i] = cell
    return zones


DATETIME = re.compile(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}")


def _parse_datetimes(items: list[Item]) -> np.ndarray:
    """datetime64[m] per item; 400 on anything but a real YYYY-MM-DDTHH:MM."""
    texts = [it.datetime for it in items]
    bad = [i for i, text in enumerate(texts) if not DATETIME.fullmatch(text)]
    _fail(np.array(bad), "datetime", "expected YYYY-MM-DDTHH:MM")
    try:
        return np.array(texts, dtype="datetime64[m]")
    except ValueError:
        for i, text in enumerate(texts):
            try:
                np.datetime64(text, "m")
            except ValueError:
                _fail(np.array([i]), "datetime", f"{text!r} is not a real date and time")
        raise


def _item_weather(items: list[Item]) -> np.ndarray | None:
    if not any(getattr(it, name) is not None for it in items for name in WEATHER_REQUEST_FIELDS):
        return None
    names = {field: name for name, field in WEATHER_REQUEST_FIELDS.items()}
    ordered = [names[field] for field in F.WEATHER_FIELDS]  # columns in the model's weather order
    return np.array(
        [
            [np.nan if getattr(it, name) is None else getattr(it, name) for name in ordered]
            for it in items
        ],
        dtype=float,
    )


def predict_items(items: list[Item], model: CrashRiskModel, stage: str) -> list[dict]:
    if len(items) > MAX_ITEMS:
        raise InvalidItems(f"items: {len(items)} items; at most {MAX_ITEMS} per request")
    if not items:
        return []
    stamps = _parse_datetimes(items)
    zones = _zones(items, model)
    days = stamps.astype("datetime64[D]")
    blocks = model.grain.block_of_datetime(stamps)
    expected, source = model.expected(zones, days, blocks, item_weather=_item_weather(items))
    levels = model.levels(expected)
    p_one = p_at_least_one(expected)
    version = str(model.meta.get("model_version", "unknown"))
    day_strings = days.astype(str)
    spans = [list(span) for span in model.grain.spans]
    return [
        {
            "zone": z,
            "date": d,
            "block": spans[b],
            "expected_crashes": e,
            "risk_level": RISK_LEVELS[lv],
            "risk_index": lv,
            "p_at_least_one": p,
            "weather_source": s,
            "model_version": version,
            "stage": stage,
        }
        for z, d, b, e, lv, p, s in zip(
            zones,
            day_strings.tolist(),
            blocks.tolist(),
            expected.tolist(),
            levels.tolist(),
            p_one.tolist(),
            source.tolist(),
            strict=True,
        )
    ]


def metadata(model: CrashRiskModel, stage: str) -> dict:
    return {
        "model_version": str(model.meta.get("model_version", "unknown")),
        "stage": stage,
        "zone_system": "h3",
        "zone_resolution": model.grain.resolution,
        "time_blocks": [list(span) for span in model.grain.spans],
        "risk_levels": RISK_LEVELS,
        "thresholds": model.thresholds,
        "training_window": model.meta["training_window"],
        "data_version": model.meta.get("data_version"),
        "metrics": model.meta.get("metrics"),
    }
