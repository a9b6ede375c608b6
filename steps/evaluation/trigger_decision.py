"""trigger_decision: apply the logged deploy rule. It only decides: stages and aliases follow the
deployment state once the deployer has recorded a release (visionzero.rollout.actions)."""

from __future__ import annotations

from typing import Annotated

import mlflow
from zenml import get_step_context, log_metadata, step
from zenml.logger import get_logger

from visionzero.evaluation.decision import Decision, DecisionRule, decide
from visionzero.evaluation.holdout import EvaluationReport
from visionzero.platform.stack import TRACKER_NAME

logger = get_logger(__name__)


@step(experiment_tracker=TRACKER_NAME)
def trigger_decision(
    evaluation_report: EvaluationReport, rule: DecisionRule
) -> Annotated[Decision, "decision"]:
    model_version = get_step_context().model_version
    decision = decide(evaluation_report, rule).model_copy(
        update={
            "model_version": model_version.number,
            "production_version": evaluation_report.production_version,
        }
    )
    for reason in decision.reasons:
        logger.info("decision: %s", reason)
    logger.info("decision: action=%s for model version %s", decision.action, model_version.number)
    mlflow.log_dict(decision.model_dump(), "decision.json")
    log_metadata(metadata={"decision": decision.model_dump()}, infer_model=True)
    return decision
