"""ISO-8601 instants of durable waits (`sleep: {until: …}`, approval outputs). Pure."""

from __future__ import annotations

import datetime as dt

__all__ = ["iso", "parse_instant"]


def parse_instant(text: str) -> float:
    """Unix seconds of an ISO-8601 time with a UTC offset (`2026-12-24T18:00:00Z`, `…+01:00`).

    A time without an offset is refused: it would mean a different instant on each machine."""
    try:
        value = dt.datetime.fromisoformat(text.strip())
    except ValueError:
        raise ValueError(
            f'{text!r} is not an ISO-8601 time: write it like "2026-12-24T18:00:00Z" or "2026-12-24T18:00:00+01:00"'
        ) from None
    if value.tzinfo is None:
        raise ValueError(f"{text!r} has no UTC offset: add Z (UTC) or one such as +01:00")
    return value.timestamp()


def iso(epoch: float) -> str:
    """`2026-12-24T18:00:00.250000+00:00`-style UTC text of unix seconds."""
    return dt.datetime.fromtimestamp(epoch, tz=dt.UTC).isoformat()
