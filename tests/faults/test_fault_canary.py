"""Fault injection for the local canary: real `run.py serve`, `bentoml serve` and nginx processes.

Each scenario starts one `serve` on a free port with production and staging from the `challenger`
fixture (or a release whose model cannot load), breaks something, and checks that every request
through nginx still gets an answer, that the deployment state only changes after a check, and that
no process outlives `serve`.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections import Counter, deque
from collections.abc import Iterator
from pathlib import Path
from typing import Self

import psutil
import pytest
import requests

from tests.broken_releases import weekday_only_release
from tests.conftest import ROOT, free_port, start_serve, wait_for, wait_http
from visionzero.monitoring.canary import CanaryRule, decide_canary
from visionzero.monitoring.forward import ForwardReport, Unscored
from visionzero.monitoring.sources import canary_health
from visionzero.rollout import deployment_state as deployment
from visionzero.serving.bento_build import Release

pytestmark = [pytest.mark.slow, pytest.mark.faults]
WEEKDAY = {"latitude": 40.7128, "longitude": -74.0060, "datetime": "2025-02-03T08:30"}
SATURDAY = {**WEEKDAY, "datetime": "2025-02-08T08:30"}
POINT = {"items": [WEEKDAY]}


def set_state(production: dict, staging: dict | None) -> None:
    """Write the deployment state directly, as the pipeline's deployer does."""
    with deployment.locked_state() as state:
        state.production, state.staging, state.previous_production = production, staging, None


@pytest.fixture(autouse=True)
def keep_state() -> Iterator[None]:
    """Each scenario leaves the deployment state as it found it (test_rollout.py reads it)."""
    path = deployment.state_path()
    before = path.read_text() if path.exists() else None
    yield
    if before is not None:
        path.write_text(before)


@pytest.fixture(scope="module")
def releases(challenger: dict) -> tuple[dict, dict]:
    """(production, staging): two models that serve."""
    return challenger.production, challenger.staging


@pytest.fixture(scope="module")
def broken(challenger: dict, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """A release whose model cannot load: staging's model with volume.json truncated, saved under a
    tag of its own and built into a Bento of its own (the other models stay intact)."""
    import bentoml

    from visionzero.serving.bento_build import Release, build_bento, save_model

    model_dir = tmp_path_factory.mktemp("broken") / "model"
    shutil.copytree(bentoml.models.get(challenger.staging.model_tag).path, model_dir)
    volume = model_dir / "volume.json"
    volume.write_text(volume.read_text()[:10])
    model_tag = save_model(model_dir, 999, None, None)
    return Release(
        model_version=999,
        model_tag=model_tag,
        bento_tag=build_bento(model_tag, "bentofile.yaml"),
        arm64_bento_tag="none",
    )


@pytest.fixture(scope="module")
def weekday_only(trained: dict, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """A staging release that answers weekdays and fails with a 500 on other day types."""
    workdir = tmp_path_factory.mktemp("weekday")
    return weekday_only_release(trained.production.model_tag, 997, workdir)


def run_cli(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "run.py", *args],
        cwd=ROOT,
        env=env or os.environ,
        capture_output=True,
        text=True,
        timeout=300,
    )


def alerts() -> list[dict]:
    outbox = Path(os.environ["VZ_HOME"]) / "outbox.jsonl"
    text = outbox.read_text() if outbox.exists() else ""
    return [json.loads(line) for line in text.splitlines()]


class Serve:
    """`run.py serve` on a free port. A thread records the process groups of all its descendants
    while it runs (bentoml workers run in sessions of their own), so that a test can check that
    none outlives it; leaving the block stops whatever is left, whatever the test found."""

    def __init__(self) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.groups: set[int] = set()
        self.lines: list[str] = []
        self.process = start_serve(self.port)
        self.threads = [
            threading.Thread(target=self._read, daemon=True),
            threading.Thread(target=self._sample, daemon=True),
        ]
        for thread in self.threads:
            thread.start()

    def _read(self) -> None:
        for line in self.process.stdout:
            self.lines.append(line.rstrip())

    def _sample(self) -> None:
        while self.process.poll() is None:
            for child in self.descendants():
                try:
                    self.groups.add(os.getpgid(child.pid))
                except OSError:
                    pass
            time.sleep(0.1)

    def descendants(self) -> list[psutil.Process]:
        try:
            return psutil.Process(self.process.pid).children(recursive=True)
        except psutil.Error:
            return []

    def leaders(self, stage: str | None = None) -> list[psutil.Process]:
        """The `bentoml serve` processes serve started (for one stage)."""
        found = []
        for child in self.descendants():
            try:
                cmdline = " ".join(child.cmdline())
                child_stage = child.environ().get("VZ_STAGE")
            except psutil.Error:
                continue
            if "bentoml serve" in cmdline and stage in (None, child_stage):
                found.append(child)
        return found

    def workdir(self) -> Path:
        """The folder serve gave nginx (`-p`), read from the nginx master's command line."""
        for child in self.descendants():
            cmdline = child.cmdline()
            if "-p" in cmdline and "nginx" in cmdline[0]:
                return Path(cmdline[cmdline.index("-p") + 1])
        raise AssertionError("no nginx under serve")

    def wait_ready(self, timeout: float = 240) -> None:
        wait_http(self.url + "/readyz", timeout, self.process)

    def terminate(self, timeout: float = 60) -> int:
        self.process.send_signal(signal.SIGTERM)
        code = self.process.wait(timeout=timeout)
        self.threads[0].join(timeout=5)
        return code

    def leftovers(self) -> list[psutil.Process]:
        """Live processes in the groups serve's descendants had: what a stopped serve leaked."""
        found = []
        for proc in psutil.process_iter(["status"]):
            try:
                if proc.info["status"] != psutil.STATUS_ZOMBIE and (
                    os.getpgid(proc.pid) in self.groups
                ):
                    found.append(proc)
            except OSError:
                pass
        return found

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        for proc in self.leftovers():
            proc.kill()
        self.process.stdout.close()


class Load:
    """A client thread posting one real item to /predict through nginx as fast as it answers."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.statuses: Counter = Counter()
        self.answers: Counter = Counter()
        self.recent: deque = deque(maxlen=50)
        self.resent = 0  # requests sent again after a dropped connection (see _post)
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        session = requests.Session()
        while not self.stop.is_set():
            try:
                response = self._post(session)
            except requests.RequestException as exc:
                self.statuses[type(exc).__name__] += 1
                continue
            self.statuses[response.status_code] += 1
            if response.status_code == 200:
                prediction = response.json()["predictions"][0]
                answer = (prediction["stage"], prediction["model_version"])
                self.answers[answer] += 1
                self.recent.append(answer)

    def _post(self, session: requests.Session) -> requests.Response:
        """One /predict, sent once more when the connection dropped before any answer, as a
        browser does: when serve reloads nginx, an old worker closes its idle keep-alive
        connections, and a request sent on one at that instant never reached anything (seen
        once in 6,149 requests on a loaded machine). A second failure counts."""
        try:
            return session.post(self.url + "/predict", json=POINT, timeout=30)
        except requests.ConnectionError:
            self.resent += 1
            return session.post(self.url + "/predict", json=POINT, timeout=30)

    @property
    def total(self) -> int:
        return sum(self.statuses.values())

    @property
    def failures(self) -> dict:
        return {k: v for k, v in self.statuses.items() if not (isinstance(k, int) and k < 300)}

    def only(self, answer: tuple[str, str]) -> bool:
        return len(self.recent) == self.recent.maxlen and set(self.recent) == {answer}

    def __enter__(self) -> Self:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join(timeout=60)


def running(proc: psutil.Process) -> bool:
    try:
        return proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def version(release: Release) -> str:
    return str(release.model_version)


def test_promote_to_a_model_that_cannot_start_changes_nothing(
    releases: tuple[dict, dict], broken: dict
) -> None:
    """Case 1: promote checks the target first; serve keeps the healthy backend when a new one
    fails, says why and alerts."""
    production, _ = releases
    set_state(production, broken)
    with Serve() as serve:
        serve.wait_ready()  # the broken staging is left out: production serves alone
        workdir = serve.workdir()
        with Load(serve.url) as load:
            before = deployment.state_path().read_text()
            started = time.monotonic()
            promote = run_cli("promote")
            assert promote.returncode == 1, promote.stdout + promote.stderr
            assert "XGBoostError" in promote.stderr, promote.stderr  # the model server's cause
            assert "Traceback" not in promote.stderr
            assert time.monotonic() - started < 90
            assert deployment.state_path().read_text() == before, "a refused promote wrote"
            refused = alerts()[-1]
            assert refused["kind"] == "failure" and "XGBoostError" in " ".join(refused["reasons"])

            set_state(broken, None)  # the deployer records a production that cannot start
            wait_for(
                lambda: any("XGBoostError" in line for line in serve.lines[-5:]),
                timeout=120,
                what="serve did not report the new production's failure",
            )
            time.sleep(3)
        assert serve.process.poll() is None, "serve stopped: " + "\n".join(serve.lines[-20:])
        assert load.total > 100 and not load.failures, load.statuses
        assert set(load.answers) == {("production", version(production))}
        assert alerts()[-1]["kind"] == "failure"
        assert serve.terminate() == 0
        assert not serve.leftovers(), "processes outlived serve"
        assert not workdir.exists(), "serve left its temp folder"


def test_promote_and_rollback_under_load_answer_every_request(
    releases: tuple[dict, dict],
) -> None:
    """Acceptance: 0 non-2xx answers among >= 2,000 requests during promote, and again during
    rollback."""
    production, staging = releases
    set_state(production, staging)
    with Serve() as serve:
        serve.wait_ready()
        for kind, release in (("promote", staging), ("rollback", production)):
            with Load(serve.url) as load:
                result = run_cli(kind)
                assert result.returncode == 0, result.stderr
                assert json.loads(result.stdout.splitlines()[-1])["changed"] is True
                wait_for(
                    lambda r=release, load=load: load.only(("production", version(r))),
                    timeout=180,
                    what=f"model {version(release)} did not take all traffic",
                )
                wait_for(lambda load=load: load.total >= 2000, 120, "2,000 requests")
            assert not load.failures, (
                f"{kind}: {load.failures} of {load.total}, {load.resent} resent"
            )
        assert serve.terminate() == 0
        assert not serve.leftovers(), "processes outlived serve"


def assert_few_failures(load: Load) -> None:
    """Under 1% (the issue's bound after a kill). Not zero: when serve reloads nginx to take the
    replacement in, an old worker closes its idle keep-alive connections, and a client that sends
    on one at that instant gets a ConnectionError (seen once in 7,871 requests); retrying is the
    client's part, /predict being a pure read."""
    share = sum(load.failures.values()) / max(load.total, 1)
    assert share < 0.01, f"{load.failures} of {load.total} requests failed"


def test_a_killed_backend_is_routed_around_and_restarted(releases: tuple[dict, dict]) -> None:
    """Case 3: after kill -9 of the staging backend nginx sends staging's share to production and
    serve restarts staging; after kill -9 of its leader alone, serve replaces it and stops the
    orphaned workers (sessions of their own: they would serve on unnoticed)."""
    production, staging = releases
    set_state(production, staging)
    with Serve() as serve:
        serve.wait_ready()
        (leader,) = serve.leaders("staging")
        for victim in [leader, *leader.children(recursive=True)]:
            victim.kill()
        with Load(serve.url) as load:
            time.sleep(30)
        share = sum(load.failures.values()) / load.total
        assert share < 0.01, f"{load.failures} of {load.total} requests failed"
        with Load(serve.url) as load:
            wait_for(
                lambda: load.answers[("staging", version(staging))] > 0,
                timeout=120,
                what="serve did not restart staging",
            )
        assert_few_failures(load)

        (leader,) = serve.leaders("staging")
        orphans = leader.children()
        leader.kill()
        with Load(serve.url) as load:
            wait_for(
                lambda: not any(map(running, orphans)),
                timeout=150,
                what="the killed leader's workers still run",
            )
        assert_few_failures(load)
        assert [p.pid for p in serve.leaders("staging")] not in ([], [leader.pid])
        assert serve.terminate() == 0
        assert not serve.leftovers(), "processes outlived serve"


def test_no_process_outlives_serve(releases: tuple[dict, dict]) -> None:
    """Case 2: a crashed serve's children are stopped by the next serve; SIGTERM during start-up
    and during a reload leaves nothing running, orphaned bentoml workers included."""
    production, staging = releases
    set_state(production, staging)
    with Serve() as crashed:
        crashed.wait_ready()
        workdir = crashed.workdir()
        (leader,) = crashed.leaders("staging")
        os.kill(leader.pid, signal.SIGKILL)  # its workers live on, in sessions of their own
        crashed.process.kill()  # serve itself dies without cleaning up
        crashed.process.wait()
        assert crashed.leftovers(), "the crash left nothing behind: nothing to test"
        with Serve() as starting:
            wait_for(lambda: starting.leaders(), 120, "serve did not start a backend")
            assert not crashed.leftovers(), "serve did not stop what the crashed serve left"
            assert not workdir.exists(), "serve did not remove the crashed serve's temp folder"
            assert starting.terminate() == 0
            assert not starting.leftovers(), "SIGTERM during start-up leaked processes"
    with Serve() as reloading:
        reloading.wait_ready()
        serving = {p.pid for p in reloading.leaders()}
        set_state(staging, production)  # both stages change: two new backends start
        wait_for(
            lambda: {p.pid for p in reloading.leaders()} - serving,
            timeout=60,
            what="serve did not start the new backends",
        )
        assert reloading.terminate() == 0
        assert not reloading.leftovers(), "SIGTERM during a reload leaked processes"
    assert not list(Path(os.environ["VZ_HOME"]).glob("serve*.json")), "stale pid file"


def test_clear_failures_in_one_line() -> None:
    """Case 4: a port in use, or no model yet: one line and a non-zero exit within seconds."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = str(taken.getsockname()[1])
        started = time.monotonic()
        result = run_cli("serve", "--port", port)
        assert time.monotonic() - started < 20
    assert result.returncode == 1 and f"port {port} is in use" in result.stderr, result.stderr
    assert "Traceback" not in result.stderr and "Serving on" not in result.stdout

    fresh = Path(os.environ["VZ_HOME"]).parent / "fresh-clone"
    env = {
        **os.environ,
        "VZ_HOME": str(fresh / "home"),
        "VZ_DATA_DIR": str(fresh / "data"),
        "ZENML_CONFIG_PATH": str(fresh / "home" / "zenml"),
        "BENTOML_HOME": str(fresh / "home" / "bentoml"),
    }
    for args in (
        ("serve", "--port", str(free_port())),
        ("report",),
        ("render-k8s", "--out", str(fresh / "k8s")),
    ):
        result = run_cli(*args, env=env)
        assert result.returncode == 1, (args, result.stdout, result.stderr)
        assert "Traceback" not in result.stderr, (args, result.stderr)
        assert "run `make run` first" in result.stderr, (args, result.stderr)
        assert len(result.stderr.strip().splitlines()) == 1, (args, result.stderr)


def unscored(production: dict, staging: dict) -> ForwardReport:
    """No forward evidence yet (a fresh canary): the monitor's decision rests on health alone."""
    return ForwardReport(
        resolutions=[9],
        last_complete_day=None,
        stages={},
        unscored={
            stage: Unscored(model_version=release.model_version, reason="no complete day yet")
            for stage, release in (("production", production), ("staging", staging))
        },
    )


def test_pinned_errors_do_not_make_the_monitor_roll_staging_back(
    trained: dict, weekday_only: dict, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Issue 20's done-when: 100 error requests and two 10,000-item ones on /stage/staging/
    through nginx, claiming to be split traffic, leave staging healthy in the monitor's reading
    (its canary_health step reads the backends' /metrics, its decider the rule); the same errors
    through the split still roll it back."""
    production = trained.production
    set_state(production, weekday_only)
    monkeypatch.setenv("VZ_CANARY_WARMUP_SECONDS", "0")  # judged at once; warm-up: its own test
    monkeypatch.delenv("VZ_PROMETHEUS_URL", raising=False)
    rule = CanaryRule(min_requests=30)
    forward = unscored(production, weekday_only)
    with Serve() as serve, requests.Session() as session:
        serve.wait_ready()
        pid_file = Path(os.environ["VZ_HOME"]) / "serve.json"
        wait_for(
            lambda: len(json.loads(pid_file.read_text()).get("backends", {})) == 2,
            240,
            "serve started both stages",
        )
        split = [session.post(serve.url + "/predict", json=POINT, timeout=30) for _ in range(200)]
        assert {a.status_code for a in split} == {200}
        on_staging = sum(a.headers["X-VZ-Stage"] == "staging" for a in split)
        pinned = serve.url + "/stage/staging/predict"
        session.headers["X-VZ-Traffic"] = "split"  # a client's claim: nginx overwrites it
        attack = [session.post(pinned, json={"items": [SATURDAY]}, timeout=30) for _ in range(100)]
        assert {a.status_code for a in attack} == {500}, "the pinned requests did not fail"
        huge = {"items": [WEEKDAY] * 10_000}
        assert [session.post(pinned, json=huge, timeout=120).status_code for _ in "ab"] == [200] * 2
        del session.headers["X-VZ-Traffic"]

        health = canary_health(rule.metrics_window_minutes)
        decision = decide_canary(forward, health, rule)
        assert decision.action == "wait", decision.reasons
        staging = health["staging"]
        assert (staging.requests, staging.errors) == (on_staging, 0)
        assert staging.not_counted["pinned"] == 102 and list(staging.latency) == ["one"]
        assert f"{on_staging} split after warm-up on staging (not counted: 102 pinned" in (
            "\n".join(decision.reasons)
        )

        saturdays = [
            session.post(serve.url + "/predict", json={"items": [SATURDAY]}, timeout=30)
            for _ in range(100)
        ]
        assert 500 in {a.status_code for a in saturdays}
        decision = decide_canary(forward, canary_health(rule.metrics_window_minutes), rule)
        assert decision.action == "rollback", decision.reasons
        assert "staging errs beyond the margin" in decision.reasons[0]
        assert serve.terminate() == 0
