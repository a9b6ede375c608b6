"""A test session stopped by SIGTERM (a CI timeout, a `kill`) still stops the servers its fixtures
started: before tests/conftest.py turned SIGTERM into an interrupt, pytest died at once and left
every `bentoml serve` and nginx of its session fixtures running."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

INNER_TEST = """
import subprocess, sys, time
from pathlib import Path

import pytest


@pytest.fixture
def server():
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
    Path({pidfile!r}).write_text(str(child.pid))
    yield child
    child.terminate()
    child.wait()


def test_runs_until_stopped(server):
    time.sleep(600)
"""


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def test_sigterm_to_the_session_runs_fixture_teardown(tmp_path: Path) -> None:
    pidfile = tmp_path / "child.pid"
    (tmp_path / "conftest.py").write_text("from tests.conftest import pytest_configure  # noqa\n")
    (tmp_path / "test_inner.py").write_text(INNER_TEST.format(pidfile=str(pidfile)))
    session = subprocess.Popen(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(tmp_path)],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 120
        while not pidfile.exists() and time.monotonic() < deadline:
            time.sleep(0.2)
        child = int(pidfile.read_text())
        assert alive(child)
        session.send_signal(signal.SIGTERM)
        session.wait(timeout=60)
        deadline = time.monotonic() + 10
        while alive(child) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert not alive(child), "the fixture's server outlived the stopped session"
    finally:
        session.kill()
        if pidfile.exists() and alive(int(pidfile.read_text())):
            os.kill(int(pidfile.read_text()), signal.SIGKILL)
