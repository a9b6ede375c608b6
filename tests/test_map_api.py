"""The map page's API on the production Bento under a real `bentoml serve` (the session's `served`):
zone layers agree exactly with /predict, routes and the outlook add up, bad input is a 400."""

from __future__ import annotations

import statistics
import time

import h3
import numpy as np
import pytest
import requests

pytestmark = pytest.mark.slow  # integration tier: see pyproject.toml

DAY = "2025-02-03"
MIDTOWN = {"latitude": 40.758, "longitude": -73.9855}
JFK = {"latitude": 40.6413, "longitude": -73.7781}


def get(url: str, path: str, **params: object) -> requests.Response:
    return requests.get(url + path, params=params, timeout=60)


def post(url: str, path: str, body: dict) -> requests.Response:
    return requests.post(url + path, json=body, timeout=60)


@pytest.fixture(scope="module")
def layers(served: str) -> dict[int, dict]:
    return {r: get(served, "/zones", resolution=r, date=DAY).json() for r in (7, 8, 9)}


def test_every_zone_of_every_resolution_is_drawn(layers: dict[int, dict], served: str) -> None:
    meta = get(served, "/metadata").json()
    base = {f["id"] for f in layers[7]["features"]}
    assert len(layers[8]["features"]) == 7 * len(base)
    assert len(layers[9]["features"]) == 49 * len(base)
    for resolution, layer in layers.items():
        assert layer["thresholds"] == meta["thresholds_by_resolution"][str(resolution)]
        assert layer["date"] == DAY and layer["stage"] == "production"
        feature = layer["features"][0]
        ring = feature["geometry"]["coordinates"][0]
        assert ring[0] == ring[-1] and len(ring) == 7  # a closed hexagon
        lon, lat = ring[0]
        assert (
            h3.latlng_to_cell(
                np.mean([p[1] for p in ring[:-1]]), np.mean([p[0] for p in ring[:-1]]), resolution
            )
            == feature["id"]
            and -75 < lon < -73
            and 40 < lat < 41
        )
        assert all(len(f["properties"]["risk_index"]) == 6 for f in layer["features"])


def test_zone_layer_numbers_equal_predict(layers: dict[int, dict], served: str) -> None:
    for layer in layers.values():
        sample = layer["features"][:: max(1, len(layer["features"]) // 15)]
        items = [
            {"zone": f["id"], "datetime": f"{DAY}T{4 * block + 1:02d}:30"}
            for f in sample
            for block in range(6)
        ]
        predictions = post(served, "/predict", {"items": items}).json()["predictions"]
        for i, p in enumerate(predictions):
            properties, block = sample[i // 6]["properties"], i % 6
            assert p["expected_crashes"] == properties["expected_crashes"][block]
            assert p["risk_index"] == properties["risk_index"][block]
            assert p["p_at_least_one"] == properties["p_at_least_one"][block]


def test_one_block_layer_and_gzip(served: str, layers: dict[int, dict]) -> None:
    one = get(served, "/zones", resolution=8, date=DAY, block=3)
    assert one.headers["content-encoding"] == "gzip"  # requests asks for gzip by default
    plain = requests.get(
        served + "/zones",
        params={"resolution": 8, "date": DAY, "block": 3},
        headers={"Accept-Encoding": "identity"},
        timeout=60,
    )
    assert "content-encoding" not in plain.headers and plain.json() == one.json()
    first = one.json()["features"][5]["properties"]
    whole = layers[8]["features"][5]["properties"]
    assert one.json()["block"] == 3 and first["expected_crashes"] == whole["expected_crashes"][3]


def test_a_new_date_layer_answers_within_200_ms(served: str) -> None:
    """Not cached yet: the model runs for every res-9 zone and block of the date."""
    took = []
    for day in ("2025-03-03", "2025-03-04", "2025-03-05"):
        start = time.perf_counter()
        assert get(served, "/zones", resolution=9, date=day).status_code == 200
        took.append(time.perf_counter() - start)
    print(f"/zones resolution 9, uncached dates: {[round(t * 1000) for t in took]} ms")
    assert statistics.median(took) <= 0.2


@pytest.mark.parametrize(
    ("params", "field"),
    [
        ({"resolution": 6}, "resolution"),
        ({"resolution": "nine"}, "resolution"),
        ({"date": "2025-02-30"}, "date"),
        ({"date": "03/02/2025"}, "date"),
        ({"date": "1999-01-01"}, "date"),
        ({"block": 6}, "block"),
        ({"block": -1}, "block"),
        ({"resolutoin": 9}, "resolutoin"),
    ],
)
def test_bad_layer_query_is_a_400_naming_the_field(served: str, params: dict, field: str) -> None:
    response = get(served, "/zones", **params)
    assert response.status_code == 400
    assert response.json()["field"] == field and field in response.json()["error"]


def test_history_of_a_parent_is_the_sum_of_its_children(
    served: str, layers: dict[int, dict]
) -> None:
    busiest = max(layers[8]["features"], key=lambda f: sum(f["properties"]["expected_crashes"]))
    parent = get(served, "/history", zone=busiest["id"]).json()
    assert sum(parent["crashes_by_block"]) > 0 and parent["days"] > 300
    children = [
        get(served, "/history", zone=kid).json() for kid in h3.cell_to_children(parent["zone"], 9)
    ]
    assert (
        np.sum([c["crashes_by_block"] for c in children], axis=0).tolist()
        == parent["crashes_by_block"]
    )
    assert get(served, "/history", zone="not-a-cell").json()["field"] == "zone"
    assert get(served, "/history").status_code == 400


def test_route_follows_neighbouring_cells_and_adds_up(served: str) -> None:
    answer = post(
        served, "/route", {"start": MIDTOWN, "end": JFK, "departure": f"{DAY}T17:30"}
    ).json()
    cells = [c["zone"] for c in answer["cells"]]
    assert cells[0] == h3.latlng_to_cell(MIDTOWN["latitude"], MIDTOWN["longitude"], 9)
    assert cells[-1] == h3.latlng_to_cell(JFK["latitude"], JFK["longitude"], 9)
    assert all(h3.are_neighbor_cells(a, b) for a, b in zip(cells, cells[1:], strict=False))
    expected = np.array([c["expected_crashes"] for c in answer["cells"]])
    assert answer["total_expected_crashes"] == pytest.approx(expected.sum(), rel=1e-12)
    stretch = answer["riskiest_stretch"]
    width = stretch["last"] - stretch["first"] + 1
    windows = np.convolve(expected, np.ones(width), mode="valid")
    assert stretch["expected_crashes"] == pytest.approx(windows.max(), rel=1e-12)
    assert answer["block"] == [16, 20] and "not streets" in answer["path"]
    items = [{"zone": z, "datetime": f"{DAY}T17:30"} for z in cells]
    predicted = post(served, "/predict", {"items": items}).json()["predictions"]
    assert [p["expected_crashes"] for p in predicted] == expected.tolist()


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"start": MIDTOWN, "end": {"latitude": 41.5, "longitude": -73.9}}, "end.latitude"),
        ({"start": MIDTOWN, "end": JFK, "departure": "tomorrow"}, "departure"),
        ({"start": MIDTOWN, "end": JFK, "departure": "1990-01-01T08:00"}, "departure"),
        ({"start": MIDTOWN, "end": JFK, "resolution": 10}, "resolution"),
        ({"start": {"latitude": 40.7}, "end": JFK}, "start.longitude"),
    ],
)
def test_bad_route_is_a_400_naming_the_field(served: str, body: dict, field: str) -> None:
    response = post(served, "/route", {"departure": f"{DAY}T08:00", **body})
    assert response.status_code == 400
    assert response.json()["field"] == field


def test_outlook_is_the_citywide_sum_of_the_zones(served: str, layers: dict[int, dict]) -> None:
    answer = post(served, "/outlook", {"start_date": "2025-02-01"}).json()
    days = answer["days"]
    assert [d["date"] for d in days] == [f"2025-02-0{i}" for i in range(1, 8)]
    monday = days[2]
    citywide = sum(sum(f["properties"]["expected_crashes"]) for f in layers[7]["features"])
    assert monday["weekday"] == "Monday"
    assert monday["expected_crashes"] == pytest.approx(citywide, rel=1e-6)
    for day in days:
        below = sum(day["expected_crashes"] >= cut for cut in day["season_cuts"])
        assert day["day_level_index"] == below and set(day["drivers"]) >= {"weekday", "holiday"}
    thanksgiving = post(served, "/outlook", {"start_date": "2025-11-27", "days": 1}).json()
    assert thanksgiving["days"][0]["holiday"] == "Thanksgiving Day"


@pytest.mark.parametrize(
    ("body", "field"),
    [({"days": 0}, "days"), ({"days": 15}, "days"), ({"start_date": "2025-2-1"}, "start_date")],
)
def test_bad_outlook_is_a_400_naming_the_field(served: str, body: dict, field: str) -> None:
    response = post(served, "/outlook", body)
    assert response.status_code == 400 and response.json()["field"] == field


def test_page_at_root_swagger_at_docs_and_no_cdn_docs(served: str) -> None:
    page = get(served, "/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    docs = get(served, "/docs")
    assert docs.status_code == 200 and "swagger-ui" in docs.text
    assert "googletagmanager" not in docs.text and "http" not in docs.text.replace(
        "https://github.com/bentoml/BentoML",
        "",  # a link, not something the page loads
    )
    assert get(served, "/docs.json").json()["paths"].keys() >= {"/predict", "/route", "/outlook"}
    for path in ("/openapi.json", "/redoc"):  # FastAPI's own docs load Swagger from a CDN
        assert get(served, path).status_code == 404
    assert "today" in get(served, "/metadata").json()
