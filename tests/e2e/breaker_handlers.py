"""Handlers of the circuit-breaker, dead-letter and secret-redaction end-to-end tests (worker subprocesses)."""

from __future__ import annotations

import os
from typing import Any

from tests.e2e.handlers import _redis, witness_key
from workers import StepContext, handler


def outage_key() -> str:
    """While this key exists, `test.downstream` is down."""
    return witness_key("outage")


@handler("test.downstream")
async def downstream(ctx: StepContext, value: Any = None) -> dict[str, Any]:
    """A service that fails while the outage flag is set; counts every call that reaches it."""
    r = _redis()
    r.hincrby(witness_key("downstream"), "calls", 1)
    if r.exists(outage_key()):
        r.hincrby(witness_key("downstream"), "failed", 1)
        raise ConnectionError("downstream unavailable")
    return {"value": value, "attempt": ctx.attempt}


@handler("test.crash_if")
def crash_if(ctx: StepContext, crash: bool, token: str = "") -> dict[str, Any]:
    """Kills its worker while `crash` is true (a poison message); succeeds once replayed with `crash: false`."""
    if crash:
        os._exit(17)
    return {"replayed": True, "token_length": len(token)}


@handler("test.leaky")
async def leaky(ctx: StepContext, token: str, fail: bool = True) -> dict[str, Any]:
    """Puts its secret argument everywhere it can: log values, a logged traceback, its error, its output."""
    ctx.log.info("leaky_called", token=token, nested={"auth": [f"Bearer {token}"]})
    try:
        raise RuntimeError(f"inner failure with {token}")
    except RuntimeError:
        ctx.log.exception("leaky_inner_failed")
    if fail:
        raise RuntimeError(f"upstream refused token {token}")
    return {"echo": token, "header": f"Bearer {token}"}
