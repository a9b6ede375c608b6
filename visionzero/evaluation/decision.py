"""The deploy rule, explicit and logged.

Beat the status quo first, then beat production by a margin.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field


class DecisionRule(BaseModel):
    """The deploy rule's margins (configs/training.yaml `parameters.decision`)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    min_deviance_improvement: float = Field(
        0.005,
        description="a challenger's Poisson deviance "
        "must be at least this fraction lower than production's",
    )
    hit_rate_tolerance: float = Field(
        0.005, ge=0, description="... while losing at most this much hit@10% (absolute)"
    )


class Decision(BaseModel):
    """The trigger_decision artifact: what to do with the new model, and why."""

    action: Literal["production", "staging", "none"]  # first deployable / winning challenger / none
    deployable: bool
    reasons: list[str] = []
    model_version: int | None = None
    production_version: int | None = None


def decide(report: Mapping[str, Any], rule: DecisionRule) -> Decision:
    new, base, prod = report["candidate"], report["baseline"], report.get("production")
    reasons: list[str] = []
    beats_dev = new["poisson_deviance"] < base["poisson_deviance"]
    beats_hit = new["hit_rate_at_10"] > base["hit_rate_at_10"]
    reasons.append(
        f"deviance {new['poisson_deviance']:.4f} vs baseline {base['poisson_deviance']:.4f}: "
        f"{'better' if beats_dev else 'not better'}"
    )
    reasons.append(
        f"hit@10% {new['hit_rate_at_10']:.4f} vs baseline {base['hit_rate_at_10']:.4f}: "
        f"{'better' if beats_hit else 'not better'}"
    )
    if not (beats_dev and beats_hit):
        reasons.append("not deployable: it must beat the historical average on both")
        return Decision(action="none", deployable=False, reasons=reasons)
    if report.get("production_not_comparable"):
        reasons.append(
            f"{report['production_not_comparable']} on one holdout: production stays (a new "
            "grain changes the zones and blocks clients get, so it is never rolled out unscored)"
        )
        return Decision(action="none", deployable=True, reasons=reasons)
    if prod is None:
        reasons.append("no production model: the first deployable model becomes production")
        return Decision(action="production", deployable=True, reasons=reasons)
    needed = prod["poisson_deviance"] * (1 - rule.min_deviance_improvement)
    wins_dev = new["poisson_deviance"] <= needed
    keeps_hit = new["hit_rate_at_10"] >= prod["hit_rate_at_10"] - rule.hit_rate_tolerance
    reasons.append(
        f"deviance {new['poisson_deviance']:.4f} vs production {prod['poisson_deviance']:.4f} "
        f"(needs <= {needed:.4f}): {'wins' if wins_dev else 'does not win'}"
    )
    reasons.append(
        f"hit@10% {new['hit_rate_at_10']:.4f} vs production {prod['hit_rate_at_10']:.4f} "
        f"(tolerance {rule.hit_rate_tolerance}): {'kept' if keeps_hit else 'lost'}"
    )
    if wins_dev and keeps_hit:
        reasons.append("challenger wins: it becomes staging and takes the canary share of traffic")
        return Decision(action="staging", deployable=True, reasons=reasons)
    reasons.append("challenger loses: production stays, nothing changes")
    return Decision(action="none", deployable=True, reasons=reasons)
