"""The retrain trigger: production is retrained when what happened says it has degraded, or the
data it learnt from no longer looks like the data arriving.

Degraded means its forward deviance lies above the upper end of its own holdout interval (the
evaluator's 95% interval of the model's holdout deviance): worse than its backtest said it could
plausibly be.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

from visionzero.evaluation.metrics import Interval
from visionzero.monitoring.drift import DriftReport
from visionzero.monitoring.forward import ForwardReport
from visionzero.platform.stage import Stage


class RetrainRule(BaseModel):
    """When the retrain trigger fires (configs/monitoring.yaml `parameters.retrain`)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    enabled: bool = Field(True, description="false: the trigger only says what it would do")
    min_forward_days: int = Field(
        7, ge=1, description="complete forward days of production before its deviance counts"
    )
    resolution: int = Field(9, ge=0, le=15, description="the resolution the rule reads")
    on_request_drift: bool = Field(
        False,
        description="request-mix drift triggers too (off: people asking about other places does "
        "not make the model worse, and retraining would not change what they ask)",
    )


class RetrainDecision(BaseModel):
    """The retrain_trigger artifact."""

    retrain: bool
    reasons: list[str] = []


def decide_retrain(
    forward: ForwardReport,
    holdout_deviance: Interval | None,
    drift: DriftReport | None,
    rule: RetrainRule,
) -> RetrainDecision:
    """Fire on degraded forward deviance or on a drift flag; otherwise say why not."""
    reasons: list[str] = []
    fire = False
    production = forward.stages.get(Stage.PRODUCTION)
    if production is None:
        reasons.append("no production model: nothing to retrain against")
    elif production.days < rule.min_forward_days:
        reasons.append(
            f"production has {production.days} forward complete days, "
            f"{rule.min_forward_days} needed before its deviance counts"
        )
    elif holdout_deviance is None:
        reasons.append("production's holdout deviance interval is unknown (no evaluation report)")
    else:
        forward_dev = production.metrics[str(rule.resolution)]["model"]["poisson_deviance"]
        line = (
            f"production forward deviance {forward_dev.estimate:.4f} over {production.days} days "
            f"vs its holdout interval [{holdout_deviance.low:.4f}, {holdout_deviance.high:.4f}]"
        )
        if forward_dev.estimate > holdout_deviance.high:
            fire = True
            reasons.append(f"{line}: degraded beyond its backtest")
        else:
            reasons.append(f"{line}: within")
    counted = [
        check
        for check in (drift.checks if drift else [])
        if check.flagged and (check.kind == "data" or rule.on_request_drift)
    ]
    if counted:
        fire = True
        reasons += [f"drift: {check.summary()}" for check in counted]
    elif drift is not None:
        reasons.append("no drift flag counts for retraining")
    if fire and not rule.enabled:
        reasons.append("retraining is disabled (retrain.enabled: false): not run")
        return RetrainDecision(retrain=False, reasons=reasons)
    reasons.append("retrain: run the training pipeline" if fire else "no retraining")
    return RetrainDecision(retrain=fire, reasons=reasons)
