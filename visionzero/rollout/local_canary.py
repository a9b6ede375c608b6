"""The local canary: production and staging as two `bentoml serve` processes behind a real nginx.

nginx splits requests with the deployment state's canary weight (the same 50 as the Kubernetes
canary) and runs in the foreground as our child, so stopping `serve` stops everything it started.
The state file is polled: after `promote` or `rollback` the new backends start, nginx reloads, the
old ones stop.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import jinja2

from visionzero.rollout.deployment_state import CANARY_WEIGHT, read_state

NGINX_TEMPLATES = jinja2.Environment(
    loader=jinja2.PackageLoader("visionzero.rollout"),
    undefined=jinja2.StrictUndefined,
    trim_blocks=True,
    lstrip_blocks=True,
    keep_trailing_newline=True,
    autoescape=False,
)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def nginx_binary() -> str:
    found = shutil.which("nginx") or (
        "/usr/sbin/nginx" if Path("/usr/sbin/nginx").exists() else None
    )
    if not found:
        raise RuntimeError(
            "nginx is not installed: run `make system-deps` (Debian: apt-get install nginx-light)"
        )
    return found


def wait_http(url: str, timeout: float = 120.0, process: subprocess.Popen | None = None) -> None:
    """Poll url until it answers 200; fail early if the process serving it exits."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise RuntimeError(f"exited with {process.returncode} before {url} answered")
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.5)
    raise RuntimeError(f"{url} did not answer within {timeout}s")


@dataclass
class Backend:
    stage: str
    bento_tag: str
    model_tag: str
    port: int
    process: subprocess.Popen

    @property
    def key(self) -> tuple[str, str, str]:
        return (self.stage, self.bento_tag, self.model_tag)


def wanted(state: dict) -> dict[str, tuple[str, str, str]]:
    return {
        stage: (stage, state[stage]["bento_tag"], state[stage]["model_tag"])
        for stage in ("production", "staging")
        if state.get(stage)
    }


def render_nginx_canary(
    upstreams: dict[str, str], weight: int, listen: str, workdir: Path | None = None
) -> str:
    """The canary template; a whole config with `workdir`, else a conf.d file (compose)."""
    return NGINX_TEMPLATES.get_template("nginx_canary.conf.j2").render(
        upstreams=upstreams,
        weight=weight,
        listen=listen,
        workdir=workdir,
        run_as_root=os.geteuid() == 0,
    )


def nginx_conf(port: int, backends: dict[str, Backend], weight: int, workdir: Path) -> str:
    """The local canary's nginx config: the backends on 127.0.0.1, staging at `weight` percent."""
    upstreams = {stage: f"127.0.0.1:{b.port}" for stage, b in backends.items()}
    return render_nginx_canary(upstreams, weight, f"127.0.0.1:{port}", workdir)


def render_container_nginx_conf() -> str:
    """container/nginx/canary.conf: the compose services behind the default canary weight."""
    upstreams = {stage: f"crash-risk-{stage}:3000" for stage in ("production", "staging")}
    return render_nginx_canary(upstreams, CANARY_WEIGHT, "80")


class LocalCanary:
    def __init__(
        self, port: int, state_path: Path, workdir: Path, ready_timeout: float = 120.0
    ) -> None:
        self.port = port
        self.state_path = state_path
        self.workdir = workdir
        self.ready_timeout = ready_timeout
        self.backends: dict[str, Backend] = {}
        self.nginx: subprocess.Popen | None = None
        self._state_text = ""

    def _start_backend(self, key: tuple[str, str, str]) -> Backend:
        stage, bento_tag, model_tag = key
        port = free_port()
        env = {**os.environ, "VZ_STAGE": stage, "BENTOML_DO_NOT_TRACK": "true"}
        with open(self.workdir / f"{stage}-{port}.log", "w") as log:  # the child keeps its own copy
            process = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "bentoml",
                    "serve",
                    bento_tag,
                    "--host",
                    "127.0.0.1",
                    "--port",
                    str(port),
                ],
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        return Backend(stage, bento_tag, model_tag, port, process)

    def _wait_ready(self, backend: Backend) -> None:
        try:
            wait_http(
                f"http://127.0.0.1:{backend.port}/readyz", self.ready_timeout, backend.process
            )
        except RuntimeError as exc:
            raise RuntimeError(
                f"{backend.stage} server: {exc}; "
                f"see {self.workdir}/{backend.stage}-{backend.port}.log"
            ) from exc

    @staticmethod
    def _stop(process: subprocess.Popen) -> None:
        if process.poll() is None:
            try:
                os.killpg(process.pid, signal.SIGTERM)
            except ProcessLookupError:
                return
            try:
                process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()

    def reconcile(self) -> bool:
        """Make backends and nginx match the state file; returns True when something changed."""
        text = self.state_path.read_text() if self.state_path.exists() else ""
        if text == self._state_text:
            return False
        state = read_state(self.state_path)
        if not state.get("production"):
            raise RuntimeError("no production model in the deployment state: run `make run` first")
        target = wanted(state)
        current = {stage: b.key for stage, b in self.backends.items()}
        fresh = {
            stage: self._start_backend(key)
            for stage, key in target.items()
            if current.get(stage) != key
        }
        for backend in fresh.values():
            self._wait_ready(backend)
        retired = [b for stage, b in self.backends.items() if stage not in target or stage in fresh]
        self.backends = {stage: fresh.get(stage) or self.backends[stage] for stage in target}
        conf = self.workdir / "nginx.conf"
        conf.write_text(
            nginx_conf(
                self.port,
                self.backends,
                int(state.get("canary_weight", CANARY_WEIGHT)),
                self.workdir,
            )
        )
        if self.nginx is None:
            self.nginx = subprocess.Popen(
                [nginx_binary(), "-c", str(conf), "-p", str(self.workdir)], start_new_session=True
            )
        else:
            self.nginx.send_signal(signal.SIGHUP)
            time.sleep(0.5)  # let the new nginx workers take over before the old backends go
        for backend in retired:
            self._stop(backend.process)
        self._state_text = text
        return True

    def start(self) -> None:
        for sub in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"):
            (self.workdir / "tmp" / sub).mkdir(parents=True, exist_ok=True)
        self.reconcile()

    def describe(self) -> dict:
        return {
            stage: {"port": b.port, "bento": b.bento_tag, "model": b.model_tag}
            for stage, b in self.backends.items()
        }

    def watch(self, interval: float = 1.0) -> None:
        while self.nginx is not None and self.nginx.poll() is None:
            time.sleep(interval)
            if self.reconcile():
                print(json.dumps({"reloaded": self.describe()}), flush=True)
        raise RuntimeError("nginx exited; see error.log in " + str(self.workdir))

    def stop(self) -> None:
        if self.nginx is not None:
            self._stop(self.nginx)
            self.nginx = None
        for backend in self.backends.values():
            self._stop(backend.process)
        self.backends = {}
