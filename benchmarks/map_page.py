"""The risk map page's first render and `/zones` latency, measured in headless Chromium with the
network cut to localhost, against the checkout's service; optionally the README screenshot.

A benchmark, not a test: it prints numbers over several runs. tests/test_map_page.py holds the
page to its budgets and imports the browser helpers from here.

Needs a trained production model (`make run`), Debian's chromium (`make system-deps`) and
playwright (requirements.lock; no browser download: Playwright drives /usr/bin/chromium).
Run: .venv/bin/python benchmarks/map_page.py [--runs 5] [--screenshot docs/map.png] [--url URL]
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from dataclasses import dataclass, field
from datetime import date, timedelta
from pathlib import Path
from typing import TYPE_CHECKING

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

if TYPE_CHECKING:
    from playwright.sync_api import Browser, Page, Playwright, Route

CHROMIUM = Path("/usr/bin/chromium")
LOCAL_HOSTS = {"127.0.0.1", "localhost"}
# Every host name resolves to nothing but these two; 127.0.0.1 must be named, the rule also
# catches IP literals.
NO_NETWORK = "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE localhost, EXCLUDE 127.0.0.1"
VIEWPORT = {"width": 1400, "height": 900}


def launch(playwright: Playwright) -> Browser:
    """Debian's chromium, headless, unable to resolve any host but localhost."""
    return playwright.chromium.launch(executable_path=str(CHROMIUM), args=[NO_NETWORK])


@dataclass
class Visit:
    """One page load and what the page asked for on the way."""

    page: Page
    requests: list[str] = field(default_factory=list)
    refused: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    def foreign(self) -> list[str]:
        """Requests to any host but this machine."""
        return [url for url in self.requests if is_foreign(url)]


def is_foreign(url: str) -> bool:
    """Bound for another host (a data: URL goes nowhere)."""
    return not url.startswith("data:") and urllib.parse.urlsplit(url).hostname not in LOCAL_HOSTS


def open_map(browser: Browser, url: str, timeout_ms: float = 30_000) -> Visit:
    """Load the page at `url` in a fresh context (empty cache) and wait until it says it drew
    (`body[data-state=ready]`). Any request to another host is aborted and recorded, on top of
    the resolver rule. Close it with `visit.page.context.close()`."""
    page = browser.new_context(viewport=VIEWPORT).new_page()
    visit = Visit(page)
    page.on("request", lambda request: visit.requests.append(request.url))
    page.on("pageerror", lambda error: visit.errors.append(str(error)))

    def refuse_foreign(route: Route) -> None:
        visit.refused.append(route.request.url)
        route.abort()

    page.route(is_foreign, refuse_foreign)
    page.goto(url)
    page.wait_for_function(
        "['ready', 'error'].includes(document.body.dataset.state)", timeout=timeout_ms
    )
    state = page.evaluate("document.body.dataset.state")
    if state != "ready":
        raise RuntimeError(f"the page did not draw: {page.inner_text('#status')}")
    return visit


def zones_ms(url: str, query: str = "") -> float:
    """One `/zones` request as the browser makes it (gzip accepted), body read, in ms."""
    request = urllib.request.Request(f"{url}/zones{query}", headers={"Accept-Encoding": "gzip"})
    start = time.perf_counter()
    with urllib.request.urlopen(request, timeout=30) as response:
        response.read()
    return 1000 * (time.perf_counter() - start)


def serve_checkout() -> tuple[subprocess.Popen, str]:
    """The checkout's service.py (so the page is the checkout's) on the production model."""
    from visionzero.platform.processes import free_port
    from visionzero.platform.settings import configure_environment
    from visionzero.rollout.deployment_state import read_state

    configure_environment()
    release = read_state().production
    if not release:
        sys.exit("no production model: run `make run` first")
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "bentoml", "serve", "service:CrashRisk", "--host", "127.0.0.1"]
        + ["--port", str(port), "--arg", f"model_tag={release.model_tag}"],
        cwd=ROOT,
        env={**os.environ, "VZ_STAGE": "production", "BENTOML_DO_NOT_TRACK": "true"},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    return process, f"http://127.0.0.1:{port}"


def wait_ready(url: str, process: subprocess.Popen, timeout: float = 120) -> None:
    """Until the service answers /readyz; exits with the reason when it dies or times out."""
    from visionzero.platform.processes import NotReady, http_ok, wait_until

    try:
        wait_until(lambda: http_ok(url + "/readyz"), process, timeout, what=f"the service {url}")
    except NotReady as exc:
        sys.exit(str(exc))


def measure(url: str, runs: int, screenshot: Path | None) -> None:
    from playwright.sync_api import sync_playwright

    zones_ms(url)  # the layer of today is built at start-up; this warms the connection path
    zone_times = [zones_ms(url) for _ in range(runs)]
    first_render, counts = [], set()
    with sync_playwright() as playwright:
        browser = launch(playwright)
        try:
            for run in range(runs):
                visit = open_map(browser, url + "/")
                first_render.append(visit.page.evaluate("vzMap.firstRenderMs"))
                counts.add(visit.page.evaluate("vzMap.zoneLayer.getLayers().length"))
                assert not visit.foreign(), visit.foreign()
                if screenshot and run == runs - 1:
                    visit.page.wait_for_timeout(300)  # the outlook table fills in after the map
                    screenshot.parent.mkdir(parents=True, exist_ok=True)
                    visit.page.screenshot(path=str(screenshot))
                    print(f"screenshot: {screenshot}")
                visit.page.context.close()
        finally:
            browser.close()

    def show(name: str, values: list[float]) -> None:
        shown = ", ".join(f"{v:.0f}" for v in values)
        print(f"{name}: median {statistics.median(values):.0f} ms, max {max(values):.0f} ({shown})")

    print(f"{url}: {runs} runs, {'/'.join(map(str, sorted(counts)))} zones drawn")
    show("first render (navigation start to drawn, res 9)", first_render)
    show("/zones of today, gzip, from the client", zone_times)
    show("/zones of the next days (each built on its first request)", cold_zone_times(url, runs))


def cold_zone_times(url: str, days: int) -> list[float]:
    """/zones of today + 1 .. today + days: dates the service has not built yet (after a fresh
    start), as when someone steps through the week."""
    with urllib.request.urlopen(url + "/metadata", timeout=10) as response:
        today = date.fromisoformat(json.load(response)["today"])
    return [zones_ms(url, f"?date={today + timedelta(days=day)}") for day in range(1, days + 1)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--screenshot", type=Path, help="save the last run, e.g. docs/map.png")
    parser.add_argument("--url", help="a running service (default: start the checkout's)")
    args = parser.parse_args()
    if not CHROMIUM.exists():
        sys.exit(f"{CHROMIUM} is missing: make system-deps (Debian package chromium)")
    if args.url:
        measure(args.url.rstrip("/"), args.runs, args.screenshot)
        return
    process, url = serve_checkout()
    try:
        wait_ready(url, process)
        measure(url, args.runs, args.screenshot)
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(timeout=30)


if __name__ == "__main__":
    main()
