"""The canary's own /predict instruments: which traffic a request was, how big, how it ended.

BentoML's per-endpoint metrics mix every request a stage answers, so a client could steer the
canary: 100 failing or a few 10,000-item requests sent to `/stage/staging/` (public, pinned)
would raise staging's error rate or p99 and roll it back. The edge says which traffic a request
is in `X-VZ-Traffic` (nginx sets `split` on the canary split and `pinned` on `/stage/<stage>/`,
overwriting what a client sent); no header means the request reached the backend directly
(a test, a probe). Here each POST /predict is counted by

- traffic: split | pinned | direct (any other value is `direct`: a client cannot add series);
- size: the body's bytes read, `one` (<= 1 KiB, a few items), `small` (<= 64 KiB), `large`;
- status: 2xx | 4xx | 5xx;
- phase: `warmup` in the first VZ_CANARY_WARMUP_SECONDS after the worker started, else `steady`,
  so that a cold start cannot fake a slow model.

Every label is bounded (3 x 3 x 3 x 2 values). The canary rule (visionzero/monitoring/canary.py)
judges errors on split steady traffic only and latency per size class: huge requests sent
through the split land on both stages in proportion and only ever meet their own size class, so
they cannot make one stage look slower than the other.
"""

from __future__ import annotations

import time
from functools import cache
from itertools import product
from typing import Any

import bentoml
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from visionzero.platform.settings import settings

HEADER = b"x-vz-traffic"
TRAFFIC_CLASSES = ("split", "pinned", "direct")
SIZE_CLASSES = {"one": 1024, "small": 64 * 1024, "large": None}  # upper bound of the body bytes
REQUESTS = "crash_risk_canary_requests"  # exposed as crash_risk_canary_requests_total
DURATION = "crash_risk_canary_request_duration_seconds"
LABELS = ["stage", "traffic", "size", "status", "phase"]
DURATION_LABELS = ["stage", "traffic", "size", "phase"]  # 4xx answers are not timed
# Prometheus's default buckets: one item takes milliseconds, 10,000 items seconds.
BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0)


def traffic_class(value: bytes | None) -> str:
    name = (value or b"").decode("latin-1").strip().lower()
    return name if name in ("split", "pinned") else "direct"


def size_class(body_bytes: int) -> str:
    for name, bound in SIZE_CLASSES.items():
        if bound is None or body_bytes <= bound:
            return name
    raise AssertionError("the last size class has no bound")


def status_class(status: int) -> str:
    return "5xx" if status >= 500 else "4xx" if status >= 400 else "2xx"


@cache
def instruments() -> tuple[Any, Any]:
    """Created on first use in the worker, once (not at import: bento_build re-imports the
    service, and a second registration of the same name fails)."""
    counter = bentoml.metrics.Counter(
        name=REQUESTS,
        documentation="POST /predict answers by stage, traffic class (split, pinned, direct), "
        "body size class, status class and phase (warmup, steady): what the canary judges",
        labelnames=LABELS,
    )
    histogram = bentoml.metrics.Histogram(
        name=DURATION,
        documentation="POST /predict answer time (not 4xx) by stage, traffic, size and phase",
        labelnames=DURATION_LABELS,
        buckets=BUCKETS,
    )
    return counter, histogram


class CanaryTraffic:
    """Pure ASGI: times POST /predict from the call until the answer is sent and counts it once;
    every other request passes through untouched."""

    def __init__(self, app: ASGIApp, path: str = "/predict") -> None:
        self.app = app
        self.path = path
        own = settings()
        self.stage = own.vz_stage
        self.warm_until = time.monotonic() + own.vz_canary_warmup_seconds
        # Every count and the latency the rule reads exist from the start at 0: Prometheus's
        # increase() cannot count what a series held when it was first scraped.
        # The series are looked up here once, not per request (labels() costs a lock and a dict).
        counter, histogram = instruments()
        self.counts = {
            (traffic, size, status, phase): counter.labels(
                stage=self.stage, traffic=traffic, size=size, status=status, phase=phase
            )
            for traffic, size, status, phase in product(
                TRAFFIC_CLASSES, SIZE_CLASSES, ("2xx", "4xx", "5xx"), ("warmup", "steady")
            )
        }
        self.durations = {
            (traffic, size, phase): histogram.labels(
                stage=self.stage, traffic=traffic, size=size, phase=phase
            )
            for traffic, size, phase in product(TRAFFIC_CLASSES, SIZE_CLASSES, ("warmup", "steady"))
        }

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] != "POST" or scope["path"] != self.path:
            await self.app(scope, receive, send)
            return
        started = time.monotonic()
        phase = "warmup" if started < self.warm_until else "steady"
        headers = dict(scope["headers"])
        traffic = traffic_class(headers.get(HEADER))
        length = headers.get(b"content-length", b"")
        body_bytes = int(length) if length.isdigit() else 0
        status = 500  # an exception before the answer starts is a 500 from the server

        async def counting_receive() -> Message:
            nonlocal body_bytes
            message = await receive()
            if message["type"] == "http.request":
                body_bytes += len(message.get("body", b""))
            return message

        async def status_send(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:  # Content-Length is the body's size (RequestGuard refused a wrong one); else counted
            await self.app(scope, receive if length.isdigit() else counting_receive, status_send)
        finally:
            size, outcome = size_class(body_bytes), status_class(status)
            self.counts[traffic, size, outcome, phase].inc()
            if outcome != "4xx":
                self.durations[traffic, size, phase].observe(time.monotonic() - started)
