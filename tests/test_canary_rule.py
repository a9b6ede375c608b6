"""The canary rule on hand-built evidence: each branch of the rule, pinned.

The forward numbers come from real data in tests/test_monitoring.py; here only the rule's logic."""

from __future__ import annotations

import pytest

from visionzero.evaluation.metrics import Interval
from visionzero.monitoring.canary import CanaryRule, decide_canary
from visionzero.monitoring.forward import ForwardReport, PairedForward, StageForward, Unscored
from visionzero.monitoring.operational import SizeLatency, StageHealth

RULE = CanaryRule()


def stage(version: int) -> StageForward:
    return StageForward(
        model_version=version,
        deployed=None,
        training_window=["2013-01-01", "2024-12-31"],
        first_day="2025-01-01",
        days=30,
        window=["2025-01-01", "2025-01-30"],
        metrics={},
        vs_status_quo={},
    )


def report(days: int, deviance: tuple[float, float, float], hit=(0.01, 0.0, 0.02)) -> ForwardReport:
    changes = {
        "poisson_deviance": Interval(estimate=deviance[0], low=deviance[1], high=deviance[2]),
        "hit_rate_at_10": Interval(estimate=hit[0], low=hit[1], high=hit[2]),
    }
    return ForwardReport(
        resolutions=[9, 7],
        last_complete_day="2025-01-30",
        stages={"production": stage(1), "staging": stage(2)},
        paired=PairedForward(
            days=days, window=["2025-01-01", "2025-01-30"], differences={"9": changes}
        ),
    )


def latency(requests: int, p99: float) -> SizeLatency:
    return SizeLatency(requests=requests, p50_ms=p99 / 4, p95_ms=p99 / 2, p99_ms=p99)


def reading(
    stage: str,
    requests: int,
    error_rate: float,
    p99: float,
    large: SizeLatency | None = None,
    not_counted: dict[str, int] | None = None,
) -> StageHealth:
    """Split post-warm-up traffic, all one-item requests unless `large` adds some."""
    errors = round(requests * error_rate)
    return StageHealth(
        stage=stage,
        source="prometheus",
        requests=requests,
        errors=errors,
        error_rate=error_rate,
        latency={"one": latency(requests, p99), **({"large": large} if large else {})},
        not_counted=not_counted or {},
    )


def health(error_rate: float = 0.0, p99: float = 20.0, requests: int = 1000) -> dict:
    return {
        "production": reading("production", 1000, 0.0, 20.0),
        "staging": reading("staging", requests, error_rate, p99),
    }


def test_better_and_healthy_is_promoted() -> None:
    decision = decide_canary(report(20, (-0.002, -0.003, -0.001)), health(), RULE)
    assert decision.action == "promote"
    assert decision.staging_version == 2 and decision.production_version == 1


def test_better_but_health_unknown_waits() -> None:
    decision = decide_canary(report(20, (-0.002, -0.003, -0.001)), None, RULE, "no Prometheus")
    assert decision.action == "wait"
    assert any("no Prometheus" in reason for reason in decision.reasons)
    few = decide_canary(report(20, (-0.002, -0.003, -0.001)), health(requests=10), RULE)
    assert few.action == "wait" and "not judged" in few.reasons[0]


@pytest.mark.parametrize(
    ("error_rate", "p99"), [(0.05, 20.0), (0.0, 200.0)], ids=["errors", "latency"]
)
def test_unhealthy_staging_is_rolled_back_whatever_the_days(error_rate: float, p99: float) -> None:
    decision = decide_canary(report(2, (-0.002, -0.003, -0.001)), health(error_rate, p99), RULE)
    assert decision.action == "rollback"
    assert "beyond the margin" in " ".join(decision.reasons)


def test_within_the_margins_is_healthy() -> None:
    decision = decide_canary(report(20, (-0.002, -0.003, -0.001)), health(0.009, 69.0), RULE)
    assert decision.action == "promote"


def test_forward_worse_is_rolled_back() -> None:
    decision = decide_canary(report(20, (0.002, 0.001, 0.003)), health(), RULE)
    assert decision.action == "rollback" and "forward-worse" in decision.reasons[-1]


def test_too_few_days_waits_and_says_how_many_more() -> None:
    decision = decide_canary(report(9, (0.002, 0.001, 0.003)), health(), RULE)
    assert decision.action == "wait" and decision.days_needed == 5
    assert "wait 5 more complete days" in decision.reasons[-1]


def test_an_interval_around_zero_waits_with_an_estimate_of_the_days() -> None:
    # half-width 0.002, estimate 0.001: width shrinks as 1/sqrt(days): 4x the days, 60 more
    decision = decide_canary(report(20, (-0.001, -0.003, 0.001)), health(), RULE)
    assert decision.action == "wait" and decision.days_needed == 60


def test_lost_ranking_blocks_promotion() -> None:
    decision = decide_canary(
        report(20, (-0.002, -0.003, -0.001), hit=(-0.02, -0.03, -0.01)), health(), RULE
    )
    assert decision.action == "wait" and "hit@10% lost" in decision.reasons[-1]


def test_no_staging_is_nothing_to_do() -> None:
    forward = report(20, (0.0, 0.0, 0.0))
    forward.stages.pop("staging")
    assert decide_canary(forward, health(), RULE).action == "none"


def unscored_staging() -> ForwardReport:
    """Staging serves, but its model could not be loaded to score it forward."""
    forward = report(0, (0.0, 0.0, 0.0))
    forward.stages.pop("staging")
    forward.paired = None
    forward.unscored = {"staging": Unscored(model_version=998, reason="not loadable: KeyError")}
    return forward


def test_unscored_staging_that_errs_is_rolled_back() -> None:
    decision = decide_canary(unscored_staging(), health(error_rate=0.3), RULE)
    assert decision.action == "rollback" and decision.staging_version == 998
    assert "staging errs beyond the margin" in decision.reasons[0]


def test_unscored_healthy_staging_waits() -> None:
    decision = decide_canary(unscored_staging(), health(), RULE)
    assert decision.action == "wait" and "not scored forward" in decision.reasons[-2]


BETTER = (-0.002, -0.003, -0.001)  # staging forward-better: promoted when healthy


def test_pinned_errors_and_a_few_huge_slow_requests_do_not_roll_staging_back() -> None:
    """What a client sends to /stage/staging/ is counted apart, and 5 huge requests on staging
    (none on production) are a size class too small to judge: staging is healthy."""
    staging = reading(
        "staging",
        1000,
        0.0,
        20.0,
        large=latency(5, 9000.0),
        not_counted={"pinned": 100, "direct": 3, "warmup": 12},
    )
    health = {"production": reading("production", 900, 0.0, 20.0), "staging": staging}
    decision = decide_canary(report(20, BETTER), health, RULE)
    assert decision.action == "promote", decision.reasons
    text = "\n".join(decision.reasons)
    assert "p99 of one-size requests staging 20.0 ms vs production 20.0 ms" in text
    assert "p99 of large-size requests not judged: 5 staging and 0 production" in text
    assert (
        "counted /predict answers: 1000 split after warm-up on staging "
        "(not counted: 100 pinned, 3 direct, 12 warmup); 900 split after warm-up on production"
    ) in text


def test_huge_requests_compare_with_huge_ones() -> None:
    """Large requests take seconds on both stages: within the share margin, not a slowdown."""
    health = {
        "production": reading("production", 1000, 0.0, 20.0, large=latency(200, 3000.0)),
        "staging": reading("staging", 1000, 0.0, 20.0, large=latency(200, 3500.0)),
    }
    assert decide_canary(report(20, BETTER), health, RULE).action == "promote"


def test_a_staging_slower_on_split_huge_requests_is_rolled_back() -> None:
    health = {
        "production": reading("production", 1000, 0.0, 20.0, large=latency(200, 3000.0)),
        "staging": reading("staging", 1000, 0.0, 20.0, large=latency(200, 6000.0)),
    }
    decision = decide_canary(report(20, BETTER), health, RULE)
    assert decision.action == "rollback"
    assert (
        "p99 of large-size requests staging 6000.0 ms vs production 3000.0 ms "
        "(limit 3600.0 ms): staging is slower beyond the margin"
    ) in decision.reasons


def test_only_pinned_traffic_is_not_judged() -> None:
    """Staging with no split traffic (everything pinned) is not judged, however it erred."""
    staging = reading("staging", 0, 0.0, 20.0, not_counted={"pinned": 100})
    health = {"production": reading("production", 900, 0.0, 20.0), "staging": staging}
    decision = decide_canary(report(2, BETTER), health, RULE)
    assert decision.action == "wait"
    assert "not judged: 0 staging and 900 production split requests" in decision.reasons[0]
