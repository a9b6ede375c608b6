"""Test set-up: every store (ZenML, MLflow, BentoML, DVC, data, outbox) lives in one
temporary folder.

The environment is set at import time, before ZenML is imported, because ZenML reads its
config path once.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Self

import pytest

ROOT = Path(__file__).resolve().parent.parent
# What the k8s/ templates' ${...} placeholders are filled with when tests read them
K8S_TEMPLATE_VALUES = {
    "NAMESPACE": "visionzero",
    "REGISTRY": "registry.example.org/visionzero",
    "PIPELINE_IMAGE": "registry.example.org/visionzero/pipelines:1",
    "PROMETHEUS_URL": "http://prometheus.monitoring:9090",
    "PUSHGATEWAY_URL": "http://pushgateway.monitoring:9091",
}
TMP = Path(tempfile.mkdtemp(prefix="vz-tests-"))
os.environ.update(
    {
        "VZ_HOME": str(TMP / "home"),
        "VZ_DATA_DIR": str(TMP / "project" / "data"),
        "ZENML_CONFIG_PATH": str(TMP / "home" / "zenml"),
        "BENTOML_HOME": str(TMP / "home" / "bentoml"),
        "ZENML_ANALYTICS_OPT_IN": "false",
        "BENTOML_DO_NOT_TRACK": "true",
        "KERAS_BACKEND": "jax",
        "DVC_NO_ANALYTICS": "1",
        # Tests drive `serve` with load (2,000 requests as fast as nginx answers): one client far
        # past a person's limits. The limits themselves are tested in tests/test_edge.py.
        "VZ_EDGE_RATE_PER_SECOND": "100000",
        "VZ_EDGE_BURST": "100000",
        "VZ_EDGE_CONNECTIONS": "1000",
    }
)
for var in (
    "DISCORD_WEBHOOK_URL",
    "SOCRATA_APP_TOKEN",
    "MLFLOW_TRACKING_URI",
    "ZENML_STORE_URL",
    "KUBECONFIG",
    "VZ_DEPLOY_TARGET",
    "VZ_ORCHESTRATOR",
    "VZ_ARTIFACT_STORE_URI",
    "VZ_PIPELINE_IMAGE",
    "VZ_DVC_REMOTE",
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
):
    os.environ.pop(var, None)
sys.path.insert(0, str(ROOT))

from visionzero.platform.settings import configure_environment  # noqa: E402

configure_environment()


def pytest_configure(config: pytest.Config) -> None:
    """SIGTERM (a CI timeout, a `kill`) ends the session like Ctrl-C, so every fixture's teardown
    stops the servers it started instead of leaving them running."""

    def interrupt(signum: int, frame: object) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    signal.signal(signal.SIGTERM, interrupt)


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    shutil.rmtree(TMP, ignore_errors=True)


# the tests import free_port from here
from visionzero.platform.processes import (  # noqa: E402
    Child,
    NotReady,
    free_port,
    http_ok,
    wait_until,
)


def wait_for(condition: Callable[[], object], timeout: float, what: str) -> object:
    """Poll `condition` until it returns something true (returned); fail naming `what`."""
    try:
        return wait_until(condition, timeout=timeout, interval=0.2)
    except NotReady:
        raise AssertionError(f"{what} within {timeout:.0f} s") from None


def wait_http(url: str, timeout: float = 120.0, process: subprocess.Popen | None = None) -> None:
    """Poll url until it answers 200; fail early (NotReady) if the process serving it exits."""
    wait_until(lambda: http_ok(url), process, timeout, what=f"the server of {url}")


def start_serve(port: int, *options: str, env: dict | None = None) -> subprocess.Popen:
    """`python run.py serve --port PORT [options]` in a session of its own, output on a pipe; in
    this process's environment unless `env` is given."""
    return subprocess.Popen(
        [sys.executable, "run.py", "serve", "--port", str(port), *options],
        cwd=ROOT,
        env=env or os.environ,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )


class LocalServer:
    """A real HTTP server on 127.0.0.1 in a thread, answering with a handler class."""

    def __init__(self, handler: type[BaseHTTPRequestHandler]) -> None:
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def __enter__(self) -> Self:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture(scope="session")
def real_data_dir() -> Path:
    """The bundled snapshot built offline into a data folder of the session's own."""
    from visionzero.data.dataset import LoadConfig, build_dataset

    data_dir = TMP / "unit" / "data"
    build_dataset(data_dir, LoadConfig(offline=True))
    return data_dir


@pytest.fixture(scope="session")
def real_data(real_data_dir: Path) -> tuple:
    """The bundled snapshot at the model's grain, with the configured time split."""
    from pipelines.training import load_training_config
    from visionzero.model.training_data import split

    cfg = load_training_config(ROOT / "configs" / "training.yaml").model
    return (*split(real_data_dir, cfg), cfg)


# The default recipe with a small search and evaluation budget: every step runs as configured,
# with 2 trials instead of 15 and 12 (the tuner alone took 90 of a default run's 140 s).
SMALL_BUDGET = {
    "tuning": {"max_trials": 2, "share_trials": 2, "cv_folds": 2},
    "evaluation": {"backtest_origins": 1, "bootstrap_reps": 200},
}


def small_budget_config(folder: Path, **parameters: dict) -> Path:
    """The default training configuration with SMALL_BUDGET and `parameters` on top, written to
    `folder/training.yaml` for `train(config_path=...)`."""
    import yaml

    from run import DEFAULT_CONFIG

    config = yaml.safe_load(DEFAULT_CONFIG.read_text()) or {}
    config["parameters"] = {**SMALL_BUDGET, **parameters}
    path = folder / "training.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


@pytest.fixture(scope="session")
def trained(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """One offline run of the whole training pipeline in the temporary stores."""
    from run import train
    from visionzero.rollout.deployment_state import read_state

    train(offline=True, config_path=small_budget_config(tmp_path_factory.mktemp("trained")))
    return read_state()


USER_VARIABLES = ("PATH", "HOME", "USER", "LOGNAME", "LANG", "TERM", "TMPDIR", "TZ")
# A challenger never wins (its deviance would have to be <= 0): whichever of two runs at once
# deploys last, the project holds a production and no staging.
CHALLENGERS_LOSE = {"min_deviance_improvement": 1.0}


def user_environment() -> dict[str, str]:
    """A new user's shell: no VZ_*, nothing the tests set (stores, BentoML, ZenML)."""
    return {
        name: value
        for name, value in os.environ.items()
        if name in USER_VARIABLES or name.startswith("LC_")
    }


@dataclass
class FreshProject:
    clone: Path
    children: list[subprocess.Popen]  # the two first runs, ended
    outputs: list[str]


@pytest.fixture(scope="session")
def fresh_project() -> Iterator[FreshProject]:
    """A fresh clone of this repository (its .venv a link to ours) trained as a new user trains
    it, with no VZ_* variable: two first `run.py --offline` started at once, 2 tuning trials.
    One first training serves two modules (it is the slowest part of each): tests/test_runs.py
    checks that each run closes with its own run, tests/test_defaults.py serves what they made."""
    import yaml

    with tempfile.TemporaryDirectory(prefix="vz-fresh-") as tmp:
        clone = Path(tmp) / "visionzero"
        # Files of its own: a local clone hardlinks this repository's objects, and a commit here
        # meanwhile would touch their mtimes (tests/test_runs.py compares the project's).
        clone_command = ["git", "clone", "-q", "--no-hardlinks", str(ROOT), str(clone)]
        subprocess.run(clone_command, check=True, timeout=120)
        (clone / ".venv").symlink_to(Path(sys.prefix), target_is_directory=True)
        config = Path(tmp) / "training.yaml"
        # The tuning budget only: a shorter evaluation would let the later run's evaluator start
        # after the earlier run deployed more often (then it is no first run).
        parameters = {"tuning": SMALL_BUDGET["tuning"], "decision": CHALLENGERS_LOSE}
        config.write_text(yaml.safe_dump({"parameters": parameters}))
        command = [str(clone / ".venv" / "bin" / "python"), "run.py", "--offline"]
        output = {"stdout": subprocess.PIPE, "stderr": subprocess.STDOUT, "text": True}
        at_once = [command + ["--config", str(config)]] * 2
        own_session = {"cwd": clone, "env": user_environment(), "start_new_session": True}
        children = [subprocess.Popen(args, **own_session, **output) for args in at_once]
        try:
            outputs = [child.communicate(timeout=1500)[0] for child in children]
        finally:  # a run still going (a timeout, Ctrl-C) is stopped with its whole group
            for child in filter(lambda child: child.poll() is None, children):
                os.killpg(child.pid, signal.SIGKILL)
                child.wait()
        yield FreshProject(clone, children, outputs)


@pytest.fixture(scope="session")
def challenger(trained: dict, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """A third training run whose model differs (shorter share half-life) and whose rule lets any
    deployable challenger win: it becomes staging, as a real winning challenger would."""
    from run import train
    from visionzero.rollout import deployment_state as deployment
    from visionzero.rollout.actions import sync_registry_stages

    path = small_budget_config(
        tmp_path_factory.mktemp("challenger"),
        model={"share_halflife_days": 365},
        decision={"min_deviance_improvement": -1.0, "hit_rate_tolerance": 1.0},
    )
    before = deployment.state_path().read_text()
    train(offline=True, config_path=path)
    state = deployment.read_state()
    assert state.staging is not None, "the challenger should have become staging"
    # The tests that want this canary set it themselves; the others keep production alone.
    deployment.state_path().write_text(before)
    sync_registry_stages(deployment.read_state())
    return state


@contextlib.contextmanager
def bento_server(
    bento_tag: str, env: dict[str, str], log: Path | None = None, timeout: float = 120.0
) -> Iterator[str]:
    """`bentoml serve bento_tag` on a free port with `env` on top of ours, its output to `log`
    (or nowhere); yields its URL once /readyz answers, and stops its whole process group."""
    port = free_port()
    with open(log or os.devnull, "w") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "bentoml", "serve", bento_tag]
            + ["--host", "127.0.0.1", "--port", str(port)],
            env={**os.environ, **env},
            cwd=ROOT,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_http(url + "/readyz", timeout, process)
        yield url
    finally:
        Child("bentoml serve", process).stop(timeout=60)


@pytest.fixture(scope="session")
def served(trained: dict) -> Iterator[str]:
    """The production Bento under a real `bentoml serve` process on a free port."""
    # A BENTOML_HOME of its own: a later `bentoml serve` on the session's home would empty the
    # multiprocess metrics folder this long-lived server writes to (its counters would vanish).
    from visionzero.rollout.backend import backend_home

    (TMP / "served").mkdir(exist_ok=True)
    home = backend_home(TMP / "served", "production")
    env = {"VZ_STAGE": "production", "BENTOML_HOME": str(home)}
    with bento_server(trained.production.bento_tag, env) as url:
        yield url
