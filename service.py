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
from bentoml.exceptions import BadInput
from fastapi import FastAPI
from pydantic import BaseModel, Field
from starlette.responses import Response
from starlette.types import ASGIApp, Receive, Scope, Send

from visionzero.model.crash_risk import CrashRiskModel
from visionzero.serving.requests import (
    MAX_ITEMS,
    InvalidItems,
    Item,
    Prediction,
    metadata,
    predict_items,
)


class BentoArgs(BaseModel):
    """Bento arguments: `bentoml serve <bento>` restores the ones stored at build time (CLI --arg
    only applies to `bentoml serve service:CrashRisk` from a checkout)."""

    model_tag: str = f"{MODEL_NAME}:latest"


MODEL_TAG = bentoml.use_arguments(BentoArgs).model_tag
STAGE = SETTINGS.vz_stage
# BentoML APIs answer POST only; the GET routes live in a small FastAPI app mounted on the service.
read_routes = FastAPI(title="crash_risk read-only routes")


class RejectBrokenMultipart:
    """BentoML answers 500 to a multipart Content-Type without a boundary (found by schemathesis):
    reject it with 400 before it reaches the form parser. Pure ASGI, so other requests pay nothing.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            content_type = dict(scope["headers"]).get(b"content-type", b"").lower()
            if content_type.startswith(b"multipart/") and b"boundary=" not in content_type:
                body = (
                    b'{"error": "Content-Type: multipart body without a boundary; '
                    b'send application/json"}'
                )
                await send(
                    {
                        "type": "http.response.start",
                        "status": 400,
                        "headers": [(b"content-type", b"application/json")],
                    }
                )
                await send({"type": "http.response.body", "body": body})
                return
        await self.app(scope, receive, send)


@bentoml.service(
    name="crash_risk",
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
        # Risk-level mix per stage, for the Grafana dashboard that compares production and
        # staging. Created here, once per worker, not at import: bento_build re-imports this
        # module per build.
        self.predictions_by_level = bentoml.metrics.Counter(
            name="crash_risk_predictions",
            documentation="Predictions served, by stage and risk level",
            labelnames=["stage", "risk_level"],
        )
        # Everything loaded so far lives as long as the worker: keep it out of the garbage
        # collector's scans, which otherwise stall requests now and then (p99 at 32 connections).
        gc.collect()
        gc.freeze()

    @bentoml.api(route="/predict")
    async def predict(
        self, items: Annotated[list[Item], Field(max_length=MAX_ITEMS)]
    ) -> dict[str, list[Prediction]]:
        """Expected crashes, risk level and P(at least one crash) per item, in item order.

        The answer is encoded here with orjson and returned as a Response: BentoML otherwise
        rebuilds the output's JSON schema on every request (15% of a one-item request,
        measured with py-spy)."""
        try:
            predictions = predict_items(items, self.model, STAGE)
        except InvalidItems as exc:
            raise BadInput(str(exc)) from exc
        for level, count in Counter(p["risk_level"] for p in predictions).items():
            self.predictions_by_level.labels(stage=STAGE, risk_level=level).inc(count)
        return Response(orjson.dumps({"predictions": predictions}), media_type="application/json")

    @read_routes.get("/metadata")
    async def model_metadata(self) -> dict:
        """What model answers: version, stage, zones, time blocks, level thresholds, metrics."""
        return metadata(self.model, STAGE)


CrashRisk.add_asgi_middleware(RejectBrokenMultipart)
