"""What the risk map page asks the service: zone layers as GeoJSON, borough outlines, a zone's
observed history, a route check and the citywide outlook. Numbers come from the same
`CrashRiskModel.expected` and level cuts as /predict, so a zone on the map and /predict agree
exactly. Every refusal is an `InvalidRequest` naming the field.
"""

from __future__ import annotations

import gzip
import logging
import math
import re
import threading
from collections import OrderedDict
from datetime import datetime
from pathlib import Path

import anyio
import h3
import numpy as np
import orjson
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from visionzero.model import features as F
from visionzero.model.crash_risk import CrashRiskModel
from visionzero.model.grain import Grain
from visionzero.model.levels import RISK_LEVELS, assign_levels, p_at_least_one
from visionzero.serving.requests import (
    NEW_YORK,
    InvalidRequest,
    h3_cell,
    new_york_minutes,
    supported_dates,
    validation_error_body,
)

log = logging.getLogger("bentoml.crash_risk")  # under "bentoml": printed by BentoML's handlers
STATIC_DIR = Path(__file__).parent / "static"
DATE = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}")
STRETCH_KM = 1.0  # the riskiest stretch of a route is its riskiest kilometre or so
PATH_NOTE = "straight-line H3 grid path between the two points, not streets"


class ZonesQuery(BaseModel):
    """GET /zones: unknown parameters are refused, so a typo is not silently ignored."""

    model_config = ConfigDict(extra="forbid")

    resolution: int | None = None
    date: str | None = Field(None, max_length=10, description="YYYY-MM-DD, New York")
    block: int | None = Field(None, ge=0, description="time block index; all blocks without it")


class Point(BaseModel):
    model_config = ConfigDict(allow_inf_nan=False)

    latitude: float
    longitude: float


class MapApi:
    """Per worker: zone geometry per resolution is built once; layers are cached per date, up to
    `cache_bytes` of them (a byte bound: a count of layers says nothing of their size)."""

    def __init__(self, model: CrashRiskModel, stage: str, cache_bytes: int) -> None:
        self.model = model
        self.stage = stage
        self.version = str(model.meta.get("model_version", "unknown"))
        self.first_date, self.last_date = supported_dates(model)
        table = model.zone_table
        zones = np.array(list(table.row_of), dtype=object)
        self.zones = {r: zones[table.resolution == r] for r in model.resolutions}
        self.geometry = {r: [_polygon(zone) for zone in self.zones[r]] for r in self.zones}
        self.boroughs = orjson.dumps(
            model.context.boroughs
            if model.context
            else {"type": "FeatureCollection", "features": []}
        )
        self.cache_bytes = cache_bytes
        self.cached_bytes = 0  # plain + gzipped bytes of the layers in _layers
        self._layers: OrderedDict[tuple, tuple[bytes, bytes]] = OrderedDict()
        self._layers_lock = threading.Lock()  # layers are built and cached in worker threads
        self._builds: anyio.CapacityLimiter | None = None  # made in the event loop, on first use
        self._warm_up()

    def _warm_up(self) -> None:
        """Build today's finest layer, the page's first request, now: a worker's first layer
        costs ~4x a later one. A model that cannot answer today (a broken day type) still starts
        and fails on the requests that need it, as /predict does: serve's checks judge starts."""
        try:
            self._layer(self._layer_key({}))
        except Exception as exc:  # noqa: BLE001 - a warm-up, never a reason not to start
            log.warning("today's map layer could not be built at start: %r", exc)

    def today(self) -> np.datetime64:
        """Today's New York date, held inside the dates the model supports."""
        today = np.datetime64(datetime.now(NEW_YORK).date(), "D")
        return min(max(today, self.first_date), self.last_date)

    def _date(self, text: str | None, field: str) -> np.datetime64:
        if text is None:
            return self.today()
        if not DATE.fullmatch(text):
            raise InvalidRequest(field, f"{text[:32]!r}: expected YYYY-MM-DD")
        try:
            day = np.datetime64(text, "D")
        except ValueError:
            raise InvalidRequest(field, f"{text!r} is not a real date") from None
        if not self.first_date <= day <= self.last_date:
            raise InvalidRequest(
                field,
                f"{text} is outside the dates this model supports "
                f"({self.first_date}..{self.last_date}, /metadata)",
            )
        return day

    def _resolution(self, resolution: int | None, field: str = "resolution") -> int:
        if resolution is None:
            return self.model.resolutions[-1]
        if resolution not in self.model.resolutions:
            raise InvalidRequest(
                field, f"{resolution}; this model answers at {self.model.resolutions}"
            )
        return resolution

    async def zones_layer(self, params: dict[str, str]) -> tuple[bytes, bytes]:
        """GeoJSON of every zone at one resolution with its expected crashes, level and P(at least
        one) for one date (every block, or the asked one), plain and gzipped.

        A layer not cached is built in a worker thread, one at a time per worker: a build takes
        ~100 ms of numpy and JSON, which on the event loop would stall /predict and /readyz, and
        builds at once would each hold their ~50 MB of intermediate objects."""
        key = self._layer_key(params)
        with self._layers_lock:
            if key in self._layers:
                self._layers.move_to_end(key)
                return self._layers[key]
        if self._builds is None:
            self._builds = anyio.CapacityLimiter(1)
        return await anyio.to_thread.run_sync(self._layer, key, limiter=self._builds)

    def _layer_key(self, params: dict[str, str]) -> tuple[int, np.datetime64, int | None]:
        """The (resolution, date, block) a query asks for; InvalidRequest naming the field."""
        try:
            query = ZonesQuery(**params)
        except ValidationError as exc:
            body = validation_error_body(exc.errors())
            raise InvalidRequest(body["field"], body["error"].split(": ", 1)[-1]) from None
        resolution = self._resolution(query.resolution)
        day = self._date(query.date, "date")
        n_blocks = self.model.grain.n_blocks
        if query.block is not None and query.block >= n_blocks:
            raise InvalidRequest("block", f"{query.block}; blocks are 0..{n_blocks - 1}")
        return resolution, day, query.block

    def _layer(self, key: tuple[int, np.datetime64, int | None]) -> tuple[bytes, bytes]:
        """The cached layer, else built and cached, dropping the least recently asked layers
        until the cache fits its bytes again (a layer larger than the whole bound is served but
        not kept)."""
        with self._layers_lock:
            if key in self._layers:  # built by the request before this one
                self._layers.move_to_end(key)
                return self._layers[key]
        layer = self._build_layer(*key)
        size = len(layer[0]) + len(layer[1])
        with self._layers_lock:
            if key not in self._layers and size <= self.cache_bytes:
                self._layers[key] = layer
                self.cached_bytes += size
                while self.cached_bytes > self.cache_bytes:
                    _, (plain, packed) = self._layers.popitem(last=False)
                    self.cached_bytes -= len(plain) + len(packed)
        return layer

    def _build_layer(
        self, resolution: int, day: np.datetime64, block: int | None
    ) -> tuple[bytes, bytes]:
        zones = self.zones[resolution]
        blocks = np.arange(self.model.grain.n_blocks) if block is None else np.array([block])
        expected, source = self.model.expected(
            np.repeat(zones, len(blocks)),
            np.full(len(zones) * len(blocks), day),
            np.tile(blocks, len(zones)),
        )
        levels = self.model.levels(expected, np.full(len(expected), resolution))
        shape = (len(zones), len(blocks))
        columns = {
            "expected_crashes": expected.reshape(shape),
            "risk_index": levels.reshape(shape),
            "p_at_least_one": p_at_least_one(expected).reshape(shape),
        }
        if block is None:
            values = {name: column.tolist() for name, column in columns.items()}
        else:
            values = {name: column[:, 0].tolist() for name, column in columns.items()}
        features = [
            {
                "type": "Feature",
                "id": zone,
                "geometry": geometry,
                "properties": {"zone": zone, **{name: values[name][i] for name in values}},
            }
            for i, (zone, geometry) in enumerate(zip(zones, self.geometry[resolution], strict=True))
        ]
        body = orjson.dumps(
            {
                "type": "FeatureCollection",
                "resolution": resolution,
                "date": str(day),
                "block": block,
                "time_blocks": [list(span) for span in self.model.grain.spans],
                "risk_levels": RISK_LEVELS,
                "thresholds": self.model.thresholds_at(resolution),
                "model_version": self.version,
                "stage": self.stage,
                "weather_source": str(source[0]),
                "features": features,
            }
        )
        # level 1: 4x faster than 6 on a res-9 layer (28 vs 114 ms) for a body 15% larger
        return body, gzip.compress(body, compresslevel=1)

    def history(self, zone: str | None) -> dict:
        """The zone's observed crashes per block on the model's training complete days."""
        if zone is None:
            raise InvalidRequest("zone", "give zone, an H3 cell")
        cell = h3_cell(zone, "zone", self.model.resolutions)
        context = self.model.context
        answer = {
            "zone": cell,
            "resolution": h3.get_resolution(cell),
            "model_version": self.version,
        }
        if context is None:
            return {
                **answer,
                "crashes_by_block": None,
                "note": "not recorded by this model version",
            }
        counts = context.history.get(cell, [0] * self.model.grain.n_blocks)
        days = context.history_day_count
        return {
            **answer,
            "days": days,
            "first_day": context.history_days[0],
            "last_day": context.history_days[1],
            "time_blocks": [list(span) for span in self.model.grain.spans],
            "crashes_by_block": counts,
            "crashes_per_100_days": [round(100 * count / days, 3) for count in counts],
        }

    def route(self, start: Point, end: Point, departure: str, resolution: int | None) -> dict:
        """The cells along the straight H3 path from start to end at departure's block, each with
        its level; the trip's total expected crashes and its riskiest stretch."""
        resolution = self._resolution(resolution)
        for name, point in (("start", start), ("end", end)):
            if not F.inside_nyc(np.array([point.latitude]), np.array([point.longitude]))[0]:
                raise InvalidRequest(f"{name}.latitude", "point outside the New York City box")
        stamp = new_york_minutes([departure], self.first_date, self.last_date, field="departure")
        cells = self._path_cells(start, end, resolution)
        day = stamp.astype("datetime64[D]")
        block = int(self.model.grain.block_of_datetime(stamp)[0])
        expected, source = self.model.expected(
            cells, np.repeat(day, len(cells)), np.full(len(cells), block)
        )
        return {
            "cells": self._route_cells(cells, expected, resolution),
            "total_expected_crashes": float(expected.sum()),
            "riskiest_stretch": riskiest_stretch(expected, resolution),
            "distance_km": round(
                h3.great_circle_distance(
                    (start.latitude, start.longitude), (end.latitude, end.longitude), unit="km"
                ),
                3,
            ),
            "path": PATH_NOTE,
            "date": str(day[0]),
            "block": list(self.model.grain.spans[block]),
            "resolution": resolution,
            "model_version": self.version,
            "stage": self.stage,
            "weather_source": str(source[0]),
        }

    def _path_cells(self, start: Point, end: Point, resolution: int) -> np.ndarray:
        """The straight H3 grid path between the points' cells at `resolution`, both included."""
        grain = Grain(resolution, self.model.grain.block_hours)
        ends = grain.zones_of(
            np.array([start.latitude, end.latitude]),
            np.array([start.longitude, end.longitude]),
            finest=self.model.resolutions[-1],
        )
        try:
            return np.array(h3.grid_path_cells(ends[0], ends[1]), dtype=object)
        except h3.H3BaseException as exc:
            raise InvalidRequest("end", f"no H3 path between the points ({exc})") from None

    def _route_cells(self, cells: np.ndarray, expected: np.ndarray, resolution: int) -> list[dict]:
        """Each path cell's centre, expected crashes and level, and whether the model was trained
        on it (an unknown cell gets the unknown-zone share)."""
        levels = self.model.levels(expected, np.full(len(cells), resolution))
        known = self.model.zone_index(cells) >= 0
        centres = [h3.cell_to_latlng(cell) for cell in cells]
        return [
            {
                "zone": cell,
                "latitude": round(lat, 6),
                "longitude": round(lon, 6),
                "expected_crashes": e,
                "risk_level": RISK_LEVELS[level],
                "risk_index": level,
                "p_at_least_one": p,
                "known": k,
            }
            for cell, (lat, lon), e, level, p, k in zip(
                cells,
                centres,
                expected.tolist(),
                levels.tolist(),
                p_at_least_one(expected).tolist(),
                known.tolist(),
                strict=True,
            )
        ]

    def outlook(self, start_date: str | None, days: int) -> dict:
        """Citywide expected crashes per day, each day's level against its season's days in the
        training window's last year, and what drives it."""
        first = self._date(start_date, "start_date")
        dates = first + np.arange(days)
        if dates[-1] > self.last_date:
            raise InvalidRequest(
                "days", f"{days} days from {first} pass {self.last_date}, the last supported date"
            )
        volumes, drivers, sources = self.model.day_volumes(dates)
        context = self.model.context
        answer = []
        for i, day in enumerate(dates.tolist()):
            cuts = context.day_cuts[str(day.month)] if context else None
            level = int(assign_levels(np.array([volumes[i]]), cuts)[0]) if cuts else None
            answer.append(
                {
                    "date": str(day),
                    "weekday": day.strftime("%A"),
                    "holiday": F.holiday_name(day),
                    "expected_crashes": float(volumes[i]),
                    "day_level": None if level is None else RISK_LEVELS[level],
                    "day_level_index": level,
                    "season_cuts": cuts,
                    "weather_source": str(sources[i]),
                    "drivers": {group: float(effect[i]) for group, effect in drivers.items()},
                }
            )
        return {"days": answer, "model_version": self.version, "stage": self.stage}


def riskiest_stretch(expected: np.ndarray, resolution: int) -> dict:
    """The consecutive path cells of about STRETCH_KM with the most expected crashes: first and
    last index and their sum (the whole path when it is shorter)."""
    width = min(len(expected), stretch_cells(resolution))
    sums = np.convolve(expected, np.ones(width), mode="valid")
    first = int(np.argmax(sums))
    return {"first": first, "last": first + width - 1, "expected_crashes": float(sums[first])}


def stretch_cells(resolution: int) -> int:
    """How many consecutive cells of a path make about STRETCH_KM (neighbouring hexagon centres
    are sqrt(3) edge lengths apart)."""
    spacing = math.sqrt(3) * h3.average_hexagon_edge_length(resolution, unit="km")
    return max(1, round(STRETCH_KM / spacing))


def _polygon(zone: str) -> dict:
    """A zone's hexagon as a GeoJSON Polygon: (lon, lat) pairs rounded to ~1 m, ring closed."""
    ring = [[round(lon, 5), round(lat, 5)] for lat, lon in h3.cell_to_boundary(zone)]
    return {"type": "Polygon", "coordinates": [[*ring, ring[0]]]}
