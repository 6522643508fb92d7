"""Durations as users write them (`250ms`, `10s`, `5m`, `1h`, `1m30s`, or a number of seconds).

Every duration is at most `MAX_DURATION` (100 years): a due time of now plus any accepted
duration stays within what Python's `datetime` (year 9999) and PostgreSQL's `timestamptz`
and `interval` can represent, so a workflow setting can never make a commit fail.
"""

from __future__ import annotations

import math
import re

from orchestrator.errors import SteppeError

_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
_PART = re.compile(r"(\d+(?:\.\d+)?|\.\d+)(ms|s|m|h|d)")
_COMPOUND = re.compile(r"(?:(?:\d+(?:\.\d+)?|\.\d+)(?:ms|s|m|h|d))+")
_NUMBER = re.compile(r"\d+(?:\.\d+)?|\.\d+")

MAX_DURATION = 36500 * 86400.0  # 100 years, in seconds
MAX_DURATION_TEXT = "100 years (36500d)"
HINT = "write a number of seconds or a value like 250ms, 10s, 5m, 1h or 1m30s"


class DurationError(SteppeError, ValueError):
    """A duration could not be parsed; a ValueError too, so pydantic validators report it in place."""

    exit_code = 2


def parse_duration(value: object, *, what: str = "duration") -> float:
    """Seconds in `value`: a non-negative number, or a string of number+unit parts (ms, s, m, h, d),
    at most MAX_DURATION; `what` names the setting in the message (`delay`, `timeout`, …)."""
    if isinstance(value, bool):
        raise DurationError(f"invalid duration {value!r}: {HINT}")
    if isinstance(value, int | float):
        try:
            seconds = float(value)
        except OverflowError:  # an int beyond float range: longer than the maximum, say so below
            seconds = MAX_DURATION * 2
    elif isinstance(value, str):
        seconds = _parse_text(value)
    else:
        raise DurationError(f"invalid duration {value!r} ({type(value).__name__}): {HINT}")
    if not math.isfinite(seconds) or seconds < 0:
        raise DurationError(f"invalid duration {value!r}: it must be a finite, non-negative amount; {HINT}")
    if seconds > MAX_DURATION:
        shown = value.strip() if isinstance(value, str) else f"{value!r} seconds"
        if len(shown) > 40:
            shown = shown[:37] + "..."
        raise DurationError(f"{shown} is longer than the maximum of {MAX_DURATION_TEXT}: use a shorter {what}")
    return seconds


def _parse_text(value: str) -> float:
    text = value.strip().lower()
    if _NUMBER.fullmatch(text):
        return float(text)
    if not text or not _COMPOUND.fullmatch(text):
        raise DurationError(f"invalid duration {value!r}: {HINT}")
    return sum(float(number) * _UNITS[unit] for number, unit in _PART.findall(text))


def format_duration(seconds: float) -> str:
    """A short human form of `seconds` (`250ms`, `10s`, `5m`, `1h30m`), the inverse of parse_duration."""
    if seconds < 1:
        return f"{seconds * 1000:g}ms"
    parts: list[str] = []
    remaining = seconds
    for unit, size in (("d", 86400.0), ("h", 3600.0), ("m", 60.0)):
        if remaining >= size:
            count = int(remaining // size)
            parts.append(f"{count}{unit}")
            remaining -= count * size
    if remaining or not parts:
        parts.append(f"{round(remaining, 3):g}s")
    return "".join(parts)
