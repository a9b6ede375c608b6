"""The deploy rule, explicit and logged.

Beat the status quo first, then beat production; "beat" means the 95% interval of the improvement
excludes zero (latest holdout at the served resolution), never a point estimate.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from visionzero.evaluation.holdout import EvaluationReport, ResolutionResult
from visionzero.evaluation.metrics import Interval


class DecisionRule(BaseModel):
    """The deploy rule's margins (configs/training.yaml `parameters.decision`)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    min_deviance_improvement: float = Field(
        0.0,
        description="the upper end of the interval of a challenger's deviance change must lie "
        "below minus this fraction of production's deviance (0: the interval excludes zero)",
    )
    hit_rate_tolerance: float = Field(
        0.005,
        ge=0,
        description="... while the lower end of its hit@10% change stays above minus this "
        "(absolute)",
    )


class Decision(BaseModel):
    """The trigger_decision artifact: what to do with the new model, and why."""

    action: Literal["production", "staging", "none"]  # first deployable / winning challenger / none
    deployable: bool
    reasons: list[str] = []
    model_version: int | None = None
    production_version: int | None = None


def _line(what: str, change: Interval, verdict: bool, yes: str, no: str) -> str:
    return f"{what} change {change}: {yes if verdict else no}"


def decide(report: EvaluationReport, rule: DecisionRule) -> Decision:
    """The rule on the report's decisive evidence (`EvaluationReport.decisive`)."""
    return decide_on(
        report.decisive(),
        f"latest holdout {' .. '.join(report.holdout_window)} at res {report.resolution}",
        report.production_not_comparable,
        rule,
    )


def decide_on(
    evidence: ResolutionResult,
    where: str,
    production_not_comparable: str | None,
    rule: DecisionRule,
) -> Decision:
    versus_base = evidence.differences["vs_baseline"]
    dev, hit = versus_base["poisson_deviance"], versus_base["hit_rate_at_10"]
    beats_dev, beats_hit = dev.high < 0, hit.low > 0
    reasons = [
        f"evidence: {where}, {evidence.days} days; changes are new model minus other, "
        "with 95% day-block bootstrap intervals",
        _line("deviance vs status quo", dev, beats_dev, "better (interval below 0)", "not proven"),
        _line("hit@10% vs status quo", hit, beats_hit, "better (interval above 0)", "not proven"),
    ]
    if production_not_comparable:
        reasons.append(
            f"{production_not_comparable}: production stays (a new grain changes the zones and "
            "blocks clients get, so it is never rolled out unscored)"
        )
    if not (beats_dev and beats_hit):
        reasons.append("not deployable: it must beat the historical average on both")
        return Decision(action="none", deployable=False, reasons=reasons)
    if production_not_comparable:
        return Decision(action="none", deployable=True, reasons=reasons)
    versus_prod = evidence.differences.get("vs_production")
    if versus_prod is None:
        reasons.append("no production model: the first deployable model becomes production")
        return Decision(action="production", deployable=True, reasons=reasons)
    prod_dev = evidence.roles["production"]["poisson_deviance"].estimate
    needed = -rule.min_deviance_improvement * prod_dev
    dev, hit = versus_prod["poisson_deviance"], versus_prod["hit_rate_at_10"]
    wins_dev, keeps_hit = dev.high < needed, hit.low >= -rule.hit_rate_tolerance
    reasons.append(
        _line(
            f"deviance vs production (interval must end below {needed:+.4f})",
            dev,
            wins_dev,
            "wins",
            "does not win",
        )
    )
    reasons.append(
        _line(
            f"hit@10% vs production (interval must start above {-rule.hit_rate_tolerance:+.4f})",
            hit,
            keeps_hit,
            "kept",
            "lost",
        )
    )
    if wins_dev and keeps_hit:
        reasons.append("challenger wins: it becomes staging and takes the canary share of traffic")
        return Decision(action="staging", deployable=True, reasons=reasons)
    reasons.append("challenger loses: production stays, nothing changes")
    return Decision(action="none", deployable=True, reasons=reasons)
