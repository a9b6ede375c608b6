"""The BentoML prediction service: how risky is this place at this time?

One Bento serves either role: VZ_STAGE (production|staging) comes from the environment; the model
tag is the Bento argument `model_tag`, stored in the Bento at build time
(visionzero/serving/bento_build.py). Features are computed by visionzero, the same code the
training pipeline used.
"""

from __future__ import annotations

import gc
import logging
import os
import re

from visionzero.platform.settings import MODEL_NAME, settings

SETTINGS = settings()
# BentoML always installs OpenTelemetry's ASGI middleware; with no exporter configured its spans
# cost 15% of throughput and double p99 (benchmarks/serving.py). VZ_TRACING=1 turns tracing back on.
if not SETTINGS.vz_tracing:
    os.environ.setdefault("OTEL_SDK_DISABLED", "true")
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Annotated

import _bentoml_impl.server.app
import bentoml
import orjson
from fastapi import FastAPI, Request
from pydantic import BaseModel, Field, ValidationError
from starlette.responses import FileResponse, HTMLResponse, Response
from starlette.staticfiles import StaticFiles
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from visionzero.model.crash_risk import CrashRiskModel
from visionzero.serving.guards import RequestGuard, label_metrics_by_route
from visionzero.serving.map_api import STATIC_DIR, MapApi, Point
from visionzero.serving.prediction_log import PredictionLog, open_sink
from visionzero.serving.requests import (
    MAX_ITEMS,
    InvalidRequest,
    Item,
    Prediction,
    error_body,
    metadata,
    predict_items,
    validation_error_body,
)
from visionzero.serving.traffic_metrics import CanaryTraffic


class BentoArgs(BaseModel):
    """Bento arguments: `bentoml serve <bento>` restores the ones stored at build time (CLI --arg
    only applies to `bentoml serve service:CrashRisk` from a checkout)."""

    model_tag: str = f"{MODEL_NAME}:latest"


MODEL_TAG = bentoml.use_arguments(BentoArgs).model_tag
STAGE = SETTINGS.vz_stage
# BentoML APIs answer POST only; the GET routes live in a small FastAPI app mounted on the service.
# FastAPI's own docs are off: they load Swagger from a CDN. BentoML's Swagger UI moves to /docs.
read_routes = FastAPI(
    title="crash_risk read-only routes", docs_url=None, redoc_url=None, openapi_url=None
)
read_routes.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")
# BentoML's Swagger page also loads Google Tag Manager from the internet: /docs serves it without,
# so it works offline and tells no third party who reads it (tests/test_map_api.py pins this).
SWAGGER_HTML = re.sub(
    r"<!-- Google Tag Manager.*?<!-- End Google Tag Manager[^>]*-->",
    "",
    (Path(_bentoml_impl.server.app.__file__).parent / "main-openapi.html").read_text(),
    flags=re.S,
)
JSON = "application/json"
# BentoML's HTTP metrics count a path no route answers under one label, not one series per path.
label_metrics_by_route()


# BentoML answers a body it cannot validate with 400 but logs it as an ERROR with a traceback;
# OneErrorShape logs every 400 once, as a warning.
log = logging.getLogger("bentoml.crash_risk")  # under "bentoml": printed by BentoML's handlers
logging.getLogger("bentoml._internal.server.http_app").addFilter(
    lambda record: not (record.exc_info and isinstance(record.exc_info[1], ValidationError))
)
# Bodies BentoML would read as a form (its form parser answers 500 to a malformed one) or a pickle
NOT_JSON = (
    b"multipart/",
    b"application/x-www-form-urlencoded",
    b"application/vnd.bentoml+pickle",
)


def _one_shape(raw: bytes) -> dict[str, str]:
    """A 400's body in the one error shape: ours already is; BentoML's validation errors carry
    pydantic's `detail`, its other errors come as `[{"error": ...}]`."""
    try:
        answer = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return error_body(raw.decode(errors="replace")[:500], "body")
    if isinstance(answer, list) and answer:
        answer = answer[0]
    if not isinstance(answer, dict):
        return error_body(str(answer)[:500], "body")
    if isinstance(answer.get("detail"), list) and answer["detail"]:
        return validation_error_body(answer["detail"])
    if "field" in answer:
        return answer
    return error_body(str(answer.get("error", answer)), "body")


class OneErrorShape:
    """Every 400 as {"error": ..., "field": ...}, logged once as a warning without a traceback;
    a body BentoML would not read as JSON is refused before it reaches BentoML. Pure ASGI: a
    successful answer passes through untouched."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        content_type = dict(scope["headers"]).get(b"content-type", b"").lower()
        if scope["method"] == "POST" and content_type.startswith(NOT_JSON):
            media = content_type.split(b";")[0].decode("latin-1")
            why = f"Content-Type: {media} bodies are not read; send application/json"
            await self._answer(send, scope, [], error_body(why, "Content-Type"))
            return
        start: dict = {}
        chunks: list[bytes] = []

        async def send_in_one_shape(message: Message) -> None:
            if message["type"] == "http.response.start" and message["status"] == 400:
                start.update(message)
            elif not start:
                await send(message)
            else:
                chunks.append(message.get("body", b""))
                if not message.get("more_body", False):
                    await self._answer(send, scope, start["headers"], _one_shape(b"".join(chunks)))

        await self.app(scope, receive, send_in_one_shape)

    @staticmethod
    async def _answer(send: Send, scope: Scope, headers: list, body: dict[str, str]) -> None:
        log.warning("400 on %s %s: %s", scope["method"], scope["path"], body["error"])
        payload = orjson.dumps(body)
        headers = [(k, v) for k, v in headers if k not in (b"content-length", b"content-type")]
        headers += [
            (b"content-type", b"application/json"),
            (b"content-length", b"%d" % len(payload)),
        ]
        await send({"type": "http.response.start", "status": 400, "headers": headers})
        await send({"type": "http.response.body", "body": payload})


@bentoml.service(
    name="crash_risk",
    # What /docs.json says of the service; without it BentoML embeds the whole README there.
    description="Crash risk of New York City places and times: POST /predict; the risk map at /.",
    workers=SETTINGS.vz_workers,
    traffic={"timeout": 30},
    logging={"access": {"enabled": SETTINGS.vz_access_log}},
    metrics={"enabled": SETTINGS.vz_metrics},
    tracing={} if SETTINGS.vz_tracing else {"excluded_urls": ["/predict", "/metadata"]},
)
@bentoml.asgi_app(read_routes, path="/")
class CrashRisk:
    model_ref = bentoml.models.BentoModel(MODEL_TAG)

    def __init__(self) -> None:
        self.model = CrashRiskModel.load(Path(self.model_ref.path))
        self.model.zone_table  # noqa: B018 - built now, not on the first request
        self.metadata = metadata(self.model, STAGE)  # fixed for the worker's life
        # zone geometry built now, once
        self.map_api = MapApi(self.model, STAGE, SETTINGS.vz_zones_cache_bytes)
        # Risk-level mix per stage, for the Grafana dashboard that compares production and
        # staging. Created here, once per worker, not at import: bento_build re-imports this
        # module per build.
        self.predictions_by_level = bentoml.metrics.Counter(
            name="crash_risk_predictions",
            documentation="Predictions served, by stage and risk level",
            labelnames=["stage", "risk_level"],
        )
        # Every answer is logged for the monitor, off the request path (prediction_log.py).
        self.prediction_log = self._open_prediction_log()
        # Everything loaded so far lives as long as the worker: keep it out of the garbage
        # collector's scans, which otherwise stall requests now and then (p99 at 32 connections).
        gc.collect()
        gc.freeze()

    def _open_prediction_log(self) -> PredictionLog | None:
        sink = open_sink(STAGE)
        if sink is None:
            return None
        dropped = bentoml.metrics.Counter(
            name="crash_risk_prediction_log_dropped",
            documentation="Prediction log rows dropped (buffer full, a failed write, the day cap)",
            labelnames=["stage", "reason"],
        )
        return PredictionLog(
            sink,
            STAGE,
            self.metadata["model_version"],
            [start for start, _ in self.model.grain.spans],
            on_drop=lambda rows, reason: dropped.labels(stage=STAGE, reason=reason).inc(rows),
        )

    @bentoml.on_shutdown
    def close_prediction_log(self) -> None:
        """Write the buffered rows before the worker exits (SIGTERM or Ctrl-C of the server)."""
        if self.prediction_log is not None:
            self.prediction_log.close()

    @bentoml.api(route="/predict")
    async def predict(
        self, items: Annotated[list[Item], Field(max_length=MAX_ITEMS)], ctx: bentoml.Context
    ) -> dict[str, list[Prediction]]:
        """Expected crashes, risk level and P(at least one crash) per item, in item order; each
        answer is logged under the request's X-Request-ID (a new id when it has none).

        The answer is encoded here with orjson and returned as a Response: BentoML otherwise
        rebuilds the output's JSON schema on every request (15% of a one-item request,
        measured with py-spy)."""
        try:
            predictions = predict_items(items, self.model, STAGE)
        except InvalidRequest as exc:  # OneErrorShape logs it; a refusal is not a prediction
            ctx.response.status_code = 400  # BentoML applies the context's status to the answer
            return Response(orjson.dumps(exc.body()), 400, media_type="application/json")
        if self.prediction_log is not None:
            self.prediction_log.record(ctx.request.headers.get("x-request-id"), predictions)
        for level, count in Counter(p["risk_level"] for p in predictions).items():
            self.predictions_by_level.labels(stage=STAGE, risk_level=level).inc(count)
        return Response(orjson.dumps({"predictions": predictions}), media_type="application/json")

    @bentoml.api(route="/route")
    async def route(
        self,
        start: Point,
        end: Point,
        departure: Annotated[str, Field(max_length=64)],
        ctx: bentoml.Context,
        resolution: int | None = None,
    ) -> dict:
        """The cells on the straight H3 path from start to end (not streets), each with its
        level at the departure's block, the trip's total expected crashes and its riskiest
        stretch."""
        return _answer(lambda: self.map_api.route(start, end, departure, resolution), ctx)

    @bentoml.api(route="/outlook")
    async def outlook(
        self,
        ctx: bentoml.Context,
        start_date: Annotated[str | None, Field(max_length=10)] = None,
        days: Annotated[int, Field(ge=1, le=14)] = 7,
    ) -> dict:
        """Citywide expected crashes per day from start_date (default today, New York), each
        day's level against its season and what drives it."""
        return _answer(lambda: self.map_api.outlook(start_date, days), ctx)

    @read_routes.get("/metadata")
    async def model_metadata(self) -> dict:
        """What model answers: version, stage, zones, time blocks, level thresholds, metrics,
        and today's New York date held inside the supported dates (the map's default)."""
        return {**self.metadata, "today": str(self.map_api.today())}

    @read_routes.get("/")
    async def map_page(self) -> FileResponse:
        """The risk map for people (visionzero/serving/static)."""
        return FileResponse(STATIC_DIR / "index.html")

    @read_routes.get("/docs")
    async def swagger(self) -> HTMLResponse:
        """BentoML's own Swagger UI (its assets are served by BentoML, no CDN)."""
        return HTMLResponse(SWAGGER_HTML)

    @read_routes.get("/zones")
    async def zones(self, request: Request) -> Response:
        """Every zone of a resolution as GeoJSON with its expected crashes, level and P(at least
        one) per block of a date; cached per date, gzipped when the client accepts it."""
        try:
            plain, packed = await self.map_api.zones_layer(dict(request.query_params))
        except InvalidRequest as exc:
            return Response(orjson.dumps(exc.body()), 400, media_type=JSON)
        if "gzip" in request.headers.get("accept-encoding", ""):
            return Response(packed, media_type=JSON, headers={"Content-Encoding": "gzip"})
        return Response(plain, media_type=JSON)

    @read_routes.get("/boroughs")
    async def boroughs(self) -> Response:
        """Borough outlines built from the training data, as GeoJSON (the map has no tiles)."""
        return Response(self.map_api.boroughs, media_type=JSON)

    @read_routes.get("/history")
    async def history(self, zone: str | None = None) -> Response:
        """A zone's observed crashes per block on the model's training days."""
        return _answer(lambda: self.map_api.history(zone))


def _answer(compute: Callable[[], dict], ctx: bentoml.Context | None = None) -> Response:
    """The answer as orjson, or a 400 naming the field (logged by OneErrorShape); a BentoML API
    passes its context, whose status BentoML applies to the answer."""
    try:
        return Response(orjson.dumps(compute()), media_type=JSON)
    except InvalidRequest as exc:
        if ctx is not None:
            ctx.response.status_code = 400
        return Response(orjson.dumps(exc.body()), 400, media_type=JSON)


# Outermost first: ambiguous headers and oversize bodies are refused before anything reads them.
CrashRisk.add_asgi_middleware(RequestGuard, max_body_bytes=SETTINGS.vz_max_body_bytes)
CrashRisk.add_asgi_middleware(OneErrorShape)
CrashRisk.add_asgi_middleware(CanaryTraffic)
