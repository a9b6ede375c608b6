"""Register the project's ZenML stack (local orchestrator + artifact store + MLflow tracker), idempotently.

With ZENML_STORE_URL set ZenML talks to a ZenML server instead of the local store; with
MLFLOW_TRACKING_URI set the tracker logs to that MLflow server instead of the local SQLite store.
"""
from __future__ import annotations

import os

STACK_NAME = "visionzero"
TRACKER_NAME = "visionzero_mlflow"
MODEL_NAME = "nyc_crash_risk"


def _tracker_configuration() -> dict[str, str]:
    config: dict[str, str] = {}
    for key, env in (("tracking_uri", "MLFLOW_TRACKING_URI"), ("tracking_username", "MLFLOW_TRACKING_USERNAME"),
                     ("tracking_password", "MLFLOW_TRACKING_PASSWORD"), ("tracking_token", "MLFLOW_TRACKING_TOKEN")):
        if os.environ.get(env):
            config[key] = os.environ[env]
    return config


def ensure_stack() -> None:
    from zenml.client import Client
    from zenml.enums import StackComponentType

    client = Client()
    components = {c.name for c in client.list_stack_components(
        type=StackComponentType.EXPERIMENT_TRACKER, size=100).items}
    if TRACKER_NAME not in components:
        client.create_stack_component(name=TRACKER_NAME, flavor="mlflow",
                                      component_type=StackComponentType.EXPERIMENT_TRACKER,
                                      configuration=_tracker_configuration())
    stacks = {s.name for s in client.list_stacks(size=100).items}
    if STACK_NAME not in stacks:
        client.create_stack(name=STACK_NAME, components={
            StackComponentType.ORCHESTRATOR: "default",
            StackComponentType.ARTIFACT_STORE: "default",
            StackComponentType.EXPERIMENT_TRACKER: TRACKER_NAME,
        })
    if client.active_stack_model.name != STACK_NAME:
        client.activate_stack(STACK_NAME)
