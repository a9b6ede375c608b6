"""Secrets stay out of the stores, the images, the Bento and git; the state is its user's alone;
the vendored front-end library is the one its README names."""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import os
import shutil
import signal
import sqlite3
import stat
import subprocess
import sys
from pathlib import Path
from string import Template

import pytest
import requests
import yaml

from tests.conftest import ROOT, free_port, wait_http

TOKEN = "vz-mlflow-token-4d1f9c0b7e"  # what must never reach a file under VZ_HOME
PASSWORD = "vz-mlflow-password-92ab"

# Run in a fresh VZ_HOME by a fresh interpreter (ZenML reads its config path once per process):
# register the stack as the settings say, then a tiny real use of each store the state holds.
STACK_SCRIPT = """
import json, sys
from visionzero.platform.settings import configure_environment
configure_environment()
from zenml.client import Client
from zenml.enums import StackComponentType
from visionzero.platform import stack

client = Client()
if sys.argv[1] == "registered-before":  # as ensure_stack registered it before the secret
    client.create_stack_component(
        name=stack.TRACKER_NAME, flavor="mlflow",
        component_type=StackComponentType.EXPERIMENT_TRACKER,
        configuration={"tracking_uri": "http://127.0.0.1:9", "tracking_token": sys.argv[2]},
    )
stack.ensure_stack()
stack.ensure_stack()  # idempotent: nothing to change the second time

import mlflow
from zenml.integrations.mlflow.experiment_trackers.mlflow_experiment_tracker import (
    MLFlowExperimentTracker,
)
mlflow.set_tracking_uri(MLFlowExperimentTracker._local_mlflow_backend())  # the local MLflow store
with mlflow.start_run():
    mlflow.log_param("size", 1)
from visionzero.platform import alerts
from visionzero.rollout import deployment_state
with deployment_state.locked_state() as state:
    state.canary_weight = 0
alerts.send(alerts.build_message("info", "modes", {"a": 1}))

tracker = client.get_stack_component(StackComponentType.EXPERIMENT_TRACKER, stack.TRACKER_NAME)
secret = client.get_secret(stack.LOCAL_SECRET_NAME).secret_values
print(json.dumps({"configuration": tracker.configuration, "secret": secret}))
"""


def tables_holding(database: Path, value: str) -> set[str]:
    """The tables of a SQLite file with `value` in a cell, as it is or base64-decoded (ZenML keeps
    component configurations and, without an encryption key, secret values as base64 JSON)."""
    found = set()
    with contextlib.closing(sqlite3.connect(database)) as db:
        tables = [row[0] for row in db.execute("SELECT name FROM sqlite_master WHERE type='table'")]
        for table in tables:
            for row in db.execute(f'SELECT * FROM "{table}"'):
                for cell in row:
                    if not isinstance(cell, str | bytes):
                        continue
                    raw = cell.encode() if isinstance(cell, str) else cell
                    try:
                        decoded = base64.b64decode(raw, validate=True)
                    except ValueError:
                        decoded = b""
                    if value.encode() in raw or value.encode() in decoded:
                        found.add(table)
    return found


def private_violations(home: Path) -> list[str]:
    """Every file or folder under home (and home) that its group or others may use."""
    found = []
    for path in [home, *home.rglob("*")]:
        mode = path.lstat().st_mode
        if stat.S_ISLNK(mode):
            continue
        if stat.S_IMODE(mode) & 0o077:
            found.append(f"{path.relative_to(home.parent)} {stat.S_IMODE(mode):o}")
    return found


@pytest.mark.slow
@pytest.mark.parametrize("history", ["fresh", "registered-before"])
def test_stack_keeps_mlflow_credentials_out_of_the_stores_and_the_state_private(
    history: str, tmp_path: Path
) -> None:
    """With MLFLOW_TRACKING_TOKEN set, ensure_stack() leaves the token in ZenML's secret alone:
    the tracker's configuration (base64 JSON in zenml.db, shown by `zenml stack describe`) holds
    a reference, and no file under VZ_HOME holds the token's bytes as they are. ZenML's local
    secrets store keeps the values base64-encoded in zenml.db's `secret` table: encoded, not
    encrypted, hence the modes. A tracker registered with the token as a value is rewritten.
    Then every file and folder under VZ_HOME, after real use of each store, is 0600 / 0700."""
    home = tmp_path / "home"
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("ZENML_CONFIG_PATH", "BENTOML_HOME") and not k.startswith("MLFLOW_")
    }
    env.update(
        VZ_HOME=str(home),
        MLFLOW_TRACKING_URI="http://127.0.0.1:9",
        MLFLOW_TRACKING_TOKEN=TOKEN,
    )
    script = tmp_path / "register.py"  # ZenML resolves sources from the main module's file
    script.write_text(STACK_SCRIPT)
    env["PYTHONPATH"] = str(ROOT)
    out = subprocess.run(
        [sys.executable, str(script), history, TOKEN],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    registered = json.loads(out.stdout.strip().splitlines()[-1])
    assert registered["configuration"]["tracking_token"] == (
        "{{visionzero_mlflow.mlflow_tracking_token}}"
    )
    assert registered["configuration"]["tracking_uri"] == "http://127.0.0.1:9"
    assert registered["secret"] == {"mlflow_tracking_token": TOKEN}
    holding = [
        str(path.relative_to(home))
        for path in home.rglob("*")
        if path.is_file() and TOKEN.encode() in path.read_bytes()
    ]
    assert holding == []
    (database,) = home.rglob("zenml.db")
    assert tables_holding(database, TOKEN) == {"secret"}  # not stack_component
    before = {"tracking_uri": "http://127.0.0.1:9", "tracking_token": TOKEN}
    assert base64.b64encode(json.dumps(before).encode()) not in database.read_bytes()  # freed pages
    assert (home / "zenml").is_dir() and (home / "deployment.json").is_file()
    assert (home / "outbox.jsonl").is_file()
    assert list(home.rglob("mlflow.db"))  # the local MLflow store, beside ZenML's
    assert private_violations(home) == []


def test_tracker_configuration_holds_references_only(monkeypatch: pytest.MonkeyPatch) -> None:
    """Username and password: both into the secret, references in the configuration; an unset
    credential maps to None (which removes a value an older registration held)."""
    from visionzero.platform import stack

    monkeypatch.setenv("MLFLOW_TRACKING_URI", "https://mlflow.example.org")
    monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", "ci")
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", PASSWORD)
    monkeypatch.delenv("MLFLOW_TRACKING_TOKEN", raising=False)
    configuration, values = stack._tracker_configuration()
    assert configuration == {
        "tracking_uri": "https://mlflow.example.org",
        "tracking_username": "{{visionzero_mlflow.mlflow_tracking_username}}",
        "tracking_password": "{{visionzero_mlflow.mlflow_tracking_password}}",
        "tracking_token": None,
    }
    assert values == {"mlflow_tracking_username": "ci", "mlflow_tracking_password": PASSWORD}
    assert stack._holds_plain_credential({"tracking_password": PASSWORD})
    assert not stack._holds_plain_credential(configuration)


# --- .env files -----------------------------------------------------------------------------------

ENV_FILES = (".env", "container/.env", "prod.env", ".env.local", "visionzero/serving/static/.env")


def test_env_files_are_ignored_by_git() -> None:
    out = subprocess.run(
        ["git", "check-ignore", "--no-index", *ENV_FILES],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    assert sorted(out.stdout.split()) == sorted(ENV_FILES)
    kept = subprocess.run(
        ["git", "check-ignore", "--no-index", "service.py", "container/docker-compose.yml"],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    assert kept.stdout == ""


def tree_with_env_files(root: Path) -> None:
    for name in (*ENV_FILES, "service.py", "visionzero/serving/static/map.js"):
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text("SECRET=1\n")


def test_env_files_stay_out_of_the_pipelines_image(tmp_path: Path) -> None:
    """The build context `COPY . .` sees, by the Docker SDK's own .dockerignore matcher."""
    from docker.utils.build import exclude_paths

    tree_with_env_files(tmp_path)
    lines = (ROOT / ".dockerignore").read_text().splitlines()
    patterns = [line.strip() for line in lines if line.strip() and not line.startswith("#")]
    context = exclude_paths(str(tmp_path), patterns)
    assert "service.py" in context
    assert not [path for path in context if Path(path).name.endswith(".env") or ".env." in path]


def test_env_files_stay_out_of_the_bento(tmp_path: Path) -> None:
    """What `bentoml build` copies into the Bento's src, by BentoML's own path spec with the
    bentofile's include / exclude and the project's .bentoignore."""
    from bentoml._internal.bento.build_config import BentoPathSpec

    tree_with_env_files(tmp_path)
    (tmp_path / ".bentoignore").write_text((ROOT / ".bentoignore").read_text())
    for bentofile in ("bentofile.yaml", "bentofile.arm64.yaml"):
        config = yaml.safe_load((ROOT / bentofile).read_text())
        spec = BentoPathSpec(config["include"], config.get("exclude", []), str(tmp_path))
        assert spec.includes("visionzero/serving/static/map.js")
        for name in ENV_FILES:
            assert not spec.includes(name), (bentofile, name)


# --- the vendored Leaflet -------------------------------------------------------------------------

VENDOR = ROOT / "visionzero" / "serving" / "static" / "vendor"


def test_vendored_leaflet_is_the_pinned_release() -> None:
    """Every file under vendor/leaflet-1.9.4 has the sha256 SHA256SUMS pins (taken from the npm
    tarball whose integrity the vendor README gives), and no file is unpinned."""
    pinned = {}
    for line in (VENDOR / "SHA256SUMS").read_text().splitlines():
        digest, name = line.split(maxsplit=1)
        pinned[name] = digest
    shipped = {
        str(path.relative_to(VENDOR)): hashlib.sha256(path.read_bytes()).hexdigest()
        for path in (VENDOR / "leaflet-1.9.4").rglob("*")
        if path.is_file()
    }
    assert shipped == pinned
    assert "leaflet-1.9.4/leaflet.js" in pinned
    integrity = (
        "sha512-nxS1ynzJOmOlHp+iL3FyWqK89GtNL8U8rvlMOsQdTTssxZw"
        "CXh8N2NB3GDQOL+YR3XnWyZAxwQixURb+FA74PA=="
    )
    assert integrity in (VENDOR / "README.md").read_text()


# --- the serving pods' read-only root filesystem --------------------------------------------------


def deployment_container() -> tuple[dict, dict]:
    """The serving Deployment's pod spec and its one container, placeholders filled."""
    text = (ROOT / "k8s" / "deployment.yaml").read_text()
    values = {"NAMESPACE": "vz", "STAGE": "production", "MODEL_VERSION": "1", "IMAGE": "i:1"}
    (deployment,) = yaml.safe_load_all(Template(text).substitute(values))
    pod = deployment["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    return pod, container


def snapshot(root: Path) -> dict[Path, tuple[int, int]]:
    return {p: (p.stat().st_mtime_ns, p.stat().st_size) for p in root.rglob("*") if p.is_file()}


@pytest.mark.slow
def test_a_served_bento_writes_only_to_the_deployments_empty_dirs(
    trained: dict, tmp_path: Path
) -> None:
    """The Bento laid out as in its image (BENTOML_HOME = HOME = /home/bentoml, the Bento with its
    model in /home/bentoml/bento, its working directory) under a real `bentoml serve` with the
    Deployment's environment, a prediction and a scrape: every file it creates or changes is under
    one of the Deployment's emptyDir mounts, so `readOnlyRootFilesystem: true` takes nothing it
    needs. (Without BENTOML_DO_NOT_TRACK it wrote BENTOML_HOME/client_id.)"""
    import bentoml

    pod, container = deployment_container()
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    empty_dirs = {v["name"] for v in pod["volumes"] if "emptyDir" in v}
    mounts = [m["mountPath"] for m in container["volumeMounts"] if m["name"] in empty_dirs]
    home, tmp = tmp_path / "home", tmp_path / "tmp"
    tmp.mkdir()
    writable = [
        tmp if mount == "/tmp" else home / Path(mount).relative_to("/home/bentoml")
        for mount in mounts
    ]
    release = trained.production
    shutil.copytree(Path(bentoml.get(release.bento_tag).path), home / "bento")
    model = bentoml.models.get(release.model_tag)  # the image holds it in the Bento
    shutil.copytree(model.path, home / "bento" / "models" / model.tag.name / model.tag.version)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("VZ_", "BENTOML_"))}
    env.update({e["name"]: e["value"] for e in container["env"]})
    env.update(HOME=str(home), BENTOML_HOME=str(home), TMPDIR=str(tmp))
    before = snapshot(tmp_path)
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    process = subprocess.Popen(
        [sys.executable, "-m", "bentoml", "serve", str(home / "bento"), "--port", str(port)],
        cwd=home / "bento",
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        wait_http(url + "/readyz", process=process)
        point = {"latitude": 40.7128, "longitude": -74.0060, "datetime": "2025-02-03T08:30"}
        answer = requests.post(url + "/predict", json={"items": [point]}, timeout=60)
        assert answer.status_code == 200, answer.text
        assert requests.get(url + "/metrics", timeout=10).status_code == 200
    finally:
        if process.poll() is None:  # an early exit must show its own error, not this one's
            os.killpg(process.pid, signal.SIGTERM)
        process.wait(timeout=60)
    after = snapshot(tmp_path)
    written = [p for p, seen in after.items() if before.get(p) != seen]
    assert written  # the workers' metric files at least
    outside = [str(p) for p in written if not any(p.is_relative_to(w) for w in writable)]
    assert outside == []


def test_state_is_private_whatever_the_umask_it_starts_with(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every entry point calls configure_environment: from then on what the process (and its
    children: model servers, nginx, Prometheus) creates is its user's alone. The outbox and the
    deployment state are 0600 even in a process that never called it."""
    from visionzero.platform import alerts
    from visionzero.platform.settings import configure_environment
    from visionzero.rollout import deployment_state

    monkeypatch.setenv("VZ_HOME", str(tmp_path / "home"))
    previous = os.umask(0o022)
    try:
        alerts.send(alerts.build_message("info", "modes", {"a": 1}))
        with deployment_state.locked_state() as state:
            state.canary_weight = 0
        for name in ("outbox.jsonl", "deployment.json"):
            assert stat.S_IMODE((tmp_path / "home" / name).stat().st_mode) == 0o600, name
        configure_environment()
        child = subprocess.run(["sh", "-c", "umask"], capture_output=True, text=True)
        assert child.stdout == "0077\n"  # and the children inherit it
    finally:
        os.umask(previous)
