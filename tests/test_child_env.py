"""What a child process inherits: an allowlisted environment with the stores as absolute paths,
never a secret (a model server's environ is readable by any code that runs in it). The served
case, with `run.py serve --monitor` from a fresh clone, is in tests/test_defaults.py."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import ROOT
from visionzero.monitoring.schedule import crontab_lines
from visionzero.platform.processes import start_child
from visionzero.platform.settings import child_environment

# What a user's shell may hold while serving; none of it may reach a child.
SECRETS = {
    "DISCORD_WEBHOOK_URL": "https://discord.example/api/webhooks/1/secret",
    "SOCRATA_APP_TOKEN": "socrata-token",
    "AWS_ACCESS_KEY_ID": "AKIAEXAMPLE",
    "AWS_SECRET_ACCESS_KEY": "aws-secret",
    "MLFLOW_TRACKING_TOKEN": "mlflow-token",
    "MLFLOW_TRACKING_PASSWORD": "mlflow-password",
    "MLFLOW_TRACKING_USERNAME": "mlflow-user",
    "ZENML_STORE_API_KEY": "zenml-key",
    "GITHUB_TOKEN": "gh-token",
    "BENTOML_API_TOKEN": "bento-cloud-token",
    "VZ_SOME_SECRET": "x",
    "DB_PASSWORD": "pw",
}


def test_the_allowlist_keeps_what_a_model_server_needs_and_no_secret() -> None:
    needed = {
        "PATH": "/usr/bin",
        "HOME": "/home/u",
        "LANG": "C.UTF-8",
        "LC_ALL": "C.UTF-8",
        "TZ": "UTC",
        "TMPDIR": "/tmp",
        "VZ_HOME": "/state",
        "VZ_WORKERS": "2",
        "BENTOML_HOME": "/state/bentoml",
        "OTEL_SDK_DISABLED": "true",
        "KERAS_BACKEND": "jax",
        "PYTHONHASHSEED": "0",
    }
    unneeded = {"ZENML_CONFIG_PATH": "/z", "SSH_AUTH_SOCK": "/s", "KUBECONFIG": "/k"}
    child = child_environment({"VZ_STAGE": "staging"}, source={**needed, **unneeded, **SECRETS})
    assert child == {**needed, "VZ_STAGE": "staging"}


def test_a_started_child_sees_the_allowlist_only(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """start_child starts every backend, nginx and Prometheus of `serve`."""
    for name, value in SECRETS.items():
        monkeypatch.setenv(name, value)
    log = tmp_path / "child.log"
    probe = "import json, os; print(json.dumps(dict(os.environ)))"
    child = start_child("probe", [sys.executable, "-c", probe], log, tag="t/1", VZ_STAGE="staging")
    assert child.process.wait(timeout=60) == 0
    seen = json.loads(log.read_text())
    assert not set(SECRETS) & set(seen), sorted(set(SECRETS) & set(seen))
    assert not {value for value in SECRETS.values()} & set(seen.values())
    assert seen["VZ_STAGE"] == "staging" and seen["VZ_SERVE_BACKEND"] == "t/1"
    assert seen["VZ_HOME"] == os.environ["VZ_HOME"] and Path(seen["VZ_HOME"]).is_absolute()
    assert seen["PATH"] == os.environ["PATH"]


def test_a_relative_vz_home_is_exported_absolute(tmp_path: Path) -> None:
    """Resolved in the process that reads the configuration, against its current folder: a
    child that runs elsewhere (a model server runs in its Bento) finds the same stores."""
    probe = (
        "import os\n"
        "from visionzero.platform.settings import configure_environment\n"
        "configure_environment()\n"
        "print(os.environ['VZ_HOME'], os.environ['VZ_DATA_DIR'], os.environ['VZ_PREDICTION_LOG'])"
    )
    env = {
        **os.environ,
        "PYTHONPATH": str(ROOT),
        "VZ_HOME": "state",
        "VZ_DATA_DIR": "../data",
        "VZ_PREDICTION_LOG": "logs/predictions",
    }
    (tmp_path / "work").mkdir()
    result = subprocess.run(
        [sys.executable, "-c", probe],
        cwd=tmp_path / "work",
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == [
        str(tmp_path / "work" / "state"),
        str(tmp_path / "data"),
        str(tmp_path / "work" / "logs" / "predictions"),
    ]


def test_cron_runs_with_the_stores_as_absolute_paths(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """cron starts in another folder with none of our variables: the line names both stores."""
    fake = tmp_path / "python"  # stands for the venv's python: says which stores it was given
    fake.write_text('#!/bin/sh\necho "$VZ_HOME $VZ_DATA_DIR"\n')
    fake.chmod(0o755)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("VZ_DATA_DIR", "my-data")
    home = tmp_path / "home"
    (job, *_) = [line for line in crontab_lines(home, python=fake) if not line.startswith("#")]
    command = job.split(None, 5)[5]
    bare = {"PATH": os.environ["PATH"], "HOME": str(tmp_path)}  # what cron gives
    subprocess.run(["sh", "-c", command], env=bare, cwd="/", check=True, timeout=30)
    logged = (home / "logs" / "monitor.log").read_text().split()
    assert logged == [str(home), str(tmp_path / "my-data")]
