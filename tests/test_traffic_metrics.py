"""The canary's own /predict instruments (visionzero/serving/traffic_metrics.py) in a real
`bentoml serve`, reached directly with the X-VZ-Traffic header the edge sets: the series carry
the traffic, size, status and phase labels, a made-up header value adds no series, and answers
in the warm-up count apart."""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass

import pytest
import requests
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import bento_server
from visionzero.monitoring.operational import from_metrics_endpoints
from visionzero.serving.traffic_metrics import size_class, status_class, traffic_class

pytestmark = pytest.mark.slow
WARMUP = 60.0  # seconds: longer than a loaded machine takes to start one worker
ITEM = {"latitude": 40.7128, "longitude": -74.0060, "datetime": "2025-02-03T08:30"}


@dataclass
class Backend:
    url: str
    warm_by: float  # time.monotonic() after which the worker's warm-up is surely over


@pytest.fixture(scope="module")
def backend(trained: dict) -> Iterator[Backend]:
    """Staging's Bento, one worker, a warm-up of WARMUP seconds from its start."""
    env = {"VZ_STAGE": "staging", "VZ_WORKERS": "1", "VZ_CANARY_WARMUP_SECONDS": str(WARMUP)}
    started = time.monotonic()
    with bento_server(trained.production.bento_tag, env, timeout=240) as url:
        ready = time.monotonic()
        assert ready - started < WARMUP, f"the worker took {ready - started:.0f} s to start"
        yield Backend(url, ready + WARMUP)


def predict(url: str, items: list[dict] | str, traffic: str | None) -> int:
    headers = {"X-VZ-Traffic": traffic} if traffic is not None else {}
    body = {"json": {"items": items}} if isinstance(items, list) else {"data": items}
    if isinstance(items, str):
        headers["Content-Type"] = "application/json"
    response = requests.post(f"{url}/predict", headers=headers, timeout=60, **body)
    return response.status_code


def counts(url: str, zeros: bool = False) -> dict[tuple[str, ...], float]:
    """(traffic, size, status, phase) -> answers, from the backend's /metrics (the series the
    rule reads exist at 0 from the start: left out unless `zeros`)."""
    text = requests.get(f"{url}/metrics", timeout=10).text
    found = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == "crash_risk_canary_requests_total" and (sample.value or zeros):
                labels = sample.labels
                assert labels["stage"] == "staging"
                key = (labels["traffic"], labels["size"], labels["status"], labels["phase"])
                found[key] = sample.value
    return found


def test_labels_are_bounded_and_classify_as_the_rule_needs() -> None:
    assert [traffic_class(v) for v in (b"split", b" Pinned ", b"evil", None)] == [
        "split",
        "pinned",
        "direct",
        "direct",
    ]
    assert [size_class(n) for n in (0, 1024, 1025, 65536, 65537)] == [
        "one",
        "one",
        "small",
        "small",
        "large",
    ]
    assert [status_class(s) for s in (200, 400, 413, 500, 504)] == [
        "2xx",
        "4xx",
        "4xx",
        "5xx",
        "5xx",
    ]


def test_answers_are_counted_by_traffic_size_status_and_warm_up(backend: Backend) -> None:
    url = backend.url
    assert counts(url, zeros=True)[("split", "large", "5xx", "steady")] == 0, (
        "the series the rule reads should exist at 0 before any request"
    )
    # In the warm-up: a one-item split answer, pinned ones of three sizes, a refused one, and
    # made-up header values that must not become series of their own.
    assert predict(url, [ITEM], "split") == 200
    assert predict(url, [ITEM], "pinned") == 200
    assert predict(url, [ITEM] * 50, "pinned") == 200
    assert predict(url, [ITEM] * 2000, "pinned") == 200
    assert predict(url, "{not json", "pinned") == 400
    for value in ("evil", "split; x", "x" * 200):
        assert predict(url, [ITEM], value) == 200
    assert predict(url, [ITEM], None) == 200
    requests.get(f"{url}/metadata", timeout=10).raise_for_status()  # not /predict: not counted
    assert counts(url) == {
        ("split", "one", "2xx", "warmup"): 1,
        ("pinned", "one", "2xx", "warmup"): 1,
        ("pinned", "small", "2xx", "warmup"): 1,
        ("pinned", "large", "2xx", "warmup"): 1,
        ("pinned", "one", "4xx", "warmup"): 1,
        ("direct", "one", "2xx", "warmup"): 4,
    }
    health = from_metrics_endpoints({"staging": url})["staging"]
    assert (health.requests, health.latency) == (0, {})  # nothing judged in the warm-up
    assert health.not_counted == {"pinned": 0, "direct": 0, "warmup": 9}

    time.sleep(max(0.0, backend.warm_by - time.monotonic()))
    for _ in range(3):
        assert predict(url, [ITEM], "split") == 200
    assert predict(url, [ITEM] * 2000, "pinned") == 200
    after = counts(url)
    assert after[("split", "one", "2xx", "steady")] == 3
    assert after[("pinned", "large", "2xx", "steady")] == 1
    assert {key[0] for key in after} == {"split", "pinned", "direct"}
    health = from_metrics_endpoints({"staging": url})["staging"]
    assert (health.requests, health.errors) == (3, 0)
    assert health.not_counted == {"pinned": 1, "direct": 0, "warmup": 9}
    assert list(health.latency) == ["one"]  # the pinned 2,000-item answer is not in it
    assert health.latency["one"].requests == 3 and 0 < health.latency["one"].p99_ms < 5000
