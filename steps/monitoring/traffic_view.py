"""traffic_view: which places and hours people ask about, and each stage's calibration there."""

from __future__ import annotations

from datetime import date, timedelta
from typing import Annotated

from zenml import log_metadata, step
from zenml.logger import get_logger

from visionzero.data.dataset import DatasetRef
from visionzero.monitoring import traffic
from visionzero.monitoring.serving_models import prepared_for, serving_models
from visionzero.monitoring.sources import served_predictions
from visionzero.monitoring.traffic import TrafficConfig, TrafficReport, zone7_boroughs
from visionzero.rollout.deployment_state import read_state

logger = get_logger(__name__)


@step(enable_cache=False)
def traffic_view(
    dataset: DatasetRef, config: TrafficConfig
) -> Annotated[TrafficReport, "traffic_report"]:
    predictions = served_predictions(date.today() - timedelta(days=config.lookback_days))
    if predictions is None or predictions.empty:
        logger.info("no logged predictions in the last %d days", config.lookback_days)
    prepared, _ = prepared_for(dataset, serving_models(read_state())[0])
    report = traffic.traffic_view(predictions, prepared, zone7_boroughs(prepared), config.top_zones)
    for calibration in report.calibration:
        logger.info("served calibration: %s", calibration.model_dump())
    log_metadata(metadata={"traffic": report.model_dump(exclude={"top_zones"})})
    return report
