"""The last monitoring run in brief: persisted for `run.py status` and pushed as Prometheus gauges.

`$VZ_HOME/monitoring.json` is replaced atomically (temp file + rename), so `status` never reads a
half-written summary. The Pushgateway push is best effort: a monitor whose push fails has still
judged, acted and alerted, so the failure is logged and returned, never raised.
"""

from __future__ import annotations

import logging
import os
import tempfile
from datetime import UTC, datetime
from pathlib import Path

from pydantic import BaseModel

from visionzero.monitoring.canary import CanaryDecision
from visionzero.monitoring.drift import DriftReport
from visionzero.monitoring.forward import ForwardReport
from visionzero.monitoring.retrain import RetrainDecision
from visionzero.platform.settings import paths, settings

log = logging.getLogger(__name__)
SUMMARY_FILE = "monitoring.json"
# crash_risk_canary_decision's value per action (a gauge holds a number)
DECISION_CODES = {"none": 0, "wait": 1, "promote": 2, "rollback": 3}
PUSH_JOB = "visionzero_monitoring"


class MonitoringSummary(BaseModel):
    """What `status --json` shows under `monitoring`."""

    at: str
    resolution: int
    forward: dict[str, dict]  # stage -> version, days, window, metrics at `resolution`
    paired: dict | None = None
    drift_flags: list[str]
    canary: CanaryDecision
    retrain: RetrainDecision


def summarise(
    forward: ForwardReport,
    drift: DriftReport,
    canary: CanaryDecision,
    retrain: RetrainDecision,
    resolution: int,
) -> MonitoringSummary:
    key = str(resolution)
    stages = {}
    for stage, result in forward.stages.items():
        metrics = result.metrics.get(key, {})
        stages[stage] = {
            "model_version": result.model_version,
            "days": result.days,
            "window": result.window,
            **{
                f"{role}_{name}": interval.model_dump()
                for role, values in metrics.items()
                for name, interval in values.items()
                if name in ("poisson_deviance", "hit_rate_at_10", "calibration_ratio")
            },
        }
    for stage, why in forward.unscored.items():
        stages[stage] = {"model_version": why.model_version, "days": 0, "unscored": why.reason}
    paired = forward.paired
    return MonitoringSummary(
        at=datetime.now(UTC).isoformat(timespec="seconds"),
        resolution=resolution,
        forward=stages,
        paired=(
            {
                "days": paired.days,
                "window": paired.window,
                **{
                    f"staging_minus_production_{name}": interval.model_dump()
                    for name, interval in paired.differences.get(key, {}).items()
                },
            }
            if paired
            else None
        ),
        drift_flags=drift.flags,
        canary=canary,
        retrain=retrain,
    )


def summary_path() -> Path:
    return paths().home / SUMMARY_FILE


def save_summary(summary: MonitoringSummary) -> Path:
    path = summary_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".monitoring-", suffix=".json")
    with os.fdopen(fd, "w") as handle:
        handle.write(summary.model_dump_json(indent=2))
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)
    return path


def load_summary() -> MonitoringSummary | None:
    path = summary_path()
    return MonitoringSummary.model_validate_json(path.read_text()) if path.exists() else None


def push_gauges(summary: MonitoringSummary, url: str | None = None) -> str | None:
    """Push the forward deviance and hit@10% per stage and the canary decision to the
    Pushgateway (VZ_PUSHGATEWAY_URL). Returns None when pushed or not configured, else the
    error."""
    url = url or getattr(settings(), "vz_pushgateway_url", None)
    if not url:
        return None
    from prometheus_client import CollectorRegistry, Gauge, push_to_gateway

    registry = CollectorRegistry()
    deviance = Gauge(
        "crash_risk_forward_deviance",
        "Poisson deviance per zone-slot on the complete days since the stage went live",
        ["stage"],
        registry=registry,
    )
    hit_rate = Gauge(
        "crash_risk_forward_hit_rate_at_10",
        "share of crashes in the riskiest 10% of zone-slots on the forward days",
        ["stage"],
        registry=registry,
    )
    decision = Gauge(
        "crash_risk_canary_decision",
        "canary decision: 0 none, 1 wait, 2 promote, 3 rollback",
        registry=registry,
    )
    for stage, values in summary.forward.items():
        if "model_poisson_deviance" in values:
            deviance.labels(stage=stage).set(values["model_poisson_deviance"]["estimate"])
            hit_rate.labels(stage=stage).set(values["model_hit_rate_at_10"]["estimate"])
    decision.set(DECISION_CODES[summary.canary.action])
    try:
        push_to_gateway(url, job=PUSH_JOB, registry=registry, timeout=5)
    except Exception as exc:  # noqa: BLE001 - any push failure is reported the same way
        error = f"{type(exc).__name__}: {exc}"
        log.warning("Pushgateway %s: gauges not pushed (%s)", url, error)
        return error
    return None
