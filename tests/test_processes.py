"""platform/processes.py's one way to wait: fast failure when the awaited process dies, with the
reason from its own log; real child processes and a real HTTP server on 127.0.0.1."""

from __future__ import annotations

import subprocess
import sys
import time
from http.server import BaseHTTPRequestHandler
from pathlib import Path

import pytest

from benchmarks._load import wait_ready
from tests.conftest import LocalServer, wait_for, wait_http
from visionzero.platform.processes import (
    NotReady,
    free_port,
    http_ok,
    log_cause,
    start_child,
    wait_until,
)


def dying(tmp_path: Path, code: int = 3) -> tuple[subprocess.Popen, Path]:
    """A child that prints a traceback's last line to its log and exits with `code`."""
    log = tmp_path / "child.log"
    script = f"import sys; print('starting'); print('ValueError: no model'); sys.exit({code})"
    child = start_child("dying", [sys.executable, "-c", script], log)
    child.process.wait(timeout=30)
    return child.process, log


class Ready(BaseHTTPRequestHandler):
    def do_GET(self) -> None:  # noqa: N802 (the standard library's name)
        self.send_response(200 if self.path == "/readyz" else 503)
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


def test_a_dead_process_fails_the_wait_at_once_with_its_logged_reason(tmp_path: Path) -> None:
    process, log = dying(tmp_path)
    started = time.monotonic()
    with pytest.raises(NotReady) as failure:
        wait_until(lambda: False, process, 60, what="the server", cause=lambda: log_cause(log))
    assert time.monotonic() - started < 5
    assert str(failure.value) == "the server exited with code 3: ValueError: no model"


def test_the_wait_ends_on_a_broken_sign_or_the_timeout_and_returns_what_it_found() -> None:
    with pytest.raises(NotReady, match="^startup failed$"):
        wait_until(lambda: None, timeout=60, broken=lambda: "startup failed")
    with pytest.raises(NotReady, match="^it not ready within 0 s$"):
        wait_until(lambda: [], timeout=0.2, interval=0.05)
    answers = iter([None, None, "found"])
    assert wait_until(lambda: next(answers), timeout=5, interval=0.01) == "found"


def test_log_cause_prefers_the_marked_line_else_the_last_lines(tmp_path: Path) -> None:
    log = tmp_path / "server.log"
    assert log_cause(log) == "its log is empty"
    log.write_text("one\ntwo\nthree\nfour\n")
    assert log_cause(log) == "two | three | four"
    log.write_text("Traceback\nKeyError: 'x'\nshutting down\n")
    assert log_cause(log) == "KeyError: 'x'"


def test_http_probes_and_the_test_helpers_share_the_wait(tmp_path: Path) -> None:
    with LocalServer(Ready) as server:
        assert http_ok(server.url + "/readyz")
        assert not http_ok(server.url + "/other")  # 503: not ready
        wait_http(server.url + "/readyz", timeout=5)
    assert not http_ok(f"http://127.0.0.1:{free_port()}/readyz")  # nothing listens
    with pytest.raises(AssertionError, match="^the flag within 0 s$"):
        wait_for(lambda: False, 0.3, "the flag")
    process, _ = dying(tmp_path, code=4)
    with pytest.raises(NotReady, match="exited with code 4"):
        wait_http(f"http://127.0.0.1:{free_port()}/readyz", timeout=60, process=process)


def test_the_serving_benchmark_stops_waiting_for_a_server_that_died(tmp_path: Path) -> None:
    """It used to poll a dead server's port until its timeout (120 s)."""
    process, _ = dying(tmp_path)
    started = time.monotonic()
    with pytest.raises(NotReady, match="exited with code 3"):
        wait_ready(f"http://127.0.0.1:{free_port()}", process, timeout=60)
    assert time.monotonic() - started < 5
