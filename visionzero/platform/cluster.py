"""The pipelines' run settings on the Kubernetes orchestrator (configs/kubernetes.yaml), checked.

ZenML reads the file's `settings` and `steps` as its PipelineRunConfiguration, but it ignores what
it does not know: DockerSettings drops a misspelt key, the orchestrator settings keep it as an
extra, the pod settings only warn about a Kubernetes field that does not exist, and a step name no
pipeline has is skipped. A typo would then run a step with the wrong resources on a cluster, so
every key is checked here first, against ZenML's own classes and the Kubernetes client's models, and
the first wrong one stops the run with its path in the file.
"""

from __future__ import annotations

import re
from collections.abc import Collection
from decimal import Decimal
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from visionzero.platform.settings import REPO_ROOT, Settings

CLUSTER_CONFIG = REPO_ROOT / "configs" / "kubernetes.yaml"
ORCHESTRATOR_KEY = "orchestrator.kubernetes"
# Settings the step pods need to act as this machine would (where to render, push and apply, which
# DVC remote and S3 endpoint, which data sources), forwarded at run time as the run's environment.
# Never a secret (the run's environment shows in the dashboard): those reach the pods from the
# Secret `visionzero-pipelines` (configs/kubernetes.yaml) or the ZenML secret (stack.py).
FORWARDED_SETTINGS = (
    "vz_registry",
    "vz_k8s_namespace",
    "vz_k8s_host",
    "vz_k8s_gateway",
    "vz_dvc_remote",
    "vz_s3_endpoint_url",
    "vz_prometheus_url",
    "vz_pushgateway_url",
    "socrata_url",
    "noaa_url",
)
# The Kubernetes client model of each pod settings field that holds Kubernetes objects.
POD_FIELD_MODELS = {
    "resources": "V1ResourceRequirements",
    "affinity": "V1Affinity",
    "container_security_context": "V1SecurityContext",
    "volumes": "list[V1Volume]",
    "volume_mounts": "list[V1VolumeMount]",
    "env": "list[V1EnvVar]",
    "env_from": "list[V1EnvFromSource]",
    "tolerations": "list[V1Toleration]",
}
# apimachinery's resource.Quantity: a decimal number with an optional SI or binary suffix.
QUANTITY = re.compile(r"^(?P<number>[0-9]+(\.[0-9]*)?|\.[0-9]+)(?P<suffix>[munkMGTPE]|[KMGTPE]i)?$")
SUFFIXES = {
    "": Decimal(1),
    "n": Decimal("1e-9"),
    "u": Decimal("1e-6"),
    "m": Decimal("1e-3"),
    **{s: Decimal(1000) ** (i + 1) for i, s in enumerate(("k", "M", "G", "T", "P", "E"))},
    **{s: Decimal(1024) ** (i + 1) for i, s in enumerate(("Ki", "Mi", "Gi", "Ti", "Pi", "Ei"))},
}


class InvalidClusterConfig(ValueError):
    """configs/kubernetes.yaml does not fit ZenML's or Kubernetes' schema; names the key."""


def quantity(value: str | int | float) -> Decimal:
    """A Kubernetes quantity as a number ("500m" -> 0.5, "2Gi" -> 2147483648)."""
    found = QUANTITY.match(str(value))
    if not found:
        raise ValueError(f"{value!r} is not a Kubernetes quantity (e.g. 500m, 2, 512Mi, 4Gi)")
    return Decimal(found["number"]) * SUFFIXES[found["suffix"] or ""]


def _fail(path: Path, where: str, message: str) -> InvalidClusterConfig:
    return InvalidClusterConfig(f"{path}: {where}: {message}")


def _only(block: Any, allowed: Collection[str], path: Path, where: str) -> dict:
    if not isinstance(block, dict):
        raise _fail(path, where, f"expected a mapping, got {type(block).__name__}")
    unknown = sorted(set(block) - set(allowed))
    if unknown:
        raise _fail(path, f"{where}.{unknown[0]}", f"not one of {', '.join(sorted(allowed))}")
    return block


def _validated(cls: type[BaseModel], raw: Any, path: Path, where: str) -> BaseModel:
    """`cls` from `raw`, with no key `cls` lacks (ZenML's settings ignore or keep extras)."""
    _only(raw, cls.model_fields, path, where)
    try:
        return cls.model_validate(raw)
    except ValidationError as exc:
        first = exc.errors()[0]
        key = ".".join(str(part) for part in (where, *first["loc"]))
        raise _fail(path, key, first["msg"]) from exc


def _kubernetes_object(value: Any, model: str, path: Path, where: str) -> None:
    """Strict where ZenML only warns: every field must exist in the Kubernetes model."""
    from zenml.integrations.kubernetes.serialization_utils import deserialize_kubernetes_model

    inner = re.fullmatch(r"list\[(.*)\]", model)
    items = value if inner else [value]
    if inner and not isinstance(value, list):
        raise _fail(path, where, "expected a list")
    for index, item in enumerate(items):
        at = f"{where}[{index}]" if inner else where
        if not isinstance(item, dict):
            raise _fail(path, at, "expected a mapping")
        try:
            deserialize_kubernetes_model(item, inner.group(1) if inner else model)
        except (KeyError, ValueError, TypeError) as exc:
            raise _fail(path, at, str(exc).strip("\"'")) from exc


def _check_resources(resources: dict, path: Path, where: str) -> None:
    """Quantities parse, and no request exceeds its limit (the API server's own rule)."""
    for kind in ("requests", "limits"):
        for name, value in (resources.get(kind) or {}).items():
            try:
                quantity(value)
            except ValueError as exc:
                raise _fail(path, f"{where}.{kind}.{name}", str(exc)) from exc
    limits = resources.get("limits") or {}
    for name, value in (resources.get("requests") or {}).items():
        if name in limits and quantity(value) > quantity(limits[name]):
            raise _fail(
                path, f"{where}.requests.{name}", f"{value} is more than the limit {limits[name]}"
            )


def _check_pod(raw: Any, path: Path, where: str) -> None:
    from kubernetes.client import V1PodSpec
    from zenml.integrations.kubernetes.pod_settings import KubernetesPodSettings

    _only(raw, KubernetesPodSettings.model_fields, path, where)
    for field, model in POD_FIELD_MODELS.items():
        if raw.get(field):
            _kubernetes_object(raw[field], model, path, f"{where}.{field}")
    _check_resources(raw.get("resources") or {}, path, f"{where}.resources")
    # ZenML sets these as attributes of the client's V1PodSpec: snake_case names (a camelCase one
    # is skipped with a warning, e.g. `securityContext`: the pods would run as root), each value
    # a Kubernetes object of the attribute's type in camelCase.
    extra = raw.get("additional_pod_spec_args") or {}
    at = f"{where}.additional_pod_spec_args"
    for key, value in _only(extra, V1PodSpec.openapi_types, path, at).items():
        model = V1PodSpec.openapi_types[key]
        if value is not None and re.fullmatch(r"(list\[)?V1\w+\]?", model):
            _kubernetes_object(value, model, path, f"{at}.{key}")
    _validated(KubernetesPodSettings, raw, path, where)


def _check_settings(raw: Any, path: Path, where: str) -> None:
    from zenml.config import DockerSettings
    from zenml.integrations.kubernetes.flavors import KubernetesOrchestratorSettings

    classes: dict[str, type[BaseModel]] = {
        "docker": DockerSettings,
        ORCHESTRATOR_KEY: KubernetesOrchestratorSettings,
    }
    for key, value in _only(raw, classes, path, where).items():
        at = f"{where}.{key}"
        if key == ORCHESTRATOR_KEY:
            _only(value, KubernetesOrchestratorSettings.model_fields, path, at)
            for pod in ("pod_settings", "orchestrator_pod_settings"):
                if value.get(pod) is not None:
                    _check_pod(value[pod], path, f"{at}.{pod}")
        _validated(classes[key], value, path, at)


def load_cluster_config(path: Path, known_steps: Collection[str]) -> dict[str, Any]:
    """The file's `settings` and `steps`, every key checked (InvalidClusterConfig names the first
    wrong one); `known_steps` are the steps of the pipelines that read it."""
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise InvalidClusterConfig(f"{path}: not valid YAML ({exc})") from exc
    _only(raw, ("settings", "steps"), path, "top level")
    _check_settings(raw.get("settings") or {}, path, "settings")
    for step, block in (raw.get("steps") or {}).items():
        if step not in known_steps:
            raise _fail(
                path, f"steps.{step}", f"no pipeline has this step ({', '.join(known_steps)})"
            )
        _only(block, ("settings",), path, f"steps.{step}")
        _check_settings(block.get("settings") or {}, path, f"steps.{step}.settings")
    return {"settings": raw.get("settings") or {}, "steps": raw.get("steps") or {}}


def forwarded_environment(current: Settings) -> dict[str, str]:
    """The FORWARDED_SETTINGS this machine sets away from their defaults, as environment
    variables (a pod left without one uses the same default)."""
    return {
        name.upper(): str(getattr(current, name))
        for name in FORWARDED_SETTINGS
        if getattr(current, name) != Settings.model_fields[name].default
    }


def cluster_run_options(
    current: Settings,
    pipeline_steps: Collection[str],
    known_steps: Collection[str],
    path: Path = CLUSTER_CONFIG,
) -> dict[str, Any]:
    """`Pipeline.with_options` arguments of one pipeline on the cluster: the checked settings,
    its own steps' settings, the forwarded environment. With VZ_PIPELINE_IMAGE the pods run that
    image as it is (nothing is built here); without it ZenML builds the Dockerfile."""
    from zenml.config import DockerSettings

    config = load_cluster_config(path, known_steps)
    run_settings = dict(config["settings"])
    if current.vz_pipeline_image:
        run_settings["docker"] = DockerSettings(
            parent_image=current.vz_pipeline_image, skip_build=True
        )
    return {
        "settings": run_settings,
        "steps": {name: s for name, s in config["steps"].items() if name in pipeline_steps},
        "environment": forwarded_environment(current),
    }
