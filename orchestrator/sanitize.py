"""Handler text made storable: NUL and unpaired surrogates become visible escapes before PostgreSQL sees them.

The rule (applied by `orchestrator.wire` to every message it decodes or cannot encode, so
once where results and wake-ups enter the coordinator, and once where a worker publishes):

- NUL (U+0000), which PostgreSQL `text` and `jsonb` refuse, becomes the six visible
  characters ``\\u0000``;
- an unpaired surrogate (U+D800 to U+DFFF), which UTF-8 cannot encode, becomes its escape
  in the same form (``\\ud800``), as Python's ``backslashreplace`` would write it;
- everything else, dict keys included, is kept as it is; numbers, booleans and null too.

So ``raise ValueError("a\\x00b")`` in a handler is stored as the message ``a\\u0000b``,
readable, instead of failing the coordinator's commit. Values nested deeper than
`MAX_DEPTH` are returned unchanged: no encoder Steppe uses can store them anyway, and the
coordinator fails such a run with the reason (`orchestrator.quarantine`).
"""

from __future__ import annotations

import re
from typing import Any

_UNSTORABLE = re.compile("[\x00\ud800-\udfff]")
# orjson, which writes every JSONB column, refuses more than 254 levels.
MAX_DEPTH = 256


def _escape(match: re.Match[str]) -> str:
    return f"\\u{ord(match.group()):04x}"


def storable_text(text: str) -> str:
    """`text` with NUL and unpaired surrogates replaced by visible escapes (see the module docstring)."""
    return _UNSTORABLE.sub(_escape, text)


def storable(value: Any, _depth: int = 0) -> Any:
    """A copy of the JSON-like `value` with every string in it (keys too) made storable."""
    if isinstance(value, str):
        return storable_text(value)
    if _depth >= MAX_DEPTH:
        return value
    if isinstance(value, dict):
        return {storable(k, _depth + 1): storable(v, _depth + 1) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [storable(v, _depth + 1) for v in value]
    return value
