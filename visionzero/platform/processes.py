"""Children, signals, process groups, ports, and one way to wait for something to be ready.

Every server the project starts (the canary's backends, nginx, Prometheus, the MLflow UI, the
tests' and benchmarks' servers) runs in a session of its own and is waited for with `wait_until`:
it fails fast when the process dies, and says why from the process's own log.
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import shutil
import signal
import socket
import subprocess
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import psutil

from visionzero.platform.settings import child_environment

T = TypeVar("T")
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)
# Set in a child's environment, which its workers inherit: a tag to find them by, not a setting.
BACKEND_TAG = "VZ_SERVE_BACKEND"
# A Python server's own reason: the exception line of its traceback.
EXCEPTION_LINE = re.compile(r"^[A-Za-z_][\w.]*(Error|Exception|Exit|Interrupt)\b")


class PortUnavailable(RuntimeError):
    """A port we were asked to listen on is taken or forbidden: the one-line reason."""


class NotReady(RuntimeError):
    """What was waited for did not come: its process exited, it broke, or the time ran out."""


def installed(name: str, debian_path: Path) -> str | None:
    """A program on PATH, else where Debian puts it (sbin is not on every user's PATH)."""
    return shutil.which(name) or (str(debian_path) if debian_path.exists() else None)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def check_port(port: int) -> None:
    """Fail before anything starts when a server could not listen on 127.0.0.1:port."""
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as nginx does
        try:
            sock.bind(("127.0.0.1", port))
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                raise PortUnavailable(f"port {port} is in use: choose another with --port") from exc
            raise PortUnavailable(f"cannot listen on port {port}: {exc.strerror}") from exc


def listening(port: int) -> bool:
    with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=1):
        return True
    return False


def http_ok(url: str, timeout: float = 2.0) -> bool:
    """Whether url answers 200 now (a readiness probe: any failure is "not yet")."""
    with contextlib.suppress(OSError), urllib.request.urlopen(url, timeout=timeout) as response:
        return response.status == 200
    return False


def log_cause(log: Path, lines: int = 3, marker: re.Pattern[str] = EXCEPTION_LINE) -> str:
    """A server's own reason from its log: the last line `marker` finds, else its last lines."""
    text = log.read_text(errors="replace") if log.exists() else ""
    rows = [row.strip() for row in text.splitlines() if row.strip()]
    marked = [row for row in rows if marker.search(row)]
    cause = marked[-1] if marked else " | ".join(rows[-lines:])
    return cause[:500] or "its log is empty"


def wait_until(
    probe: Callable[[], T],
    process: subprocess.Popen | None = None,
    timeout: float = 120.0,
    *,
    what: str = "it",
    interval: float = 0.5,
    broken: Callable[[], str | None] | None = None,
    cause: Callable[[], str] | None = None,
) -> T:
    """Poll `probe` until it returns something true (returned). Raises NotReady as soon as
    `process` exits or `broken` names a reason, or after `timeout`; `cause` (e.g. the log's
    `log_cause`) is appended to the message."""
    deadline = time.monotonic() + timeout
    while not (found := probe()):
        if process is not None and process.poll() is not None:
            reason = f"{what} exited with code {process.returncode}"
        elif broken is not None and (failure := broken()):
            reason = failure
        elif time.monotonic() > deadline:
            reason = f"{what} not ready within {timeout:.0f} s"
        else:
            time.sleep(interval)
            continue
        raise NotReady(f"{reason}: {cause()}" if cause else reason)
    return found


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
