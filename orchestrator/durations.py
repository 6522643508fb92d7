"""Durations as users write them (`250ms`, `10s`, `5m`, `1h`, `1m30s`, or a number of seconds)."""

from __future__ import annotations

import math
import re

from orchestrator.errors import SteppeError

_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
_PART = re.compile(r"(\d+(?:\.\d+)?|\.\d+)(ms|s|m|h|d)")
_COMPOUND = re.compile(r"(?:(?:\d+(?:\.\d+)?|\.\d+)(?:ms|s|m|h|d))+")
_NUMBER = re.compile(r"\d+(?:\.\d+)?|\.\d+")

HINT = "write a number of seconds or a value like 250ms, 10s, 5m, 1h or 1m30s"


class DurationError(SteppeError, ValueError):
    """A duration could not be parsed; a ValueError too, so pydantic validators report it in place."""

    exit_code = 2


def parse_duration(value: object) -> float:
    """Seconds in `value`: a non-negative number, or a string of number+unit parts (ms, s, m, h, d)."""
    if isinstance(value, bool):
        raise DurationError(f"invalid duration {value!r}: {HINT}")
    if isinstance(value, int | float):
        seconds = float(value)
    elif isinstance(value, str):
        seconds = _parse_text(value)
    else:
        raise DurationError(f"invalid duration {value!r} ({type(value).__name__}): {HINT}")
    if not math.isfinite(seconds) or seconds < 0:
        raise DurationError(f"invalid duration {value!r}: it must be a finite, non-negative amount; {HINT}")
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
