"""ASGI middleware that answers 422 for a query string holding NUL (`%00`), before any route reads it.

A NUL would otherwise reach PostgreSQL (`?workflow=` filters, `?input=` values, `?filename=` in
stored positions), which refuses it with a server error. Checked once here for every route.
"""

from __future__ import annotations

from urllib.parse import parse_qsl

import orjson
from starlette.types import ASGIApp, Receive, Scope, Send

from orchestrator.spec.diagnostics import show
from orchestrator.spec.values import text_problem


def query_problem(query_string: bytes) -> str | None:
    """What is wrong with a raw query string, or None (the common case costs one substring search)."""
    if b"%00" not in query_string:
        return None
    # Decoded as Starlette decodes it for the routes.
    for key, value in parse_qsl(query_string.decode("latin-1"), keep_blank_values=True):
        for part, text in (("name", key), ("value", value)):
            problem = text_problem(text)
            if problem is not None:
                return f"the {part} of query parameter {show(key)} {problem}"
    return None


class QueryTextMiddleware:
    """Refuse query strings whose parameters cannot be stored; everything else passes through."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        problem = query_problem(scope.get("query_string", b"")) if scope["type"] == "http" else None
        if problem is None:
            await self.app(scope, receive, send)
            return
        body = orjson.dumps({"errors": [{"message": problem, "file": None, "line": None, "column": None}]})
        headers = [
            (b"content-type", b"application/json"),
            (b"content-length", str(len(body)).encode()),
            (b"connection", b"close"),  # a request body, if any, is left unread
        ]
        await send({"type": "http.response.start", "status": 422, "headers": headers})
        await send({"type": "http.response.body", "body": body})
