"""The BentoML prediction service: how risky is this place at this time?

One Bento serves either role: VZ_STAGE (production|staging) comes from the environment; the model
tag is the Bento argument `model_tag`, stored in the Bento at build time
(visionzero/serving/bento_build.py). Features are computed by visionzero, the same code the
training pipeline used.
"""

from __future__ import annotations

import gc
import os

from visionzero.platform.settings import MODEL_NAME, settings

SETTINGS = settings()
# BentoML always installs OpenTelemetry's ASGI middleware; with no exporter configured its spans
# cost 15% of throughput and double p99 (benchmarks/serving.py). VZ_TRACING=1 turns tracing back on.
if not SETTINGS.vz_tracing:
    os.environ.setdefault("OTEL_SDK_DISABLED", "true")
from collections import Counter
from pathlib import Path
from typing import Annotated

import bentoml
import orjson
from fastapi import Request
from pydantic import BaseModel, Field
from starlette.responses import FileResponse, HTMLResponse, Response
from starlette.staticfiles import StaticFiles

from visionzero.model.crash_risk import CrashRiskModel
from visionzero.serving.errors import (
    JSON,
    OneErrorShape,
    json_answer,
    log_validation_errors_once,
    refusal,
)
from visionzero.serving.guards import RequestGuard, label_metrics_by_route
from visionzero.serving.map_api import STATIC_DIR, MapApi, Point
from visionzero.serving.requests import (
    MAX_ITEMS,
    InvalidRequest,
    Item,
    Prediction,
    metadata,
    predict_items,
)
from visionzero.serving.traffic_metrics import CanaryTraffic
from visionzero.serving.wiring import (
    offline_swagger_html,
    open_prediction_log,
    predictions_counter,
    read_only_app,
)


class BentoArgs(BaseModel):
    """Bento arguments: `bentoml serve <bento>` restores the ones stored at build time (CLI --arg
    only applies to `bentoml serve service:CrashRisk` from a checkout)."""

    model_tag: str = f"{MODEL_NAME}:latest"


MODEL_TAG = bentoml.use_arguments(BentoArgs).model_tag
STAGE = SETTINGS.vz_stage
read_routes = read_only_app()  # the GET routes: BentoML APIs answer POST only
read_routes.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")
SWAGGER_HTML = offline_swagger_html()
# BentoML's HTTP metrics count a path no route answers under one label, not one series per path.
label_metrics_by_route()
log_validation_errors_once()


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
        self.predictions_by_level = predictions_counter()
        # Every answer is logged for the monitor, off the request path (prediction_log.py).
        self.prediction_log = open_prediction_log(
            STAGE, self.metadata["model_version"], [start for start, _ in self.model.grain.spans]
        )
        # Everything loaded so far lives as long as the worker: keep it out of the garbage
        # collector's scans, which otherwise stall requests now and then (p99 at 32 connections).
        gc.collect()
        gc.freeze()

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
        except InvalidRequest as exc:
            return refusal(exc, ctx)
        if self.prediction_log is not None:
            self.prediction_log.record(ctx.request.headers.get("x-request-id"), predictions)
        for level, count in Counter(p["risk_level"] for p in predictions).items():
            self.predictions_by_level.labels(stage=STAGE, risk_level=level).inc(count)
        return Response(orjson.dumps({"predictions": predictions}), media_type=JSON)

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
        return json_answer(lambda: self.map_api.route(start, end, departure, resolution), ctx)

    @bentoml.api(route="/outlook")
    async def outlook(
        self,
        ctx: bentoml.Context,
        start_date: Annotated[str | None, Field(max_length=10)] = None,
        days: Annotated[int, Field(ge=1, le=14)] = 7,
    ) -> dict:
        """Citywide expected crashes per day from start_date (default today, New York), each
        day's level against its season and what drives it."""
        return json_answer(lambda: self.map_api.outlook(start_date, days), ctx)

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
            return refusal(exc)
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
        return json_answer(lambda: self.map_api.history(zone))


# Outermost first: ambiguous headers and oversize bodies are refused before anything reads them.
CrashRisk.add_asgi_middleware(RequestGuard, max_body_bytes=SETTINGS.vz_max_body_bytes)
CrashRisk.add_asgi_middleware(OneErrorShape)
CrashRisk.add_asgi_middleware(CanaryTraffic)
