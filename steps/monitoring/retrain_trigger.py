"""retrain_trigger: should production be retrained (degraded forward deviance, drift)? The last
step, so it also keeps the run's summary for `status` and pushes the gauges. `run.py monitor`
runs the training pipeline when it says so (ZenML OSS starts a pipeline from the runner, not
from a step)."""

from __future__ import annotations

from typing import Annotated

from zenml import log_metadata, step
from zenml.logger import get_logger

from visionzero.monitoring.canary import CanaryDecision
from visionzero.monitoring.drift import DriftReport
from visionzero.monitoring.forward import ForwardReport
from visionzero.monitoring.retrain import RetrainDecision, RetrainRule, decide_retrain
from visionzero.monitoring.serving_models import holdout_deviance
from visionzero.monitoring.summary import push_gauges, save_summary, summarise
from visionzero.platform.stage import Stage

logger = get_logger(__name__)


@step(enable_cache=False)
def retrain_trigger(
    forward_report: ForwardReport,
    drift_report: DriftReport,
    canary_decision: CanaryDecision,
    rule: RetrainRule,
) -> Annotated[RetrainDecision, "retrain_decision"]:
    production = forward_report.stages.get(Stage.PRODUCTION)
    interval = (
        holdout_deviance(production.model_version, rule.resolution)
        if production and production.model_version is not None
        else None
    )
    decision = decide_retrain(forward_report, interval, drift_report, rule)
    for reason in decision.reasons:
        logger.info("retrain: %s", reason)
    summary = summarise(forward_report, drift_report, canary_decision, decision, rule.resolution)
    save_summary(summary)
    push_error = push_gauges(summary)
    log_metadata(
        metadata={"retrain_decision": decision.model_dump(), "pushgateway_error": push_error or ""}
    )
    return decision
