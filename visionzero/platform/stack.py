"""Register the project's ZenML stack, idempotently: by default the local orchestrator + artifact
store + MLflow tracker; with VZ_ORCHESTRATOR=kubernetes the cluster stack of `cluster_recipe`
(stack_recipe.py). Also what first runs share: the initialisation lock, the store created, the
local ZenML server restarted.

With ZENML_STORE_URL set ZenML talks to a ZenML server instead of the local store; with
MLFLOW_TRACKING_URI set the tracker logs to that MLflow server instead of the local SQLite store.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from filelock import FileLock
from pydantic import SecretStr

from visionzero.platform.settings import paths, settings
from visionzero.platform.stack_recipe import (
    TRACKER_NAME,
    StackConfigError,
    StackRecipe,
    cluster_recipe,
)

STACK_NAME = "visionzero"
LOCAL_SECRET_NAME = "visionzero_mlflow"  # the ZenML secret the local stack's tracker reads
# The tracker's credential fields, each read from the setting (env variable) "mlflow_<field>"
TRACKER_CREDENTIALS = ("tracking_username", "tracking_password", "tracking_token")


def _tracker_configuration() -> tuple[dict[str, str | None], dict[str, str]]:
    """The MLflow server the settings name, if any (otherwise ZenML's local store), and the
    credentials to keep in the ZenML secret LOCAL_SECRET_NAME. The configuration holds only
    references to that secret: ZenML keeps component configurations in plain text in its store
    (and shows them in `zenml stack describe`), never a place for a token. A credential that is
    not set maps to None, which removes a value an older registration held."""
    current = settings()
    configuration: dict[str, str | None] = {"tracking_uri": current.mlflow_tracking_uri}
    values = {}
    for field in TRACKER_CREDENTIALS:
        key = f"mlflow_{field}"
        value = getattr(current, key)
        if isinstance(value, SecretStr):
            value = value.get_secret_value()
        if value:
            values[key] = value
        configuration[field] = "{{" + f"{LOCAL_SECRET_NAME}.{key}" + "}}" if value else None
    return configuration, values


def _holds_plain_credential(configuration: dict[str, Any]) -> bool:
    """Whether a registered tracker keeps a credential as a value (registered before credentials
    moved into the ZenML secret) rather than as a `{{secret.key}}` reference."""
    return any(
        configuration.get(field) and not str(configuration[field]).startswith("{{")
        for field in TRACKER_CREDENTIALS
    )


def _ensure_secret(client: Any, name: str, values: dict[str, str]) -> None:
    """The ZenML secret `name` holds `values` (created, or updated when a value changed)."""
    if not values:
        return
    try:
        held = client.get_secret(name, allow_partial_name_match=False)
    except KeyError:
        client.create_secret(name, values=values)
    else:
        if _differs(values, held.secret_values):
            client.update_secret(name, add_or_update_values=values)


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
    """The stack the settings name registered and active (idempotent), under the initialisation
    lock: the local one by default, the cluster stack with VZ_ORCHESTRATOR=kubernetes."""
    recipe = cluster_recipe() if settings().vz_orchestrator == "kubernetes" else None
    with initialisation_lock():
        if recipe is None:
            _ensure_stack()
        else:
            register_stack(recipe)


def _secret_values(recipe: StackRecipe) -> dict[str, str]:
    current = settings()
    values = {}
    for key in recipe.secret_keys:
        value = getattr(current, key)
        values[key] = value.get_secret_value() if isinstance(value, SecretStr) else value
    return values


def _differs(wanted: dict[str, Any], held: dict[str, Any]) -> bool:
    """Only the keys the recipe sets count: an unset VZ_KUBERNETES_CONTEXT (a CronJob pod) keeps
    the context a workstation registered instead of flipping it back and forth."""
    return any(held.get(key) != value for key, value in wanted.items())


def register_stack(recipe: StackRecipe) -> None:
    """Register (or bring up to date) the recipe's secret, components and stack, and activate it.
    Secret values go from the environment into ZenML's secret store and nowhere else."""
    from zenml.client import Client
    from zenml.enums import StackComponentType

    client = Client()
    _ensure_secret(client, recipe.secret_name, _secret_values(recipe))
    for component in recipe.components:
        kind = StackComponentType(component.type)
        try:
            held = client.get_stack_component(kind, component.name, allow_name_prefix_match=False)
        except KeyError:
            client.create_stack_component(
                name=component.name,
                flavor=component.flavor,
                component_type=kind,
                configuration=component.configuration,
            )
            continue
        if held.flavor_name != component.flavor:
            raise StackConfigError(
                f"the {component.type} {component.name} is registered with the flavor "
                f"{held.flavor_name}, not {component.flavor}: remove or rename it"
            )
        if _differs(component.configuration, held.configuration):
            client.update_stack_component(
                component.name, kind, configuration=component.configuration
            )
    if recipe.name not in {s.name for s in client.list_stacks(size=100).items}:
        client.create_stack(
            name=recipe.name,
            components={StackComponentType(c.type): c.name for c in recipe.components},
        )
    if client.active_stack_model.name != recipe.name:
        client.activate_stack(recipe.name)


def _ensure_stack() -> None:
    """The local stack: credentials go into the ZenML secret, the tracker references them. A
    tracker registered earlier with a credential in its configuration is rewritten to the
    references (the value then remains only in the secret); one registered otherwise, e.g. by the
    cluster recipe, is kept as it is."""
    from zenml.client import Client
    from zenml.enums import StackComponentType

    client = Client()
    configuration, values = _tracker_configuration()
    _ensure_secret(client, LOCAL_SECRET_NAME, values)
    kind = StackComponentType.EXPERIMENT_TRACKER
    try:
        held = client.get_stack_component(kind, TRACKER_NAME, allow_name_prefix_match=False)
    except KeyError:
        client.create_stack_component(
            name=TRACKER_NAME,
            flavor="mlflow",
            component_type=kind,
            configuration={k: v for k, v in configuration.items() if v is not None},
        )
    else:
        if _holds_plain_credential(held.configuration):
            client.update_stack_component(TRACKER_NAME, kind, configuration=configuration)
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
