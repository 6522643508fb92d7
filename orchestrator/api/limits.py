"""ASGI middleware that refuses request bodies over the configured size before reading them whole.

A declared `Content-Length` over the limit is answered with 413 at once, without reading the
body. A chunked body is counted as it arrives and refused as soon as it passes the limit, so
at most `max_bytes` plus one chunk is ever buffered.
"""

from __future__ import annotations

import orjson
from starlette.types import ASGIApp, Message, Receive, Scope, Send


class BodyTooLargeError(Exception):
    """Raised from `receive` once a streamed body passes the limit; turned into 413 below."""


def too_large_message(max_bytes: int) -> str:
    return (
        f"request body is over the {_size(max_bytes)} limit (STEPPE_API_MAX_BODY_BYTES): pass large data by "
        "reference (a URL or object-store key as an input) instead of inlining it"
    )


def _size(n: int) -> str:
    if n >= 2**20:
        return f"{n / 2**20:g} MiB"
    if n >= 2**10:
        return f"{n / 2**10:g} KiB"
    return f"{n} bytes"


class BodyLimitMiddleware:
    """Answer 413 for bodies over `max_bytes`; everything else passes through untouched."""

    def __init__(self, app: ASGIApp, *, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = _content_length(scope)
        if declared is not None and declared > self.max_bytes:
            await self._refuse(send)
            return
        received = 0
        started = False

        async def limited_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    raise BodyTooLargeError
            return message

        async def tracking_send(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, limited_receive, tracking_send)
        except BodyTooLargeError:
            if started:  # pragma: no cover - handlers read the body before answering
                raise
            await self._refuse(send)

    async def _refuse(self, send: Send) -> None:
        body = orjson.dumps(
            {"errors": [{"message": too_large_message(self.max_bytes), "file": None, "line": None, "column": None}]}
        )
        await send(
            {
                "type": "http.response.start",
                "status": 413,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(body)).encode()),
                    # The unread rest of the body makes the connection unusable for another request.
                    (b"connection", b"close"),
                ],
            }
        )
        await send({"type": "http.response.body", "body": body})


def _content_length(scope: Scope) -> int | None:
    for name, value in scope.get("headers", ()):
        if name == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None  # the server rejects a malformed header itself
    return None
