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
import errno
import json
import os
import pwd
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import psutil
import requests

from visionzero.platform.settings import (
    UNLOGGED_REQUEST_ID,
    Settings,
    child_environment,
    paths,
    settings,
)
from visionzero.rollout import edge
from visionzero.rollout.alerts import build_message, send
from visionzero.rollout.deployment_state import CANARY_WEIGHT, require_production, staging_weight
from visionzero.rollout.prometheus import (
    PrometheusError,
    local_prometheus_config,
    prometheus_argv,
    prometheus_binary,
    reload,
    wait_ready,
    write_config,
)
from visionzero.rollout.rendering import TEMPLATES

STAGES = ("production", "staging")
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)
# Set in a backend's environment, which its workers inherit: a tag to find them by, not a setting.
BACKEND_TAG = "VZ_SERVE_BACKEND"
SMOKE_REQUEST = {
    "items": [{"latitude": 40.7128, "longitude": -74.0060, "datetime": "2025-02-03T08:30"}]
}
# The check's own prediction is no one's traffic: its backends leave this (unguessable) id unlogged.
SMOKE_REQUEST_ID = f"vz-check-{secrets.token_hex(16)}"
STARTUP_FAILED = "Application startup failed"  # uvicorn's line when a worker cannot start
EXCEPTION_LINE = re.compile(r"^[A-Za-z_][\w.]*(Error|Exception|Exit|Interrupt)\b")
MAX_RESTARTS = 3  # attempts in a row for a dead backend, 1, 2 and 4 s apart
STABLE_AFTER = 60.0  # seconds a restarted backend must live before its attempts count from 0


class CanaryError(RuntimeError):
    """A failure `serve`, promote and rollback report in one line instead of a traceback."""


class BackendFailed(CanaryError):
    """A backend did not pass its check; the message carries the model server's own reason."""

    def __init__(self, stage: str, release: dict, reason: str) -> None:
        super().__init__(
            f"model {release['model_version']} ({release['bento_tag']}) "
            f"failed its check as {stage}: {reason}"
        )
        self.stage = stage
        self.release = release


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def check_port(port: int) -> None:
    """Fail before anything starts when nginx could not listen on 127.0.0.1:port."""
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as nginx does
        try:
            sock.bind(("127.0.0.1", port))
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                raise CanaryError(f"port {port} is in use: choose another with --port") from exc
            raise CanaryError(f"cannot listen on port {port}: {exc.strerror}") from exc


def listening(port: int) -> bool:
    with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=1):
        return True
    return False


def nginx_binary() -> str:
    found = shutil.which("nginx") or (
        "/usr/sbin/nginx" if Path("/usr/sbin/nginx").exists() else None
    )
    if not found:
        raise CanaryError(
            "nginx is not installed: run `make system-deps` (Debian: apt-get install nginx-light)"
        )
    return found


def log_cause(log: Path, lines: int = 3) -> str:
    """A server's own reason from its log: the last exception line, else its last lines."""
    text = log.read_text(errors="replace") if log.exists() else ""
    rows = [row.strip() for row in text.splitlines() if row.strip()]
    exceptions = [row for row in rows if EXCEPTION_LINE.match(row)]
    cause = exceptions[-1] if exceptions else " | ".join(rows[-lines:])
    return cause[:500] or "its log is empty"


@contextlib.contextmanager
def signals_held(deliver: bool = True) -> Iterator[None]:
    """SIGTERM and SIGINT wait until the block ends (main thread only): a child started inside is
    recorded before a signal can stop us, and a stop is not cut short. With `deliver` a held signal
    is raised again after the block."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    held: list[int] = []
    previous = {
        sig: signal.signal(sig, lambda signum, _: held.append(signum)) for sig in STOP_SIGNALS
    }
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        if held and deliver:
            signal.raise_signal(held[0])


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


@contextlib.contextmanager
def stopping_on_signals() -> Iterator[None]:
    """SIGTERM, like Ctrl-C, raises KeyboardInterrupt (main thread only), so the `finally` blocks
    stop the children: by default SIGTERM would end the process at once and leave them running."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {sig: signal.signal(sig, _interrupt) for sig in STOP_SIGNALS}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def live_processes(groups: set[int], tagged: Callable[[str], bool]) -> list[psutil.Process]:
    """Live processes in one of the process groups or whose BACKEND_TAG `tagged` accepts."""
    found = []
    for proc in psutil.process_iter(["status"]):
        if proc.pid == os.getpid() or proc.info["status"] == psutil.STATUS_ZOMBIE:
            continue
        try:
            if os.getpgid(proc.pid) in groups or tagged(proc.environ().get(BACKEND_TAG, "")):
                found.append(proc)
        except (OSError, psutil.Error):
            continue
    return found


def kill_all(processes: list[psutil.Process], sig: int) -> None:
    for proc in processes:
        with contextlib.suppress(psutil.Error):
            proc.send_signal(sig)


@dataclass
class Child:
    """A process we started in a session of its own; a backend's workers carry its tag."""

    name: str
    process: subprocess.Popen
    tag: str = ""

    def processes(self) -> list[psutil.Process]:
        self.process.poll()  # reap the leader: a zombie is gone
        return live_processes({self.process.pid}, lambda tag: bool(self.tag) and tag == self.tag)

    def stop(self, timeout: float = 15.0) -> None:
        """SIGTERM the group, whose leader stops its workers, or each process once the leader is
        gone (orphaned workers still serve); SIGKILL whatever is left after `timeout`."""
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGTERM)
        orphans_told = False
        deadline = time.monotonic() + timeout
        while (left := self.processes()) and time.monotonic() < deadline:
            if not orphans_told and self.process.poll() is not None:
                kill_all(left, signal.SIGTERM)
                orphans_told = True
            time.sleep(0.2)
        kill_all(left, signal.SIGKILL)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait()


def start_child(name: str, argv: list[str], log: Path, tag: str = "", **env: str) -> Child:
    """Start argv in a session of its own, output to log; env (and the tag) on top of the
    allowlisted part of ours (`child_environment`: no secret reaches a model server, nginx or
    Prometheus), which holds the absolute VZ_HOME `configure_environment` exported."""
    environment = child_environment({**env, **({BACKEND_TAG: tag} if tag else {})})
    with open(log, "w") as out:  # the child keeps its own copy
        process = subprocess.Popen(
            argv, env=environment, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
    return Child(name, process, tag)


def release_key(stage: str, release: dict) -> tuple[str, str, str]:
    """What makes a backend: a stage whose Bento or model changes needs a new one."""
    return (stage, release["bento_tag"], release["model_tag"])


@dataclass
class Backend:
    """One `bentoml serve` of a release in a stage."""

    stage: str
    release: dict
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


def start_backend(stage: str, release: dict, workdir: Path, **env: str) -> Backend:
    port = free_port()
    name = f"{stage}-{port}"
    log = workdir / f"{name}.log"
    argv = [sys.executable, "-m", "bentoml", "serve", release["bento_tag"]]
    argv += ["--host", "127.0.0.1", "--port", str(port)]
    tag = f"{workdir.name}/{name}"
    stores = paths()  # absolute: the model server runs in its Bento's folder, not ours
    child = start_child(
        name,
        argv,
        log,
        tag,
        VZ_STAGE=stage,
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
    deadline = time.monotonic() + timeout
    while True:
        with contextlib.suppress(requests.RequestException):
            if requests.get(url + "/readyz", timeout=2).status_code == 200:
                break
        if not backend.alive():
            raise backend.failed(f"its server exited with code {backend.child.process.returncode}")
        if STARTUP_FAILED in backend.log.read_text(errors="replace"):
            raise backend.failed("its model server could not start")
        if time.monotonic() > deadline:
            raise backend.failed(f"not ready within {timeout:.0f} s")
        time.sleep(0.5)
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
    if served is None or str(served) != str(backend.release["model_version"]):
        raise backend.failed(
            f"smoke prediction: HTTP {response.status_code}, {response.text[:200]!r}"
        )


def preflight(release: dict, timeout: float = 120.0) -> None:
    """Start the release's Bento on a free port, check it as `serve` does, stop it: promote and
    rollback change the state only for a release that passes. Raises BackendFailed."""
    with stopping_on_signals(), tempfile.TemporaryDirectory(prefix="vz-preflight-") as tmp:
        backend = None
        try:
            with signals_held():  # one worker is enough to show that the model loads and answers
                backend = start_backend("production", release, Path(tmp), VZ_WORKERS="1")
            check_backend(backend, timeout)
        finally:
            if backend is not None:
                backend.child.stop()


def wanted(state: dict) -> dict[str, dict]:
    """The releases the state wants served, by stage."""
    return {stage: state[stage] for stage in STAGES if state.get(stage)}


NGINX_TEMP_KINDS = ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
# Where nginx started as root drops its workers: Debian's nginx account, else the classic nobody.
NGINX_WORKER_USERS = ("www-data", "nobody")


@dataclass(frozen=True)
class EdgeLimits:
    """What one client may do at the edge: requests a second, a burst above that, open
    connections; and the largest request body anyone may send."""

    rate: int
    burst: int
    connections: int
    max_body_bytes: int = Settings.model_fields["vz_max_body_bytes"].default

    @classmethod
    def from_settings(cls) -> EdgeLimits:
        current = settings()
        return cls(
            current.vz_edge_rate_per_second,
            current.vz_edge_burst,
            current.vz_edge_connections,
            current.vz_max_body_bytes,
        )

    @classmethod
    def defaults(cls) -> EdgeLimits:
        """The settings' defaults, whatever this machine's environment says."""
        fields = Settings.model_fields
        names = ("vz_edge_rate_per_second", "vz_edge_burst", "vz_edge_connections")
        return cls(*(fields[name].default for name in names))


def nginx_worker_user() -> str | None:
    """The unprivileged account nginx's workers run as when it starts as root (None otherwise:
    its workers are then its own user)."""
    if os.geteuid() != 0:
        return None
    for name in NGINX_WORKER_USERS:
        with contextlib.suppress(KeyError):
            pwd.getpwnam(name)
            return name
    tried = ", ".join(NGINX_WORKER_USERS)
    raise CanaryError(f"no unprivileged account for nginx's workers (tried {tried})")


def make_nginx_temp_folders(workdir: Path) -> None:
    """nginx's temp folders (request bodies, buffered answers) under workdir/tmp. As root, its
    workers run unprivileged: the folders are theirs alone and workdir lets their group pass
    through (mode 0710: no listing, and no other account gets in)."""
    for kind in NGINX_TEMP_KINDS:
        (workdir / "tmp" / kind).mkdir(parents=True, exist_ok=True)
    user = nginx_worker_user()
    if user is None:
        return
    account = pwd.getpwnam(user)
    os.chown(workdir, -1, account.pw_gid)
    workdir.chmod(0o710)
    for folder in [workdir / "tmp", *(workdir / "tmp" / kind for kind in NGINX_TEMP_KINDS)]:
        os.chown(folder, account.pw_uid, account.pw_gid)
        folder.chmod(0o700)


def render_nginx_canary(
    upstreams: dict[str, str],
    weight: int,
    listen: str,
    workdir: Path | None = None,
    limits: EdgeLimits | None = None,
    guarded: bool = True,
) -> str:
    """The canary template; a whole config with `workdir`, else a conf.d file (compose). `limits`
    default to the settings'. `guarded=False` drops the per-client limits and the security headers:
    only benchmarks/serving.py's comparison renders that."""
    limits = limits or EdgeLimits.from_settings()
    return TEMPLATES.get_template("nginx_canary.conf.j2").render(
        upstreams=upstreams,
        stages=STAGES,
        weight=weight,
        listen=listen,
        workdir=workdir,
        worker_user=nginx_worker_user() if workdir else None,
        temp_kinds=NGINX_TEMP_KINDS,
        routes=edge.ROUTES,
        limits=limits if guarded else None,
        security_headers=edge.SECURITY_HEADERS if guarded else {},
        max_body_bytes=limits.max_body_bytes,
    )


def nginx_conf(port: int, backends: dict[str, Backend], weight: int, workdir: Path) -> str:
    """The local canary's nginx config: the backends on 127.0.0.1, staging at `weight` percent."""
    upstreams = {stage: f"127.0.0.1:{b.port}" for stage, b in backends.items()}
    return render_nginx_canary(upstreams, weight, f"127.0.0.1:{port}", workdir)


def render_container_nginx_conf() -> str:
    """container/nginx/canary.conf: the compose services behind the default canary weight, with
    the default limits (not this machine's environment: the file is committed)."""
    upstreams = {stage: f"crash-risk-{stage}:3000" for stage in STAGES}
    return render_nginx_canary(upstreams, CANARY_WEIGHT, "80", limits=EdgeLimits.defaults())


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
    try:
        record = json.loads(pid_file.read_text())
        pid, workdir, groups = record["pid"], Path(record["workdir"]), record["groups"]
    except (ValueError, KeyError, TypeError):
        pid_file.unlink()
        return []
    if _is_serve(pid):
        raise CanaryError(
            f"serve already runs (pid {pid}, port {record.get('port')}): stop it first"
        )
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
        self.backends: dict[str, Backend] = {}
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
        check_port(self.port)
        nginx_binary()
        if self.monitor:
            try:
                prometheus_binary()
            except PrometheusError as exc:
                raise CanaryError(str(exc)) from exc

    def _state_text(self) -> str:
        return self.state_path.read_text() if self.state_path.exists() else ""

    def _parse(self, text: str) -> dict:
        try:
            return json.loads(text) if text else {}
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
        record = {
            "pid": os.getpid(),
            "port": self.port,
            "workdir": str(self.workdir),
            "groups": {name: child.process.pid for name, child in self.children.items()},
            # for the monitor: what to scrape or query while this serve runs
            "backends": {stage: f"http://127.0.0.1:{b.port}" for stage, b in self.backends.items()},
            "prometheus_url": self.prometheus_url,
        }
        partial = self.pid_file.with_suffix(".partial")
        partial.write_text(json.dumps(record))
        os.replace(partial, self.pid_file)

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
        fields = {stage: b.release["model_version"] for stage, b in self.backends.items()}
        send(build_message("failure", f"Crash-risk serve: {title}", fields, [reason]))

    def _start_checked(self, target: dict[str, dict]) -> tuple[dict[str, Backend], CanaryError]:
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

    def _route(self, backends: dict[str, Backend], weight: int) -> None:
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
            self._reload_nginx()
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
        deadline = time.monotonic() + 10
        while not listening(self.port):
            if self.nginx.process.poll() is not None or time.monotonic() > deadline:
                raise CanaryError(f"nginx did not start: {self._nginx_cause()}")
            time.sleep(0.1)

    def _nginx_cause(self) -> str:
        """nginx's error log, or its stderr for what it said before it read the config."""
        error_log = self.workdir / "error.log"
        if error_log.exists() and error_log.stat().st_size:
            return log_cause(error_log)
        return log_cause(self.workdir / "nginx.log")

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

    def _reload_nginx(self) -> None:
        """SIGHUP, then wait (10 s at most) until the old workers finished their requests."""
        try:
            master = psutil.Process(self.nginx.process.pid)
            old = set(master.children())
            self.nginx.process.send_signal(signal.SIGHUP)
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline:
                workers = set(master.children())
                if workers and not workers & old:
                    return
                time.sleep(0.1)
        except psutil.Error as exc:
            raise CanaryError(f"nginx exited: {self._nginx_cause()}") from exc

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
        target = wanted(state)
        if "production" not in target:
            if not self.backends:
                require_production(state)
            self._report("deployment state ignored", "it has no production")
            return False
        self._restarts.clear()
        fresh, failure = self._start_checked(target)
        if failure is not None:
            note = "; the serving backends keep serving" if self.backends else ""
            self._report("new backend failed", f"{failure}{note}")
            if self.backends or failure.stage == "production":
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
                "bento": b.release["bento_tag"],
                "model": b.release["model_tag"],
            }
            for stage, b in self.backends.items()
        }

    def watch(self, interval: float = 1.0) -> None:
        while True:
            time.sleep(interval)
            if self.nginx.process.poll() is not None:
                raise CanaryError(
                    f"nginx exited with code {self.nginx.process.returncode}: {self._nginx_cause()}"
                )
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
