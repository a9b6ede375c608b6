"""Beyond one machine, checked offline (there is no cluster, Docker engine or S3 here): the cluster
stack recipe and the script that registers it, the pods' run settings (configs/kubernetes.yaml)
through ZenML's own classes and pod builder and the Kubernetes schemas, RBAC, the pipelines image,
and a DVC remote that carries a data version from one store to a fresh one."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from string import Template

import kubernetes_validate
import pytest
import yaml

from tests.conftest import K8S_TEMPLATE_VALUES, ROOT
from tests.pod_security import restricted_violations
from visionzero.cli import runs, startup
from visionzero.platform import stack_recipe
from visionzero.platform.cluster import (
    CLUSTER_CONFIG,
    ORCHESTRATOR_KEY,
    InvalidClusterConfig,
    forwarded_environment,
    load_cluster_config,
    quantity,
)
from visionzero.platform.settings import Settings
from visionzero.rollout.kubernetes import PRUNE_ALLOWLIST

K8S_VERSION = "1.33.0"
HEAVY_STEPS = ("data_loader", "hp_tuner", "trainer", "evaluator", "refitter")
SECRETS = {
    "AWS_ACCESS_KEY_ID": "AKIA-TEST-KEY-ID",
    "AWS_SECRET_ACCESS_KEY": "s3-secret-never-printed",
    "MLFLOW_TRACKING_TOKEN": "mlflow-token-never-printed",
}
CONFIGURED = {  # a configured environment: MinIO in the cluster, a registry, the servers
    "vz_orchestrator": "kubernetes",
    "vz_artifact_store_uri": "s3://zenml/visionzero",
    "vz_s3_endpoint_url": "http://minio.minio:9000",
    "vz_registry": "https://registry.example.org/visionzero",
    "vz_kubernetes_context": "prod-cluster",
    "vz_dvc_remote": "s3://dvc/visionzero",
    "vz_pipeline_image": "registry.example.org/visionzero/pipelines:1",
    "zenml_store_url": "https://zenml.example.org",
    "mlflow_tracking_uri": "https://mlflow.example.org",
}


@pytest.fixture(autouse=True)
def no_cluster_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """Settings also read the environment: an earlier pipeline run in this session leaves
    MLFLOW_TRACKING_URI there (ZenML's MLflow tracker sets it), which a test of a missing server
    must not see."""
    for name in [*CONFIGURED, *SECRETS, "mlflow_tracking_username", "mlflow_tracking_password"]:
        monkeypatch.delenv(name.upper(), raising=False)


def configured(**changes: object) -> Settings:
    """CONFIGURED with the secrets, as Settings (never from os.environ: ZENML_STORE_URL there
    would make ZenML in this process connect to it)."""
    values = {**CONFIGURED, **{k.lower(): v for k, v in SECRETS.items()}, **changes}
    return Settings(**{k: v for k, v in values.items() if v is not None})


def manifest(name: str) -> list[dict]:
    text = Template((ROOT / "k8s" / name).read_text()).substitute(K8S_TEMPLATE_VALUES)
    return [doc for doc in yaml.safe_load_all(text) if doc]


def cronjob_pods() -> list[dict]:
    return [
        manifest(name)[0]["spec"]["jobTemplate"]["spec"]["template"]["spec"]
        for name in ("train-cronjob.yaml", "monitor-cronjob.yaml")
    ]


# --- the local default ----------------------------------------------------------------------------


def test_nothing_configured_keeps_the_local_default() -> None:
    """No VZ_ORCHESTRATOR: the pipelines run as they are, nothing is forwarded, DVC keeps its
    configured remote."""
    from visionzero.data.versioning import dvc_remote_config

    current = Settings()
    assert current.vz_orchestrator == "local"
    pipeline = object()
    assert runs.on_configured_orchestrator(pipeline) is pipeline
    assert forwarded_environment(current) == {}
    assert dvc_remote_config() is None


# --- the stack recipe -----------------------------------------------------------------------------


def test_recipe_of_a_configured_environment() -> None:
    recipe = stack_recipe.cluster_recipe(configured())
    components = {c.type: c for c in recipe.components}
    orchestrator = components["orchestrator"]
    assert (orchestrator.flavor, orchestrator.name) == (
        "kubernetes",
        stack_recipe.CLUSTER_STACK_NAME,
    )
    assert orchestrator.configuration == {
        "kubernetes_namespace": "visionzero",
        "incluster": True,
        "pass_zenml_token_as_secret": True,
        "service_account_name": stack_recipe.ORCHESTRATOR_SERVICE_ACCOUNT,
        "step_pod_service_account_name": stack_recipe.PIPELINES_SERVICE_ACCOUNT,
        "kubernetes_context": "prod-cluster",
    }
    store = components["artifact_store"]
    assert store.flavor == "s3"
    assert store.configuration == {
        "path": "s3://zenml/visionzero",
        "client_kwargs": {"endpoint_url": "http://minio.minio:9000"},
        "key": "{{visionzero_k8s.aws_access_key_id}}",
        "secret": "{{visionzero_k8s.aws_secret_access_key}}",
    }
    assert components["container_registry"].configuration == {
        "uri": "registry.example.org/visionzero"
    }
    tracker = components["experiment_tracker"]
    from steps.model import trainer

    assert tracker.name == trainer.configuration.experiment_tracker  # the one the steps name
    assert tracker.configuration == {
        "tracking_uri": "https://mlflow.example.org",
        "tracking_token": "{{visionzero_k8s.mlflow_tracking_token}}",
    }
    assert recipe.secret_keys == (
        "aws_access_key_id",
        "aws_secret_access_key",
        "mlflow_tracking_token",
    )
    exported = json.dumps(stack_recipe.stack_export(recipe))
    assert not [value for value in SECRETS.values() if value in exported]
    # in a CronJob pod: no context, no endpoint, credentials from the pod's identity
    bare = stack_recipe.cluster_recipe(
        configured(
            vz_kubernetes_context=None,
            vz_s3_endpoint_url=None,
            aws_access_key_id=None,
            aws_secret_access_key=None,
        )
    )
    bare_components = {c.type: c.configuration for c in bare.components}
    assert "kubernetes_context" not in bare_components["orchestrator"]
    assert bare_components["artifact_store"] == {"path": "s3://zenml/visionzero"}


@pytest.mark.parametrize(
    ("changes", "named"),
    [
        (
            {
                "vz_artifact_store_uri": None,
                "zenml_store_url": None,
                "mlflow_tracking_uri": None,
                "mlflow_tracking_token": None,
            },
            ["VZ_ARTIFACT_STORE_URI", "ZENML_STORE_URL", "MLFLOW_TRACKING_URI", "TOKEN"],
        ),
        ({"vz_artifact_store_uri": "gs://zenml"}, ["VZ_ARTIFACT_STORE_URI", "gs://zenml"]),
        ({"vz_artifact_store_uri": "s3://"}, ["VZ_ARTIFACT_STORE_URI"]),
        (  # two ways to log in: ZenML's tracker refuses that
            {"mlflow_tracking_username": "u", "mlflow_tracking_password": "p"},
            ["exactly one of MLFLOW_TRACKING_TOKEN"],
        ),
    ],
)
def test_recipe_names_every_missing_or_wrong_variable(changes: dict, named: list[str]) -> None:
    with pytest.raises(stack_recipe.StackConfigError) as failure:
        stack_recipe.cluster_recipe(configured(**changes))
    for name in named:
        assert name in str(failure.value)


def test_kubernetes_without_its_servers_stops_in_one_line(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """What every command that needs the stack does first (before a pipeline, a report)."""
    import click

    monkeypatch.setenv("VZ_ORCHESTRATOR", "kubernetes")
    with pytest.raises(click.ClickException) as failure:
        startup.stack_in_place()
    message = failure.value.format_message()
    assert "\n" not in message
    for name in ("VZ_ARTIFACT_STORE_URI", "ZENML_STORE_URL", "MLFLOW_TRACKING_URI"):
        assert name in message


def test_stack_print_shows_secrets_only_as_variables() -> None:
    """`run.py stack --print` for a configured environment: the registration script, whose YAML
    is the recipe's, and no secret value anywhere in it."""
    env = {
        **os.environ,
        **{k.upper(): str(v) for k, v in CONFIGURED.items()},
        **SECRETS,
    }
    result = subprocess.run(
        [sys.executable, "run.py", "stack", "--print"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    script = result.stdout
    for value in SECRETS.values():
        assert value not in script + result.stderr
    assert (
        'zenml secret create visionzero_k8s --aws_access_key_id="$AWS_ACCESS_KEY_ID" '
        '--aws_secret_access_key="$AWS_SECRET_ACCESS_KEY" '
        '--mlflow_tracking_token="$MLFLOW_TRACKING_TOKEN"'
    ) in script
    exported = re.search(r"<<'STACK'\n(.*)\nSTACK\n", script, re.S)
    assert yaml.safe_load(exported.group(1)) == stack_recipe.stack_export(
        stack_recipe.cluster_recipe(configured())
    )
    assert script.rstrip().endswith("zenml stack set visionzero_k8s")
    missing = subprocess.run(
        [sys.executable, "run.py", "stack", "--print"],
        cwd=ROOT,
        env={k: v for k, v in env.items() if k != "VZ_ARTIFACT_STORE_URI"},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert missing.returncode == 1 and "VZ_ARTIFACT_STORE_URI" in missing.stderr


# --- the pods' run settings -----------------------------------------------------------------------


def pod_settings_of(config: dict, step: str | None) -> dict:
    """The pod settings a step runs with: its own, else the pipeline's (None: the pipeline's)."""
    own = (config["steps"].get(step) or {}).get("settings", {}).get(ORCHESTRATOR_KEY, {})
    return own.get("pod_settings") or config["settings"][ORCHESTRATOR_KEY]["pod_settings"]


@pytest.fixture(scope="module")
def cluster_config() -> dict:
    return load_cluster_config(CLUSTER_CONFIG, runs.step_names())


def test_heavy_steps_get_their_own_resources(cluster_config: dict) -> None:
    """Each heavy step asks for more than the light default, within its limit; the rest of its pod
    (state, secrets, user) is the default pod's, so no step loses the shared state."""
    default = pod_settings_of(cluster_config, None)
    for step in HEAVY_STEPS:
        pod = pod_settings_of(cluster_config, step)
        requests, limits = pod["resources"]["requests"], pod["resources"]["limits"]
        for resource in ("cpu", "memory"):
            assert quantity(requests[resource]) > quantity(
                default["resources"]["requests"][resource]
            )
            assert quantity(requests[resource]) <= quantity(limits[resource])
        assert {k: v for k, v in pod.items() if k != "resources"} == {
            k: v for k, v in default.items() if k != "resources"
        }
    # the loader holds the whole history: the one-machine target is a 6 GiB peak
    data_loader = pod_settings_of(cluster_config, "data_loader")["resources"]
    assert quantity(data_loader["limits"]["memory"]) >= quantity("6Gi")


def zenml_pod(pod_settings: dict, service_account: str) -> dict:
    """The pod ZenML 0.98's Kubernetes orchestrator builds from these settings (its own
    default-request rule and manifest builder), as the JSON the API server receives."""
    from kubernetes.client import ApiClient
    from zenml.integrations.kubernetes import kube_utils
    from zenml.integrations.kubernetes.manifest_utils import build_pod_manifest
    from zenml.integrations.kubernetes.pod_settings import KubernetesPodSettings

    settings = kube_utils.apply_default_resource_requests(
        memory="400Mi", pod_settings=KubernetesPodSettings.model_validate(pod_settings)
    )
    pod = build_pod_manifest(
        pod_name="step",
        image_name="registry.example.org/visionzero/pipelines:1",
        command=["python", "-m", "zenml.entrypoints.entrypoint"],
        args=["--step_name", "data_loader"],
        privileged=False,
        pod_settings=settings,
        service_account_name=service_account,
        env={"ZENML_STORE_URL": "https://zenml.example.org"},
        labels={"pipeline": "training_pipeline"},
    )
    return without_nulls(ApiClient().sanitize_for_serialization(pod))


def without_nulls(value: object) -> object:
    """What the API server reads: a null field is an absent one. ZenML merges the container's
    own security context into `container_security_context` as a dict of every field, unset ones
    null (and snake_case: unknown names, which the server drops)."""
    if isinstance(value, dict):
        return {k: without_nulls(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [without_nulls(v) for v in value]
    return value


def test_pods_as_zenml_builds_them_validate_and_use_what_exists(cluster_config: dict) -> None:
    """Every step pod and the orchestrator pod pass the Kubernetes schema (strict); they run as
    the image's user, mount the PVC of k8s/state-pvc.yaml and the CronJobs' Secret."""
    (pvc,) = manifest("state-pvc.yaml")
    kubernetes_validate.validate(pvc, K8S_VERSION, strict=True)
    assert pvc["spec"]["accessModes"] == ["ReadWriteMany"]  # step pods on several nodes at once
    cron_secrets = {
        volume["secret"]["secretName"]
        for pod in cronjob_pods()
        for volume in pod["volumes"]
        if "secret" in volume
    }
    image_user = int(re.search(r"^USER (\d+):", dockerfile(), re.M).group(1))
    orchestrator = cluster_config["settings"][ORCHESTRATOR_KEY]["orchestrator_pod_settings"]
    pods = [zenml_pod(orchestrator, stack_recipe.ORCHESTRATOR_SERVICE_ACCOUNT)]
    pods += [
        zenml_pod(pod_settings_of(cluster_config, step), stack_recipe.PIPELINES_SERVICE_ACCOUNT)
        for step in sorted(runs.step_names())
    ]
    for pod in pods:
        kubernetes_validate.validate(pod, K8S_VERSION, strict=True)
        spec = pod["spec"]
        assert spec["securityContext"]["runAsUser"] == image_user
        assert spec["securityContext"]["runAsNonRoot"] is True
        (container,) = spec["containers"]
        assert container["securityContext"]["allowPrivilegeEscalation"] is False
        requests = container["resources"]["requests"]
        assert quantity(requests["memory"]) >= quantity("400Mi") and "cpu" in requests
        assert restricted_violations(spec) == []  # admitted in the `restricted` namespace
    for pod in pods[1:]:
        volumes = {v["name"]: v for v in pod["spec"]["volumes"]}
        assert volumes["state"]["persistentVolumeClaim"]["claimName"] == pvc["metadata"]["name"]
        assert volumes["kubeconfig"]["secret"]["secretName"] in cron_secrets
        env = {e["name"]: e for e in pod["spec"]["containers"][0]["env"]}
        assert env["VZ_HOME"]["value"] == "/state"
        for secret in ("AWS_SECRET_ACCESS_KEY", "DISCORD_WEBHOOK_URL", "SOCRATA_APP_TOKEN"):
            assert env[secret]["valueFrom"]["secretKeyRef"]["name"] in cron_secrets


def settings_edit(path: list, value: object) -> Callable[[dict], None]:
    """An edit of the parsed file: the key at `path` set to `value`."""

    def edit(raw: dict) -> None:
        target = raw
        for key in path[:-1]:
            target = target[key]
        target[path[-1]] = value

    return edit


def renamed(path: list, new_name: str) -> Callable[[dict], None]:
    """An edit of the parsed file: the key at `path` renamed (a typo)."""

    def edit(raw: dict) -> None:
        target = raw
        for key in path[:-1]:
            target = target[key]
        target[new_name] = target.pop(path[-1])

    return edit


ORCH = ["settings", ORCHESTRATOR_KEY]
POD = [*ORCH, "pod_settings"]
LOADER_POD = ["steps", "data_loader", "settings", ORCHESTRATOR_KEY, "pod_settings"]


@pytest.mark.parametrize(
    ("edit", "where"),
    [
        (settings_edit(["setings"], {}), "top level.setings"),
        (renamed(["settings", "docker", "dockerfile"], "dockerfle"), "settings.docker.dockerfle"),
        (renamed([*ORCH, "pod_settings"], "pod_setings"), f"{ORCHESTRATOR_KEY}.pod_setings"),
        (settings_edit([*ORCH, "max_parallelism"], "two"), f"{ORCHESTRATOR_KEY}.max_parallelism"),
        (renamed([*POD, "resources"], "resource"), "pod_settings.resource"),
        (
            settings_edit([*POD, "env", 3], {"name": "X", "valueFom": {}}),
            "pod_settings.env[3]",
        ),
        (
            settings_edit([*POD, "volume_mounts", 0], {"name": "state", "mount_path": "/state"}),
            "pod_settings.volume_mounts[0]",
        ),
        (  # ZenML skips a camelCase pod spec argument with a warning: the pods would run as root
            renamed([*POD, "additional_pod_spec_args", "security_context"], "securityContext"),
            "additional_pod_spec_args.securityContext",
        ),
        (
            settings_edit([*POD, "additional_pod_spec_args", "security_context"], {"runAsUsr": 1}),
            "additional_pod_spec_args.security_context: Got value for attribute runAsUsr",
        ),
        (
            settings_edit([*LOADER_POD, "resources", "requests", "memory"], "6GB"),
            "data_loader.settings.orchestrator.kubernetes.pod_settings.resources.requests.memory",
        ),
        (
            settings_edit([*LOADER_POD, "resources", "requests", "cpu"], "8"),
            "resources.requests.cpu: 8 is more than the limit 4",
        ),
        (renamed(["steps", "data_loader"], "data_loadr"), "steps.data_loadr: no pipeline"),
    ],
)
def test_a_mistake_stops_with_its_path(
    edit: Callable[[dict], None], where: str, tmp_path: Path
) -> None:
    """What ZenML would drop, keep or only warn about stops the run, naming the key."""
    raw = yaml.safe_load(CLUSTER_CONFIG.read_text())
    edit(raw)
    path = tmp_path / "kubernetes.yaml"
    path.write_text(yaml.safe_dump(raw))
    with pytest.raises(InvalidClusterConfig) as failure:
        load_cluster_config(path, runs.step_names())
    assert where in str(failure.value) and str(path) in str(failure.value)


def test_forwarded_settings_are_the_ones_set_and_never_secrets() -> None:
    forwarded = forwarded_environment(configured())
    assert forwarded == {
        "VZ_REGISTRY": "https://registry.example.org/visionzero",
        "VZ_DVC_REMOTE": "s3://dvc/visionzero",
        "VZ_S3_ENDPOINT_URL": "http://minio.minio:9000",
    }
    secret_fields = {
        name
        for name, field in Settings.model_fields.items()
        if "SecretStr" in str(field.annotation)
    }
    assert {name.lower() for name in forwarded}.isdisjoint(secret_fields)


# --- RBAC -----------------------------------------------------------------------------------------


def plural(kind: str) -> str:
    lower = kind.lower()
    if lower.endswith("y"):
        return lower[:-1] + "ies"
    return lower + ("es" if lower.endswith("s") else "s")


def allowed(role: dict, group: str, resource: str) -> set[str]:
    return {
        verb
        for rule in role["rules"]
        if group in rule["apiGroups"] and resource in rule["resources"]
        for verb in rule["verbs"]
    }


@pytest.fixture(scope="module")
def rbac() -> list[dict]:
    return manifest("rbac.yaml")


def test_rbac_validates_and_binds_the_accounts_the_stack_and_cronjobs_use(rbac: list[dict]) -> None:
    for doc in rbac:
        kubernetes_validate.validate(doc, K8S_VERSION, strict=True)
    accounts = {d["metadata"]["name"] for d in rbac if d["kind"] == "ServiceAccount"}
    assert accounts == {
        stack_recipe.ORCHESTRATOR_SERVICE_ACCOUNT,
        stack_recipe.PIPELINES_SERVICE_ACCOUNT,
    }
    assert {pod["serviceAccountName"] for pod in cronjob_pods()} == {
        stack_recipe.PIPELINES_SERVICE_ACCOUNT
    }
    roles = {(d["kind"], d["metadata"]["name"]) for d in rbac if d["kind"].endswith("Role")}
    bound = set()
    for binding in (d for d in rbac if d["kind"].endswith("RoleBinding")):
        assert (binding["roleRef"]["kind"], binding["roleRef"]["name"]) in roles
        bound |= {s["name"] for s in binding["subjects"] if s["kind"] == "ServiceAccount"}
    assert bound == accounts
    # applied once per cluster: a render's `kubectl apply --prune` must never delete them
    once = rbac + manifest("state-pvc.yaml") + manifest("train-cronjob.yaml")
    kinds = {
        f"{d['apiVersion'] if '/' in d['apiVersion'] else 'core/' + d['apiVersion']}/{d['kind']}"
        for d in once
    }
    assert kinds.isdisjoint(PRUNE_ALLOWLIST)


def test_pipelines_account_can_apply_and_prune_every_rendered_kind(rbac: list[dict]) -> None:
    (role,) = [
        d for d in rbac if d["kind"] == "Role" and d["metadata"]["name"] == "visionzero-pipelines"
    ]
    for kind in PRUNE_ALLOWLIST:  # group/version/Kind, "core" for the core group
        api, name = kind.rsplit("/", 1)
        group = api.rsplit("/", 1)[0].replace("core", "")
        verbs = allowed(role, group, plural(name))
        assert {"get", "list", "create", "patch", "delete"} <= verbs, kind
    # nothing cluster-scoped, nothing on its Namespace (applied once, never rendered)
    assert {d["kind"] for d in rbac} == {"ServiceAccount", "Role", "RoleBinding"}
    assert not allowed(role, "", "namespaces")
    # as ZenML's client in a CronJob pod: the orchestrator Job, its token Secret, its pod's log
    for (group, resource), verbs in CLIENT_CALLS.items():
        assert allowed(role, group, resource) == verbs, (group, resource)


# The API calls ZenML 0.98's client makes with the Kubernetes orchestrator (its orchestrator module
# and kube_utils: create_job, wait_for_job_to_finish with its pods' logs, list_jobs and
# delete_namespaced_job to stop a run, create_or_update_secret (create, patch on a conflict) and
# delete_secret for the API token Secret). No get, list or watch of Secrets: nothing reads one
# through the API.
CLIENT_CALLS = {
    ("batch", "jobs"): {"create", "get", "list", "delete"},
    ("", "pods"): {"get", "list"},
    ("", "pods/log"): {"get"},
    ("", "secrets"): {"create", "patch", "delete"},
}


# The API calls ZenML 0.98's orchestrator pod makes (kubernetes_orchestrator_entrypoint.py and the
# kube_utils functions it calls: create_job, get_job, list_jobs, update_job, check_job_status,
# get_pod, delete_secret, the step pods' logs).
ORCHESTRATOR_CALLS = {
    ("batch", "jobs"): {"create", "get", "list", "patch", "delete"},
    ("", "pods"): {"get", "list"},
    ("", "pods/log"): {"get"},
    ("", "secrets"): {"delete"},
}


def test_orchestrator_account_covers_zenmls_calls(rbac: list[dict]) -> None:
    (role,) = [
        d for d in rbac if d["kind"] == "Role" and d["metadata"]["name"] == "zenml-orchestrator"
    ]
    for (group, resource), verbs in ORCHESTRATOR_CALLS.items():
        assert allowed(role, group, resource) == verbs, (group, resource)  # least privilege
    assert sum(len(rule["resources"]) for rule in role["rules"]) == len(ORCHESTRATOR_CALLS)


# --- the pipelines image --------------------------------------------------------------------------


def dockerfile() -> str:
    return (ROOT / "container" / "pipelines.Dockerfile").read_text()


def test_pipelines_image_is_the_locked_project_as_zenml_runs_it(cluster_config: dict) -> None:
    from zenml.utils.pipeline_docker_image_builder import DOCKER_IMAGE_WORKDIR

    text = dockerfile()
    docker = cluster_config["settings"]["docker"]
    assert (ROOT / docker["dockerfile"]).resolve() == ROOT / "container" / "pipelines.Dockerfile"
    assert (ROOT / docker["build_context_root"]).resolve() == ROOT
    assert re.search(r"^FROM python:3\.11\.\d+-", text, re.M)  # pyproject: requires-python 3.11
    assert re.search(rf"^WORKDIR {DOCKER_IMAGE_WORKDIR}$", text, re.M)
    lock_uv = re.search(r"^uv==(\S+)", (ROOT / "requirements.lock").read_text(), re.M).group(1)
    assert f"uv=={lock_uv}" in text and "uv pip sync" in text and "requirements.lock" in text
    assert text.index("COPY requirements.lock") < text.index("COPY . .")  # deps layer first
    user = int(re.search(r"^USER (\d+):(\d+)$", text, re.M).group(1))
    assert {pod["securityContext"]["runAsUser"] for pod in cronjob_pods()} == {user}
    ignored = set((ROOT / ".dockerignore").read_text().split())
    assert {".vz", ".venv", "data", ".git"} <= ignored
    assert "kubectl" in text  # the deployer's apply runs in a step pod


# --- the DVC remote -------------------------------------------------------------------------------


def default_remote_url(root: Path) -> str:
    """The URL DVC pushes to and pulls from in this repository, as its configuration resolves."""
    from dvc.repo import Repo

    with Repo(str(root)) as repo:
        return repo.config["remote"][repo.config["core"]["remote"]]["url"]


def use_store(monkeypatch: pytest.MonkeyPatch, home: Path) -> Path:
    monkeypatch.setenv("VZ_HOME", str(home))
    monkeypatch.setenv("VZ_DATA_DIR", str(home / "workspace" / "data"))
    return home / "workspace" / "data"


def test_a_data_version_pushed_by_one_store_is_pulled_into_a_fresh_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """VZ_DVC_REMOTE alone: store A pushes a data version to a real DVC remote on disk, store B
    (nothing but the setting) gets exactly those bytes back; a store without the setting cannot."""
    from visionzero.data import versioning

    remote = tmp_path / "remote"
    monkeypatch.setenv("VZ_DVC_REMOTE", str(remote))
    data = use_store(monkeypatch, tmp_path / "a")
    (data / "crashes").mkdir(parents=True)
    (data / "crashes" / "2024-01.csv").write_text("collision_id,crash_date\n1,2024-01-02\n")
    (data / "weather.csv").write_text("date,prcp\n2024-01-02,0.3\n")
    version = versioning.version_data_dir(data)
    assert version.endswith(".dir") and any(remote.rglob("*"))
    assert default_remote_url(data.parent) == str(remote)
    committed = (data.parent / ".dvc" / "config").read_text()
    assert str(remote) not in committed  # the setting lives in the untracked local config

    use_store(monkeypatch, tmp_path / "b")
    folder = versioning.checkout_version(version)
    assert (folder / "crashes" / "2024-01.csv").read_bytes() == (
        data / "crashes" / "2024-01.csv"
    ).read_bytes()
    assert (folder / "weather.csv").read_bytes() == (data / "weather.csv").read_bytes()
    assert versioning.dataset_hash(folder) == version

    monkeypatch.delenv("VZ_DVC_REMOTE")
    use_store(monkeypatch, tmp_path / "c")
    with pytest.raises(versioning.DataVersionMismatch):
        versioning.checkout_version(version)
    # unset again, store A falls back to its own folder in VZ_HOME
    use_store(monkeypatch, tmp_path / "a")
    versioning.version_data_dir(data)
    assert default_remote_url(data.parent) == str(tmp_path / "a" / "dvc-remote")


# --- ZenML itself, in a store of its own ----------------------------------------------------------


def isolated_zenml(tmp_path: Path) -> dict[str, str]:
    """An environment whose ZenML store and project state live in tmp_path alone."""
    home = tmp_path / "home"
    return {
        **os.environ,
        "VZ_HOME": str(home),
        "VZ_DATA_DIR": str(tmp_path / "workspace" / "data"),
        "ZENML_CONFIG_PATH": str(home / "zenml"),
        "BENTOML_HOME": str(home / "bentoml"),
        **SECRETS,
    }


@pytest.mark.slow
def test_zenml_compiles_both_pipelines_on_the_registered_cluster_stack(tmp_path: Path) -> None:
    """Registered offline (twice, idempotently), the stack is active; ZenML's compiler gives each
    step of both pipelines the pod of configs/kubernetes.yaml, the forwarded settings and the
    prebuilt image, as the orchestrator would read them."""
    out = tmp_path / "compiled.json"
    values = {**CONFIGURED, "mlflow_tracking_token": SECRETS["MLFLOW_TRACKING_TOKEN"]}
    result = subprocess.run(
        [sys.executable, "-m", "tests.cluster_stack", json.dumps(values), str(out)],
        cwd=ROOT,
        env=isolated_zenml(tmp_path),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    compiled = json.loads(out.read_text())
    recipe = stack_recipe.cluster_recipe(configured())
    assert compiled["active_stack"] == recipe.name
    assert compiled["registered"] == {c.name: c.configuration for c in recipe.components}
    assert compiled["second_registration_unchanged"] is True
    assert compiled["context_after_in_cluster"] == CONFIGURED["vz_kubernetes_context"]
    assert compiled["path_after_change"] == "s3://zenml/elsewhere"
    assert compiled["secret_keys"] == sorted(recipe.secret_keys)
    config = load_cluster_config(CLUSTER_CONFIG, runs.step_names())
    for pipeline in ("training", "monitoring"):
        assert compiled[pipeline]["docker"] == {
            "parent_image": CONFIGURED["vz_pipeline_image"],
            "skip_build": True,
        }
        for step, resolved in compiled[pipeline]["steps"].items():
            wanted = pod_settings_of(config, step)
            assert resolved["pod_settings"]["resources"] == wanted["resources"], step
            assert resolved["pod_settings"]["volumes"] == wanted["volumes"], step
            assert (
                resolved["step_pod_service_account_name"] == stack_recipe.PIPELINES_SERVICE_ACCOUNT
            )
            assert resolved["environment"] == forwarded_environment(configured())
    assert set(compiled["training"]["steps"]) >= set(HEAVY_STEPS)


@pytest.mark.slow
def test_printed_script_registers_the_same_stack(tmp_path: Path) -> None:
    """The script of `run.py stack --print`, run by bash with the zenml CLI against an empty
    store, registers what register_stack does, the secret's values from the environment."""
    env = isolated_zenml(tmp_path)
    env["PATH"] = f"{Path(sys.executable).parent}:{env['PATH']}"
    recipe = stack_recipe.cluster_recipe(configured())
    workdir = tmp_path / "work"
    workdir.mkdir()
    result = subprocess.run(
        ["bash", "-c", stack_recipe.register_script(recipe)],
        cwd=workdir,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    check = (
        "import json\n"
        "from zenml.client import Client\n"
        "from zenml.enums import StackComponentType as T\n"
        "c = Client()\n"
        f"names = {json.dumps({x.name: x.type for x in recipe.components})}\n"
        "print(json.dumps({'active': c.active_stack_model.name,\n"
        "  'secret': c.get_secret('visionzero_k8s').secret_values,\n"
        "  'components': {n: c.get_stack_component(T(t), n).configuration\n"
        "                 for n, t in names.items()}}))\n"
    )
    found = subprocess.run(
        [sys.executable, "-c", check], env=env, capture_output=True, text=True, timeout=120
    )
    assert found.returncode == 0, found.stderr[-2000:]
    registered = json.loads(found.stdout.strip().splitlines()[-1])
    assert registered["active"] == recipe.name
    assert registered["components"] == {c.name: c.configuration for c in recipe.components}
    assert registered["secret"] == {key: SECRETS[key.upper()] for key in recipe.secret_keys}
