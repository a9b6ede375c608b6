"""discord_alert: one message per deploy decision; delivery problems never fail the pipeline."""

from __future__ import annotations

from typing import Annotated

from zenml import log_metadata, step

from visionzero.evaluation.decision import Decision
from visionzero.evaluation.holdout import EvaluationReport, Scores
from visionzero.platform.alerts import build_message, send
from visionzero.platform.stage import STAGES, Stage
from visionzero.rollout.actions import Deployment


def _fmt(scores: Scores | None) -> str:
    return ", ".join(f"{k}={v:.4f}" for k, v in scores.headline().items()) if scores else "-"


@step
def discord_alert(
    decision: Decision, evaluation_report: EvaluationReport, deployment: Deployment
) -> Annotated[str, "alert_delivery"]:
    deployed = decision.action in STAGES
    release = deployment.state.release(Stage(decision.action)) if deployed else None
    message = build_message(
        decision.action if deployed else "none",
        f"Crash-risk model v{decision.model_version}: decision {decision.action}",
        {
            "model version": decision.model_version,
            "production version": decision.production_version or "-",
            "stage": decision.action,
            "deployment": deployment.summary,
            "bento": release.bento_tag if release else "-",
            "new model": _fmt(evaluation_report.candidate),
            "production (same holdout)": _fmt(evaluation_report.production),
            "historical baseline": _fmt(evaluation_report.baseline),
        },
        decision.reasons,
    )
    delivery = send(message)
    log_metadata(metadata={"alert_delivery": delivery})
    return delivery
