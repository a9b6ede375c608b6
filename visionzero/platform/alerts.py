"""Discord alerts for deploy decisions, promote, rollback and pipeline failures.

DISCORD_WEBHOOK_URL comes from the environment only. Unset, the message is printed and kept in the
local outbox; a failing webhook is retried within bounds, then the message is kept there too. Each
outbox entry has an id and a delivery status ("outbox", "failed: ...", "delivered");
`python run.py alerts --resend` sends every undelivered one once. Any 2xx is a delivery, and a
delivered message is never sent again. An alert never raises: a broken webhook must not fail or
roll back a deployment.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TextIO

import requests
from discord_webhook import DiscordEmbed, DiscordWebhook
from filelock import FileLock

from visionzero.platform.settings import paths, settings

log = logging.getLogger(__name__)
COLORS = {
    "production": "2ecc71",
    "staging": "f1c40f",
    "none": "95a5a6",
    "promote": "3498db",
    "rollback": "e67e22",
    "failure": "e74c3c",
}
DELIVERED = "delivered"


@dataclass(frozen=True)
class DeliveryPolicy:
    timeout_seconds: float = 5.0
    max_attempts: int = 3
    max_retry_after_seconds: float = 10.0  # honour Discord's retry_after, but never wait longer


class NoWebhook(RuntimeError):
    """Resending needs DISCORD_WEBHOOK_URL."""


def build_message(
    kind: str, title: str, fields: dict[str, object], reasons: list[str] | None = None
) -> dict:
    """The alert as plain data: what the embed shows and what the outbox stores, under an id."""
    return {
        "id": uuid.uuid4().hex,
        "kind": kind,
        "title": title,
        "fields": {k: str(v) for k, v in fields.items()},
        "reasons": reasons or [],
        "at": datetime.now(UTC).isoformat(timespec="seconds"),
    }


def _webhook(url: str, message: dict, timeout: float) -> DiscordWebhook:
    hook = DiscordWebhook(
        url=url, username="Vision Zero Risk", timeout=timeout, rate_limit_retry=False
    )
    embed = DiscordEmbed(
        title=message["title"][:256],
        color=COLORS.get(message["kind"], "95a5a6"),
        description="\n".join(f"- {r}" for r in message["reasons"])[:4000],
    )
    for name, value in list(message["fields"].items())[:25]:
        embed.add_embed_field(name=name[:256], value=value[:1024] or "-", inline=True)
    embed.set_timestamp()
    hook.add_embed(embed)
    return hook


def _retry_after(response: requests.Response) -> float:
    try:
        return float(response.json().get("retry_after", 1.0))
    except (ValueError, AttributeError):  # not JSON, or JSON but not an object
        return float(response.headers.get("Retry-After", 1.0))


def _deliver(
    url: str, message: dict, policy: DeliveryPolicy, sleep: Callable[[float], None]
) -> str:
    """POST the embed until a 2xx (DELIVERED) or the attempts run out ("failed: ...").

    The POST goes out through `api_post_request`, not `execute`: `execute` parses every answer as
    JSON and so raises on Discord's body-less 204 after the message was delivered, which made it
    look failed and sent it again."""
    status = "failed: no attempt"
    for attempt in range(1, policy.max_attempts + 1):
        try:
            response = _webhook(url, message, policy.timeout_seconds).api_post_request()
        except requests.RequestException as exc:
            status = f"failed: {type(exc).__name__}"
        else:
            if 200 <= response.status_code < 300:
                return DELIVERED
            status = f"failed: HTTP {response.status_code}"
            if response.status_code == 429 and attempt < policy.max_attempts:
                sleep(min(_retry_after(response), policy.max_retry_after_seconds))
                continue
            if response.status_code < 500:
                break
        if attempt < policy.max_attempts:
            sleep(min(2 ** (attempt - 1), policy.max_retry_after_seconds))
    return status


@contextmanager
def _outbox_lock() -> Iterator[None]:
    """Appends, status updates and reads of the outbox exclude each other (pipeline, promote and
    resend may run at once)."""
    outbox = paths().outbox
    outbox.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(outbox.with_name(outbox.name + ".lock")):
        yield


def outbox_entries() -> list[dict]:
    """Every message kept in the outbox, oldest first, each with its id and delivery status."""
    with _outbox_lock():
        return _read_outbox()


def _read_outbox() -> list[dict]:
    outbox = paths().outbox
    if not outbox.exists():
        return []
    entries = [json.loads(line) for line in outbox.read_text().splitlines() if line.strip()]
    for entry in entries:  # kept before messages had ids: one derived from the content
        if "id" not in entry:
            content = {k: v for k, v in entry.items() if k != "delivery"}
            digest = hashlib.sha256(json.dumps(content, sort_keys=True).encode()).hexdigest()
            entry["id"] = digest[:32]
    return entries


def _open_private(path: Path, flags: int) -> TextIO:
    """The outbox (what was alerted about the deployment) is its user's alone (0600), whatever
    the umask of the process that creates it."""
    return os.fdopen(os.open(path, os.O_WRONLY | os.O_CREAT | flags, 0o600), "w")


def _keep(message: dict, delivery: str) -> None:
    with _outbox_lock(), _open_private(paths().outbox, os.O_APPEND) as handle:
        handle.write(json.dumps({**message, "delivery": delivery}) + "\n")


def _mark(message_id: str, delivery: str) -> None:
    """Record a delivery status, replacing the file at once so a crash never loses the outbox."""
    with _outbox_lock():
        entries = [
            {**e, "delivery": delivery} if e["id"] == message_id else e for e in _read_outbox()
        ]
        outbox = paths().outbox
        staged = outbox.with_name(outbox.name + ".tmp")
        with _open_private(staged, os.O_TRUNC) as handle:
            handle.write("".join(json.dumps(e) + "\n" for e in entries))
        os.replace(staged, outbox)


def send(
    message: dict,
    policy: DeliveryPolicy = DeliveryPolicy(),
    sleep: Callable[[float], None] = time.sleep,
) -> str:
    """Deliver the alert; returns "delivered", "outbox" (no webhook configured) or "failed: ..."
    (kept in the outbox for `run.py alerts --resend`)."""
    secret = settings().discord_webhook_url
    if secret is None:
        print(f"[alert] {message['title']}: {json.dumps(message['fields'])}")
        _keep(message, "outbox")
        return "outbox"
    status = _deliver(secret.get_secret_value(), message, policy, sleep)
    if status != DELIVERED:
        log.warning("Discord alert not delivered (%s); kept in %s", status, paths().outbox)
        _keep(message, status)
    return status


def resend(
    policy: DeliveryPolicy = DeliveryPolicy(),
    sleep: Callable[[float], None] = time.sleep,
) -> dict[str, str]:
    """Send every undelivered outbox message once, in order; each is marked with its new status
    as soon as it is known, so a delivered one is never sent again. Returns id -> status.

    One resend at a time (a second waits), so two never send the same message."""
    secret = settings().discord_webhook_url
    if secret is None:
        raise NoWebhook("DISCORD_WEBHOOK_URL is not set: nothing to resend to")
    outbox = paths().outbox
    with FileLock(outbox.with_name(outbox.name + ".resend.lock")):
        results: dict[str, str] = {}
        for entry in outbox_entries():
            if entry["delivery"] == DELIVERED:
                continue
            message = {k: v for k, v in entry.items() if k != "delivery"}
            results[entry["id"]] = _deliver(secret.get_secret_value(), message, policy, sleep)
            _mark(entry["id"], results[entry["id"]])
        return results
