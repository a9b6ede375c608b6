"""Request validation and vectorised prediction for the HTTP services (BentoML, and the benchmark's
plain FastAPI reference): both call `predict_items` so they compute exactly the same thing.

Every refusal is an `InvalidRequest` naming the field (`items[3].zone`), answered as HTTP 400 in one
shape, `error_body`. Times are New York wall-clock times: `new_york_minutes` says how ISO 8601
offsets and the daylight-saving changes are read.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from functools import cache
from zoneinfo import ZoneInfo

import h3
import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from visionzero.data.schema import NYC_BOX
from visionzero.model import features as F
from visionzero.model.crash_risk import CrashRiskModel
from visionzero.model.grain import Grain
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
NEW_YORK = ZoneInfo("America/New_York")
# The dates a model answers for: its training window, a year before it and three after it. The
# day features extrapolate flat beyond the window and the zone shares age, so a date much further
# away would get a confident level that means nothing.
SUPPORTED_BEFORE = np.timedelta64(366, "D")
SUPPORTED_AFTER = np.timedelta64(3 * 365 + 1, "D")
DATETIME_FORMAT = "YYYY-MM-DDTHH:MM[:SS[.fff]][Z|+HH:MM|-HH:MM]"
DATETIME_EXPECTED = f"expected ISO 8601 {DATETIME_FORMAT}"
# ASCII digits only: `\d` and int() also take full-width and other Unicode digits.
DATETIME = re.compile(
    r"([0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2})(?::([0-9]{2})(?:\.[0-9]{1,9})?)?"
    r"(Z|[+-][0-9]{2}:[0-9]{2})?"
)
H3_CELL = re.compile(r"[0-9a-f]{15}")  # as h3 writes a cell; h3 itself also reads "0x..."


class Item(BaseModel):
    """A place (latitude/longitude or an H3 zone) and a time; weather is optional."""

    model_config = ConfigDict(allow_inf_nan=False)

    latitude: float | None = None
    longitude: float | None = None
    zone: str | None = Field(None, max_length=64, description="H3 cell, 15 hex digits")
    resolution: int | None = Field(
        None,
        description="H3 resolution of the answer for a latitude/longitude: one of /metadata "
        "zone_resolutions (default zone_resolution, the finest); a zone carries its own",
    )
    datetime: str = Field(
        max_length=64,
        description=f"ISO 8601, {DATETIME_FORMAT}. Without an offset: New York local time; with "
        "one: converted to New York local time. A local time skipped by the spring-forward change "
        "reads with the offset before it (zoneinfo fold=0: 02:30 is 03:30 EDT); one repeated by "
        "the fall-back change is the first (EDT). Dates: /metadata supported_dates.",
    )
    precipitation: float | None = Field(None, ge=0, le=30, description="inches in the day")
    snow: float | None = Field(None, ge=0, le=60, description="inches in the day")
    snow_depth: float | None = Field(None, ge=0, le=120, description="inches")
    temperature_max: float | None = Field(None, ge=-40, le=130, description="deg F")
    temperature_min: float | None = Field(None, ge=-40, le=130, description="deg F")
    wind: float | None = Field(None, ge=0, le=150, description="mph")


class Prediction(BaseModel):
    zone: str
    resolution: int
    date: str
    block: list[int]
    expected_crashes: float
    risk_level: str
    risk_index: int
    p_at_least_one: float
    weather_source: str
    model_version: str
    stage: str


def error_body(message: str, field: str) -> dict[str, str]:
    """The one shape of every 400: what is wrong, and which field (`items[3].zone`, `items`,
    `body` for the body as a whole, `Content-Type`)."""
    return {"error": message, "field": field}


def field_path(loc: Sequence[str | int]) -> str:
    """A pydantic error location as the request's path: ["items", 3, "zone"] -> items[3].zone."""
    path = ""
    for part in loc:
        path += f"[{part}]" if isinstance(part, int) else f".{part}" if path else str(part)
    return path or "body"


def validation_error_body(errors: Sequence[dict]) -> dict[str, str]:
    """pydantic's errors (as BentoML answers them) in the one shape, naming the first."""
    first = errors[0]
    field = field_path(first.get("loc", ()))
    more = f" (and {len(errors) - 1} more errors)" if len(errors) > 1 else ""
    return error_body(f"{field}: {first.get('msg', 'invalid')}{more}", field)


class InvalidRequest(ValueError):
    """Raised with a message naming the offending field (`items[i].field`, `date`)."""

    def __init__(self, field: str, why: str) -> None:
        super().__init__(f"{field}: {why}")
        self.field = field

    def body(self) -> dict[str, str]:
        return error_body(str(self), self.field)


def _fail(
    index: Sequence[int] | np.ndarray, field: str, why: str, within: str | None = "items"
) -> None:
    """Refuse the first of the items at `index`: `items[i].field`, or `field` alone for a request
    that is not a list of items (within=None)."""
    if len(index):
        more = f" (and {len(index) - 1} more items)" if len(index) > 1 else ""
        path = f"{within}[{int(index[0])}].{field}" if within else field
        raise InvalidRequest(path, f"{why}{more}")


def h3_cell(text: str, field: str, resolutions: list[int]) -> str:
    """A zone id as h3 writes it, at a resolution the model answers at and inside New York City;
    InvalidRequest naming `field` otherwise."""
    cell = text.strip().lower()
    if not H3_CELL.fullmatch(cell) or not h3.is_valid_cell(cell):
        raise InvalidRequest(field, f"{text[:32]!r} is not an H3 cell (15 hex digits)")
    resolution = h3.get_resolution(cell)
    if resolution not in resolutions:
        raise InvalidRequest(
            field, f"H3 resolution {resolution}; this model answers at {resolutions}"
        )
    lat, lon = h3.cell_to_latlng(cell)
    if not F.inside_nyc(np.array([lat]), np.array([lon]))[0]:
        raise InvalidRequest(field, f"{text!r} is outside New York City")
    return cell


def _zones(items: list[Item], model: CrashRiskModel) -> tuple[np.ndarray, np.ndarray]:
    """The zone of each item and its H3 resolution: a point at the asked (or default) resolution,
    a zone id at its own, which must be one the model answers at."""
    n = len(items)
    lat = np.array([np.nan if it.latitude is None else it.latitude for it in items], dtype=float)
    lon = np.array([np.nan if it.longitude is None else it.longitude for it in items], dtype=float)
    given = [it.zone for it in items]
    has_zone = np.array([z is not None for z in given])
    has_point = ~np.isnan(lat) & ~np.isnan(lon)
    unplaced = np.flatnonzero(~has_zone & ~has_point)
    if len(unplaced):  # name the missing half of a pair, else ask for a place
        lone = np.isnan(lat[unplaced]) != np.isnan(lon[unplaced])
        no_lon = lone & np.isnan(lon[unplaced])
        _fail(unplaced[no_lon], "longitude", "latitude and longitude go together")
        _fail(unplaced[lone], "latitude", "latitude and longitude go together")
        _fail(unplaced, "latitude", "give latitude and longitude, or zone")
    outside = has_point & ~has_zone & ~F.inside_nyc(lat, lon)
    _fail(
        np.flatnonzero(outside),
        "latitude",
        "coordinates outside the New York City box "
        f"(lat {NYC_BOX['lat_min']}..{NYC_BOX['lat_max']}, "
        f"lon {NYC_BOX['lon_min']}..{NYC_BOX['lon_max']})",
    )
    zones = np.empty(n, dtype=object)
    resolutions = np.full(n, model.resolutions[-1], dtype=np.int64)
    asked = [(i, it.resolution) for i, it in enumerate(items) if it.resolution is not None]
    for i, resolution in asked:
        if resolution not in model.resolutions:
            _fail([i], "resolution", f"{resolution}; this model answers at {model.resolutions}")
        resolutions[i] = resolution
    located = has_point & ~has_zone
    # a few values: a set is cheaper than np.unique (8 us a call)
    for resolution in sorted(set(resolutions[located].tolist())):
        mine = located & (resolutions == resolution)
        grain = Grain(int(resolution), model.grain.block_hours)
        zones[mine] = grain.zones_of(lat[mine], lon[mine], finest=model.resolutions[-1])
    for i in np.flatnonzero(has_zone):
        cell = h3_cell(given[i], f"items[{i}].zone", model.resolutions)
        resolution = h3.get_resolution(cell)
        if items[i].resolution not in (None, resolution):
            _fail(
                [i], "resolution", f"{items[i].resolution}, but the zone is resolution {resolution}"
            )
        zones[i], resolutions[i] = cell, resolution
    return zones, resolutions


def supported_dates(model: CrashRiskModel) -> tuple[np.datetime64, np.datetime64]:
    """First and last local date the model answers for (see SUPPORTED_BEFORE/AFTER)."""
    return _supported_dates(*model.meta["training_window"])


@cache
def _supported_dates(first: str, last: str) -> tuple[np.datetime64, np.datetime64]:
    return np.datetime64(first, "D") - SUPPORTED_BEFORE, np.datetime64(last, "D") + SUPPORTED_AFTER


@cache
def _new_york_changes(
    first: np.datetime64, last: np.datetime64
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """New York's UTC offset changes from the year before `first` to the year after `last`, read
    once from zoneinfo: the UTC minute of each change, the offset in minutes before the first
    change and after each one, and the local minute from which a naive time takes the new offset
    under fold=0 (the later of the wall-clock times at the change)."""

    def offset(minute: int) -> int:
        moment = datetime.fromtimestamp(minute * 60, UTC).astimezone(NEW_YORK)
        return int(moment.utcoffset().total_seconds()) // 60

    week = 7 * 1440  # New York's changes are months apart: at most one in a week
    start = int(datetime(first.astype(object).year - 1, 1, 1, tzinfo=UTC).timestamp()) // 60
    end = int(datetime(last.astype(object).year + 2, 1, 1, tzinfo=UTC).timestamp()) // 60
    changes, offsets = [], [offset(start)]
    for minute in range(start, end, week):
        if offset(minute + week) != offsets[-1]:
            low, high = minute, minute + week  # offset(low) is the old one, offset(high) is not
            while high - low > 1:
                middle = (low + high) // 2
                low, high = (middle, high) if offset(middle) == offsets[-1] else (low, middle)
            changes.append(high)
            offsets.append(offset(high))
    utc = np.array(changes, dtype="datetime64[m]")
    after = np.array(offsets, dtype="timedelta64[m]")
    return utc, after, utc + np.maximum(after[:-1], after[1:])


def new_york_minutes(
    texts: list[str], first: np.datetime64, last: np.datetime64, field: str | None = None
) -> np.ndarray:
    """New York local datetime64[m] of each ISO 8601 text; InvalidRequest unless every text is a
    real time whose local date lies in first..last. Refusals name `items[i].datetime`, or `field`
    for a single time that is not an item's.

    With Z or an offset the instant is converted to New York time. Without one the text is New
    York wall-clock time, read as zoneinfo does with fold=0: a time the spring-forward change
    skips takes the offset before it (2025-03-09T02:30 is 03:30 EDT), one the fall-back change
    repeats is the first (EDT), the same wall-clock time. Seconds are dropped: blocks are hours.
    """

    def fail(index: Sequence[int] | np.ndarray, why: str) -> None:
        _fail(index, field or "datetime", why, within=None if field else "items")

    # No match object outlives its test: 10,000 of them at once set off the garbage collector.
    fail([i for i, t in enumerate(texts) if not DATETIME.fullmatch(t)], DATETIME_EXPECTED)
    wall = _minutes([text[:16] for text in texts], texts, fail)  # YYYY-MM-DDTHH:MM
    changes, offsets, local_switch = _new_york_changes(first, last)
    utc = wall - offsets[np.searchsorted(local_switch, wall, side="right")]
    aware, shift = [], []
    for i in [i for i, text in enumerate(texts) if len(text) > 16]:  # with seconds or an offset
        _, seconds, zone = DATETIME.fullmatch(texts[i]).groups()
        if seconds is not None and int(seconds) > 59:
            fail([i], f"{texts[i]!r}: seconds go up to 59")
        if zone is not None:
            hours, minutes = (0, 0) if zone == "Z" else (int(zone[1:3]), int(zone[4:6]))
            if hours > 23 or minutes > 59:
                fail([i], f"{zone!r} is not a UTC offset")
            aware.append(i)
            shift.append((-1 if zone[0] == "-" else 1) * (hours * 60 + minutes))
    if aware:
        utc[aware] = wall[aware] - np.array(shift, dtype="timedelta64[m]")
    local = utc + offsets[np.searchsorted(changes, utc, side="right")]
    days = local.astype("datetime64[D]")
    outside = (days < first) | (days > last)
    if outside.any():
        fail(
            np.flatnonzero(outside),
            f"outside the dates this model supports ({first}..{last}, /metadata)",
        )
    return local


def _minutes(
    stamps: list[str], texts: list[str], fail: Callable[[list[int], str], None]
) -> np.ndarray:
    """datetime64[m] of YYYY-MM-DDTHH:MM strings; InvalidRequest naming the first impossible one."""
    try:
        return np.array(stamps, dtype="datetime64[m]")
    except ValueError:
        for i, stamp in enumerate(stamps):
            try:
                np.datetime64(stamp, "m")
            except ValueError:
                fail([i], f"{texts[i]!r} is not a real date and time")
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
        raise InvalidRequest("items", f"{len(items)} items; at most {MAX_ITEMS} per request")
    if not items:
        return []
    stamps = new_york_minutes([it.datetime for it in items], *supported_dates(model))
    zones, resolutions = _zones(items, model)
    days = stamps.astype("datetime64[D]")
    blocks = model.grain.block_of_datetime(stamps)
    expected, source = model.expected(zones, days, blocks, item_weather=_item_weather(items))
    levels = model.levels(expected, resolutions)
    p_one = p_at_least_one(expected)
    version = str(model.meta.get("model_version", "unknown"))
    day_strings = days.astype(str)
    spans = [list(span) for span in model.grain.spans]
    return [
        {
            "zone": z,
            "resolution": r,
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
        for z, r, d, b, e, lv, p, s in zip(
            zones,
            resolutions.tolist(),
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
    first, last = supported_dates(model)
    return {
        "model_version": str(model.meta.get("model_version", "unknown")),
        "stage": stage,
        "zone_system": "h3",
        "zone_resolution": model.resolutions[-1],  # the default: the finest
        "zone_resolutions": model.resolutions,
        "time_blocks": [list(span) for span in model.grain.spans],
        "risk_levels": RISK_LEVELS,
        "thresholds": model.thresholds_at(model.resolutions[-1]),
        "thresholds_by_resolution": {str(r): model.thresholds_at(r) for r in model.resolutions},
        "training_window": model.meta["training_window"],
        "supported_dates": [str(first), str(last)],
        "data_version": model.meta.get("data_version"),
        "metrics": model.meta.get("metrics"),
    }
