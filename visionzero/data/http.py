"""One retrying GET shared by the Socrata and NOAA clients: urllib3's Retry does backoff and
Retry-After, this module adds timeouts and one clear final error."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any

import requests
from requests.adapters import HTTPAdapter
from urllib3.exceptions import MaxRetryError
from urllib3.util.retry import Retry

log = logging.getLogger(__name__)
RETRYABLE_STATUS = frozenset({429, 500, 502, 503, 504})


class SourceUnavailable(RuntimeError):
    """The remote source could not be read after every retry."""


@dataclass(frozen=True)
class RetryPolicy:
    """Typed knobs for the retrying session: attempts count the first request too."""

    max_attempts: int = 4
    backoff_seconds: float = 0.5
    max_wait_seconds: float = 30.0  # caps both the backoff and a server's Retry-After
    connect_timeout: float = 5.0
    read_timeout: float = 30.0

    def retry(self) -> Retry:
        """urllib3 Retry for idempotent GETs: 429/5xx, connection errors and read timeouts."""
        return Retry(
            total=self.max_attempts - 1,
            allowed_methods={"GET"},
            status_forcelist=RETRYABLE_STATUS,
            backoff_factor=self.backoff_seconds,
            backoff_max=self.max_wait_seconds,
            retry_after_max=int(self.max_wait_seconds),
            respect_retry_after_header=True,
            raise_on_status=False,  # hand back the last answer so the final error can name it
        )


def retrying_session(policy: RetryPolicy) -> requests.Session:
    """A Session whose http(s) adapters retry GETs as the policy says."""
    session = requests.Session()
    adapter = HTTPAdapter(max_retries=policy.retry())
    session.mount("http://", adapter)
    session.mount("https://", adapter)
    return session


def _failure(exc: requests.RequestException) -> str:
    """The underlying cause of a request error (urllib3 wraps it in MaxRetryError)."""
    cause = exc.args[0] if exc.args else exc
    if isinstance(cause, MaxRetryError) and cause.reason is not None:
        cause = cause.reason
    return f"{type(cause).__name__}: {str(cause)[:160]}"


def get_json(
    session: requests.Session,
    url: str,
    params: dict[str, Any],
    headers: dict[str, str],
    policy: RetryPolicy,
) -> Any:
    """GET url with a `retrying_session` and decode JSON; raises SourceUnavailable at the end."""
    timeout = (policy.connect_timeout, policy.read_timeout)
    # urllib3 retries on status and transport errors only; this loop retries a 200 whose body
    # is not JSON (a truncated page), which Socrata sends now and then.
    for attempt in range(1, policy.max_attempts + 1):
        try:
            response = session.get(url, params=params, headers=headers, timeout=timeout)
        except requests.RequestException as exc:
            raise SourceUnavailable(
                f"{url} failed after {policy.max_attempts} attempts: {_failure(exc)}"
            ) from exc
        if response.status_code in RETRYABLE_STATUS:
            raise SourceUnavailable(
                f"{url} failed after {policy.max_attempts} attempts: HTTP {response.status_code}"
            )
        if response.status_code >= 400:
            raise SourceUnavailable(
                f"{url} answered HTTP {response.status_code}: {response.text[:200]}"
            )
        try:
            return response.json()
        except ValueError as exc:
            last_error = f"malformed JSON body ({exc})"
        if attempt < policy.max_attempts:
            wait = min(policy.backoff_seconds * 2 ** (attempt - 1), policy.max_wait_seconds)
            # DEBUG: a retry that succeeds is no news; the final failure is reported by the caller
            log.debug(
                "GET %s: %s; retry %d/%d in %.1fs",
                url,
                last_error,
                attempt,
                policy.max_attempts - 1,
                wait,
            )
            time.sleep(wait)
    raise SourceUnavailable(f"{url} failed after {policy.max_attempts} attempts: {last_error}")
