"""The many-hosts demo's handler: it says which host ran the step (`--import examples.multihost_handlers`)."""

from __future__ import annotations

import asyncio
import os
import socket
from typing import Any

from workers import StepContext, handler


@handler("multihost.whoami")
async def whoami(ctx: StepContext, seconds: float = 0.0) -> dict[str, Any]:
    """Sleep `seconds` (a step that takes time, so that a host has work in flight), then name the host."""
    await asyncio.sleep(float(seconds))
    return {"host": socket.gethostname(), "pid": os.getpid(), "attempt": ctx.attempt}
