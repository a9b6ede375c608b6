"""The canary's pinned stage paths: /stage/<stage>/<path> through a real nginx, rendered from the
local canary's template, in front of real HTTP servers on 127.0.0.1 standing in for the stages.

The stand-ins echo their stage and the path and query they received, so each test sees what nginx
forwarded without loading a model (the real `serve` is checked in tests/test_rollout.py).
"""

from __future__ import annotations

import contextlib
import json
import tempfile
import time
from collections import Counter
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler
from pathlib import Path

import pytest
import requests

from tests.conftest import LocalServer, free_port
from visionzero.platform.processes import listening, start_child
from visionzero.rollout.nginx import (
    EdgeLimits,
    make_nginx_temp_folders,
    nginx_binary,
    render_nginx_canary,
)

pytestmark = pytest.mark.slow  # a real nginx (no model: a few seconds)


def echo(stage: str, seen: Counter | None = None) -> type[BaseHTTPRequestHandler]:
    """A stage stand-in: JSON naming the stage, the method, the path+query it received and the
    X-VZ-Traffic header nginx set; counts every request it gets in `seen`. Like the real app it
    redirects a path with a trailing slash to the one without, naming the Host it was sent (what
    Starlette does); `?redirect` answers 307 to /metadata the same way; `?own-error` is the
    backend's own 502, which nginx must pass through, not replace; `?own-headers` sends its own
    security headers, which nginx must replace, not repeat; `?slow` answers after a second."""

    class Echo(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"  # keep-alive, as nginx's upstream keepalive expects

        def _answer(self) -> None:
            if seen is not None:
                seen[stage] += 1
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length).decode() if length else ""
            path, _, query = self.path.partition("?")
            if query == "slow":
                time.sleep(1)
            if query == "redirect" or (path.endswith("/") and path != "/"):
                target = "/metadata" if query == "redirect" else path.rstrip("/")
                self.send_response(307)
                self.send_header("Location", f"http://{self.headers['Host']}{target}")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            status = 502 if query == "own-error" else 200
            payload = {
                "stage": stage,
                "method": self.command,
                "path": self.path,
                "body": body,
                "traffic": self.headers.get("X-VZ-Traffic"),
            }
            data = json.dumps(payload).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            if query == "own-headers":
                self.send_header("Content-Security-Policy", "default-src *")
                self.send_header("X-Frame-Options", "ALLOWALL")
            self.end_headers()
            self.wfile.write(data)

        do_GET = do_POST = do_PUT = do_DELETE = _answer

        def log_message(self, *args: object) -> None:
            """Quiet: the tests read the answers."""

    return Echo


# A hundred requests in a blink from one client here: the limits are tested in tests/test_edge.py
UNLIMITED = EdgeLimits(rate=100_000, burst=100_000, connections=1000)


@contextlib.contextmanager
def nginx_canary(
    upstreams: dict[str, str], weight: int = 50, limits: EdgeLimits = UNLIMITED
) -> Iterator[str]:
    """A real nginx running the canary config for `upstreams` (host:port by stage); yields its
    URL and stops it on every exit path."""
    with tempfile.TemporaryDirectory(prefix="vz-stage-paths-") as tmp:
        workdir = Path(tmp)
        make_nginx_temp_folders(workdir)
        port = free_port()
        conf = workdir / "nginx.conf"
        config = render_nginx_canary(upstreams, weight, f"127.0.0.1:{port}", workdir, limits)
        conf.write_text(config)
        argv = [nginx_binary(), "-p", str(workdir), "-c", str(conf)]
        nginx = start_child("nginx", argv, workdir / "nginx.log")
        try:
            deadline = time.monotonic() + 10
            while not listening(port):
                assert nginx.process.poll() is None, (workdir / "nginx.log").read_text()
                assert time.monotonic() < deadline, "nginx did not listen within 10 s"
                time.sleep(0.05)
            yield f"http://127.0.0.1:{port}"
        finally:
            nginx.stop()


@pytest.fixture(scope="module")
def stages() -> Iterator[dict[str, str]]:
    """Production and staging stand-ins: host:port by stage."""
    with LocalServer(echo("production")) as production, LocalServer(echo("staging")) as staging:
        yield {"production": production.url[7:], "staging": staging.url[7:]}


def answered(response: requests.Response) -> tuple[int, str, str]:
    """(status, the body's stage, the X-VZ-Stage header)."""
    return response.status_code, response.json()["stage"], response.headers["X-VZ-Stage"]


def test_pinned_paths_always_reach_their_stage(stages: dict[str, str]) -> None:
    with nginx_canary(stages) as url, requests.Session() as session:
        for stage in ("production", "staging"):
            pinned = [session.get(f"{url}/stage/{stage}/metadata", timeout=5) for _ in range(20)]
            assert Counter(answered(r) for r in pinned) == {(200, stage, stage): 20}
            assert {r.json()["path"] for r in pinned} == {"/metadata"}  # the prefix is stripped
            posted = session.post(f"{url}/stage/{stage}/predict", json={"items": []}, timeout=5)
            assert posted.json() == {
                "stage": stage,
                "method": "POST",
                "path": "/predict",
                "body": '{"items": []}',
                "traffic": "pinned",
            }
        # the unpinned path is still the 50/50 split: pinning is what makes the stage certain
        split = {session.get(f"{url}/metadata", timeout=5).json()["stage"] for _ in range(60)}
        assert split == {"production", "staging"}


def test_query_string_and_encoded_path_survive(stages: dict[str, str]) -> None:
    with nginx_canary(stages) as url:
        query = "/zones?resolution=7&date=2026-11-29&block=2"
        assert requests.get(f"{url}/stage/staging{query}", timeout=5).json()["path"] == query
        history = "/history?zone=892a100d2c3ffff&note=a%20b%26c"
        assert requests.get(f"{url}/stage/production{history}", timeout=5).json()["path"] == history
        encoded = requests.get(f"{url}/stage/staging/static/a%20b.js?x=1", timeout=5)
        assert encoded.json()["path"] == "/static/a%20b.js?x=1"
        # the page's root: `/stage/staging` gets its slash (relative URLs resolve under it)
        bare = requests.get(f"{url}/stage/staging", timeout=5, allow_redirects=False)
        assert (bare.status_code, bare.headers["Location"]) == (301, "/stage/staging/")
        root = requests.get(f"{url}/stage/staging/", timeout=5)
        assert answered(root) == (200, "staging", "staging") and root.json()["path"] == "/"


def test_without_staging_the_staging_paths_are_404(stages: dict[str, str]) -> None:
    production_only = {"production": stages["production"]}
    with nginx_canary(production_only) as url, requests.Session() as session:
        for path in ("/stage/staging/metadata", "/stage/staging/", "/stage/staging"):
            missing = session.get(url + path, timeout=5, allow_redirects=False)
            assert missing.status_code == 404, path
            assert missing.headers["Content-Type"] == "application/json"
            assert missing.json() == {"error": "no staging deployment is running", "field": "stage"}
        unknown = session.get(f"{url}/stage/canary/metadata", timeout=5)
        assert unknown.status_code == 404 and unknown.json()["field"] == "stage"
        assert "unknown stage" in unknown.json()["error"]
        pinned = [session.get(f"{url}/stage/production/metadata", timeout=5) for _ in range(5)]
        assert Counter(answered(r) for r in pinned) == {(200, "production", "production"): 5}
        split = [session.get(f"{url}/metadata", timeout=5) for _ in range(20)]
        assert Counter(answered(r) for r in split) == {(200, "production", "production"): 20}


def test_a_pinned_stage_whose_backend_is_down_never_answers_as_the_other(
    stages: dict[str, str],
) -> None:
    """Staging's port refuses connections: the split falls back to production (the backup), the
    pinned staging path answers 503 naming staging instead."""
    dead_staging = {**stages, "staging": f"127.0.0.1:{free_port()}"}
    with nginx_canary(dead_staging) as url, requests.Session() as session:
        for _ in range(10):
            down = session.get(f"{url}/stage/staging/metadata", timeout=5)
            assert down.status_code == 503
            assert down.headers["X-VZ-Stage"] == "staging"
            assert down.json() == {"error": "the staging backend does not answer", "field": "stage"}
        split = [session.get(f"{url}/metadata", timeout=5) for _ in range(20)]
        assert {(r.status_code, r.json()["stage"]) for r in split} == {(200, "production")}
        production = session.get(f"{url}/stage/production/metadata", timeout=5)
        assert answered(production) == (200, "production", "production")


def test_a_backends_own_error_passes_through_a_pinned_path(stages: dict[str, str]) -> None:
    """Only nginx's own 502/504 (no answer) become the 503: a backend's answer is its own."""
    with nginx_canary(stages) as url:
        own = requests.get(f"{url}/stage/staging/metadata?own-error", timeout=5)
        assert answered(own) == (502, "staging", "staging")
        assert own.json()["path"] == "/metadata?own-error"
