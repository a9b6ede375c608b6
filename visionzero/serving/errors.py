"""Every 400 the service gives, in the one shape `{"error": ..., "field": ...}`.

- `refusal`: an `InvalidRequest` a route raised as the 400 answer; every route answers with it.
- `json_answer`: a route's result as orjson, or the refusal when computing it raised.
- `OneErrorShape`: the ASGI middleware that brings BentoML's own 400s (its validation errors) into
  the same shape, logs each 400 once as a warning, and refuses bodies BentoML would not read as
  JSON before BentoML parses them.
- `log_validation_errors_once`: BentoML logs a body it cannot validate as an ERROR with a
  traceback; OneErrorShape already logs it once.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import bentoml
import orjson
from pydantic import ValidationError
from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from visionzero.serving.guards import log
from visionzero.serving.requests import InvalidRequest, error_body, validation_error_body

JSON = "application/json"
# Bodies BentoML would read as a form (its form parser answers 500 to a malformed one) or a pickle
NOT_JSON = (
    b"multipart/",
    b"application/x-www-form-urlencoded",
    b"application/vnd.bentoml+pickle",
)


def refusal(exc: InvalidRequest, ctx: bentoml.Context | None = None) -> Response:
    """The 400 answer naming the field (OneErrorShape logs it; a refusal is not a prediction). A
    BentoML API passes its context: BentoML applies the context's status to the answer."""
    if ctx is not None:
        ctx.response.status_code = 400
    return Response(orjson.dumps(exc.body()), 400, media_type=JSON)


def json_answer(compute: Callable[[], dict], ctx: bentoml.Context | None = None) -> Response:
    """What `compute` returns, as orjson (BentoML would rebuild the output schema per request),
    or the refusal of the InvalidRequest it raised."""
    try:
        return Response(orjson.dumps(compute()), media_type=JSON)
    except InvalidRequest as exc:
        return refusal(exc, ctx)


def log_validation_errors_once() -> None:
    """Drop BentoML's ERROR-with-traceback of a body it cannot validate: a client's mistake, which
    OneErrorShape logs once as a warning."""
    logging.getLogger("bentoml._internal.server.http_app").addFilter(
        lambda record: not (record.exc_info and isinstance(record.exc_info[1], ValidationError))
    )


def one_shape(raw: bytes) -> dict[str, str]:
    """A 400's body in the one error shape: ours already is; BentoML's validation errors carry
    pydantic's `detail`, its other errors come as `[{"error": ...}]`."""
    try:
        answer = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return error_body(raw.decode(errors="replace")[:500], "body")
    if isinstance(answer, list) and answer:
        answer = answer[0]
    if not isinstance(answer, dict):
        return error_body(str(answer)[:500], "body")
    if isinstance(answer.get("detail"), list) and answer["detail"]:
        return validation_error_body(answer["detail"])
    if "field" in answer:
        return answer
    return error_body(str(answer.get("error", answer)), "body")


class OneErrorShape:
    """Every 400 as {"error": ..., "field": ...}, logged once as a warning without a traceback;
    a body BentoML would not read as JSON is refused before it reaches BentoML. Pure ASGI: a
    successful answer passes through untouched."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        content_type = dict(scope["headers"]).get(b"content-type", b"").lower()
        if scope["method"] == "POST" and content_type.startswith(NOT_JSON):
            media = content_type.split(b";")[0].decode("latin-1")
            why = f"Content-Type: {media} bodies are not read; send application/json"
            await self._answer(send, scope, [], error_body(why, "Content-Type"))
            return
        start: dict = {}
        chunks: list[bytes] = []

        async def send_in_one_shape(message: Message) -> None:
            if message["type"] == "http.response.start" and message["status"] == 400:
                start.update(message)
            elif not start:
                await send(message)
            else:
                chunks.append(message.get("body", b""))
                if not message.get("more_body", False):
                    await self._answer(send, scope, start["headers"], one_shape(b"".join(chunks)))

        await self.app(scope, receive, send_in_one_shape)

    @staticmethod
    async def _answer(send: Send, scope: Scope, headers: list, body: dict[str, str]) -> None:
        log.warning("400 on %s %s: %s", scope["method"], scope["path"], body["error"])
        payload = orjson.dumps(body)
        headers = [(k, v) for k, v in headers if k not in (b"content-length", b"content-type")]
        headers += [
            (b"content-type", b"application/json"),
            (b"content-length", b"%d" % len(payload)),
        ]
        await send({"type": "http.response.start", "status": 400, "headers": headers})
        await send({"type": "http.response.body", "body": payload})
