"""discord_alert: one message per deploy decision; delivery problems never fail the pipeline."""
from __future__ import annotations

from typing import Annotated

from zenml import log_metadata, step

from visionzero.rollout.alerts import build_message, send
from visionzero.evaluation.holdout import METRIC_KEYS


def _fmt(scores: dict | None) -> str:
    return ", ".join(f"{k}={scores[k]:.4f}" for k in METRIC_KEYS) if scores else "-"


@step
def discord_alert(decision: dict, evaluation_report: dict, deployment: dict
                  ) -> Annotated[str, "alert_delivery"]:
    message = build_message(
        decision["action"] if decision["action"] in ("production", "staging") else "none",
        f"Crash-risk model v{decision['model_version']}: decision {decision['action']}",
        {"model version": decision["model_version"],
         "production version": decision.get("production_version") or "-",
         "stage": decision["action"], "deployment": deployment["summary"],
         "bento": (deployment["state"].get(decision["action"]) or {}).get("bento_tag", "-")
         if decision["action"] in ("production", "staging") else "-",
         "new model": _fmt(evaluation_report["candidate"]),
         "production (same holdout)": _fmt(evaluation_report.get("production")),
         "historical baseline": _fmt(evaluation_report["baseline"])},
        decision["reasons"])
    delivery = send(message)
    log_metadata(metadata={"alert_delivery": delivery})
    return delivery
