"""The local canary: production and staging as two `bentoml serve` processes behind a real nginx.

nginx splits requests with the deployment state's canary weight (the same 50 as the Kubernetes
canary); a request whose backend is dead or failing goes to the other stage. The state file is
polled: after `promote`, `rollback` or a deploy the new backends start and must pass a check
(/readyz, then a real prediction from that very model) before nginx reloads onto them and the old
ones stop. A check that fails leaves the old backends serving, says why and alerts; a backend that
dies is restarted.

Every child runs in a session of its own (a terminal's Ctrl-C reaches `serve` alone) and is
recorded in `$VZ_HOME/serve.json` the moment it starts, so that `serve` stops all of them on every
exit path, and the next `serve` stops what a crashed one left. BentoML's workers run in sessions
of their own too: they are found by a tag in their environment.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import psutil

from visionzero.platform.alerts import build_message, send
from visionzero.platform.processes import (
    Child,
    PortUnavailable,
    check_port,
    free_port,
    kill_all,
    live_processes,
    log_cause,
    signals_held,
    start_child,
)
from visionzero.platform.stage import Stage
from visionzero.rollout.backend import (
    Backend,
    BackendFailed,
    CanaryError,
    check_backend,
    release_key,
    start_backend,
)
from visionzero.rollout.deployment_state import (
    CANARY_WEIGHT,
    DeploymentState,
    parse_state,
    require_production,
    staging_weight,
)
from visionzero.rollout.nginx import (
    make_nginx_temp_folders,
    nginx_binary,
    nginx_cause,
    nginx_conf,
    reload_nginx,
    wait_listening,
)
from visionzero.rollout.prometheus import (
    PrometheusError,
    local_prometheus_config,
    prometheus_argv,
    prometheus_binary,
    reload,
    wait_ready,
    write_config,
)
from visionzero.rollout.serve_record import ServeRecord, load_serve_record, save_serve_record
from visionzero.serving.bento_build import Release

MAX_RESTARTS = 3  # attempts in a row for a dead backend, 1, 2 and 4 s apart
STABLE_AFTER = 60.0  # seconds a restarted backend must live before its attempts count from 0


def _is_serve(pid: int) -> bool:
    with contextlib.suppress(psutil.Error):
        cmdline = psutil.Process(pid).cmdline()
        return pid != os.getpid() and "serve" in cmdline and any("run.py" in a for a in cmdline)
    return False


def _looks_ours(proc: psutil.Process) -> bool:
    with contextlib.suppress(psutil.Error):
        cmdline = " ".join(proc.cmdline())
        return any(name in cmdline for name in ("bentoml", "nginx", "prometheus"))
    return False


def clear_stale(pid_file: Path) -> list[int]:
    """Stop what a crashed `serve` left running (its pid file names the process groups and the
    temp folder its backends' tags start with); returns their pids. Refuses while it still runs."""
    if not pid_file.exists():
        return []
    record = load_serve_record(pid_file)
    if record is None:
        pid_file.unlink()
        return []
    pid, workdir, groups = record.pid, Path(record.workdir), record.groups
    if _is_serve(pid):
        raise CanaryError(f"serve already runs (pid {pid}, port {record.port}): stop it first")
    prefix = workdir.name + "/"
    left = [
        proc
        for proc in live_processes(set(groups.values()), lambda tag: tag.startswith(prefix))
        if _looks_ours(proc)
    ]
    kill_all(left, signal.SIGTERM)
    _, alive = psutil.wait_procs(left, timeout=10)
    kill_all(alive, signal.SIGKILL)
    if workdir.name.startswith("vz-serve-"):
        shutil.rmtree(workdir, ignore_errors=True)
    pid_file.unlink()
    return [proc.pid for proc in left]


class LocalCanary:
    """`serve`: nginx and the backends the deployment state wants, kept healthy until stop()."""

    def __init__(
        self,
        port: int,
        state_path: Path,
        pid_file: Path,
        ready_timeout: float = 120.0,
        monitor: bool = False,
    ) -> None:
        self.port = port
        self.monitor = monitor  # also run a Prometheus scraping the backends
        self.state_path = state_path
        self.pid_file = pid_file
        self.ready_timeout = ready_timeout
        self.workdir: Path | None = None
        self.children: dict[str, Child] = {}
        self.backends: dict[Stage, Backend] = {}
        self.nginx: Child | None = None
        self.prometheus: Child | None = None
        self.prometheus_url: str | None = None
        self.weight = CANARY_WEIGHT
        self._seen: str | None = None  # the state text last acted on
        self._restarts: dict[str, int] = {}

    def check(self) -> None:
        """What must hold before anything starts; raises CanaryError with the one-line reason."""
        stopped = clear_stale(self.pid_file)
        if stopped:
            print(f"stopped {len(stopped)} processes a crashed serve left running", flush=True)
        require_production(self._parse(self._state_text()))
        try:
            check_port(self.port)
        except PortUnavailable as exc:
            raise CanaryError(str(exc)) from exc
        nginx_binary()
        if self.monitor:
            try:
                prometheus_binary()
            except PrometheusError as exc:
                raise CanaryError(str(exc)) from exc

    def _state_text(self) -> str:
        return self.state_path.read_text() if self.state_path.exists() else ""

    def _parse(self, text: str) -> DeploymentState:
        try:
            return parse_state(text)
        except ValueError as exc:
            raise CanaryError(f"unreadable deployment state {self.state_path}: {exc}") from exc

    def start(self) -> None:
        self.workdir = Path(tempfile.mkdtemp(prefix="vz-serve-"))
        make_nginx_temp_folders(self.workdir)
        self._record()
        self.reconcile()
        if self.monitor:
            self._start_prometheus()

    def _record(self) -> None:
        """The pid file: who we are and the process group of every child, written atomically."""
        record = ServeRecord(
            pid=os.getpid(),
            port=self.port,
            workdir=str(self.workdir),
            groups={name: child.process.pid for name, child in self.children.items()},
            # for the monitor: what to scrape or query while this serve runs
            backends={stage: f"http://127.0.0.1:{b.port}" for stage, b in self.backends.items()},
            prometheus_url=self.prometheus_url,
        )
        save_serve_record(self.pid_file, record)

    def _spawn(self, start: Callable[[], Backend]) -> Backend:
        with signals_held():
            backend = start()
            self.children[backend.child.name] = backend.child
            self._record()
        return backend

    def _stop_child(self, child: Child) -> None:
        child.stop()
        self.children.pop(child.name, None)
        self._record()

    def _report(self, title: str, reason: str) -> None:
        print(f"{title}: {reason}", flush=True)
        fields = {stage: b.release.model_version for stage, b in self.backends.items()}
        send(build_message("failure", f"Crash-risk serve: {title}", fields, [reason]))

    def _start_checked(
        self, target: dict[Stage, Release]
    ) -> tuple[dict[Stage, Backend], CanaryError]:
        """Start the backends target lacks and check them; a failed one is stopped at once."""
        current = {stage: b for stage, b in self.backends.items() if b.alive()}
        fresh = {
            stage: self._spawn(lambda s=stage, r=release: start_backend(s, r, self.workdir))
            for stage, release in target.items()
            if stage not in current or current[stage].key != release_key(stage, release)
        }
        failure = None
        for stage, backend in list(fresh.items()):
            try:
                check_backend(backend, self.ready_timeout)
            except BackendFailed as exc:
                failure = failure or exc
                self._stop_child(backend.child)
                del fresh[stage]
        return fresh, failure

    def _route(self, backends: dict[Stage, Backend], weight: int) -> None:
        """nginx onto `backends` (started, or reloaded and its old workers gone), then the
        backends it no longer uses stop."""
        conf, upcoming = self.workdir / "nginx.conf", self.workdir / "nginx.next.conf"
        upcoming.write_text(nginx_conf(self.port, backends, weight, self.workdir))
        nginx = [nginx_binary(), "-p", str(self.workdir)]
        test = subprocess.run([*nginx, "-t", "-q", "-c", str(upcoming)], capture_output=True)
        if test.returncode:
            raise CanaryError(f"nginx refused the config: {test.stderr.decode().strip()}")
        os.replace(upcoming, conf)
        if self.nginx is None:
            self._start_nginx([*nginx, "-c", str(conf)])
        else:
            reload_nginx(self.nginx, self.workdir)
        retired = [b for b in self.backends.values() if b not in backends.values()]
        self.backends, self.weight = backends, weight
        self._record()
        self._follow_scrape_targets()
        for backend in retired:
            self._stop_child(backend.child)

    def _start_nginx(self, argv: list[str]) -> None:
        with signals_held():
            self.nginx = start_child("nginx", argv, self.workdir / "nginx.log")
            self.children["nginx"] = self.nginx
            self._record()
        wait_listening(self.nginx, self.port, self.workdir)

    def _prometheus_config(self) -> Path:
        config = self.workdir / "prometheus.yml"
        write_config(config, local_prometheus_config({s: b.port for s, b in self.backends.items()}))
        return config

    def _start_prometheus(self) -> None:
        """Prometheus scraping the serving backends; a failed start stops serve (fail closed:
        `--monitor` promised canary metrics from it)."""
        port, log = free_port(), self.workdir / "prometheus.log"
        url = f"http://127.0.0.1:{port}"
        argv = prometheus_argv(self._prometheus_config(), self.workdir, port)
        with signals_held():
            self.prometheus = start_child("prometheus", argv, log)
            self.children["prometheus"] = self.prometheus
            self._record()
        try:
            wait_ready(url, self.prometheus.process, log)
        except PrometheusError as exc:
            raise CanaryError(str(exc)) from exc
        self.prometheus_url = url
        self._record()

    def _follow_scrape_targets(self) -> None:
        """After traffic moved: Prometheus scrapes the backends now serving. A refused reload is
        reported, not raised: serving goes on, with the old targets."""
        if self.prometheus_url is None:
            return
        try:
            self._prometheus_config()
            reload(self.prometheus_url)
        except PrometheusError as exc:
            self._report("prometheus not reloaded", str(exc))

    def reconcile(self) -> bool:
        """Match backends and nginx to the state file when it changed; True when traffic moved.

        A state whose new backends fail their check leaves the old ones serving (at start-up: a
        failed staging leaves production alone) and is tried again when the state changes."""
        text = self._state_text()
        if text == self._seen:
            return False
        self._seen = text
        try:
            state = self._parse(text)
        except CanaryError as exc:
            if not self.backends:
                raise
            self._report("deployment state ignored", str(exc))
            return False
        target = state.serving()
        if Stage.PRODUCTION not in target:
            if not self.backends:
                require_production(state)
            self._report("deployment state ignored", "it has no production")
            return False
        self._restarts.clear()
        fresh, failure = self._start_checked(target)
        if failure is not None:
            note = "; the serving backends keep serving" if self.backends else ""
            self._report("new backend failed", f"{failure}{note}")
            if self.backends or failure.stage == Stage.PRODUCTION:
                for backend in fresh.values():
                    self._stop_child(backend.child)
                if not self.backends:
                    raise failure
                return False
        kept = {s: b for s, b in self.backends.items() if s in target and s not in fresh}
        weight = staging_weight(state)
        if not fresh and kept == self.backends and weight == self.weight:
            return False  # e.g. only the history changed
        try:
            self._route({**kept, **fresh}, weight)
        except CanaryError as exc:
            for backend in fresh.values():
                self._stop_child(backend.child)
            if self.nginx is None or self.nginx.process.poll() is not None:
                raise
            self._report("nginx not reloaded", str(exc))
            return False
        return True

    def heal(self) -> None:
        """Restart a backend whose `bentoml serve` died: MAX_RESTARTS attempts in a row at most,
        with backoff; meanwhile nginx sends its requests to the other stage."""
        for stage, backend in list(self.backends.items()):
            if self.backends.get(stage) is not backend:
                continue  # replaced by an earlier restart in this loop
            if backend.alive():
                if time.monotonic() - backend.started > STABLE_AFTER:
                    self._restarts.pop(stage, None)
                continue
            attempt = self._restarts.get(stage, 0) + 1
            if attempt > MAX_RESTARTS:
                continue  # given up, alerted: the next state change tries again
            self._restarts[stage] = attempt
            if attempt == 1:
                self._report(
                    f"{stage} backend died",
                    f"exit code {backend.child.process.returncode}: restarting; "
                    f"{log_cause(backend.log)}",
                )
            time.sleep(2 ** (attempt - 1))
            fresh, failure = self._start_checked({stage: backend.release})
            if failure is not None:
                if attempt == MAX_RESTARTS:
                    self._report(f"{stage} backend not restarted, given up", str(failure))
                else:
                    print(f"{stage} restart {attempt}/{MAX_RESTARTS} failed: {failure}", flush=True)
                continue
            self._route({**self.backends, **fresh}, self.weight)
            print(json.dumps({"restarted": stage, "serving": self.describe()}), flush=True)

    def _restart_prometheus(self) -> None:
        """A dead Prometheus is started again once; serving never depends on it."""
        code = self.prometheus.process.returncode
        self.prometheus_url = None
        self._stop_child(self.prometheus)
        self.prometheus = None
        try:
            self._start_prometheus()
        except CanaryError as exc:
            self._report("prometheus died and did not restart", f"exit code {code}: {exc}")
            if self.prometheus is not None:
                self._stop_child(self.prometheus)
                self.prometheus = None
            return
        self._report("prometheus died", f"exit code {code}: restarted at {self.prometheus_url}")

    def describe(self) -> dict:
        return {
            stage: {
                "port": b.port,
                "bento": b.release.bento_tag,
                "model": b.release.model_tag,
            }
            for stage, b in self.backends.items()
        }

    def watch(self, interval: float = 1.0) -> None:
        while True:
            time.sleep(interval)
            if (code := self.nginx.process.poll()) is not None:
                raise CanaryError(f"nginx exited with code {code}: {nginx_cause(self.workdir)}")
            if self.prometheus is not None and self.prometheus.process.poll() is not None:
                self._restart_prometheus()
            self.heal()
            if self.reconcile():
                print(json.dumps({"reloaded": self.describe()}), flush=True)

    def stop(self) -> None:
        """nginx first (no new requests), then every backend; then the temp folder and the pid
        file. Signals wait meanwhile: a second Ctrl-C does not cut the stop short."""
        if self.workdir is None:
            return
        with signals_held(deliver=False):
            if self.nginx is not None:
                self._stop_child(self.nginx)
                self.nginx = None
            self.prometheus, self.prometheus_url = None, None
            for child in list(self.children.values()):
                self._stop_child(child)
            self.backends = {}
            shutil.rmtree(self.workdir, ignore_errors=True)
            self.pid_file.unlink(missing_ok=True)
