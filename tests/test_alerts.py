"""Discord alerts against a real local server that behaves like a Discord webhook."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from http.server import BaseHTTPRequestHandler
from pathlib import Path

import pytest

from tests.conftest import ROOT, LocalServer
from visionzero.platform.alerts import DeliveryPolicy, build_message, send
from visionzero.platform.settings import paths


def discord_like(script: list[str], received: list[dict]) -> type[BaseHTTPRequestHandler]:
    """A webhook answering each POST with the next action of `script` (then "204"): "204" is
    Discord's success (200 and the created message when asked to wait), "204-empty" and
    "202-empty" are successes without a body, "429" a rate limit, "500" an outage, "hang" a
    success too late for the client's timeout."""

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args: object) -> None:
            pass

        def do_POST(self) -> None:  # noqa: N802
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            received.append(body)
            action = script.pop(0) if script else "204"
            if action == "hang":
                time.sleep(3)
            status, payload = {
                "204": (204, b""),
                "hang": (204, b""),
                "204-empty": (204, b""),
                "202-empty": (202, b""),
                "429": (
                    429,
                    b'{"message": "You are being rate limited.", "retry_after": 0.2, '
                    b'"global": false}',
                ),
                "500": (500, b'{"message": "500: Internal Server Error", "code": 0}'),
            }[action]
            if action in ("204", "hang") and "wait=true" in self.path.lower():
                # Discord returns the message it created
                status = 200
                payload = json.dumps({"id": "1", "type": 0, "embeds": body["embeds"]}).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

    return Handler


MESSAGE = build_message(
    "staging",
    "Crash-risk model v7: decision staging",
    {"model version": 7, "bento": "crash_risk:abc"},
    ["challenger wins"],
)
POLICY = DeliveryPolicy(timeout_seconds=1.0, max_attempts=3, max_retry_after_seconds=1.0)


def run_cli(args: list[str]) -> subprocess.CompletedProcess:
    """`python run.py ARGS` in this process's environment (VZ_HOME, DISCORD_WEBHOOK_URL)."""
    return subprocess.run(
        [sys.executable, "run.py", *args],
        cwd=ROOT,
        env=dict(os.environ),
        capture_output=True,
        text=True,
        timeout=120,
    )


def outbox_lines() -> list[dict]:
    path = paths().outbox
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def test_embed_is_delivered(monkeypatch: pytest.MonkeyPatch) -> None:
    received: list[dict] = []
    with LocalServer(discord_like([], received)) as server:
        monkeypatch.setenv("DISCORD_WEBHOOK_URL", server.url + "/api/webhooks/1/secret")
        assert send(MESSAGE, POLICY) == "delivered"
    (embed,) = received[0]["embeds"]
    assert embed["title"] == MESSAGE["title"] and "challenger wins" in embed["description"]
    assert {f["name"]: f["value"] for f in embed["fields"]}["bento"] == "crash_risk:abc"


def test_429_retry_after_is_honoured(monkeypatch: pytest.MonkeyPatch) -> None:
    received: list[dict] = []
    waits: list[float] = []
    with LocalServer(discord_like(["429"], received)) as server:
        monkeypatch.setenv("DISCORD_WEBHOOK_URL", server.url)
        assert send(MESSAGE, POLICY, sleep=waits.append) == "delivered"
    assert len(received) == 2 and waits == [0.2]


@pytest.mark.parametrize(
    "script,expected", [(["500"] * 3, "failed: HTTP 500"), (["hang"] * 3, "failed: ReadTimeout")]
)
def test_failing_webhook_never_raises_and_keeps_the_message(
    monkeypatch: pytest.MonkeyPatch, script: list[str], expected: str
) -> None:
    before = len(outbox_lines())
    with LocalServer(discord_like(list(script), [])) as server:
        monkeypatch.setenv("DISCORD_WEBHOOK_URL", server.url + "/api/webhooks/1/secret-token")
        assert send(MESSAGE, POLICY, sleep=lambda _: None) == expected
    lines = outbox_lines()
    assert len(lines) == before + 1 and lines[-1]["delivery"] == expected
    assert "secret-token" not in paths().outbox.read_text()  # the webhook URL is a secret


def test_without_webhook_the_message_goes_to_the_outbox(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    monkeypatch.delenv("DISCORD_WEBHOOK_URL", raising=False)
    assert send(MESSAGE, POLICY) == "outbox"
    assert outbox_lines()[-1]["title"] == MESSAGE["title"]
    assert MESSAGE["title"] in capsys.readouterr().out


def test_outbox_entries_have_ids_and_a_delivery_status(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("VZ_HOME", str(tmp_path))
    monkeypatch.delenv("DISCORD_WEBHOOK_URL", raising=False)
    first, second = (build_message("promote", f"promote {i}", {}) for i in range(2))
    assert send(first, POLICY) == send(second, POLICY) == "outbox"
    lines = outbox_lines()
    assert [(m["id"], m["delivery"]) for m in lines] == [
        (first["id"], "outbox"),
        (second["id"], "outbox"),
    ]
    assert first["id"] != second["id"]


def test_resend_without_a_webhook_changes_nothing(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("VZ_HOME", str(tmp_path))
    monkeypatch.delenv("DISCORD_WEBHOOK_URL", raising=False)
    send(MESSAGE, POLICY)
    before = paths().outbox.read_text()
    out = run_cli(["alerts", "--resend"])
    assert out.returncode != 0 and "DISCORD_WEBHOOK_URL" in out.stderr
    assert paths().outbox.read_text() == before


def test_alerts_lists_the_outbox(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("VZ_HOME", str(tmp_path))
    monkeypatch.delenv("DISCORD_WEBHOOK_URL", raising=False)
    send(MESSAGE, POLICY)
    out = run_cli(["alerts"])
    assert out.returncode == 0, out.stderr
    assert MESSAGE["id"] in out.stdout and MESSAGE["title"] in out.stdout and "outbox" in out.stdout
