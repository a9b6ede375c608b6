"""The parts service.py puts together, so that it only declares the service and its routes:
the read-only FastAPI app, the offline Swagger page, the per-worker metrics and prediction log."""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path

import _bentoml_impl.server.app
import bentoml
from fastapi import FastAPI

from visionzero.serving.prediction_log import PredictionLog, open_sink


def read_only_app() -> FastAPI:
    """The GET routes' app: BentoML APIs answer POST only. FastAPI's own docs are off: they load
    Swagger from a CDN (BentoML's Swagger UI moves to /docs)."""
    return FastAPI(
        title="crash_risk read-only routes", docs_url=None, redoc_url=None, openapi_url=None
    )


def offline_swagger_html() -> str:
    """BentoML's Swagger page without the Google Tag Manager it loads from the internet: /docs
    works offline and tells no third party who reads it (tests/test_map_api.py pins this)."""
    return re.sub(
        r"<!-- Google Tag Manager.*?<!-- End Google Tag Manager[^>]*-->",
        "",
        (Path(_bentoml_impl.server.app.__file__).parent / "main-openapi.html").read_text(),
        flags=re.S,
    )


def predictions_counter() -> bentoml.metrics.Counter:
    """Risk-level mix per stage, for the Grafana dashboard that compares production and staging.
    Created once per worker, not at import: bento_build re-imports service.py per build."""
    return bentoml.metrics.Counter(
        name="crash_risk_predictions",
        documentation="Predictions served, by stage and risk level",
        labelnames=["stage", "risk_level"],
    )


def open_prediction_log(
    stage: str, model_version: str, block_starts: Sequence[int]
) -> PredictionLog | None:
    """The log of every answer for the monitor, written off the request path, with a counter of
    the rows it drops; None when this stage logs nowhere."""
    sink = open_sink(stage)
    if sink is None:
        return None
    dropped = bentoml.metrics.Counter(
        name="crash_risk_prediction_log_dropped",
        documentation="Prediction log rows dropped (buffer full, a failed write, the day cap)",
        labelnames=["stage", "reason"],
    )
    return PredictionLog(
        sink,
        stage,
        model_version,
        block_starts,
        on_drop=lambda rows, reason: dropped.labels(stage=stage, reason=reason).inc(rows),
    )
