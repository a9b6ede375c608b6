"""Server text on the risk map is shown as text, never parsed as HTML: headless Chromium loads the
real page (visionzero/serving/static) from a small HTTP server on 127.0.0.1 whose answers carry
markup in a borough name and in the risk level names the zone tooltip shows."""

from __future__ import annotations

import json
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler
from pathlib import Path

import h3
import pytest

from benchmarks.map_page import CHROMIUM, launch
from tests.conftest import LocalServer

pytestmark = pytest.mark.slow  # starts Chromium

STATIC = Path(__file__).resolve().parent.parent / "visionzero" / "serving" / "static"
BOROUGH = '<img src=x onerror="window.__pwned=1">'
LEVEL = '<img src=y onerror="window.__pwned=2">'
DAY = "2025-02-03"
CELL = h3.latlng_to_cell(40.70, -73.95, 7)
CONTENT_TYPES = {".html": "text/html", ".js": "text/javascript", ".css": "text/css"}


def _square(lat: float, lon: float, size: float) -> list[list[float]]:
    ring = [[lon - size, lat - size], [lon + size, lat - size], [lon + size, lat + size]]
    return [*ring, [lon - size, lat + size], ring[0]]


def _answers() -> dict[str, object]:
    blocks = [[4 * i, 4 * i + 4] for i in range(6)]
    ring = [[lon, lat] for lat, lon in h3.cell_to_boundary(CELL)]
    return {
        "/boroughs": {
            "type": "FeatureCollection",
            "features": [
                {
                    "type": "Feature",
                    "properties": {"name": BOROUGH},
                    "geometry": {"type": "Polygon", "coordinates": [_square(40.7, -73.95, 0.2)]},
                }
            ],
        },
        "/metadata": {
            "risk_levels": [LEVEL] * 5,
            "today": DAY,
            "supported_dates": ["2024-01-01", "2026-12-31"],
        },
        "/zones": {
            "type": "FeatureCollection",
            "resolution": 7,
            "date": DAY,
            "block": None,
            "time_blocks": blocks,
            "risk_levels": [LEVEL] * 5,
            "thresholds": [0.1, 0.2, 0.3, 0.4],
            "model_version": "1",
            "stage": "production",
            "weather_source": "climatology",
            "features": [
                {
                    "type": "Feature",
                    "id": CELL,
                    "geometry": {"type": "Polygon", "coordinates": [[*ring, ring[0]]]},
                    "properties": {
                        "zone": CELL,
                        "expected_crashes": [0.5] * 6,
                        "risk_index": [2] * 6,
                        "p_at_least_one": [0.4] * 6,
                    },
                }
            ],
        },
        "/outlook": {"days": [], "model_version": "1", "stage": "production"},
    }


class HostileApi(BaseHTTPRequestHandler):
    """The page's files as they are, and API answers with markup in their text."""

    answers = _answers()

    def do_GET(self) -> None:  # noqa: N802 - http.server's name
        path = self.path.split("?")[0]
        if path == "/":
            path = "/static/index.html"
        if path in self.answers:
            self._send(200, json.dumps(self.answers[path]).encode(), "application/json")
        elif path.startswith("/static/") and ".." not in path:
            file = STATIC / path.removeprefix("/static/")
            if file.is_file():
                self._send(200, file.read_bytes(), CONTENT_TYPES.get(file.suffix, "text/plain"))
                return
            self._send(404, b"{}", "application/json")
        else:
            self._send(404, b"{}", "application/json")

    do_POST = do_GET  # noqa: N815 - /outlook is a POST on the real service

    def _send(self, status: int, body: bytes, content_type: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture(scope="module")
def hostile() -> Iterator[str]:
    with LocalServer(HostileApi) as server:
        yield server.url


@pytest.mark.skipif(not CHROMIUM.exists(), reason="Debian's chromium is not installed")
def test_borough_and_level_names_are_shown_as_text(hostile: str) -> None:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = launch(playwright)
        try:
            page = browser.new_page(viewport={"width": 1200, "height": 900})
            page.goto(hostile + "/")
            label = page.locator(".borough-label")
            label.wait_for(timeout=30_000)
            page.wait_for_function("window.vzMap && window.vzMap.zoneLayer", timeout=30_000)
            box = page.locator("#map-0").bounding_box()
            page.mouse.move(box["x"] + box["width"] / 2, box["y"] + box["height"] / 2)
            page.mouse.move(box["x"] + box["width"] / 2 + 3, box["y"] + box["height"] / 2 + 3)
            zone_tip = page.locator(".leaflet-tooltip:not(.borough-label)")
            zone_tip.wait_for(timeout=10_000)
            page.wait_for_timeout(300)  # an injected <img src=x> fails and fires onerror by now
            assert page.locator(".leaflet-tooltip img").count() == 0
            assert page.evaluate("window.__pwned") is None
            # The text as the page writes it: the borough name title-cased, markup and all.
            assert label.inner_text() == '<Img Src=X Onerror="Window.__pwned=1">'
            assert zone_tip.inner_text().startswith(LEVEL + ": ")
        finally:
            browser.close()
