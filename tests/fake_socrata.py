"""A local HTTP server that answers like NYC Open Data's SODA endpoint,
replaying the recorded records.

It honours $where (`crash_date >= '...'`, optionally `AND crash_date < '...'`: the backfill's
windows), $order, $limit and $offset, and can be scripted to answer the next requests with a 429 +
Retry-After, a 500, a hang (timeout) or a malformed page. Records are sorted once, and a window is
found by bisection, so replaying the whole bundled snapshot stays fast.
"""

from __future__ import annotations

import bisect
import json
import re
import time
from collections.abc import Callable
from datetime import date
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from urllib.parse import parse_qs, urlparse

import pandas as pd

from visionzero.data.dataset import read_snapshot_raw
from visionzero.data.schema import API_TO_CSV

SAMPLE = Path(__file__).resolve().parent.parent / "snapshot" / "socrata_sample.json"
WHERE = re.compile(r"^crash_date >= '([^']+)'(?: AND crash_date < '([^']+)')?$")


def _order_key(record: dict) -> tuple[str, int]:
    return record.get("crash_date", ""), int(record.get("collision_id", 0))


def make_handler(
    records: list,
    script: list[str],
    seen: list[dict],
    hang_seconds: float = 2.0,
    retry_after: str = "0",
    on_request: Callable[[dict[str, str]], None] | None = None,
) -> type[BaseHTTPRequestHandler]:
    """A handler replaying `records`; `seen` receives every query (with its X-App-Token and the
    time it arrived), `on_request` is called with it before the answer (a test may block there)."""
    index: dict[str, object] = {}

    def indexed() -> tuple[list, list, list, list]:
        """(objects, malformed others, objects in paging order, their dates), rebuilt when a test
        appends records to a running server (new days arriving)."""
        if index.get("size") != len(records):
            objects = [r for r in records if isinstance(r, dict)]
            ordered = sorted(objects, key=_order_key)
            index.update(
                size=len(records),
                objects=objects,
                others=[r for r in records if not isinstance(r, dict)],  # match every query
                ordered=ordered,
                dates=[r.get("crash_date", "") for r in ordered],
            )
        return index["objects"], index["others"], index["ordered"], index["dates"]

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args: object) -> None:
            pass

        def _send(self, status: int, body: bytes, headers: dict[str, str] | None = None) -> None:
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            for key, value in (headers or {}).items():
                self.send_header(key, value)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def _matching(self, query: dict[str, str]) -> list:
            where = query.get("$where", "")
            match = WHERE.match(where)
            if where and not match:
                raise ValueError(f"unsupported $where: {where}")
            objects, others, ordered, dates = indexed()
            if query.get("$order") == "crash_date,collision_id":
                low = bisect.bisect_left(dates, match.group(1)) if match else 0
                high = (
                    bisect.bisect_left(dates, match.group(2))
                    if match and match.group(2)
                    else len(ordered)
                )
                return ordered[low:high] + others
            return [
                r
                for r in objects
                if not match
                or (
                    r.get("crash_date", "") >= match.group(1)
                    and (not match.group(2) or r.get("crash_date", "") < match.group(2))
                )
            ] + others

        def do_GET(self) -> None:  # noqa: N802 - http.server's naming
            if urlparse(self.path).path.startswith("/noaa"):  # nothing after the bundled file
                return self._send(200, b"[]")
            query = {k: v[0] for k, v in parse_qs(urlparse(self.path).query).items()}
            query |= {"X-App-Token": self.headers.get("X-App-Token"), "at": time.monotonic()}
            seen.append(query)
            if on_request is not None:
                on_request(query)
            action = script.pop(0) if script else "ok"
            if action == "429":
                return self._send(
                    429, b'{"error": "too many requests"}', {"Retry-After": retry_after}
                )
            if action == "500":
                return self._send(500, b'{"error": "internal"}')
            if action == "hang":
                time.sleep(hang_seconds)
                return self._send(200, b"[]")
            if action == "malformed":
                return self._send(200, b'[{"crash_date": "2026-04-02T00:00')
            rows = self._matching(query)
            offset, limit = int(query.get("$offset", 0)), int(query.get("$limit", 1000))
            return self._send(200, json.dumps(rows[offset : offset + limit]).encode())

    return Handler


def recorded_records() -> list[dict]:
    return json.loads(SAMPLE.read_text())


def synthetic_records(per_day: dict[date, int], first_id: int = 9_000_000) -> list[dict]:
    """`n` crashes on each day, in the recorded SODA format (the first recorded record with a new
    date and collision_id): volumes the loader's plausibility rule can judge."""
    template = recorded_records()[0]
    records = []
    for day, count in sorted(per_day.items()):
        for _ in range(count):
            first_id += 1
            records.append(
                {
                    **template,
                    "crash_date": f"{day.isoformat()}T00:00:00.000",
                    "collision_id": str(first_id),
                }
            )
    return records


def snapshot_records(after: date, through: date) -> list[dict]:
    """The bundled snapshot's crashes dated after `after` up to `through`, as SODA records (the
    inverse of `socrata.records_to_rows`: empty CSV cells are absent fields, dates ISO, a
    geocoded row has its `location` object): real days replayed as the API would serve them."""
    raw = read_snapshot_raw()
    dates = pd.to_datetime(raw["CRASH DATE"], format="%m/%d/%Y", errors="coerce")
    rows = raw[(dates > pd.Timestamp(after)) & (dates <= pd.Timestamp(through))]
    records = []
    for row in rows.to_dict("records"):
        record = {api: row[csv] for api, csv in API_TO_CSV.items() if row[csv] != ""}
        month, day, year = row["CRASH DATE"].split("/")
        record["crash_date"] = f"{year}-{month}-{day}T00:00:00.000"
        if "latitude" in record and "longitude" in record:
            record["location"] = {"latitude": record["latitude"], "longitude": record["longitude"]}
        records.append(record)
    return records
