"""canary_decider: the canary rule on the forward evidence and the stages' health, carried out
through promote / the canary's rollback, with an alert."""

from __future__ import annotations

from typing import Annotated, Literal

import mlflow
from zenml import log_metadata, step
from zenml.logger import get_logger

from visionzero.monitoring.acting import act_on
from visionzero.monitoring.canary import CanaryDecision, CanaryRule, HealthReading, decide_canary
from visionzero.monitoring.forward import ForwardReport
from visionzero.platform.stack import TRACKER_NAME

logger = get_logger(__name__)


@step(enable_cache=False, experiment_tracker=TRACKER_NAME)
def canary_decider(
    forward_report: ForwardReport,
    canary_health: HealthReading,
    rule: CanaryRule,
    act: bool,
    deploy_target: Literal["local", "kubernetes"],
) -> Annotated[CanaryDecision, "canary_decision"]:
    decision = decide_canary(forward_report, canary_health.health, rule, canary_health.error)
    for reason in decision.reasons:
        logger.info("canary: %s", reason)
    decision = act_on(decision, deploy_target, act)
    logger.info("canary: action=%s, %s", decision.action, decision.outcome)
    mlflow.log_dict(decision.model_dump(), "canary_decision.json")
    log_metadata(metadata={"canary_decision": decision.model_dump()})
    return decision
