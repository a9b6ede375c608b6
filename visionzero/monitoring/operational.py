"""Operational canary metrics per stage: /predict requests, 5xx errors, latency percentiles.

The canary decision needs to know whether staging fails or slows down more than production. The
numbers come from BentoML's own instruments (`bentoml_service_request_total` by
`http_response_code`, the `bentoml_service_request_duration_seconds` histogram), read from

1. a Prometheus that scrapes both stages with a `stage` label: `VZ_PROMETHEUS_URL` (Kubernetes,
   compose) or the one a running `serve --monitor` recorded in `$VZ_HOME/serve.json`; counts over
   the last `window_minutes`, percentiles from the histogram's increase over that window;
2. otherwise each running backend's `/metrics` (its address also in serve.json): counts since that
   backend started, percentiles from its cumulative buckets, as `histogram_quantile` computes them.

Errors are 5xx answers only: a 4xx is the client's mistake and says nothing about the model server.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Literal

import requests
from prometheus_client.parser import text_string_to_metric_families
from pydantic import BaseModel, ConfigDict

from visionzero.platform.settings import paths
from visionzero.rollout.local_canary import STAGES
from visionzero.rollout.prometheus import prometheus_url

REQUESTS = "bentoml_service_request_total"
DURATION = "bentoml_service_request_duration_seconds"
ENDPOINT = "/predict"  # the model's answers; probes and /metrics are not the canary's business
QUANTILES = {"p50_ms": 0.50, "p95_ms": 0.95, "p99_ms": 0.99}
TIMEOUT = 10.0


class MetricsUnavailable(RuntimeError):
    """No source of operational metrics answered; the message says what was tried."""


class StageHealth(BaseModel):
    """One stage's /predict traffic: what the canary rule compares between the stages."""

    model_config = ConfigDict(frozen=True)

    stage: Literal["production", "staging"]
    source: Literal["prometheus", "metrics-endpoint"]
    requests: int
    errors: int  # 5xx answers
    error_rate: float  # errors / requests; 0 without requests
    p50_ms: float | None  # None without requests
    p95_ms: float | None
    p99_ms: float | None


def serve_pid_file() -> Path:
    return paths().home / "serve.json"


def stage_health(window_minutes: int = 60) -> dict[str, StageHealth]:
    """Each serving stage's health, from Prometheus when one is known, else from the backends'
    `/metrics`. Raises MetricsUnavailable when neither answers."""
    if window_minutes < 1:
        raise ValueError(f"window_minutes must be at least 1, not {window_minutes}")
    pid_file = serve_pid_file()
    tried = []
    url = prometheus_url(pid_file)
    if url:
        try:
            return from_prometheus(url, window_minutes)
        except MetricsUnavailable as exc:
            tried.append(str(exc))
    backends = recorded_backends(pid_file)
    if backends:
        try:
            return from_metrics_endpoints(backends)
        except MetricsUnavailable as exc:
            tried.append(str(exc))
    if not url and not backends:
        tried.append(
            "VZ_PROMETHEUS_URL is not set and no `python run.py serve` runs on this VZ_HOME"
        )
    raise MetricsUnavailable("no operational metrics: " + "; ".join(tried))


def recorded_backends(pid_file: Path) -> dict[str, str]:
    """Stage -> base URL of the backends a running `serve` recorded (empty when none runs)."""
    try:
        record = json.loads(pid_file.read_text())
        backends = record.get("backends") or {}
    except (OSError, ValueError, AttributeError):
        return {}
    return {stage: url for stage, url in backends.items() if stage in STAGES}


# --- Prometheus ------------------------------------------------------------------------------


def query(url: str, expr: str, at: float) -> list[tuple[dict[str, str], float]]:
    """An instant query's vector at time `at`: (labels, value) per series."""
    try:
        response = requests.get(
            f"{url}/api/v1/query", params={"query": expr, "time": f"{at:.3f}"}, timeout=TIMEOUT
        )
        body = response.json()
    except (requests.RequestException, ValueError) as exc:
        raise MetricsUnavailable(f"Prometheus at {url} did not answer: {exc}") from exc
    if body.get("status") != "success":
        raise MetricsUnavailable(f"Prometheus at {url} refused {expr!r}: {body.get('error')}")
    return [(row["metric"], float(row["value"][1])) for row in body["data"]["result"]]


def by_stage(rows: list[tuple[dict[str, str], float]]) -> dict[str, float]:
    return {labels["stage"]: value for labels, value in rows if "stage" in labels}


def from_prometheus(url: str, window_minutes: int) -> dict[str, StageHealth]:
    """Counts and percentiles over the window, per stage label; the stages are those scraped
    now, so a stage that served earlier in the window but no longer is left out. Requests and
    errors come from one query (by status code), so a scrape landing between two queries cannot
    make errors outnumber requests; every query is evaluated at the same instant."""
    at = time.time()
    window = f"[{window_minutes}m]"
    up = query(url, f'max by (stage) (up{{stage=~"{"|".join(STAGES)}"}})', at)
    stages = sorted(by_stage(up))
    if not stages:
        raise MetricsUnavailable(f"Prometheus at {url} scrapes no target labelled with a stage")
    predict = f'endpoint="{ENDPOINT}"'
    by_code = query(
        url,
        f"sum by (stage, http_response_code) (increase({REQUESTS}{{{predict}}}{window}))",
        at,
    )
    total = dict.fromkeys(stages, 0.0)
    errors = dict.fromkeys(stages, 0.0)
    for labels, value in by_code:
        stage = labels.get("stage")
        if stage in total:
            total[stage] += value
            if labels.get("http_response_code", "").startswith("5"):
                errors[stage] += value
    percentiles = {
        name: by_stage(
            query(
                url,
                f"histogram_quantile({q}, sum by (stage, le) "
                f"(increase({DURATION}_bucket{{{predict}}}{window})))",
                at,
            )
        )
        for name, q in QUANTILES.items()
    }
    return {
        stage: health(
            stage,
            "prometheus",
            round(total[stage]),
            round(errors[stage]),
            {name: values.get(stage) for name, values in percentiles.items()},
        )
        for stage in stages
    }


# --- the backends' /metrics ------------------------------------------------------------------


def from_metrics_endpoints(backends: dict[str, str]) -> dict[str, StageHealth]:
    """Counts since each backend started, read from its own `/metrics`."""
    found = {}
    for stage, url in backends.items():
        try:
            response = requests.get(f"{url}/metrics", timeout=TIMEOUT)
            response.raise_for_status()
        except requests.RequestException as exc:
            raise MetricsUnavailable(f"{stage} backend {url}/metrics: {exc}") from exc
        found[stage] = parse_metrics(stage, response.text)
    return found


def parse_metrics(stage: str, text: str) -> StageHealth:
    """A backend's /metrics text: /predict answers by status and the duration histogram (summed
    over status codes and workers)."""
    requests_total = errors = 0.0
    buckets: dict[float, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.labels.get("endpoint") != ENDPOINT:
                continue
            if sample.name == REQUESTS:
                requests_total += sample.value
                if sample.labels.get("http_response_code", "").startswith("5"):
                    errors += sample.value
            elif sample.name == f"{DURATION}_bucket":
                bound = float(sample.labels["le"])
                buckets[bound] = buckets.get(bound, 0.0) + sample.value
    cumulative = sorted(buckets.items())
    percentiles = {name: bucket_quantile(q, cumulative) for name, q in QUANTILES.items()}
    return health(stage, "metrics-endpoint", round(requests_total), round(errors), percentiles)


def bucket_quantile(q: float, cumulative: list[tuple[float, float]]) -> float | None:
    """The q-quantile of a cumulative histogram (upper bound, count), as Prometheus's
    `histogram_quantile`: linear within the bucket holding the rank; in the +Inf bucket, the
    highest finite bound. None for an empty histogram."""
    if not cumulative or cumulative[-1][1] <= 0:
        return None
    rank = q * cumulative[-1][1]
    lower_bound, lower_count = 0.0, 0.0
    for bound, count in cumulative:
        if count >= rank:
            if math.isinf(bound):
                return lower_bound
            if count == lower_count:
                return bound
            share = (rank - lower_count) / (count - lower_count)
            return lower_bound + (bound - lower_bound) * share
        lower_bound, lower_count = bound, count
    return lower_bound


def health(
    stage: str, source: str, total: int, errors: int, seconds: dict[str, float | None]
) -> StageHealth:
    millis = {
        name: None if value is None or math.isnan(value) else value * 1000
        for name, value in seconds.items()
    }
    return StageHealth(
        stage=stage,
        source=source,
        requests=total,
        errors=errors,
        error_rate=errors / total if total else 0.0,
        **millis,
    )
