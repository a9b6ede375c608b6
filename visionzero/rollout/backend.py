"""A backend: one `bentoml serve` of a release in a stage, and the check it must pass (/readyz,
then a real prediction from that very model) before it may take traffic.

`preflight` runs that check on a throwaway backend: promote and rollback change the deployment
state only for a release that passes it.
"""

from __future__ import annotations

import secrets
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import requests

from visionzero.platform.processes import (
    Child,
    NotReady,
    free_port,
    http_ok,
    log_cause,
    signals_held,
    start_child,
    stopping_on_signals,
    wait_until,
)
from visionzero.platform.settings import UNLOGGED_REQUEST_ID, paths, settings
from visionzero.platform.stage import Stage
from visionzero.serving.bento_build import Release

SMOKE_REQUEST = {
    "items": [{"latitude": 40.7128, "longitude": -74.0060, "datetime": "2025-02-03T08:30"}]
}
# The check's own prediction is no one's traffic: its backends leave this (unguessable) id unlogged.
SMOKE_REQUEST_ID = f"vz-check-{secrets.token_hex(16)}"
STARTUP_FAILED = "Application startup failed"  # uvicorn's line when a worker cannot start


class CanaryError(RuntimeError):
    """A failure `serve`, promote and rollback report in one line instead of a traceback."""


class BackendFailed(CanaryError):
    """A backend did not pass its check; the message carries the model server's own reason."""

    def __init__(self, stage: Stage, release: Release, reason: str) -> None:
        super().__init__(
            f"model {release.model_version} ({release.bento_tag}) "
            f"failed its check as {stage}: {reason}"
        )
        self.stage = stage
        self.release = release


def release_key(stage: Stage, release: Release) -> tuple[str, str, str]:
    """What makes a backend: a stage whose Bento or model changes needs a new one."""
    return (stage, release.bento_tag, release.model_tag)


@dataclass
class Backend:
    """One `bentoml serve` of a release in a stage."""

    stage: Stage
    release: Release
    port: int
    log: Path
    child: Child
    started: float = field(default_factory=time.monotonic)

    @property
    def key(self) -> tuple[str, str, str]:
        return release_key(self.stage, self.release)

    def alive(self) -> bool:
        return self.child.process.poll() is None

    def failed(self, reason: str) -> BackendFailed:
        return BackendFailed(self.stage, self.release, f"{reason}: {log_cause(self.log)}")


def backend_home(workdir: Path, name: str) -> Path:
    """A BENTOML_HOME of the backend's own whose Bento and model stores link to the real ones.

    BentoML keeps its multiprocess metrics in `$BENTOML_HOME/prometheus_multiproc_dir` and empties
    that folder when a server starts: two backends on one home wipe each other's counters, then
    each `/metrics` reports the sum of both stages (seen in tests/test_prometheus_serve.py)."""
    real = settings().bentoml_home or paths().bentoml  # what configure_environment exports
    home = workdir / f"bentoml-{name}"  # a port used again after a restart finds it made
    home.mkdir(exist_ok=True)
    for store in ("bentos", "models"):
        if not (home / store).is_symlink():
            (home / store).symlink_to(real / store, target_is_directory=True)
    return home


def start_backend(stage: Stage, release: Release, workdir: Path, **env: str) -> Backend:
    port = free_port()
    name = f"{stage}-{port}"
    log = workdir / f"{name}.log"
    argv = [sys.executable, "-m", "bentoml", "serve", release.bento_tag]
    argv += ["--host", "127.0.0.1", "--port", str(port)]
    tag = f"{workdir.name}/{name}"
    stores = paths()  # absolute: the model server runs in its Bento's folder, not ours
    child = start_child(
        name,
        argv,
        log,
        tag,
        VZ_STAGE=str(stage),
        VZ_HOME=str(stores.home),
        **{UNLOGGED_REQUEST_ID: SMOKE_REQUEST_ID},
        VZ_DATA_DIR=str(stores.data_dir),
        BENTOML_DO_NOT_TRACK="true",
        BENTOML_HOME=str(backend_home(workdir, name)),
        **env,
    )
    return Backend(stage, release, port, log, child)


def check_backend(backend: Backend, timeout: float) -> None:
    """Ready, then a real prediction from this very model: only then may it take traffic."""
    url = f"http://127.0.0.1:{backend.port}"

    def startup_failed() -> str | None:
        if STARTUP_FAILED in backend.log.read_text(errors="replace"):
            return "its model server could not start"
        return None

    try:
        wait_until(
            lambda: http_ok(url + "/readyz"),
            backend.child.process,
            timeout,
            what="its server",
            broken=startup_failed,
        )
    except NotReady as exc:
        raise backend.failed(str(exc)) from exc
    try:
        response = requests.post(
            url + "/predict",
            json=SMOKE_REQUEST,
            headers={"X-Request-ID": SMOKE_REQUEST_ID},
            timeout=30,
        )
        served = response.json()["predictions"][0]["model_version"] if response.ok else None
    except (requests.RequestException, ValueError, LookupError, TypeError) as exc:
        raise backend.failed(f"smoke prediction: {exc!r}") from exc
    if served is None or str(served) != str(backend.release.model_version):
        raise backend.failed(
            f"smoke prediction: HTTP {response.status_code}, {response.text[:200]!r}"
        )


def preflight(release: Release, timeout: float = 120.0) -> None:
    """Start the release's Bento on a free port, check it as `serve` does, stop it: promote and
    rollback change the state only for a release that passes. Raises BackendFailed."""
    with stopping_on_signals(), tempfile.TemporaryDirectory(prefix="vz-preflight-") as tmp:
        backend = None
        try:
            with signals_held():  # one worker is enough to show that the model loads and answers
                backend = start_backend(Stage.PRODUCTION, release, Path(tmp), VZ_WORKERS="1")
            check_backend(backend, timeout)
        finally:
            if backend is not None:
                backend.child.stop()
