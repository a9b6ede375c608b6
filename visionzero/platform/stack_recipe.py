"""The cluster stack of VZ_ORCHESTRATOR=kubernetes as data: its components and the names of the
secret keys they reference (`cluster_recipe`), checked against the settings, and the shell script
that registers it by hand (`register_script`). Registering it in code is stack.py's
`register_stack`; nothing here talks to ZenML.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from visionzero.platform.settings import Settings, settings

# The tracker the steps name (`@step(experiment_tracker=TRACKER_NAME)`): the local stack's and
# the cluster stack's alike.
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
    problems = _recipe_problems(current)
    if problems:
        raise StackConfigError("VZ_ORCHESTRATOR=kubernetes: " + "; ".join(problems))
    keys = _secret_keys(current)
    name = CLUSTER_STACK_NAME
    return StackRecipe(
        name=name,
        components=(
            Component("orchestrator", name, "kubernetes", _orchestrator_configuration(current)),
            Component("artifact_store", f"{name}_s3", "s3", _store_configuration(current, keys)),
            Component(
                "container_registry", f"{name}_registry", "default", {"uri": _registry_uri(current)}
            ),
            # the steps name their tracker (`@step(experiment_tracker=TRACKER_NAME)`): shared with
            # the local stack, which then logs to the same MLflow server
            Component("experiment_tracker", TRACKER_NAME, "mlflow", _tracker(current, keys)),
        ),
        secret_name=CLUSTER_SECRET_NAME,
        secret_keys=keys,
    )


def _uses_password(current: Settings) -> bool:
    return bool(current.mlflow_tracking_username and current.mlflow_tracking_password)


def _recipe_problems(current: Settings) -> list[str]:
    """Each variable the cluster stack needs that is missing or wrong, in one sentence each."""
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
    # ZenML's MLflow tracker wants exactly one way to log in
    if _uses_password(current) == bool(current.mlflow_tracking_token):
        problems.append(
            "a remote MLflow server needs exactly one of MLFLOW_TRACKING_TOKEN or "
            "MLFLOW_TRACKING_USERNAME with MLFLOW_TRACKING_PASSWORD (any values when it has no "
            "authentication)"
        )
    return problems


def _secret_keys(current: Settings) -> tuple[str, ...]:
    """The secret's keys that are set (the username and password only when both are)."""
    unused = (
        () if _uses_password(current) else ("mlflow_tracking_username", "mlflow_tracking_password")
    )
    return tuple(key for key in CLUSTER_SECRET_KEYS if getattr(current, key) and key not in unused)


def _store_configuration(current: Settings, keys: tuple[str, ...]) -> dict[str, Any]:
    store: dict[str, Any] = {"path": (current.vz_artifact_store_uri or "").rstrip("/")}
    if current.vz_s3_endpoint_url:
        store["client_kwargs"] = {"endpoint_url": current.vz_s3_endpoint_url}
    for config_key, key in (("key", "aws_access_key_id"), ("secret", "aws_secret_access_key")):
        if key in keys:
            store[config_key] = _secret_reference(key)
    return store


def _orchestrator_configuration(current: Settings) -> dict[str, Any]:
    orchestrator: dict[str, Any] = {
        "kubernetes_namespace": current.vz_k8s_namespace,
        "incluster": True,  # in a pod: its own cluster; elsewhere: kubernetes_context
        "pass_zenml_token_as_secret": True,  # the API token in a Secret, not in the Job spec
        "service_account_name": ORCHESTRATOR_SERVICE_ACCOUNT,
        "step_pod_service_account_name": PIPELINES_SERVICE_ACCOUNT,
    }
    if current.vz_kubernetes_context:
        orchestrator["kubernetes_context"] = current.vz_kubernetes_context
    return orchestrator


def _tracker(current: Settings, keys: tuple[str, ...]) -> dict[str, Any]:
    tracker: dict[str, Any] = {"tracking_uri": current.mlflow_tracking_uri}
    for key in keys:
        if key.startswith("mlflow_"):
            tracker[key.removeprefix("mlflow_")] = _secret_reference(key)
    return tracker


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
