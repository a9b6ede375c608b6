"""A real Prometheus next to the local canary (`serve --monitor`), and where to find one.

The canary's operational metrics (error rate, latency percentiles per stage) should come from the
same kind of Prometheus that scrapes the containers and the cluster, not from a local imitation: so
`serve --monitor` runs Debian's `prometheus` binary as one more child of `serve`, scraping both
stages' BentoML `/metrics` every 5 s with each target labelled by its stage, its TSDB in the serve
workdir. When the canary moves traffic the config is rewritten and Prometheus reloaded
(`--web.enable-lifecycle`, POST /-/reload: unlike SIGHUP it answers whether the config was taken).

The process itself is started and stopped by local_canary (a `Child` like nginx); this module
renders the config, checks readiness, reloads, and tells other commands where Prometheus is.
"""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

import psutil
import requests

from visionzero.platform.processes import NotReady, http_ok, installed, log_cause, wait_until
from visionzero.platform.settings import settings
from visionzero.platform.stage import STAGES
from visionzero.rollout.rendering import TEMPLATES
from visionzero.rollout.serve_record import load_serve_record

LOCAL_SCRAPE = "5s"  # short: a canary check a minute after start-up already has a dozen samples
CONTAINER_SCRAPE = "15s"
PUSHGATEWAY_TARGET = "pushgateway:9091"  # the compose service the monitor pushes to
READY_TIMEOUT = 30.0
ERROR_LINE = re.compile(r"level=error")  # Prometheus's own reason in its logfmt log


class PrometheusError(RuntimeError):
    """Prometheus is missing, did not start, or refused a config: the one-line reason."""


def prometheus_binary() -> str:
    found = installed("prometheus", Path("/usr/bin/prometheus"))
    if not found:
        raise PrometheusError(
            "prometheus is not installed: run `make system-deps` "
            "(Debian: apt-get install prometheus)"
        )
    return found


def render_prometheus_config(
    targets: dict[str, str],
    interval: str = LOCAL_SCRAPE,
    pushgateway: str | None = None,
    header: bool = False,
) -> str:
    """The scrape config: one target per stage (`host:port`), labelled `stage`."""
    if not targets:
        raise PrometheusError("no backend to scrape")
    return TEMPLATES.get_template("prometheus.yml.j2").render(
        targets=targets,
        interval=interval,
        timeout="4s" if interval == LOCAL_SCRAPE else "10s",  # below the interval, as required
        pushgateway=pushgateway,
        header=header,
    )


def local_prometheus_config(ports: dict[str, int]) -> str:
    """The local canary's config: each stage's backend on 127.0.0.1."""
    return render_prometheus_config({stage: f"127.0.0.1:{port}" for stage, port in ports.items()})


def render_container_prometheus_config() -> str:
    """container/prometheus/prometheus.yml: the compose Bentos and the Pushgateway."""
    targets = {stage: f"crash-risk-{stage}:3000" for stage in STAGES}
    return render_prometheus_config(targets, CONTAINER_SCRAPE, PUSHGATEWAY_TARGET, header=True)


def write_config(path: Path, text: str) -> None:
    """Atomically: Prometheus may re-read the file at any moment."""
    partial = path.with_suffix(".partial")
    partial.write_text(text)
    os.replace(partial, path)


def prometheus_argv(config: Path, workdir: Path, port: int) -> list[str]:
    """Listen on 127.0.0.1 only; TSDB in the serve workdir (removed with it); reload over HTTP."""
    return [
        prometheus_binary(),
        f"--config.file={config}",
        f"--storage.tsdb.path={workdir / 'prometheus-data'}",
        "--storage.tsdb.retention.time=1d",
        f"--web.listen-address=127.0.0.1:{port}",
        "--web.enable-lifecycle",
    ]


def wait_ready(
    url: str, process: subprocess.Popen, log: Path, timeout: float = READY_TIMEOUT
) -> None:
    """Until /-/ready answers 200; raises with Prometheus's own last error line otherwise."""
    try:
        wait_until(
            lambda: http_ok(f"{url}/-/ready"),
            process,
            timeout,
            what="prometheus",
            interval=0.2,
            cause=lambda: log_cause(log, lines=1, marker=ERROR_LINE),
        )
    except NotReady as exc:
        raise PrometheusError(str(exc)) from exc


def reload(url: str) -> None:
    """Make Prometheus re-read its config file; raises with its reason when it refuses it."""
    try:
        response = requests.post(f"{url}/-/reload", timeout=10)
    except requests.RequestException as exc:
        raise PrometheusError(f"prometheus did not answer the reload: {exc}") from exc
    if response.status_code != 200:
        raise PrometheusError(f"prometheus refused the config: {response.text.strip()[:500]}")


def recorded_url(pid_file: Path) -> str | None:
    """The Prometheus of a running `serve --monitor`, from its pid file (None otherwise)."""
    record = load_serve_record(pid_file)
    if record is None or not record.prometheus_url:
        return None
    return record.prometheus_url if psutil.pid_exists(record.pid) else None


def prometheus_url(pid_file: Path) -> str | None:
    """`VZ_PROMETHEUS_URL` (Kubernetes, compose) first, else a local `serve --monitor`'s."""
    configured = settings().vz_prometheus_url
    return configured.rstrip("/") if configured else recorded_url(pid_file)
