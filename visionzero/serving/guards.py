"""ASGI guards in front of BentoML's parsers and metrics, for what a hostile client can send.

- `RequestGuard`: a request whose headers the layers would read differently (two Content-Type
  headers: the error layer reads the last, BentoML the first) is a 400; a body larger than the
  limit is a 413 before BentoML buffers it, whether Content-Length announces it or a chunked body
  streams past it.
- `label_metrics_by_route`: BentoML labels its HTTP metrics by the raw request path, so every
  made-up path would become new Prometheus series; a path no route of the app answers counts under
  one fixed label instead.

Both answer in the one error shape of `requests.error_body`.
"""

from __future__ import annotations

import logging

import orjson
from starlette.routing import BaseRoute, Match, Mount
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from visionzero.serving.requests import error_body

log = logging.getLogger("bentoml.crash_risk")  # under "bentoml": printed by BentoML's handlers
# Headers that decide how the body is read: a second copy means two layers may read two bodies.
SINGLE_HEADERS = (b"content-type", b"content-length", b"transfer-encoding")
UNKNOWN_ENDPOINT = "unknown"  # the one metrics label of every path no route answers
_ORIGINAL_PATH = "vz.original_path"
MAX_LABELLED_PATHS = 1024  # paths whose route label is remembered (static files are many)


async def answer_error(send: Send, status: int, body: dict[str, str]) -> None:
    """An error in the one shape; the connection closes after it (the body may be unread)."""
    payload = orjson.dumps(body)
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", b"%d" % len(payload)),
                (b"connection", b"close"),
            ],
        }
    )
    await send({"type": "http.response.body", "body": payload})


class RequestGuard:
    """Refuse ambiguous headers (400) and bodies over `max_body_bytes` (413) before any parser
    runs. Pure ASGI: the body is counted as it streams, never buffered here."""

    def __init__(self, app: ASGIApp, max_body_bytes: int) -> None:
        self.app = app
        self.max_body_bytes = max_body_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        names = [name for name, _ in scope["headers"]]
        for header in SINGLE_HEADERS:
            if names.count(header) > 1:
                field = header.decode().title()
                await self._refuse(scope, send, 400, f"{field} sent more than once", field)
                return
        length = dict(scope["headers"]).get(b"content-length")
        if length is None:  # chunked, or no body: counted as it streams
            await self._call_counting(scope, receive, send)
        elif not length.isdigit() or int(length) > self.max_body_bytes:
            await self._refuse(scope, send, *self._too_large(length.decode("latin-1")[:20]))
        else:  # the server reads exactly Content-Length bytes: nothing to count
            await self.app(scope, receive, send)

    async def _call_counting(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Run the app with a receive that stops reading at the limit: past it the client gets
        the 413 at once and the app sees a disconnect; whatever the app sends then is dropped."""
        received = 0
        refused = False
        started = False

        async def counted_receive() -> Message:
            nonlocal received, refused
            if refused:
                return {"type": "http.disconnect"}
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_body_bytes:
                    refused = True
                    if not started:
                        await self._refuse(scope, send, *self._too_large(f"over {received}"))
                    return {"type": "http.disconnect"}
            return message

        async def guarded_send(message: Message) -> None:
            nonlocal started
            if refused:
                return
            started = True
            await send(message)

        try:
            await self.app(scope, counted_receive, guarded_send)
        except Exception:
            if not refused:
                raise
            # The app was cut off mid-body on purpose (its ClientDisconnect); the 413 is sent.

    def _too_large(self, size: str) -> tuple[int, str, str]:
        why = f"body of {size} bytes; at most {self.max_body_bytes} (VZ_MAX_BODY_BYTES)"
        return 413, why, "body"

    @staticmethod
    async def _refuse(scope: Scope, send: Send, status: int, why: str, field: str) -> None:
        log.warning("%d on %s %s: %s", status, scope["method"], scope["path"], why)
        await answer_error(send, status, error_body(why, field))


def route_label(routes: list[BaseRoute], scope: Scope, prefix: str = "") -> str | None:
    """The route template that answers this request's path (`/predict`, `/static`: a mount is
    one label, whatever file it is asked for), or None when no route does. A route that matches
    the path but not the method still names it: the set of labels stays the app's routes."""
    for route in routes:
        match, child = route.matches(scope)
        if match == Match.NONE:
            continue
        path = getattr(route, "path", "")
        if not isinstance(route, Mount):
            return prefix + path
        inner = getattr(route.app, "routes", None)
        if inner is None:  # a mounted app without routes of its own (static files)
            return prefix + path
        label = route_label(inner, {**scope, **child}, prefix + path)
        if label is not None:
            return label
    return None


def label_metrics_by_route() -> None:
    """Make BentoML's HTTP metrics middleware label a request by the route that answers it, and
    every path no route answers as UNKNOWN_ENDPOINT.

    BentoML 1.4 takes the label from scope["path"] in its outermost middleware, before any
    middleware of the service runs, so the service cannot fix the label from inside: this swaps
    in a subclass, read by the server app when it assembles its middleware (after service.py is
    imported). tests/test_request_guards.py checks on a real server that it took effect."""
    from bentoml._internal.server.http import instruments

    base = instruments.RunnerTrafficMetricsMiddleware
    if getattr(base, "labels_by_route", False):
        return

    class RouteLabelledTrafficMetrics(base):  # type: ignore[misc, valid-type]
        labels_by_route = True

        def __init__(self, app: ASGIApp, **options: object) -> None:
            super().__init__(_restore_path(app), **options)
            self.labels: dict[str, str] = {}  # path -> route label, matched once per path

        async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
            if scope["type"] != "http" or "app" not in scope:
                await super().__call__(scope, receive, send)
                return
            label = self.labels.get(scope["path"])
            if label is None:
                label = route_label(scope["app"].router.routes, scope) or UNKNOWN_ENDPOINT
                if label != UNKNOWN_ENDPOINT and len(self.labels) < MAX_LABELLED_PATHS:
                    self.labels[scope["path"]] = label  # a known route's path: bounded, few
            if label != scope["path"]:
                scope = {**scope, "path": label, _ORIGINAL_PATH: scope["path"]}
            await super().__call__(scope, receive, send)

    instruments.RunnerTrafficMetricsMiddleware = RouteLabelledTrafficMetrics


def _restore_path(app: ASGIApp) -> ASGIApp:
    """The app behind the metrics middleware sees the request's own path again."""

    async def restored(scope: Scope, receive: Receive, send: Send) -> None:
        if _ORIGINAL_PATH in scope:
            scope = {**scope, "path": scope.pop(_ORIGINAL_PATH)}
        await app(scope, receive, send)

    return restored
