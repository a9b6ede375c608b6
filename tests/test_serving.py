"""The production Bento under a real `bentoml serve` process, exercised over HTTP."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import pytest
import requests

from visionzero.model.levels import RISK_LEVELS

pytestmark = pytest.mark.slow  # integration tier: see pyproject.toml

POINT = {"latitude": 40.7128, "longitude": -74.0060, "datetime": "2025-02-03T08:30"}


def predict(url: str, body: object) -> requests.Response:
    data = body if isinstance(body, str) else json.dumps(body)
    return requests.post(
        url + "/predict", data=data, headers={"Content-Type": "application/json"}, timeout=60
    )


def test_single_prediction_follows_the_contract(served: str, trained: dict) -> None:
    response = predict(served, {"items": [POINT]})
    assert response.status_code == 200
    (item,) = response.json()["predictions"]
    assert (
        item["zone"].startswith("89") and item["date"] == "2025-02-03" and item["block"] == [8, 12]
    )
    assert item["resolution"] == 9  # street scale by default
    assert item["risk_level"] == RISK_LEVELS[item["risk_index"]]
    assert 0 < item["p_at_least_one"] < 1 and item["expected_crashes"] > 0
    assert item["weather_source"] == "climatology"
    assert item["model_version"] == str(trained.production.model_version)
    assert item["stage"] == "production"


def test_batch_keeps_item_order_and_zone_input(served: str) -> None:
    first = predict(served, {"items": [POINT]}).json()["predictions"][0]
    items = [
        POINT,
        {"zone": first["zone"], "datetime": "2025-02-03T08:59"},
        {
            **POINT,
            "datetime": "2025-02-03T20:00",
            "precipitation": 1.5,
            "temperature_max": 35,
            "temperature_min": 28,
        },
    ]
    predictions = predict(served, {"items": items}).json()["predictions"]
    assert [p["block"] for p in predictions] == [[8, 12], [8, 12], [20, 24]]
    assert predictions[1]["expected_crashes"] == pytest.approx(first["expected_crashes"])
    assert predictions[2]["weather_source"] == "request"


def test_each_resolution_answers_and_children_sum_to_their_parent(served: str) -> None:
    import h3

    (district,) = predict(served, {"items": [{**POINT, "resolution": 7}]}).json()["predictions"]
    assert district["resolution"] == 7 and h3.get_resolution(district["zone"]) == 7
    block = h3.latlng_to_cell(POINT["latitude"], POINT["longitude"], 9)
    assert district["zone"] == h3.cell_to_parent(block, 7)  # the point's block's district
    (middle,) = predict(served, {"items": [{**POINT, "resolution": 8}]}).json()["predictions"]
    assert middle["resolution"] == 8 and middle["zone"] == h3.cell_to_parent(block, 8)
    children = [
        {"zone": cell, "datetime": POINT["datetime"]}
        for cell in h3.cell_to_children(district["zone"], 9)
    ]
    blocks = predict(served, {"items": children}).json()["predictions"]
    assert {p["resolution"] for p in blocks} == {9}
    total = sum(p["expected_crashes"] for p in blocks)
    assert total == pytest.approx(district["expected_crashes"], rel=1e-9)


def test_metadata(served: str, trained: dict) -> None:
    meta = requests.get(served + "/metadata", timeout=30).json()
    assert meta["zone_system"] == "h3" and meta["zone_resolution"] == 9
    assert meta["zone_resolutions"] == [7, 8, 9]
    assert meta["thresholds"] == meta["thresholds_by_resolution"]["9"]
    assert meta["thresholds_by_resolution"]["9"][-1] < meta["thresholds_by_resolution"]["7"][-1]
    assert meta["time_blocks"] == [[0, 4], [4, 8], [8, 12], [12, 16], [16, 20], [20, 24]]
    assert meta["risk_levels"] == RISK_LEVELS and len(meta["thresholds"]) == 4
    assert meta["model_version"] == str(trained.production.model_version)
    assert set(meta["metrics"]) >= {"poisson_deviance", "hit_rate_at_10"}
    first, last = meta["supported_dates"]
    assert first < meta["training_window"][0] and meta["training_window"][1] < last


@pytest.mark.parametrize(
    "body,field",
    [
        ({"items": [{"latitude": 40.7, "datetime": "2025-02-03T08:30"}]}, "items[0].longitude"),
        ({"items": [{"longitude": -74.0, "datetime": "2025-02-03T08:30"}]}, "items[0].latitude"),
        ({"items": [{"latitude": 40.7, "longitude": -74.0}]}, "items[0].datetime"),
        ({"items": [POINT, {**POINT, "latitude": 41.5}]}, "items[1].latitude"),
        ({"items": [{**POINT, "datetime": "2025-02-30T08:30"}]}, "items[0].datetime"),
        ({"items": [{**POINT, "datetime": "tomorrow"}]}, "items[0].datetime"),
        ({"items": [{"zone": "not-a-cell", "datetime": "2025-02-03T08:30"}]}, "items[0].zone"),
        (
            {"items": [{"zone": "8a2a1072b59ffff", "datetime": "2025-02-03T08:30"}]},
            "items[0].zone",
        ),  # resolution 10
        (
            {"items": [{"zone": "87283472bffffff", "datetime": "2025-02-03T08:30"}]},
            "items[0].zone",
        ),  # San Francisco
        ({"items": [POINT, POINT, {**POINT, "latitude": "north"}]}, "items[2].latitude"),
        ({"items": [{**POINT, "precipitation": -1}]}, "items[0].precipitation"),
        ({"items": [{**POINT, "resolution": 10}]}, "items[0].resolution"),
        (
            {
                "items": [
                    {"zone": "872a1072cffffff", "resolution": 9, "datetime": "2025-02-03T08:30"}
                ]
            },
            "items[0].resolution",
        ),  # a zone carries its own resolution
        ({"items": [POINT] * 10_001}, "items"),
        ({"things": []}, "items"),
        ('{"items": [', "body"),
    ],
)
def test_bad_input_is_a_400_naming_the_field(served: str, body: object, field: str) -> None:
    """Every 400, BentoML's own validation included, has one shape: what is wrong, and where."""
    response = predict(served, body)
    assert response.status_code == 400, response.text
    answer = response.json()
    assert set(answer) == {"error", "field"} and answer["field"] == field, answer
    assert answer["error"].startswith(field)


def test_ten_thousand_items(served: str) -> None:
    items = [
        {
            **POINT,
            "latitude": 40.55 + (i % 100) * 0.003,
            "datetime": f"2025-02-{1 + i % 28:02d}T{i % 24:02d}:00",
        }
        for i in range(10_000)
    ]
    started = time.perf_counter()
    response = predict(served, {"items": items})
    elapsed = time.perf_counter() - started
    assert response.status_code == 200
    predictions = response.json()["predictions"]
    assert len(predictions) == 10_000
    assert [p["date"] for p in predictions[:3]] == ["2025-02-01", "2025-02-02", "2025-02-03"]
    assert elapsed < 30  # generous: the benchmark measures latency, this only guards against a hang


def test_builtin_endpoints(served: str) -> None:
    assert requests.get(served + "/livez", timeout=10).status_code == 200
    assert requests.get(served + "/readyz", timeout=10).status_code == 200
    assert "bentoml_service_request" in requests.get(served + "/metrics", timeout=10).text


def test_openapi_fuzzing_finds_no_server_error(served: str) -> None:
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "schemathesis.cli",
            "run",
            served + "/docs.json",
            "--checks",
            "not_a_server_error",
            "--max-examples",
            "60",
            "--request-timeout",
            "30",
            "--phases",
            "examples,coverage,fuzzing",
        ],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=os.environ["VZ_HOME"],
    )  # its cache stays out of the repo
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-2000:]
