"""Rollout: the deployment state machine, and two real Bentos behind the real nginx.

Canary, promote, rollback.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path

import pytest
import requests

from tests.conftest import ROOT, free_port, start_serve, wait_http
from tests.test_k8s import release
from visionzero.rollout import deployment_state as deployment

POINT = {"items": [{"latitude": 40.7128, "longitude": -74.0060, "datetime": "2025-02-03T08:30"}]}


def test_state_machine(tmp_path: Path) -> None:
    path = tmp_path / "deployment.json"
    with deployment.locked_state(path) as state:
        assert deployment.apply_decision(state, "production", release(1)) == "production"
        assert deployment.apply_decision(state, "none", release(2)) == "none"
        assert deployment.apply_decision(state, "staging", release(3)) == "staging"
    state = deployment.read_state(path)
    assert (state.production.model_version, state.staging.model_version) == (1, 3)
    with deployment.locked_state(path) as state:
        assert deployment.promote(state).model_version == 3
        assert deployment.promote(state) is None  # idempotent
    state = deployment.read_state(path)
    assert state.previous_production.model_version == 1 and state.staging is None
    with deployment.locked_state(path) as state:
        assert deployment.rollback(state).model_version == 1
        assert deployment.rollback(state) is None
    assert [e.event for e in deployment.read_state(path).history] == [
        "deploy_production",
        "deploy_staging",
        "promote",
        "rollback",
    ]


def test_canary_rollback_drops_staging_and_keeps_a_promoted_production(tmp_path: Path) -> None:
    """After a promote, `rollback` would restore the older production; the canary's verdict on a
    new staging must leave the promoted production serving."""
    path = tmp_path / "deployment.json"
    with deployment.locked_state(path) as state:
        deployment.apply_decision(state, "production", release(1))
        deployment.apply_decision(state, "staging", release(2))
        deployment.promote(state)
        deployment.apply_decision(state, "staging", release(3))
        assert deployment.rollback_staging(state).model_version == 2
        assert deployment.rollback_staging(state) is None  # idempotent
    state = deployment.read_state(path)
    assert state.production.model_version == 2 and state.staging is None
    assert state.previous_production.model_version == 1
    assert state.history[-1].event == "rollback_staging"
    assert state.history[-1].model_version == 3


def test_concurrent_promotes_promote_once(tmp_path: Path) -> None:
    path = tmp_path / "deployment.json"
    with deployment.locked_state(path) as state:
        deployment.apply_decision(state, "production", release(1))
        deployment.apply_decision(state, "staging", release(2))
    results: list[object] = []

    def promote() -> None:
        with deployment.locked_state(path) as state:
            results.append(deployment.promote(state))

    threads = [threading.Thread(target=promote) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sum(r is not None for r in results) == 1
    assert deployment.read_state(path).production.model_version == 2


def test_failed_update_leaves_the_state_untouched(tmp_path: Path) -> None:
    path = tmp_path / "deployment.json"
    with deployment.locked_state(path) as state:
        deployment.apply_decision(state, "production", release(1))
    before = path.read_text()
    with pytest.raises(RuntimeError):
        with deployment.locked_state(path) as state:
            deployment.apply_decision(state, "staging", release(2))
            raise RuntimeError("registry down")
    assert path.read_text() == before


def ask(url: str, session: requests.Session) -> tuple[str, str]:
    prediction = session.post(url + "/predict", json=POINT, timeout=30).json()["predictions"][0]
    return prediction["stage"], prediction["model_version"]


def wait_until_only(url: str, version: str, timeout: float = 180.0) -> None:
    session = requests.Session()
    deadline = time.monotonic() + timeout
    streak = 0
    while time.monotonic() < deadline and streak < 30:
        try:
            streak = streak + 1 if ask(url, session) == ("production", version) else 0
        except (requests.RequestException, KeyError, ValueError):
            streak = 0
            time.sleep(0.5)
    assert streak >= 30, f"model {version} did not take all traffic within {timeout}s"


def cli(*args: str) -> dict:
    out = subprocess.run(
        [sys.executable, "run.py", *args],
        cwd=ROOT,
        env=os.environ,
        capture_output=True,
        text=True,
        check=True,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def assert_registry_stage(version: str) -> None:
    """ZenML's production stage and MLflow's production alias follow promote and rollback."""
    from visionzero.platform.registry import _mlflow_client, stage_version
    from visionzero.platform.settings import MODEL_NAME

    assert stage_version("production").number == int(version)
    alias = _mlflow_client().get_model_version_by_alias(MODEL_NAME, "production")
    assert alias.tags["zenml_model_version"] == version


@pytest.mark.slow
def test_canary_promote_rollback_behind_nginx(challenger: dict) -> None:
    from visionzero.rollout.actions import sync_registry_stages

    # Other tests of the session move the state: start from the challenger's canary again.
    with deployment.locked_state() as state:
        state.production, state.staging = challenger.production, challenger.staging
        state.previous_production = challenger.previous_production
    sync_registry_stages(deployment.read_state())
    production = str(challenger.production.model_version)
    staging = str(challenger.staging.model_version)
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    serve = start_serve(port)
    try:
        wait_http(url + "/readyz", timeout=180, process=serve)
        # this serve's folder: another serve on the machine (its own VZ_HOME) has an nginx too
        workdir = json.loads((Path(os.environ["VZ_HOME"]) / "serve.json").read_text())["workdir"]
        session = requests.Session()
        answers = Counter(ask(url, session) for _ in range(2000))
        assert set(answers) == {("production", production), ("staging", staging)}
        share = answers[("staging", staging)] / 2000
        assert 0.46 <= share <= 0.54, f"staging took {share:.3f} of 2,000 requests"
        # the page's stage switch: /stage/<stage>/ always asks that stage (prefix stripped)
        for stage, version in (("production", production), ("staging", staging)):
            pinned = Counter(ask(f"{url}/stage/{stage}", session) for _ in range(20))
            assert pinned == {(stage, version): 20}
            metadata = session.get(f"{url}/stage/{stage}/metadata?x=1", timeout=30)
            assert metadata.status_code == 200 and metadata.headers["X-VZ-Stage"] == stage
            assert (metadata.json()["stage"], str(metadata.json()["model_version"])) == (
                stage,
                version,
            )

        promoted = cli("promote")
        assert promoted["changed"] is True and "registry_error" not in promoted
        assert_registry_stage(staging)
        wait_until_only(url, staging)
        assert Counter(ask(url, session) for _ in range(200)) == {("production", staging): 200}
        gone = session.get(f"{url}/stage/staging/metadata", timeout=30)  # no staging after it
        assert gone.status_code == 404
        assert gone.json() == {"error": "no staging deployment is running", "field": "stage"}
        assert cli("promote")["changed"] is False  # nothing left to promote

        rolled_back = cli("rollback")
        assert rolled_back["changed"] is True and "registry_error" not in rolled_back
        assert_registry_stage(production)
        wait_until_only(url, production)
        # A new client: one that held a keep-alive connection through the reload may be answered by
        # the draining old nginx worker for a moment (never with an error: see tests/faults).
        fresh = requests.Session()
        assert Counter(ask(url, fresh) for _ in range(200)) == {("production", production): 200}

        outbox = [
            json.loads(line)
            for line in (Path(os.environ["VZ_HOME"]) / "outbox.jsonl").read_text().splitlines()
        ]
        assert [m["kind"] for m in outbox[-2:]] == ["promote", "rollback"]
    finally:
        os.killpg(serve.pid, signal.SIGINT)
        output, _ = serve.communicate(timeout=60)
    assert "stopped" in output
    nginx = subprocess.run(
        ["pgrep", "-f", f"nginx.*{workdir}"], capture_output=True, text=True
    ).stdout
    assert not nginx.strip(), "nginx outlived serve"
