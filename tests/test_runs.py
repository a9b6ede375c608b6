"""Runs: a closing summary reads the run it belongs to (by id), never "the newest run"."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import ROOT

pytestmark = pytest.mark.slow


def project_env(home: Path) -> dict[str, str]:
    """This process's environment with every store in a fresh `home`: ZENML_CONFIG_PATH and
    BENTOML_HOME (set by the test session) dropped, so the child derives them from VZ_HOME."""
    env = {k: v for k, v in os.environ.items() if k not in ("ZENML_CONFIG_PATH", "BENTOML_HOME")}
    env.update(VZ_HOME=str(home / "home"), VZ_DATA_DIR=str(home / "project" / "data"))
    return env


def store_runs(env: dict[str, str]) -> dict[str, dict]:
    """The training runs of the store `env` names, by run name: status and model version (read
    in a child: this process's ZenML client is bound to the session's store)."""
    script = (
        "import json; from visionzero.platform.settings import configure_environment;"
        "configure_environment(); from zenml.client import Client;"
        "runs = Client().list_pipeline_runs(pipeline_name='training_pipeline', size=100).items;"
        "print(json.dumps({r.name: {'status': str(r.status),"
        " 'version': r.model_version.number if r.model_version else None} for r in runs}))"
    )
    out = subprocess.run(
        [sys.executable, "-c", script], cwd=ROOT, env=env, capture_output=True, text=True
    )
    assert out.returncode == 0, out.stderr[-2000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_two_first_runs_at_once_each_close_with_their_own_run(tmp_path: Path) -> None:
    """Both runs start together in a fresh project: each prints the decision of its own run.
    Reading "the newest run" instead, the first-created run's summary reads the other one
    (still running: KeyError 'deployer'; finished: the other's model version)."""
    env = project_env(tmp_path)
    children = [
        subprocess.Popen(
            [sys.executable, "run.py", "--offline"],
            cwd=ROOT,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,
        )
        for _ in range(2)
    ]
    try:
        outputs = [child.communicate(timeout=1200)[0] for child in children]
    finally:
        for child in children:
            if child.poll() is None:
                os.killpg(child.pid, signal.SIGKILL)
                child.wait()
    for child, output in zip(children, outputs, strict=True):
        assert child.returncode == 0, output[-3000:]
    runs = store_runs(env)
    assert len(runs) == 2 and all(r["status"] == "completed" for r in runs.values()), runs
    for output in outputs:
        (name,) = set(re.findall(r"(training_pipeline-[\w-]+)", output))
        printed = re.search(r"Decision for model version (\d+):", output)
        assert printed, output[-3000:]
        assert int(printed.group(1)) == runs[name]["version"], (name, runs)
