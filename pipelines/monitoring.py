"""The monitoring pipeline: load the new data -> score production and staging forward -> view the
served traffic -> read the canary's health -> detect drift -> decide (and carry out) the canary
-> decide whether to retrain.

`MonitoringParameters` is the schema of configs/monitoring.yaml, validated like the training
configuration before any step runs.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field
from zenml import pipeline

from pipelines.training import load_run_config
from steps.data import data_loader
from steps.monitoring import (
    canary_decider,
    canary_health,
    drift_detector,
    forward_evaluator,
    retrain_trigger,
    traffic_view,
)
from visionzero.data.dataset import LoadConfig
from visionzero.monitoring.canary import CanaryRule
from visionzero.monitoring.drift import DriftConfig
from visionzero.monitoring.forward import ForwardConfig
from visionzero.monitoring.retrain import RetrainRule
from visionzero.monitoring.traffic import TrafficConfig
from visionzero.platform.alerts import build_message, send


class MonitoringParameters(BaseModel):
    """Every knob of a monitoring run; what the YAML leaves out keeps the default shown here."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    data: LoadConfig = LoadConfig()
    forward: ForwardConfig = ForwardConfig()
    traffic: TrafficConfig = TrafficConfig()
    drift: DriftConfig = DriftConfig()
    canary: CanaryRule = CanaryRule()
    retrain: RetrainRule = RetrainRule()
    act: bool = Field(
        True, description="carry out the canary decision (false: decide and alert only)"
    )


class MonitoringRunConfig(BaseModel):
    """The YAML file: ZenML's run-configuration shape, limited to the pipeline's parameters."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    parameters: MonitoringParameters = MonitoringParameters()


def load_monitoring_config(path: Path) -> MonitoringParameters:
    return load_run_config(path, MonitoringRunConfig).parameters


def alert_failure(exception: BaseException) -> None:
    """A monitor that fails judges nothing: the on-call hears about it like a deploy."""
    send(
        build_message(
            "failure",
            "Crash-risk monitoring pipeline failed",
            {"error": f"{type(exception).__name__}: {str(exception)[:500]}"},
        )
    )


@pipeline(enable_cache=False, on_failure=alert_failure)
def monitoring_pipeline(
    data: LoadConfig,
    forward: ForwardConfig,
    traffic: TrafficConfig,
    drift: DriftConfig,
    canary: CanaryRule,
    retrain: RetrainRule,
    act: bool,
    deploy_target: Literal["local", "kubernetes"],
) -> None:
    dataset = data_loader(data)
    forward_report = forward_evaluator(dataset, forward)
    traffic_view(dataset, traffic)
    health = canary_health(canary)
    drift_report, _ = drift_detector(dataset, drift, traffic)
    decision = canary_decider(forward_report, health, canary, act, deploy_target)
    retrain_trigger(forward_report, drift_report, decision, retrain)
