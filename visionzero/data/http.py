"""One retrying GET shared by the Socrata and NOAA clients: backoff, Retry-After, clear final error."""
from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import requests

log = logging.getLogger(__name__)
RETRYABLE_STATUS = {429, 500, 502, 503, 504}


class SourceUnavailable(RuntimeError):
    """The remote source could not be read after every retry."""


@dataclass(frozen=True)
class RetryPolicy:
    max_attempts: int = 4
    backoff_seconds: float = 0.5
    max_wait_seconds: float = 30.0
    connect_timeout: float = 5.0
    read_timeout: float = 30.0


def _retry_after(response: requests.Response) -> float | None:
    value = response.headers.get("Retry-After")
    try:
        return float(value) if value is not None else None
    except ValueError:
        return None


def get_json(
    session: requests.Session,
    url: str,
    params: dict[str, Any],
    headers: dict[str, str],
    policy: RetryPolicy,
    sleep: Callable[[float], None] = time.sleep,
) -> Any:
    """GET url and decode JSON, retrying 429/5xx, connection errors, timeouts and undecodable bodies."""
    last_error = "no attempt made"
    for attempt in range(1, policy.max_attempts + 1):
        wait = policy.backoff_seconds * 2 ** (attempt - 1)
        try:
            response = session.get(
                url, params=params, headers=headers,
                timeout=(policy.connect_timeout, policy.read_timeout),
            )
            if response.status_code in RETRYABLE_STATUS:
                last_error = f"HTTP {response.status_code}"
                wait = _retry_after(response) or wait
            elif response.status_code >= 400:
                raise SourceUnavailable(f"{url} answered HTTP {response.status_code}: {response.text[:200]}")
            else:
                try:
                    return response.json()
                except ValueError as exc:
                    last_error = f"malformed JSON body ({exc})"
        except (requests.ConnectionError, requests.Timeout) as exc:
            last_error = f"{type(exc).__name__}: {str(exc)[:160]}"
        if attempt < policy.max_attempts:
            wait = min(wait, policy.max_wait_seconds)
            # DEBUG: a retry that succeeds is no news; the final failure is reported by the caller
            log.debug("GET %s failed (%s); retry %d/%d in %.1fs",
                      url, last_error, attempt, policy.max_attempts - 1, wait)
            sleep(wait)
    raise SourceUnavailable(f"{url} failed after {policy.max_attempts} attempts: {last_error}")
