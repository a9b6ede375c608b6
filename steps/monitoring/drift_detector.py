"""drift_detector: incoming crash data and the request mix against production's training window,
with an HTML summary for the dashboard."""

from __future__ import annotations

from datetime import date, timedelta
from typing import Annotated

import pandas as pd
from zenml import log_metadata, step
from zenml.logger import get_logger
from zenml.types import HTMLString

from visionzero.data.dataset import DatasetRef
from visionzero.monitoring.drift import DriftConfig, DriftReport, detect_drift, drift_html
from visionzero.monitoring.serving_models import prepared_for, serving_models
from visionzero.monitoring.sources import served_predictions
from visionzero.monitoring.traffic import TrafficConfig, reference_cells, zone7_boroughs
from visionzero.platform.stage import Stage
from visionzero.rollout.deployment_state import read_state

logger = get_logger(__name__)


@step(enable_cache=False)
def drift_detector(
    dataset: DatasetRef, drift: DriftConfig, traffic: TrafficConfig
) -> tuple[Annotated[DriftReport, "drift_report"], Annotated[HTMLString, "drift_visualization"]]:
    models, _ = serving_models(read_state())
    if Stage.PRODUCTION not in models:
        report = DriftReport(reference_window=None, current_window=None, checks=[])
        logger.info("no production model: no training window to compare with")
        return report, HTMLString(drift_html(report))
    prepared, crashes = prepared_for(dataset, models)
    report = detect_drift(
        crashes,
        pd.DatetimeIndex(prepared.days["date"]),
        models[Stage.PRODUCTION].model.meta["training_window"],
        reference_cells(prepared),
        served_predictions(date.today() - timedelta(days=traffic.lookback_days)),
        zone7_boroughs(prepared),
        drift,
    )
    for check in report.checks:
        logger.info("drift: %s", check.summary())
    log_metadata(
        metadata={
            "drift_flags": report.flags,
            "drift": {check.name + f" ({check.kind})": check.summary() for check in report.checks},
        }
    )
    return report, HTMLString(drift_html(report))
