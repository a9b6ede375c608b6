"""The canary rule, explicit and logged like the deploy rule (visionzero/evaluation/decision.py).

Staging is judged by what happened, never by a point estimate: it is promoted only when the 95%
interval of its forward deviance change against production (paired, on the days both were live)
lies below zero over enough complete days and it is operationally healthy; it is rolled back when
it errs or lags beyond a margin, or when that interval lies above zero; otherwise it waits, and
the decision says how many more days it needs.

"Errs or lags" is judged on the traffic the canary split sent after each worker's warm-up only,
latency within each request size class (operational.py, visionzero/serving/traffic_metrics.py):
what a client sends to the pinned `/stage/staging/` cannot roll staging back, and huge requests
sent through the split reach both stages in proportion and meet only their own size class.
"""

from __future__ import annotations

import math
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from visionzero.monitoring.forward import ForwardReport, PairedForward
from visionzero.monitoring.operational import SIZE_CLASSES, StageHealth
from visionzero.platform.stage import STAGES, Stage


class CanaryRule(BaseModel):
    """The canary rule's thresholds (configs/monitoring.yaml `parameters.canary`)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    min_forward_days: int = Field(
        14, ge=1, description="complete days both stages were live before forward evidence counts"
    )
    resolution: int = Field(9, ge=0, le=15, description="the resolution the rule reads")
    hit_rate_tolerance: float = Field(
        0.005,
        ge=0,
        description="to promote, the lower end of staging's hit@10% change may not fall below "
        "minus this (absolute), as in the deploy rule",
    )
    error_rate_margin: float = Field(
        0.01,
        ge=0,
        description="roll back when staging's error rate exceeds production's by more (absolute)",
    )
    p99_margin_ms: float = Field(
        50.0,
        ge=0,
        description="roll back when staging's p99 latency exceeds production's by more, in a size "
        "class both served",
    )
    p99_margin_share: float = Field(
        0.2,
        ge=0,
        description="... or by more than this share of production's p99 when that is larger "
        "(large requests take seconds and vary by more than the fixed margin)",
    )
    min_requests: int = Field(
        100,
        ge=1,
        description="split requests each stage needs in the window before health is judged, and "
        "in a size class before its latency is",
    )
    metrics_window_minutes: int = Field(
        60, ge=1, description="the window of error rates and latency percentiles"
    )


class HealthReading(BaseModel):
    """The canary_health artifact: each stage's health, or why it could not be read."""

    health: dict[str, StageHealth] | None = None
    error: str | None = None


class CanaryDecision(BaseModel):
    """The canary_decider artifact: what to do with staging, and why."""

    action: Literal["promote", "rollback", "wait", "none"]
    reasons: list[str] = []
    staging_version: int | None = None
    production_version: int | None = None
    paired_days: int = 0
    days_needed: int | None = None  # more complete days both must be live for a verdict
    acted: bool = False  # promote or rollback carried out
    outcome: str | None = None  # what carrying it out did, or why it did not


def health_verdict(
    health: dict[str, StageHealth] | None, health_error: str | None, rule: CanaryRule
) -> tuple[bool | None, list[str]]:
    """(True healthy / False unhealthy / None not shown, reasons). Only split traffic after
    warm-up counts (operational.py): a client pinning `/stage/staging/` cannot roll it back.
    Latency is compared within each size class both stages served enough of, so a few huge
    requests are compared with huge ones, never with one-item answers."""
    if health is None:
        return None, [f"operational health unknown ({health_error or 'no metrics source'})"]
    staging, production = health.get(Stage.STAGING), health.get(Stage.PRODUCTION)
    if staging is None or production is None:
        missing = Stage.STAGING if staging is None else Stage.PRODUCTION
        return None, [f"operational health unknown: no metrics of {missing}"]
    counted = f"counted /predict answers: {staging.counted()}; {production.counted()}"
    if min(staging.requests, production.requests) < rule.min_requests:
        return None, [
            f"operational health not judged: {staging.requests} staging and "
            f"{production.requests} production split requests after warm-up "
            f"(each needs {rule.min_requests})",
            counted,
        ]
    limit = production.error_rate + rule.error_rate_margin
    healthy = staging.error_rate <= limit
    reasons = [
        f"error rate staging {staging.error_rate:.4f} vs production {production.error_rate:.4f} "
        f"(limit {limit:.4f}): {'ok' if healthy else 'staging errs beyond the margin'}"
    ]
    for size in SIZE_CLASSES:
        mine, theirs = staging.latency.get(size), production.latency.get(size)
        if mine is None and theirs is None:
            continue
        served = (mine.requests if mine else 0, theirs.requests if theirs else 0)
        if min(served) < rule.min_requests or mine.p99_ms is None or theirs.p99_ms is None:
            reasons.append(
                f"p99 of {size}-size requests not judged: {served[0]} staging and {served[1]} "
                f"production (each needs {rule.min_requests})"
            )
            continue
        limit = theirs.p99_ms + max(rule.p99_margin_ms, rule.p99_margin_share * theirs.p99_ms)
        within = mine.p99_ms <= limit
        healthy = healthy and within
        reasons.append(
            f"p99 of {size}-size requests staging {mine.p99_ms:.1f} ms vs production "
            f"{theirs.p99_ms:.1f} ms (limit {limit:.1f} ms): "
            f"{'ok' if within else 'staging is slower beyond the margin'}"
        )
    reasons.append(counted)
    return healthy, reasons


def days_to_separate(estimate: float, low: float, high: float, days: int) -> int | None:
    """More days until the interval would exclude zero, if its width shrinks as 1/sqrt(days)
    and the estimate holds; None when the estimate is zero (no amount of days separates)."""
    if estimate == 0:
        return None
    half_width = (high - low) / 2
    total = math.ceil(days * (half_width / abs(estimate)) ** 2)
    return max(total - days, 1)


def decide_canary(
    forward: ForwardReport,
    health: dict[str, StageHealth] | None,
    rule: CanaryRule,
    health_error: str | None = None,
) -> CanaryDecision:
    """The rule on the forward report and the stages' health."""
    staging, production = forward.stages.get(Stage.STAGING), forward.stages.get(Stage.PRODUCTION)
    serving = {stage: forward.stages.get(stage) or forward.unscored.get(stage) for stage in STAGES}
    versions = {
        f"{stage}_version": found.model_version if found else None
        for stage, found in serving.items()
    }
    if serving[Stage.STAGING] is None or serving[Stage.PRODUCTION] is None:
        return CanaryDecision(
            action="none", reasons=["no canary: staging and production must both serve"], **versions
        )
    healthy, reasons = health_verdict(health, health_error, rule)
    paired = forward.paired
    days = paired.days if paired else 0
    versions["paired_days"] = days
    if healthy is False:
        reasons.append("staging is operationally worse than production: roll it back")
        return CanaryDecision(action="rollback", reasons=reasons, **versions)
    if staging is None or production is None:
        for stage, why in forward.unscored.items():
            reasons.append(f"{stage} not scored forward ({why.reason})")
        reasons.append("no forward evidence to judge staging by, and it is not unhealthy: wait")
        return CanaryDecision(action="wait", reasons=reasons, **versions)
    if days < rule.min_forward_days:
        needed = rule.min_forward_days - days
        reasons.append(
            f"{days} complete days with both live, {rule.min_forward_days} needed: "
            f"wait {needed} more complete days"
        )
        return CanaryDecision(action="wait", reasons=reasons, days_needed=needed, **versions)
    return judge_forward(paired, rule, healthy, reasons, versions)


def judge_forward(
    paired: PairedForward,
    rule: CanaryRule,
    healthy: bool | None,
    reasons: list[str],
    versions: dict,
) -> CanaryDecision:
    """The verdict once enough paired days are in: the forward evidence, then health to promote."""
    days = paired.days
    changes = paired.differences[str(rule.resolution)]
    dev, hit = changes["poisson_deviance"], changes["hit_rate_at_10"]
    reasons.append(
        f"evidence: {days} complete days {' .. '.join(paired.window or [])} at res "
        f"{rule.resolution}; staging minus production with 95% day-block bootstrap intervals"
    )
    reasons.append(f"forward deviance change {dev}")
    reasons.append(f"forward hit@10% change {hit}")
    if dev.estimate == 0 and dev.low == 0 and dev.high == 0:
        reasons.append(
            "staging forecasts exactly as production: no number of days separates them, "
            "nothing to do (a person may promote or roll back)"
        )
        return CanaryDecision(action="none", reasons=reasons, **versions)
    if dev.low > 0:
        reasons.append("staging is forward-worse (deviance interval above 0): roll it back")
        return CanaryDecision(action="rollback", reasons=reasons, **versions)
    if dev.high < 0 and hit.low >= -rule.hit_rate_tolerance:
        if healthy:
            reasons.append("staging beats production forward and is healthy: promote it")
            return CanaryDecision(action="promote", reasons=reasons, **versions)
        reasons.append("staging beats production forward, but its health is not shown: wait")
        return CanaryDecision(action="wait", reasons=reasons, **versions)
    if dev.high < 0:
        reasons.append(
            f"deviance better but hit@10% lost (interval must start above "
            f"{-rule.hit_rate_tolerance:+.4f}): wait"
        )
        return CanaryDecision(action="wait", reasons=reasons, **versions)
    more = days_to_separate(dev.estimate, dev.low, dev.high, days)
    reasons.append(
        "the deviance interval contains 0: wait"
        + (f", about {more} more complete days at this difference" if more else "")
    )
    return CanaryDecision(action="wait", reasons=reasons, days_needed=more, **versions)
