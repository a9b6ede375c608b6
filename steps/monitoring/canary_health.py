"""canary_health: each stage's error rate and latency percentiles per size class on the traffic
the canary split sent after warm-up, from the backends' Prometheus metrics, with what was left out
(pinned, direct, warm-up). An unreachable source is a reading too: the decider then cannot call
staging healthy."""

from __future__ import annotations

from typing import Annotated

from zenml import log_metadata, step
from zenml.logger import get_logger

from visionzero.monitoring.canary import CanaryRule, HealthReading
from visionzero.monitoring.sources import canary_health as read_health

logger = get_logger(__name__)


@step(enable_cache=False)
def canary_health(rule: CanaryRule) -> Annotated[HealthReading, "canary_health"]:
    try:
        reading = HealthReading(health=read_health(rule.metrics_window_minutes))
    except Exception as exc:  # noqa: BLE001 - whatever failed, health stays unknown and says why
        reading = HealthReading(error=f"{type(exc).__name__}: {exc}")
        logger.warning("operational health unknown: %s", reading.error)
    for stage, health in (reading.health or {}).items():
        logger.info("%s: %s", stage, health.model_dump())
    log_metadata(metadata={"canary_health": reading.model_dump()})
    return reading
