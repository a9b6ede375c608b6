"""Operational canary metrics per stage: /predict answers, 5xx errors, latency per size class.

The canary decision needs to know whether staging fails or slows down more than production on
the traffic the canary split gave it. The numbers come from the service's own instruments
(visionzero/serving/traffic_metrics.py: answers by traffic class, body size class, status class
and warm-up phase, and a duration histogram), read from

1. a Prometheus that scrapes both stages with a `stage` label: `VZ_PROMETHEUS_URL` (Kubernetes,
   compose) or the one a running `serve --monitor` recorded in `$VZ_HOME/serve.json`; counts over
   the last `window_minutes`, percentiles from the histogram's increase over that window;
2. otherwise each running backend's `/metrics` (its address also in serve.json): counts since that
   backend started, percentiles from its cumulative buckets, as `histogram_quantile` computes them.

Only split traffic after the worker's warm-up is judged: pinned `/stage/<stage>/` requests (a
client chooses the stage), direct ones (tests, probes) and warm-up answers are counted apart and
reported. Errors are 5xx answers only: a 4xx is the client's mistake and says nothing about the
model server. Latency is per size class, so that a few huge requests compare with huge ones.
"""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Literal

import requests
from prometheus_client.parser import text_string_to_metric_families
from pydantic import BaseModel, ConfigDict

from visionzero.platform.stage import STAGES, Stage
from visionzero.rollout.prometheus import prometheus_url
from visionzero.rollout.serve_record import load_serve_record, serve_record_path

# As visionzero/serving/traffic_metrics.py names them (not imported: that module needs BentoML).
REQUESTS = "crash_risk_canary_requests"
DURATION = "crash_risk_canary_request_duration_seconds"

QUANTILES = {"p50_ms": 0.50, "p95_ms": 0.95, "p99_ms": 0.99}
NOT_COUNTED = ("pinned", "direct", "warmup")
SIZE_CLASSES = ("one", "small", "large")  # as traffic_metrics.py names them, smallest first
TIMEOUT = 10.0


class MetricsUnavailable(RuntimeError):
    """No source of operational metrics answered; the message says what was tried."""


class SizeLatency(BaseModel):
    """Latency of one size class's split, post-warm-up /predict answers (4xx not timed)."""

    model_config = ConfigDict(frozen=True)

    requests: int
    p50_ms: float | None  # None without requests
    p95_ms: float | None
    p99_ms: float | None


class StageHealth(BaseModel):
    """One stage's /predict traffic as the canary rule compares it: only what the canary split
    sent after the worker's warm-up counts; what was left out is kept to be said."""

    model_config = ConfigDict(frozen=True)

    stage: Stage
    source: Literal["prometheus", "metrics-endpoint"]
    requests: int  # split, post-warm-up answers
    errors: int  # 5xx answers among them
    error_rate: float  # errors / requests; 0 without requests
    latency: dict[str, SizeLatency] = {}  # size class (one, small, large) -> its latency
    not_counted: dict[str, int] = {}  # pinned, direct (after warm-up), warmup (any traffic)

    def counted(self) -> str:
        """What the numbers hold and what they leave out, for the rule's reasons."""
        left_out = ", ".join(f"{self.not_counted.get(k, 0)} {k}" for k in NOT_COUNTED)
        return f"{self.requests} split after warm-up on {self.stage} (not counted: {left_out})"


def stage_health(window_minutes: int = 60) -> dict[str, StageHealth]:
    """Each serving stage's health, from Prometheus when one is known, else from the backends'
    `/metrics`. Raises MetricsUnavailable when neither answers."""
    if window_minutes < 1:
        raise ValueError(f"window_minutes must be at least 1, not {window_minutes}")
    pid_file = serve_record_path()
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
    record = load_serve_record(pid_file)
    backends = record.backends if record else {}
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
    errors come from one query (by every label), so a scrape landing between two queries cannot
    make errors outnumber requests; every query is evaluated at the same instant."""
    at = time.time()
    window = f"[{window_minutes}m]"
    up = query(url, f'max by (stage) (up{{stage=~"{"|".join(STAGES)}"}})', at)
    stages = sorted(by_stage(up))
    if not stages:
        raise MetricsUnavailable(f"Prometheus at {url} scrapes no target labelled with a stage")
    counts = query(
        url,
        f"sum by (stage, traffic, size, status, phase) (increase({REQUESTS}_total{window}))",
        at,
    )
    judged = 'traffic="split",phase="steady"'
    percentiles: dict[str, dict[str, dict[str, float | None]]] = {}  # stage -> size -> name
    for name, q in QUANTILES.items():
        rows = query(
            url,
            f"histogram_quantile({q}, sum by (stage, size, le) "
            f"(increase({DURATION}_bucket{{{judged}}}{window})))",
            at,
        )
        for labels, value in rows:
            if "stage" in labels and "size" in labels:
                sizes = percentiles.setdefault(labels["stage"], {})
                sizes.setdefault(labels["size"], {})[name] = value
    return {
        stage: summarise(
            stage,
            "prometheus",
            [(labels, value) for labels, value in counts if labels.get("stage") == stage],
            percentiles.get(stage, {}),
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
    """A backend's /metrics text: the canary instruments' counts and, per size class, the
    duration histogram of split post-warm-up answers (summed over workers)."""
    counts: list[tuple[dict[str, str], float]] = []
    buckets: dict[str, dict[float, float]] = {}  # size -> upper bound -> cumulative count
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            labels = sample.labels
            if sample.name == f"{REQUESTS}_total":
                counts.append((labels, sample.value))
            elif (
                sample.name == f"{DURATION}_bucket"
                and labels.get("traffic") == "split"
                and labels.get("phase") == "steady"
            ):
                sizes = buckets.setdefault(labels.get("size", ""), {})
                bound = float(labels["le"])
                sizes[bound] = sizes.get(bound, 0.0) + sample.value
    percentiles = {
        size: {
            name: bucket_quantile(q, sorted(cumulative.items())) for name, q in QUANTILES.items()
        }
        for size, cumulative in buckets.items()
    }
    return summarise(stage, "metrics-endpoint", counts, percentiles)


def summarise(
    stage: str,
    source: str,
    counts: list[tuple[dict[str, str], float]],
    seconds: dict[str, dict[str, float | None]],
) -> StageHealth:
    """One stage's health from its answer counts (labelled as traffic_metrics.py writes them)
    and each size class's percentiles in seconds."""
    total = errors = 0.0
    timed: dict[str, float] = {}  # size -> split steady answers that were timed (not 4xx)
    not_counted = dict.fromkeys(NOT_COUNTED, 0.0)
    for labels, value in counts:
        traffic = labels.get("traffic")
        if labels.get("phase") != "steady":
            not_counted["warmup"] += value
        elif traffic != "split":
            not_counted["pinned" if traffic == "pinned" else "direct"] += value
        else:
            total += value
            status = labels.get("status")
            errors += value if status == "5xx" else 0.0
            if status != "4xx":
                timed[labels.get("size", "")] = timed.get(labels.get("size", ""), 0.0) + value
    latency = {
        size: SizeLatency(requests=round(answers), **millis(seconds.get(size, {})))
        for size, answers in timed.items()
        if round(answers) > 0
    }
    return StageHealth(
        stage=stage,
        source=source,
        requests=round(total),
        errors=round(errors),
        error_rate=round(errors) / round(total) if round(total) else 0.0,
        latency=latency,
        not_counted={name: round(value) for name, value in not_counted.items()},
    )


def millis(seconds: dict[str, float | None]) -> dict[str, float | None]:
    return {
        name: None if (value := seconds.get(name)) is None or math.isnan(value) else value * 1000
        for name in QUANTILES
    }


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
