"""`/readyz`: which backend is not ready and what kind of failure, in words that name no URL or user.

The probe is open to anyone (load balancers call it without a token), so its answer must not
carry what a server said (`password authentication failed for user "…"`, hosts, database
names): each failure is reduced to a fixed phrase and the full error goes to the log.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import psycopg
import redis
import structlog
from starlette.concurrency import run_in_threadpool

log = structlog.get_logger(__name__)

SETTING = {"redis": "STEPPE_REDIS_URL", "postgres": "STEPPE_DATABASE_URL"}
_AUTH_WORDS = ("authentication", "password", "noauth", "wrongpass", "no password", "not authorized", "role ")


def failure_kind(error: BaseException) -> str:
    """A fixed phrase for what went wrong; never text from the error itself."""
    chain = [error]
    while chain[-1].__cause__ is not None and len(chain) < 5:
        chain.append(chain[-1].__cause__)
    text = " ".join(str(e) for e in chain).lower()
    refused = (redis.exceptions.AuthenticationError, redis.exceptions.AuthorizationError)
    if any(isinstance(e, refused) for e in chain) or any(word in text for word in _AUTH_WORDS):
        return "authentication or authorisation refused"
    if "loading" in text or "starting up" in text or "recovery" in text:
        return "starting up"
    if any(isinstance(e, redis.ConnectionError | psycopg.OperationalError | OSError) for e in chain):
        return "unreachable"
    return f"failed ({type(error).__name__})"


async def check(name: str, probe: Callable[[], object], timeout: float) -> str:
    """`ok`, or the phrase for why `probe` failed or took longer than `timeout` seconds."""
    try:
        await asyncio.wait_for(run_in_threadpool(probe), timeout=timeout)
    except TimeoutError:
        return f"no answer within {timeout:g}s"
    except Exception as e:  # any failure means "not ready"
        log.warning("readiness_check_failed", backend=name, error=str(e) or type(e).__name__)
        return failure_kind(e)
    return "ok"


def message(name: str, result: str) -> str:
    return f"{name} is not ready: {result}; check {SETTING[name]} and that the server is up (details in the log)"
