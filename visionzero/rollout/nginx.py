"""nginx for the canary: its config rendered from the one template (the local canary's, the
compose file's and the benchmarks' comparison), its binary, its temp folders and worker account,
and waiting for it to listen or to reload."""

from __future__ import annotations

import contextlib
import os
import pwd
import signal
from dataclasses import dataclass
from pathlib import Path

import psutil

from visionzero.platform.processes import (
    Child,
    NotReady,
    installed,
    listening,
    log_cause,
    wait_until,
)
from visionzero.platform.settings import Settings, settings
from visionzero.platform.stage import STAGES
from visionzero.rollout import edge
from visionzero.rollout.backend import Backend, CanaryError
from visionzero.rollout.deployment_state import CANARY_WEIGHT
from visionzero.rollout.rendering import TEMPLATES

NGINX_TEMP_KINDS = ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
# Where nginx started as root drops its workers: Debian's nginx account, else the classic nobody.
NGINX_WORKER_USERS = ("www-data", "nobody")
START_TIMEOUT = 10.0  # seconds for nginx to listen, and for its old workers to go after a reload


def nginx_binary() -> str:
    found = installed("nginx", Path("/usr/sbin/nginx"))
    if not found:
        raise CanaryError(
            "nginx is not installed: run `make system-deps` (Debian: apt-get install nginx-light)"
        )
    return found


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


def nginx_cause(workdir: Path) -> str:
    """nginx's error log, or its stderr for what it said before it read the config."""
    error_log = workdir / "error.log"
    if error_log.exists() and error_log.stat().st_size:
        return log_cause(error_log)
    return log_cause(workdir / "nginx.log")


def wait_listening(nginx: Child, port: int, workdir: Path) -> None:
    """Until nginx (started with `-p workdir`, output to workdir/nginx.log) listens on port."""
    try:
        wait_until(
            lambda: listening(port),
            nginx.process,
            START_TIMEOUT,
            interval=0.1,
            cause=lambda: nginx_cause(workdir),
        )
    except NotReady as exc:
        raise CanaryError(f"nginx did not start: {exc}") from exc


def reload_nginx(nginx: Child, workdir: Path) -> None:
    """SIGHUP, then wait (START_TIMEOUT at most) until the old workers finished their requests."""
    try:
        master = psutil.Process(nginx.process.pid)
        old = set(master.children())
        nginx.process.send_signal(signal.SIGHUP)

        def renewed() -> bool:
            workers = set(master.children())
            return bool(workers) and not workers & old

        with contextlib.suppress(NotReady):  # old workers still finishing: they go by themselves
            wait_until(renewed, timeout=START_TIMEOUT, interval=0.1)
    except psutil.Error as exc:
        raise CanaryError(f"nginx exited: {nginx_cause(workdir)}") from exc
