"""Register the project's ZenML stack, idempotently: by default the local orchestrator + artifact
store + MLflow tracker; with VZ_ORCHESTRATOR=kubernetes the cluster stack of `cluster_recipe`.

With ZENML_STORE_URL set ZenML talks to a ZenML server instead of the local store; with
MLFLOW_TRACKING_URI set the tracker logs to that MLflow server instead of the local SQLite store.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from filelock import FileLock
from pydantic import SecretStr

from visionzero.platform.settings import Settings, paths, settings

STACK_NAME = "visionzero"
TRACKER_NAME = "visionzero_mlflow"
CLUSTER_STACK_NAME = "visionzero_k8s"
CLUSTER_SECRET_NAME = "visionzero_k8s"  # the ZenML secret the cluster components read
# Kubernetes service accounts of k8s/rbac.yaml: the orchestrator pod's and the step pods'.
ORCHESTRATOR_SERVICE_ACCOUNT = "zenml-orchestrator"
PIPELINES_SERVICE_ACCOUNT = "visionzero-pipelines"
# The keys of that secret, each named after the setting (environment variable) it is read from.
CLUSTER_SECRET_KEYS = (
    "aws_access_key_id",
    "aws_secret_access_key",
    "mlflow_tracking_username",
    "mlflow_tracking_password",
    "mlflow_tracking_token",
)


class StackConfigError(ValueError):
    """VZ_ORCHESTRATOR=kubernetes without what a cluster stack needs; the message names each
    missing or wrong variable."""


@dataclass(frozen=True)
class Component:
    """One stack component as ZenML registers it (`type` is a StackComponentType value)."""

    type: str
    name: str
    flavor: str
    configuration: dict[str, Any]


@dataclass(frozen=True)
class StackRecipe:
    """The cluster stack: its components and the secret keys they reference (names only: the
    values stay in the environment until registration copies them into ZenML's secret store)."""

    name: str
    components: tuple[Component, ...]
    secret_name: str
    secret_keys: tuple[str, ...]


def _secret_reference(key: str) -> str:
    return "{{" + f"{CLUSTER_SECRET_NAME}.{key}" + "}}"


def cluster_recipe(current: Settings | None = None) -> StackRecipe:
    """The stack VZ_ORCHESTRATOR=kubernetes runs on: ZenML's Kubernetes orchestrator in
    VZ_K8S_NAMESPACE, an S3 (or MinIO) artifact store, VZ_REGISTRY as container registry and the
    MLflow server. Pods reach neither a local ZenML store nor a local MLflow store, so both servers
    are required; every credential is a reference to the ZenML secret, never a value. A missing
    or wrong variable raises StackConfigError naming every one."""
    current = current or settings()
    problems = []
    uri = current.vz_artifact_store_uri or ""
    if not uri.startswith("s3://") or not uri.removeprefix("s3://").strip("/"):
        problems.append(
            f"VZ_ARTIFACT_STORE_URI must be s3://bucket[/path] (got {uri or 'nothing'})"
        )
    if not current.zenml_store_url:
        problems.append("ZENML_STORE_URL must name a ZenML server the pods can reach")
    if not current.mlflow_tracking_uri:
        problems.append("MLFLOW_TRACKING_URI must name an MLflow server the pods can reach")
    password = bool(current.mlflow_tracking_username and current.mlflow_tracking_password)
    if password == bool(current.mlflow_tracking_token):  # ZenML's MLflow tracker wants just one
        problems.append(
            "a remote MLflow server needs exactly one of MLFLOW_TRACKING_TOKEN or "
            "MLFLOW_TRACKING_USERNAME with MLFLOW_TRACKING_PASSWORD (any values when it has no "
            "authentication)"
        )
    if problems:
        raise StackConfigError("VZ_ORCHESTRATOR=kubernetes: " + "; ".join(problems))
    unused = ("mlflow_tracking_username", "mlflow_tracking_password") if not password else ()
    keys = tuple(key for key in CLUSTER_SECRET_KEYS if getattr(current, key) and key not in unused)
    store: dict[str, Any] = {"path": uri.rstrip("/")}
    if current.vz_s3_endpoint_url:
        store["client_kwargs"] = {"endpoint_url": current.vz_s3_endpoint_url}
    for config_key, key in (("key", "aws_access_key_id"), ("secret", "aws_secret_access_key")):
        if key in keys:
            store[config_key] = _secret_reference(key)
    orchestrator: dict[str, Any] = {
        "kubernetes_namespace": current.vz_k8s_namespace,
        "incluster": True,  # in a pod: its own cluster; elsewhere: kubernetes_context
        "pass_zenml_token_as_secret": True,  # the API token in a Secret, not in the Job spec
        "service_account_name": ORCHESTRATOR_SERVICE_ACCOUNT,
        "step_pod_service_account_name": PIPELINES_SERVICE_ACCOUNT,
    }
    if current.vz_kubernetes_context:
        orchestrator["kubernetes_context"] = current.vz_kubernetes_context
    tracker: dict[str, Any] = {"tracking_uri": current.mlflow_tracking_uri}
    for key in keys:
        if key.startswith("mlflow_"):
            tracker[key.removeprefix("mlflow_")] = _secret_reference(key)
    name = CLUSTER_STACK_NAME
    return StackRecipe(
        name=name,
        components=(
            Component("orchestrator", name, "kubernetes", orchestrator),
            Component("artifact_store", f"{name}_s3", "s3", store),
            Component(
                "container_registry", f"{name}_registry", "default", {"uri": _registry_uri(current)}
            ),
            # the steps name their tracker (`@step(experiment_tracker=TRACKER_NAME)`): shared with
            # the local stack, which then logs to the same MLflow server
            Component("experiment_tracker", TRACKER_NAME, "mlflow", tracker),
        ),
        secret_name=CLUSTER_SECRET_NAME,
        secret_keys=keys,
    )


def _registry_uri(current: Settings) -> str:
    """The registry's host and path: ZenML wants no scheme."""
    return current.vz_registry.split("://", 1)[-1].rstrip("/")


def stack_export(recipe: StackRecipe) -> dict[str, Any]:
    """The recipe in `zenml stack export` form, for `zenml stack import` (the secret first)."""
    import zenml

    return {
        "zenml_version": zenml.__version__,
        "stack_name": recipe.name,
        "components": {
            c.type: [
                {
                    "name": c.name,
                    "type": c.type,
                    "flavor": c.flavor,
                    "configuration": c.configuration,
                }
            ]
            for c in recipe.components
        },
    }


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


# Where ZenML keeps its local SQLite store, under its configuration folder (ZENML_CONFIG_PATH).
ZENML_DATABASE = ("local_stores", "default_zen_store", "zenml.db")
MOVED_CONFIG = "config.yaml.moved"  # a configuration naming a store this folder does not hold


@dataclass(frozen=True)
class MovedStores:
    """The local ZenML store this project's configuration names was made in another folder: the
    project was copied (`cp -a`) or moved (`mv`). `old` is the ZenML configuration folder the
    stores were made in, `new` this project's."""

    old: Path
    new: Path

    def folders(self) -> tuple[Path, Path]:
        """The folder that was copied or moved, and where to: `old` and `new` without the tail
        they share (`.vz/zenml`). Paths under it (MLflow's default experiment, in the folder
        `run.py` ran in) move with it, not only the ZenML folder's."""
        shared = 0
        while (
            shared < min(len(self.old.parts), len(self.new.parts)) - 1
            and self.old.parts[-1 - shared] == self.new.parts[-1 - shared]
        ):
            shared += 1
        return (
            Path(*self.old.parts[: len(self.old.parts) - shared]),
            Path(*self.new.parts[: len(self.new.parts) - shared]),
        )


def zenml_config_dir() -> Path:
    return settings().zenml_config_path or paths().zenml


def moved_stores() -> MovedStores | None:
    """The local store's SQLite file, as `config.yaml` names it, is not this configuration
    folder's own: ZenML writes absolute paths (the store URL, artifact and log URIs, MLflow's
    artifact locations), so a copied or moved project would read and write the original's.
    None for a ZenML server, or a SQLite file the user placed outside the usual layout."""
    import yaml

    if settings().zenml_store_url:
        return None
    new = zenml_config_dir()
    config = new / "config.yaml"
    if not config.exists():
        return None
    store = (yaml.safe_load(config.read_text()) or {}).get("store") or {}
    url = str(store.get("url") or "")
    if store.get("type") != "sql" or not url.startswith("sqlite:///"):
        return None
    database, own = Path(url.removeprefix("sqlite:///")), new.joinpath(*ZENML_DATABASE)
    if database.parts[-3:] != ZENML_DATABASE or database == own:
        return None
    if database.exists() and own.exists() and database.samefile(own):  # a symlinked path
        return None
    return MovedStores(old=database.parents[2], new=new)


def repoint_moved_stores() -> str | None:
    """Before anything opens the store: if the project was copied or moved, point its stores at
    its own folder (the one line to print says so), else None. Re-pointing rewrites the copy's
    own files only (never the original's): the old folder prefix becomes the new one in the
    ZenML database and the MLflow databases beside the artifacts, then in `config.yaml`, the
    file that marks it done. A configuration naming a store this folder does not hold is set
    aside instead, and ZenML makes a fresh store here."""
    if moved_stores() is None:  # the usual case: no lock, no ZenML
        return None
    with initialisation_lock():
        moved = moved_stores()  # another command may have re-pointed it meanwhile
        if moved is None:
            return None
        config = moved.new / "config.yaml"
        database = moved.new.joinpath(*ZENML_DATABASE)
        old, new = moved.folders()
        if not database.exists():
            config.replace(config.with_name(MOVED_CONFIG))
            return (
                f"this project's ZenML configuration named the stores of {old}, which this "
                f"folder does not hold: a fresh store is made in {moved.new} (the old "
                f"configuration is kept as {MOVED_CONFIG})"
            )
        for store in (database, *sorted(moved.new.glob("local_stores/*/mlflow.db"))):
            _replace_in_database(store, f"{old}/", f"{new}/")
        _replace_in_config(config, f"{old}/", f"{new}/")
    return f"this project moved from {old}: its stores now point at {moved.new}"


def _replace_in_database(database: Path, old: str, new: str) -> None:
    """Every text value holding `old` gets `new` instead, in one transaction. A value already
    holding `new` is skipped, so running it again (after a crash before `config.yaml` was
    rewritten) changes nothing even when `new` contains `old`."""
    import sqlite3
    from contextlib import closing

    with closing(sqlite3.connect(database)) as connection, connection:
        tables = connection.execute("SELECT name FROM sqlite_master WHERE type = 'table'")
        for (table,) in tables.fetchall():
            columns = connection.execute(f'PRAGMA table_info("{table}")').fetchall()
            for column in (row[1] for row in columns):
                connection.execute(
                    f'UPDATE "{table}" SET "{column}" = replace("{column}", ?, ?) '
                    f'WHERE typeof("{column}") = \'text\' AND instr("{column}", ?) > 0 '
                    f'AND instr("{column}", ?) = 0',
                    (old, new, old, new),
                )


def _replace_in_config(config: Path, old: str, new: str) -> None:
    """The store section's paths (URL, database, backup folder) re-pointed, the file replaced
    atomically: a half-written configuration would lose the store."""
    import os
    import tempfile

    import yaml

    content = yaml.safe_load(config.read_text())
    content["store"] = {
        key: value.replace(old, new) if isinstance(value, str) else value
        for key, value in content["store"].items()
    }
    fd, tmp = tempfile.mkstemp(dir=config.parent, prefix=".config-", suffix=".yaml")
    with os.fdopen(fd, "w") as handle:
        yaml.safe_dump(content, handle)
    os.chmod(tmp, config.stat().st_mode & 0o777)
    os.replace(tmp, config)


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


def register_script(recipe: StackRecipe) -> str:
    """A shell script that registers the recipe by hand (what ensure_stack does in code): the
    secret, whose values are shell references to their environment variables (never the values),
    then `zenml stack import` of `stack_export`. Not one `register` command per component: the
    CLI's own `--secret` option (secrets attached to a component) swallows the S3 store's
    `secret` field."""
    import yaml

    lines = ["set -e"]
    if recipe.secret_keys:
        values = " ".join(f'--{key}="${key.upper()}"' for key in recipe.secret_keys)
        lines.append(f"zenml secret create {recipe.secret_name} {values}")
    export = yaml.safe_dump(stack_export(recipe), sort_keys=False)
    lines += [
        f"cat > {recipe.name}.yaml <<'STACK'",
        export.rstrip("\n"),
        "STACK",
        f"zenml stack import {recipe.name} -f {recipe.name}.yaml",
        f"zenml stack set {recipe.name}",
    ]
    return "\n".join(lines) + "\n"
