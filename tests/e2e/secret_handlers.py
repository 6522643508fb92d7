"""Handlers that quote their secrets in every form a careless handler would (imported by worker subprocesses)."""

from __future__ import annotations

import base64
import json
import logging
import sys
from typing import Any
from urllib.parse import quote, quote_plus

from workers import StepContext, handler

lib_log = logging.getLogger("tests.e2e.some_client_library")


def renderings(secret: str) -> dict[str, str]:
    """The forms a handler is likely to produce of `secret`: the worker must redact each of them."""
    data = secret.encode()
    return {
        "value": secret,
        "repr": repr(secret),
        "ascii": ascii(secret),
        "json": json.dumps(secret),
        "repr-bytes": repr(data),
        "base64": base64.b64encode(data).decode(),
        "base64-urlsafe-unpadded": base64.urlsafe_b64encode(data).decode().rstrip("="),
        "basic-auth": "Basic " + base64.b64encode(b"user:" + data).decode(),
        "quote": quote(secret, safe=""),
        "quote_plus": quote_plus(secret),
        "hex": data.hex(),
        **{f"line-{i}": line for i, line in enumerate(secret.splitlines())},
    }


@handler("test.secret_forms_out")
async def secret_forms_out(ctx: StepContext, secret: str, token: str) -> dict[str, Any]:
    """Prints, logs (stdlib) and returns its secrets in every form."""
    forms = {**renderings(secret), **{f"token-{k}": v for k, v in renderings(token).items()}}
    for name, form in forms.items():
        print(f"{name}: {form}")
    sys.stderr.write(f"stderr: {forms['repr']}\n")
    lib_log.warning("connecting with %s and %r", forms["basic-auth"], secret)
    return {"forms": forms, "length": len(secret)}


@handler("test.secret_forms_fail")
async def secret_forms_fail(ctx: StepContext, secret: str) -> dict[str, Any]:
    """Fails with its secret quoted in several forms, in the message and in a chained exception."""
    try:
        raise ValueError(f"bad credentials {base64.b64encode(secret.encode()).decode()}")
    except ValueError as e:
        lib_log.exception("client error for %s", quote_plus(secret))
        raise RuntimeError(f"upstream refused {secret!r} ({quote(secret, safe='')})") from e
