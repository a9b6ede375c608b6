"""Register the project's ZenML stack (local orchestrator + artifact store +
MLflow tracker), idempotently.

With ZENML_STORE_URL set ZenML talks to a ZenML server instead of the local store; with
MLFLOW_TRACKING_URI set the tracker logs to that MLflow server instead of the local SQLite store.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from filelock import FileLock
from pydantic import SecretStr

from visionzero.platform.settings import paths, settings

STACK_NAME = "visionzero"
TRACKER_NAME = "visionzero_mlflow"


def _tracker_configuration() -> dict[str, str]:
    """The MLflow server the settings name, if any; otherwise ZenML's local store."""
    current = settings()
    values = {
        "tracking_uri": current.mlflow_tracking_uri,
        "tracking_username": current.mlflow_tracking_username,
        "tracking_password": current.mlflow_tracking_password,
        "tracking_token": current.mlflow_tracking_token,
    }
    return {
        key: value.get_secret_value() if isinstance(value, SecretStr) else value
        for key, value in values.items()
        if value
    }


def ensure_local_server() -> None:
    """After `run.py dashboard` the client talks to a local ZenML server daemon; when that daemon is
    gone (a reboot), start it again instead of failing on a refused connection."""
    import socket
    import subprocess
    import sys
    from pathlib import Path
    from urllib.parse import urlparse

    import yaml

    config = (settings().zenml_config_path or paths().zenml) / "config.yaml"
    if settings().zenml_store_url or not config.exists():
        return
    store = (yaml.safe_load(config.read_text()) or {}).get("store") or {}
    url = urlparse(str(store.get("url", "")))
    if store.get("type") != "rest" or url.hostname not in ("127.0.0.1", "localhost"):
        return
    with socket.socket() as sock:
        sock.settimeout(1)
        if sock.connect_ex((url.hostname, url.port or 80)) == 0:
            return
    print(
        f"The local ZenML server at {url.geturl()} is not running: starting it again",
        file=sys.stderr,
    )
    subprocess.run(
        [str(Path(sys.executable).parent / "zenml"), "login", "--local", "--port", str(url.port)],
        check=True,
        capture_output=True,
    )


@contextmanager
def initialisation_lock() -> Iterator[None]:
    """ZenML creates its client configuration and local SQLite store on first use, and the stack
    is registered by whoever finds it missing, with no lock of their own: two first runs at once
    in a fresh clone both create the tables, and one dies ("table ... already exists"). Both
    happen under this file lock under VZ_HOME, so the second waits and finds them made."""
    home = paths().home
    home.mkdir(parents=True, exist_ok=True)
    with FileLock(home / "initialisation.lock"):
        yield


def initialise_store() -> None:
    """Create ZenML's configuration and store if they are missing. Call it before anything that
    touches the store without ensure_stack (importing pipelines.training does: its decorators
    resolve the hooks' source through the store)."""
    with initialisation_lock():
        from zenml.client import Client

        Client().zen_store.get_store_info()


def ensure_stack() -> None:
    """The project's stack registered and active (idempotent), under the initialisation lock."""
    with initialisation_lock():
        _ensure_stack()


def _ensure_stack() -> None:
    from zenml.client import Client
    from zenml.enums import StackComponentType

    client = Client()
    components = {
        c.name
        for c in client.list_stack_components(
            type=StackComponentType.EXPERIMENT_TRACKER, size=100
        ).items
    }
    if TRACKER_NAME not in components:
        client.create_stack_component(
            name=TRACKER_NAME,
            flavor="mlflow",
            component_type=StackComponentType.EXPERIMENT_TRACKER,
            configuration=_tracker_configuration(),
        )
    stacks = {s.name for s in client.list_stacks(size=100).items}
    if STACK_NAME not in stacks:
        client.create_stack(
            name=STACK_NAME,
            components={
                StackComponentType.ORCHESTRATOR: "default",
                StackComponentType.ARTIFACT_STORE: "default",
                StackComponentType.EXPERIMENT_TRACKER: TRACKER_NAME,
            },
        )
    if client.active_stack_model.name != STACK_NAME:
        client.activate_stack(STACK_NAME)
