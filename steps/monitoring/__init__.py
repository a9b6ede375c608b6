"""Steps of the monitoring stage; their logic lives in visionzero/monitoring/."""

from steps.monitoring.canary_decider import canary_decider
from steps.monitoring.canary_health import canary_health
from steps.monitoring.drift_detector import drift_detector
from steps.monitoring.forward_evaluator import forward_evaluator
from steps.monitoring.retrain_trigger import retrain_trigger
from steps.monitoring.traffic_view import traffic_view

__all__ = [
    "canary_decider",
    "canary_health",
    "drift_detector",
    "forward_evaluator",
    "retrain_trigger",
    "traffic_view",
]
