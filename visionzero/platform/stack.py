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


def ensure_local_server() -> None:
    """After `run.py dashboard` the client talks to a local ZenML server daemon; when that daemon is
    gone (a reboot), start it again instead of failing on a refused connection."""
    import socket
    import subprocess
    import sys
    from pathlib import Path
    from urllib.parse import urlparse

    import yaml

    config = Path(os.environ.get("ZENML_CONFIG_PATH", "")) / "config.yaml"
    if os.environ.get("ZENML_STORE_URL") or not config.exists():
        return
    store = (yaml.safe_load(config.read_text()) or {}).get("store") or {}
    url = urlparse(str(store.get("url", "")))
    if store.get("type") != "rest" or url.hostname not in ("127.0.0.1", "localhost"):
        return
    with socket.socket() as sock:
        sock.settimeout(1)
        if sock.connect_ex((url.hostname, url.port or 80)) == 0:
            return
    print(f"The local ZenML server at {url.geturl()} is not running: starting it again", file=sys.stderr)
    subprocess.run([str(Path(sys.executable).parent / "zenml"), "login", "--local", "--port", str(url.port)],
                   check=True, capture_output=True)


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
