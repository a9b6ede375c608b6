"""forward_evaluator: production and staging scored on the complete days since each went live,
on the full grid at every configured resolution, the status quo alongside."""

from __future__ import annotations

from typing import Annotated

import mlflow
from zenml import log_metadata, step
from zenml.logger import get_logger

from visionzero.data.dataset import DatasetRef
from visionzero.monitoring.forward import ForwardConfig, ForwardReport, forward_evaluation
from visionzero.monitoring.serving_models import prepared_for, serving_models
from visionzero.platform.stack import TRACKER_NAME
from visionzero.rollout.deployment_state import read_state

logger = get_logger(__name__)


@step(enable_cache=False, experiment_tracker=TRACKER_NAME)
def forward_evaluator(
    dataset: DatasetRef, forward: ForwardConfig
) -> Annotated[ForwardReport, "forward_report"]:
    models, unscored = serving_models(read_state())
    prepared, _ = prepared_for(dataset, models)
    report = forward_evaluation(prepared, models, forward)
    report = report.model_copy(update={"unscored": unscored})
    for stage, why in unscored.items():
        logger.warning("%s not scored forward: %s", stage, why.reason)
    metrics: dict[str, float] = {}
    for stage, result in report.stages.items():
        logger.info(
            "%s v%s: %d forward complete days %s",
            stage,
            result.model_version,
            result.days,
            result.window or "(none yet)",
        )
        for resolution, roles in result.metrics.items():
            for role, values in roles.items():
                for name, interval in values.items():
                    metrics[f"{stage}_{role}_res{resolution}_{name}"] = interval.estimate
                    logger.info("%s res %s %s %s %s", stage, resolution, role, name, interval)
    if report.paired:
        for resolution, values in report.paired.differences.items():
            for name, interval in values.items():
                metrics[f"staging_minus_production_res{resolution}_{name}"] = interval.estimate
    if metrics:
        mlflow.log_metrics(metrics)
    mlflow.log_dict(report.model_dump(mode="json"), "forward_report.json")
    log_metadata(metadata={"forward": metrics, "last_complete_day": report.last_complete_day})
    return report
