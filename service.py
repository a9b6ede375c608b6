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
from fastapi import FastAPI
from pydantic import BaseModel, Field, ValidationError
from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from visionzero.model.crash_risk import CrashRiskModel
from visionzero.serving.prediction_log import PredictionLog, open_sink
from visionzero.serving.requests import (
    MAX_ITEMS,
    InvalidItems,
    Item,
    Prediction,
    error_body,
    metadata,
    predict_items,
    validation_error_body,
)


class BentoArgs(BaseModel):
    """Bento arguments: `bentoml serve <bento>` restores the ones stored at build time (CLI --arg
    only applies to `bentoml serve service:CrashRisk` from a checkout)."""

    model_tag: str = f"{MODEL_NAME}:latest"


MODEL_TAG = bentoml.use_arguments(BentoArgs).model_tag
STAGE = SETTINGS.vz_stage
# BentoML APIs answer POST only; the GET routes live in a small FastAPI app mounted on the service.
read_routes = FastAPI(title="crash_risk read-only routes")


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
            documentation="Prediction log rows dropped (buffer full or a failed write)",
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
        except InvalidItems as exc:  # OneErrorShape logs it; a refusal is not a prediction
            ctx.response.status_code = 400  # BentoML applies the context's status to the answer
            return Response(orjson.dumps(exc.body()), 400, media_type="application/json")
        if self.prediction_log is not None:
            self.prediction_log.record(ctx.request.headers.get("x-request-id"), predictions)
        for level, count in Counter(p["risk_level"] for p in predictions).items():
            self.predictions_by_level.labels(stage=STAGE, risk_level=level).inc(count)
        return Response(orjson.dumps({"predictions": predictions}), media_type="application/json")

    @read_routes.get("/metadata")
    async def model_metadata(self) -> dict:
        """What model answers: version, stage, zones, time blocks, level thresholds, metrics."""
        return self.metadata


CrashRisk.add_asgi_middleware(OneErrorShape)
