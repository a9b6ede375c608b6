"""The risk map page in headless Chromium (Debian's, driven by Playwright) against a real
`bentoml serve` of the production Bento, with the network cut to this machine: it draws every zone
within the render budget, recolours on a block change, and its zone panel and route check show
exactly what /predict and /route answer. Screenshots go to VZ_TEST_ARTIFACTS."""

from __future__ import annotations

import math
import os
import re
import signal
from collections.abc import Iterator
from pathlib import Path

import h3
import pytest
import requests

from benchmarks.map_page import CHROMIUM, Visit, is_foreign, launch, open_map
from tests.conftest import free_port, start_serve, wait_for, wait_http
from visionzero.platform.settings import settings

STATIC = Path(__file__).resolve().parent.parent / "visionzero" / "serving" / "static"
FIRST_RENDER_BUDGET_MS = 1000  # issue #13: first render at resolution 9 on localhost
# The best of a few fresh loads is held to the budget: the page's own time, not that of the other
# jobs sharing a 2-core machine (benchmarks/map_page.py prints the spread).
RENDER_LOADS = 5
# What the vendored Leaflet names but never fetches: an XML namespace and a link in its default
# attribution prefix, which the page replaces.
NOT_FETCHED = {"http://www.w3.org/2000/svg", "https://leafletjs.com"}
START, END = (40.7580, -73.9855), (40.6782, -73.9442)  # Times Square -> Prospect Park


def page_number(x: float) -> str:
    """The page's number format (map.js `sig`): three significant digits, no exponent."""
    if x == 0:
        return "0"
    if x >= 100:
        return f"{x:.0f}"
    return f"{x:.{max(0, 2 - math.floor(math.log10(abs(x))))}f}"


def screenshot(visit: Visit, name: str) -> None:
    folder = settings().vz_test_artifacts
    folder.mkdir(parents=True, exist_ok=True)
    visit.page.screenshot(path=str(folder / f"{name}.png"), full_page=True)


def first_render_ms(browser: object, served: str) -> float:
    """One fresh load (empty cache) of the page: navigation start to its zones drawn."""
    visit = open_map(browser, served + "/")
    try:
        assert visit.foreign() == []
        return visit.page.evaluate("vzMap.firstRenderMs")
    finally:
        visit.page.context.close()


@pytest.fixture(scope="module")
def browser() -> Iterator[object]:
    if not CHROMIUM.exists():
        pytest.skip(f"{CHROMIUM} is missing (Debian package chromium: make system-deps)")
    sync_api = pytest.importorskip(
        "playwright.sync_api", reason="playwright is not installed (requirements.lock)"
    )
    with sync_api.sync_playwright() as playwright:
        chromium = launch(playwright)
        try:
            yield chromium
        finally:
            chromium.close()


@pytest.fixture
def visit(browser: object, served: str) -> Iterator[Visit]:
    """The page freshly loaded and drawn; afterwards, nothing went to another host."""
    opened = open_map(browser, served + "/")
    try:
        yield opened
        assert opened.errors == []
        assert opened.foreign() == [] and opened.refused == []
    finally:
        opened.page.context.close()


@pytest.fixture(scope="module")
def layer(served: str) -> dict:
    """What the page draws first: /zones with the defaults (resolution 9, today)."""
    response = requests.get(served + "/zones", timeout=30)
    assert response.status_code == 200
    return response.json()


def fills(visit: Visit) -> dict[str, str]:
    return visit.page.evaluate(
        "Object.fromEntries(vzMap.zoneLayer.getLayers()"
        ".map(l => [l.feature.id, l.options.fillColor]))"
    )


@pytest.mark.slow
def test_the_page_draws_every_zone_with_the_network_cut(
    browser: object, visit: Visit, layer: dict, served: str
) -> None:
    page = visit.page
    metadata = requests.get(served + "/metadata", timeout=10).json()
    assert layer["resolution"] == metadata["zone_resolution"] == 9
    assert page.input_value("#date") == layer["date"] == metadata["today"]
    drawn = page.evaluate(
        "vzMap.zoneLayer.getLayers().filter(l => vzMap.map.hasLayer(l) && l._parts.length).length"
    )
    assert drawn == len(layer["features"]) > 5000
    renders = [page.evaluate("vzMap.firstRenderMs")]
    renders += [first_render_ms(browser, served) for _ in range(RENDER_LOADS - 1)]
    shown = ", ".join(f"{ms:.0f} ms" for ms in renders)
    print(f"first render at resolution 9 ({drawn} zones): {shown}")
    assert all(ms > 0 for ms in renders) and min(renders) <= FIRST_RENDER_BUDGET_MS
    # the cut is real: a fetch to another host fails, and is the only one that was attempted
    assert page.evaluate("fetch('https://example.org/').then(() => 'reached', () => 'failed')") == (
        "failed"
    )
    assert visit.refused == ["https://example.org/"]
    visit.requests.remove("https://example.org/")
    visit.refused.clear()
    assert (
        page.evaluate(
            "[...document.querySelectorAll('[src], [href]')].map(e => e.src || e.href)"
            ".filter(u => !u.startsWith(location.origin) && !u.startsWith('data:'))"
        )
        == []
    )
    legend = page.inner_text("#legend")
    assert all(name in legend for name in layer["risk_levels"])
    assert page.locator("#top-zones tbody tr").count() == 10
    screenshot(visit, "map_loaded")


@pytest.mark.slow
def test_changing_the_block_recolours_by_level(visit: Visit, layer: dict) -> None:
    palette = visit.page.evaluate("vzMap.palette")
    shown = int(visit.page.get_attribute("#blocks button[aria-pressed='true']", "value"))
    other = (shown + 3) % 6
    before = fills(visit)
    visit.page.click(f"#blocks button[value='{other}']")
    after = fills(visit)
    levels = {f["id"]: f["properties"]["risk_index"] for f in layer["features"]}
    assert before == {zone: palette[index[shown]] for zone, index in levels.items()}
    assert after == {zone: palette[index[other]] for zone, index in levels.items()}
    assert sum(before[zone] != after[zone] for zone in levels) > len(levels) // 10
    screenshot(visit, "map_block_changed")


@pytest.mark.slow
def test_clicking_a_zone_shows_what_predict_answers(visit: Visit, layer: dict, served: str) -> None:
    page = visit.page
    block = int(page.get_attribute("#blocks button[aria-pressed='true']", "value"))
    feature = max(layer["features"], key=lambda f: f["properties"]["expected_crashes"][block])
    zone = feature["id"]
    lat, lon = h3.cell_to_latlng(zone)
    page.evaluate(f"vzMap.map.setView([{lat}, {lon}], 14, {{animate: false}})")
    page.wait_for_timeout(100)  # the canvas redraws on the next frame
    point = page.evaluate(f"vzMap.map.latLngToContainerPoint([{lat}, {lon}])")
    box = page.locator("#map-0").bounding_box()
    page.mouse.click(box["x"] + point["x"], box["y"] + point["y"])
    page.wait_for_function(f"document.getElementById('zone-panel').dataset.zone === '{zone}'")

    start = layer["time_blocks"][block][0]
    item = {"zone": zone, "datetime": f"{layer['date']}T{start:02d}:00"}
    response = requests.post(served + "/predict", json={"items": [item]}, timeout=30)
    (expected,) = response.json()["predictions"]
    panel = page.evaluate("({...document.getElementById('zone-panel').dataset})")
    assert float(panel["expected"]) == expected["expected_crashes"]
    assert float(panel["p"]) == expected["p_at_least_one"]
    assert panel["level"] == expected["risk_level"]
    assert int(panel["riskIndex"]) == expected["risk_index"]
    assert panel["modelVersion"] == expected["model_version"]
    assert panel["stage"] == expected["stage"] == "production"
    assert page.inner_text("#zone-expected") == page_number(expected["expected_crashes"])
    assert page.inner_text("#zone-p") == f"{page_number(expected['p_at_least_one'] * 100)} %"
    assert page.inner_text("#zone-level").strip() == expected["risk_level"]
    assert f"model version {expected['model_version']}" in page.inner_text("#zone-model")

    history = requests.get(served + f"/history?zone={zone}", timeout=10).json()
    page.wait_for_function(
        "!document.getElementById('zone-history').textContent.startsWith('Loading')"
    )
    if history.get("crashes_by_block") is None:
        assert history["note"] in page.inner_text("#zone-history")
    else:
        rows = page.locator("#history-table tbody tr")
        shown = [int(rows.nth(i).get_attribute("data-crashes")) for i in range(rows.count())]
        assert shown == history["crashes_by_block"]
    screenshot(visit, "map_zone_panel")


@pytest.mark.slow
def test_the_route_check_draws_the_path_and_its_total(
    visit: Visit, layer: dict, served: str
) -> None:
    page = visit.page
    departure = f"{layer['date']}T08:30"
    for end, (lat, lon) in (("start", START), ("end", END)):
        page.fill(f"#{end}-lat", str(lat))
        page.fill(f"#{end}-lon", str(lon))
    page.fill("#departure", departure)
    page.click("#route-go")
    page.wait_for_selector("#route-summary")

    body = {
        "start": {"latitude": START[0], "longitude": START[1]},
        "end": {"latitude": END[0], "longitude": END[1]},
        "departure": departure,
        "resolution": 9,
    }
    answer = requests.post(served + "/route", json=body, timeout=30).json()
    summary = page.evaluate("({...document.getElementById('route-summary').dataset})")
    assert float(summary["total"]) == answer["total_expected_crashes"]
    assert int(summary["cells"]) == len(answer["cells"]) > 20
    assert int(summary["first"]) == answer["riskiest_stretch"]["first"]
    assert page.inner_text("#route-total") == page_number(answer["total_expected_crashes"])
    # one shape per cell, the riskiest-stretch band and the line through the cells
    assert page.evaluate("vzMap.views[0].route.getLayers().length") == len(answer["cells"]) + 2
    assert "not streets" in page.inner_text("#route-result")
    screenshot(visit, "map_route")


@pytest.mark.slow
def test_behind_the_canary_the_stage_switch_shows_staging_side_by_side(
    browser: object, challenger: dict
) -> None:
    """`python run.py serve` with production and staging: the page offers the switch, pins a stage
    through /stage/<name>/, draws both side by side with one view, and works under the prefix."""
    from visionzero.rollout import deployment_state as deployment

    before = deployment.state_path().read_text()  # put back afterwards: later tests read it
    with deployment.locked_state() as state:  # other tests of the session move the state
        state.production, state.staging = challenger.production, challenger.staging
        state.previous_production = challenger.previous_production
    versions = {
        stage: str(release.model_version) for stage, release in challenger.serving().items()
    }
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    serve = start_serve(port)
    visit = None
    try:
        wait_http(url + "/readyz", timeout=180, process=serve)
        visit = open_map(browser, url + "/")
        page = visit.page
        page.wait_for_selector("#stage-switch:not([hidden])")
        page.select_option("#stage", "staging")
        # polled from outside the page: the edge's CSP forbids the eval wait_for_function uses
        wait_for(
            lambda: page.evaluate(
                "document.body.dataset.state === 'ready' && vzMap.views[0].fc.stage === 'staging'"
            ),
            30,
            "the staging layer drawn",
        )
        block = int(page.get_attribute("#blocks button[aria-pressed='true']", "value"))
        staging = requests.get(f"{url}/stage/staging/zones", timeout=30).json()
        palette = page.evaluate("vzMap.palette")
        assert fills(visit) == {
            f["id"]: palette[f["properties"]["risk_index"][block]] for f in staging["features"]
        }
        assert f"model version {versions['staging']}, answered by staging" in page.inner_text(
            "#caption-0"
        )

        page.check("#side-by-side")
        wait_for(
            lambda: page.evaluate("document.body.dataset.state === 'ready' && !!vzMap.views[1].fc"),
            30,
            "the side-by-side layer drawn",
        )
        assert f"model version {versions['production']}, answered by production" in (
            page.inner_text("#caption-1")
        )
        assert page.evaluate("vzMap.views[1].layer.getLayers().length") == len(staging["features"])
        page.evaluate("vzMap.map.setView([40.75, -73.98], 13, {animate: false})")
        views = page.evaluate(
            "vzMap.views.map(v => [v.map.getCenter().lat, v.map.getCenter().lng, v.map.getZoom()])"
        )
        assert views[0] == views[1] == [40.75, -73.98, 13]
        screenshot(visit, "map_side_by_side")
        assert visit.foreign() == [] and visit.errors == []
        visit.page.context.close()

        visit = open_map(browser, url + "/stage/staging/")  # relative URLs under the prefix
        assert visit.page.input_value("#stage") == "staging"
        assert visit.page.evaluate("vzMap.views[0].fc.stage") == "staging"
        assert all("/stage/staging/" in u for u in visit.requests if "/zones" in u)
    finally:
        if visit is not None:
            visit.page.context.close()
        os.killpg(serve.pid, signal.SIGINT)
        serve.communicate(timeout=60)
        deployment.state_path().write_text(before)


def test_the_page_and_its_files_reference_no_other_host() -> None:
    """What the browser loads (HTML, JS, CSS) names no URL outside comments, except what the
    vendored Leaflet names without fetching."""
    comments = re.compile(r"/\*.*?\*/|<!--.*?-->|^\s*//.*?$", re.S | re.M)
    found = {
        (path.name, url)
        for path in STATIC.rglob("*")
        if path.suffix in {".html", ".js", ".css"}
        for url in re.findall(r"https?://[^\s\"'`)<>]+", comments.sub("", path.read_text()))
        if url not in NOT_FETCHED
    }
    assert found == set()
    assert (STATIC / "vendor" / "leaflet-1.9.4" / "LICENSE").read_text().startswith("BSD 2-Clause")


@pytest.mark.slow
def test_docs_serve_swagger_offline(browser: object, served: str) -> None:
    page = browser.new_context().new_page()
    asked: list[str] = []
    page.on("request", lambda request: asked.append(request.url))
    page.route(is_foreign, lambda route: route.abort())
    try:
        page.goto(served + "/docs")
        page.wait_for_selector("text=/predict", timeout=30_000)
        assert [url for url in asked if is_foreign(url)] == []
        html = requests.get(served + "/docs", timeout=10).text
        # a link (BentoML's GitHub corner) is not a load; a src or a tag manager is
        assert re.findall(r"src=[\"']https?://", html) == [] and "googletagmanager" not in html
    finally:
        page.context.close()
