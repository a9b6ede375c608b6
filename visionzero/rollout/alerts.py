"""Discord alerts for deploy decisions, promote, rollback and pipeline failures.

DISCORD_WEBHOOK_URL comes from the environment only. Unset, the message is printed and appended to
the local outbox; a failing webhook is retried within bounds, then written to the outbox too. An
alert never raises: a broken webhook must not fail or roll back a deployment.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime

import requests
from discord_webhook import DiscordEmbed, DiscordWebhook

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


@dataclass(frozen=True)
class DeliveryPolicy:
    timeout_seconds: float = 5.0
    max_attempts: int = 3
    max_retry_after_seconds: float = 10.0  # honour Discord's retry_after, but never wait longer


def build_message(
    kind: str, title: str, fields: dict[str, object], reasons: list[str] | None = None
) -> dict:
    """The alert as plain data: what the embed shows and what the outbox stores."""
    return {
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
    except ValueError:
        return float(response.headers.get("Retry-After", 1.0))


def _append_outbox(message: dict, delivery: str) -> None:
    outbox = paths().outbox
    outbox.parent.mkdir(parents=True, exist_ok=True)
    with outbox.open("a") as handle:
        handle.write(json.dumps({**message, "delivery": delivery}) + "\n")


def send(
    message: dict,
    policy: DeliveryPolicy = DeliveryPolicy(),
    sleep: Callable[[float], None] = time.sleep,
) -> str:
    """Deliver the alert; returns "sent", "outbox" (no webhook configured) or "failed: ..."."""
    secret = settings().discord_webhook_url
    if secret is None:
        print(f"[alert] {message['title']}: {json.dumps(message['fields'])}")
        _append_outbox(message, "outbox")
        return "outbox"
    url = secret.get_secret_value()
    status = "failed: no attempt"
    for attempt in range(1, policy.max_attempts + 1):
        try:
            response = _webhook(url, message, policy.timeout_seconds).execute()
        except (requests.RequestException, ValueError) as exc:  # ValueError: an unreadable answer
            status = f"failed: {type(exc).__name__}"
        else:
            if 200 <= response.status_code < 300:
                return "sent"
            status = f"failed: HTTP {response.status_code}"
            if response.status_code == 429 and attempt < policy.max_attempts:
                sleep(min(_retry_after(response), policy.max_retry_after_seconds))
                continue
            if response.status_code < 500:
                break
        if attempt < policy.max_attempts:
            sleep(min(2 ** (attempt - 1), policy.max_retry_after_seconds))
    log.warning("Discord alert not delivered (%s); kept in %s", status, paths().outbox)
    _append_outbox(message, status)
    return status
