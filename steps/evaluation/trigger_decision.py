"""trigger_decision: apply the logged deploy rule and move stages in the Model Control Plane."""

from __future__ import annotations

from typing import Annotated

import mlflow
from zenml import get_step_context, log_metadata, step
from zenml.logger import get_logger

from visionzero.evaluation.decision import Decision, DecisionRule, decide
from visionzero.evaluation.holdout import EvaluationReport
from visionzero.platform.registry import set_mlflow_alias, set_stage
from visionzero.platform.stack import TRACKER_NAME

logger = get_logger(__name__)


@step(experiment_tracker=TRACKER_NAME)
def trigger_decision(
    evaluation_report: EvaluationReport, rule: DecisionRule
) -> Annotated[Decision, "decision"]:
    model_version = get_step_context().model_version
    decision = decide(evaluation_report.model_dump(), rule).model_copy(
        update={
            "model_version": model_version.number,
            "production_version": evaluation_report.production_version,
        }
    )
    if decision.action in ("production", "staging"):
        set_stage(model_version.id, decision.action)
        set_mlflow_alias(decision.action, model_version.number)
    for reason in decision.reasons:
        logger.info("decision: %s", reason)
    logger.info("decision: action=%s for model version %s", decision.action, model_version.number)
    mlflow.log_dict(decision.model_dump(), "decision.json")
    log_metadata(metadata={"decision": decision.model_dump()}, infer_model=True)
    return decision
