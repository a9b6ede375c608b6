"""The loop with default settings, as a new user runs it: a fresh clone, no VZ_* variable, `run.py`
trains, `run.py serve --monitor` answers 20 predictions, stops, and `run.py monitor` counts them.

Before, the model server (which runs in its Bento's folder) wrote the log inside the Bento and the
monitor found nothing. The same serve also shows what its children inherit: secrets set in the
shell reach none of them, and each holds VZ_HOME as the clone's absolute `.vz`."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import psutil
import pytest
import requests

from tests.conftest import FreshProject, free_port, user_environment, wait_http
from visionzero.rollout.local_canary import clear_stale

pytestmark = pytest.mark.slow
REQUESTS = 20
SECRETS = {
    "DISCORD_WEBHOOK_URL": "http://127.0.0.1:9/api/webhooks/1/not-reachable",
    "SOCRATA_APP_TOKEN": "socrata-token",
    "AWS_ACCESS_KEY_ID": "AKIAEXAMPLE",
    "AWS_SECRET_ACCESS_KEY": "aws-secret",
    "GITHUB_TOKEN": "gh-token",
}


@dataclass
class FreshRun:
    clone: Path
    answered: list[int]  # status codes of the predictions
    children: dict[int, tuple[str, dict[str, str]]]  # pid -> (command line, environ) while served
    monitor_output: str


def run(clone: Path, env: dict[str, str], *args: str, timeout: float) -> str:
    result = subprocess.run(
        [str(clone / ".venv" / "bin" / "python"), "run.py", *args],
        cwd=clone,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-3000:]
    return output


def descendants(pid: int) -> dict[int, tuple[str, dict[str, str]]]:
    """Every process `serve` started (backends, their workers, nginx, Prometheus): /proc environ."""
    found = {}
    for proc in psutil.Process(pid).children(recursive=True):
        with contextlib.suppress(psutil.Error):
            found[proc.pid] = (" ".join(proc.cmdline()), proc.environ())
    return found


def stop(serve: subprocess.Popen, clone: Path, pids: set[int]) -> None:
    """Ctrl-C; then a harder stop of whatever is left (serve's own record of its children)."""
    if serve.poll() is None:
        serve.send_signal(signal.SIGINT)
        try:
            serve.wait(timeout=90)
        except subprocess.TimeoutExpired:
            os.killpg(serve.pid, signal.SIGKILL)
            serve.wait()
    clear_stale(clone / ".vz" / "serve.json")
    for pid in pids:
        with contextlib.suppress(psutil.Error):
            psutil.Process(pid).kill()


@pytest.fixture(scope="module")
def fresh_run(
    fresh_project: FreshProject, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[FreshRun]:
    """The fresh clone `run.py` trained with no VZ_* (conftest: two first runs at once), served
    by `run.py serve --monitor` and monitored by `run.py monitor` in the same user's shell."""
    for child, output in zip(fresh_project.children, fresh_project.outputs, strict=True):
        assert child.returncode == 0, output[-3000:]
    clone, env = fresh_project.clone, user_environment()
    log_path = tmp_path_factory.mktemp("defaults") / "serve.log"
    port = free_port()
    with open(log_path, "w") as log:
        serve = subprocess.Popen(
            [str(clone / ".venv" / "bin" / "python"), "run.py", "serve", "--monitor"]
            + ["--port", str(port)],
            cwd=clone,
            env={**env, **SECRETS},
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    children: dict[int, tuple[str, dict[str, str]]] = {}
    try:
        url = f"http://127.0.0.1:{port}"
        wait_http(url + "/readyz", 600, serve)
        answered = [
            requests.post(
                url + "/predict",
                json={
                    "items": [
                        {
                            "latitude": 40.70 + i / 500,
                            "longitude": -73.95,
                            "datetime": f"2025-02-{i + 1:02d}T08:30",
                        }
                    ]
                },
                headers={"X-Request-ID": f"fresh-{i}"},
                timeout=60,
            ).status_code
            for i in range(REQUESTS)
        ]
        children = descendants(serve.pid)
    finally:
        stop(serve, clone, set(children))
    assert serve.returncode == 0, log_path.read_text()[-3000:]
    monitor_output = run(clone, env, "--offline", "monitor", timeout=3600)
    yield FreshRun(clone, answered, children, monitor_output)


def test_monitor_counts_the_predictions_served_with_defaults(fresh_run: FreshRun) -> None:
    assert fresh_run.answered == [200] * REQUESTS
    assert "no logged predictions" not in fresh_run.monitor_output
    assert f"'requests': {REQUESTS}" in fresh_run.monitor_output, fresh_run.monitor_output[-3000:]
    logged = list((fresh_run.clone / ".vz" / "predictions" / "production").rglob("*.jsonl"))
    assert sum(len(path.read_text().splitlines()) for path in logged) == REQUESTS
    bentos = fresh_run.clone / ".vz" / "bentoml" / "bentos"
    assert not [path for path in bentos.rglob("*") if path.suffix == ".jsonl"], "inside a Bento"


def test_serve_children_hold_no_secret_and_an_absolute_vz_home(fresh_run: FreshRun) -> None:
    commands = [command for command, _ in fresh_run.children.values()]
    workers = [
        environ for command, environ in fresh_run.children.values() if "VZ_SERVE_BACKEND" in environ
    ]
    assert any("nginx" in command for command in commands), commands
    assert any("prometheus" in command for command in commands), commands
    assert len(workers) >= 3, commands  # `bentoml serve` and its (two) workers
    home = str((fresh_run.clone / ".vz").resolve())
    for command, environ in fresh_run.children.values():
        leaked = set(SECRETS) & set(environ)
        assert not leaked, (command, sorted(leaked))
        assert not set(SECRETS.values()) & set(environ.values()), command
    for environ in workers:
        assert environ["VZ_HOME"] == home
