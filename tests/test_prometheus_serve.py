"""`serve --monitor` with a real Prometheus: both stages scraped with their stage label, the
targets follow the canary, operational metrics from Prometheus and from `/metrics` agree with the
traffic sent, a staging model that fails answers 500s that show as its error rate, and SIGTERM
leaves no Prometheus behind."""

from __future__ import annotations

import json
import os
import signal
import subprocess
from pathlib import Path

import psutil
import pytest
import requests

from tests.broken_releases import weekday_only_release
from tests.conftest import free_port, start_serve, wait_for, wait_http
from visionzero.monitoring.operational import from_metrics_endpoints, stage_health
from visionzero.rollout import deployment_state as deployment

pytestmark = pytest.mark.slow
WEEKDAY = {"latitude": 40.7128, "longitude": -74.0060, "datetime": "2025-02-03T08:30"}
SATURDAY = {**WEEKDAY, "datetime": "2025-02-08T08:30"}


@pytest.fixture(scope="module")
def weekend_broken(trained: dict, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """A staging release that answers weekdays and fails with a 500 on other day types."""
    workdir = tmp_path_factory.mktemp("weekend")
    return weekday_only_release(trained.production.model_tag, 998, workdir)


def targets(prometheus: str) -> dict[str, str]:
    """Stage -> health of each active scrape target."""
    active = requests.get(f"{prometheus}/api/v1/targets", timeout=5).json()["data"]
    return {t["labels"]["stage"]: t["health"] for t in active["activeTargets"]}


def post(url: str, item: dict, times: int, traffic: str = "split") -> list[int]:
    """Straight to a backend, marked as nginx marks the traffic it routes."""
    return [
        requests.post(
            f"{url}/predict", json={"items": [item]}, headers={"X-VZ-Traffic": traffic}, timeout=30
        ).status_code
        for _ in range(times)
    ]


def test_serve_monitor_scrapes_both_stages_and_stage_health_agrees(
    trained: dict, weekend_broken: dict, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = deployment.state_path()
    before = path.read_text()
    with deployment.locked_state() as state:
        state.staging = weekend_broken
    pid_file = Path(os.environ["VZ_HOME"]) / "serve.json"
    port = free_port()
    monkeypatch.setenv("VZ_CANARY_WARMUP_SECONDS", "0")  # the traffic below counts at once
    serve = start_serve(port, "--monitor")
    try:
        wait_http(f"http://127.0.0.1:{port}/readyz", 240, serve)
        record = wait_for(
            lambda: (
                (r := json.loads(pid_file.read_text())).get("prometheus_url")
                and len(r["backends"]) == 2
                and r
            ),
            240,
            "serve did not record Prometheus and both backends",
        )
        prometheus, backends = record["prometheus_url"], record["backends"]
        wait_for(
            lambda: targets(prometheus) == {"production": "up", "staging": "up"},
            30,
            "both stage targets healthy",
        )

        assert set(post(backends["production"], WEEKDAY, 40)) == {200}
        assert set(post(backends["staging"], WEEKDAY, 20)) == {200}
        assert set(post(backends["staging"], SATURDAY, 10)) == {500}, "the fault did not fire"
        assert set(post(backends["staging"], SATURDAY, 5, "pinned")) == {500}

        # /metrics, counted since each backend started: the split traffic sent; serve's one
        # check reached each backend directly and the pinned 500s are counted apart
        direct = from_metrics_endpoints(backends)
        assert (direct["production"].requests, direct["production"].errors) == (40, 0)
        assert (direct["staging"].requests, direct["staging"].errors) == (30, 10)
        assert direct["staging"].error_rate == pytest.approx(10 / 30)
        assert direct["staging"].not_counted == {"pinned": 5, "direct": 1, "warmup": 0}

        def scraped() -> dict | None:
            health = stage_health(window_minutes=10)
            staging, production = health["staging"], health["production"]
            done = staging.errors > 0 and staging.requests >= 30 and production.requests >= 40
            return health if done else None

        health = wait_for(scraped, 30, "Prometheus did not see the traffic")
        assert {h.source for h in health.values()} == {"prometheus"}
        assert health["production"].error_rate == 0
        assert health["production"].latency["one"].p99_ms > 0
        # 10 of 30; increase() extrapolates to the window's edges: counts are estimates
        assert health["staging"].error_rate == pytest.approx(10 / 30, rel=0.15)
        assert health["staging"].latency["one"].p99_ms > 0
        # the 5 pinned answers are counted apart (increase() extrapolates: an estimate, not 5)
        assert health["staging"].not_counted["pinned"] >= 4

        with deployment.locked_state() as state:  # a rollback of the canary: staging goes
            state.staging = None
        wait_for(lambda: set(targets(prometheus)) == {"production"}, 60, "targets followed")

        groups = json.loads(pid_file.read_text())["groups"]
        prometheus_pid = groups["prometheus"]
        serve.send_signal(signal.SIGTERM)
        assert serve.wait(timeout=60) == 0
        assert not psutil.pid_exists(prometheus_pid) or (
            psutil.Process(prometheus_pid).status() == psutil.STATUS_ZOMBIE
        ), "prometheus outlived serve"
        listen = "--web.listen-address=" + prometheus.removeprefix("http://")
        left = [p for p in psutil.process_iter(["cmdline"]) if listen in (p.info["cmdline"] or [])]
        assert not left, "a prometheus still listens on serve's address"
    finally:
        if serve.poll() is None:
            os.killpg(serve.pid, signal.SIGTERM)
            try:
                serve.wait(timeout=60)
            except subprocess.TimeoutExpired:
                os.killpg(serve.pid, signal.SIGKILL)
        serve.stdout.close()
        path.write_text(before)
