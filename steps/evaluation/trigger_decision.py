"""trigger_decision: apply the logged deploy rule and move stages in the Model Control Plane."""
from __future__ import annotations

from typing import Annotated

import mlflow
from zenml import get_step_context, log_metadata, step
from zenml.logger import get_logger

from visionzero.evaluation.decision import DecisionRule, decide
from visionzero.platform.registry import set_mlflow_alias, set_stage
from visionzero.platform.stack import TRACKER_NAME

logger = get_logger(__name__)


@step(experiment_tracker=TRACKER_NAME)
def trigger_decision(evaluation_report: dict, min_deviance_improvement: float = 0.005,
                     hit_rate_tolerance: float = 0.005) -> Annotated[dict, "decision"]:
    decision = decide(evaluation_report, DecisionRule(min_deviance_improvement, hit_rate_tolerance))
    model_version = get_step_context().model_version
    if decision.action in ("production", "staging"):
        set_stage(model_version.id, decision.action)
        set_mlflow_alias(decision.action, model_version.number)
    result = {**decision.to_json(), "model_version": model_version.number,
              "production_version": evaluation_report.get("production_version")}
    for reason in decision.reasons:
        logger.info("decision: %s", reason)
    logger.info("decision: action=%s for model version %s", decision.action, model_version.number)
    mlflow.log_dict(result, "decision.json")
    log_metadata(metadata={"decision": result}, infer_model=True)
    return result
