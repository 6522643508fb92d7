"""Checks that user data can be stored and sent as given: bounded nesting, no NUL, no lone surrogates.

PostgreSQL's `jsonb` and `text` refuse NUL (`\\u0000`), UTF-8 cannot encode an unpaired surrogate
(`"\\ud800"` in JSON), and every layer that walks a value recursively (encoders, template
resolution, pydantic) has a depth at which it fails. Values are checked where they enter
(inputs, request bodies, query strings), so that the user gets a message naming the value
instead of a server error later. Pure functions, no recursion (a 100,000-level value is fine).
"""

from __future__ import annotations

import re
from typing import Any

# The same bound as the YAML loader's: deeper data is almost certainly a mistake or an attack.
MAX_DEPTH = 100
SURROGATE = re.compile("[\ud800-\udfff]")
NUL_HINT = "remove it (PostgreSQL cannot store NUL; send binary data base64-encoded or by reference)"
SURROGATE_HINT = "send valid Unicode (a JSON `\\ud800`-style escape must be half of a pair)"


def text_problem(text: str) -> str | None:
    """What makes `text` unstorable, or None."""
    if "\x00" in text:
        return f"holds a NUL character: {NUL_HINT}"
    if not text.isascii() and SURROGATE.search(text):
        return f"holds an unpaired surrogate: {SURROGATE_HINT}"
    return None


def depth_message(max_depth: int = MAX_DEPTH) -> str:
    return f"nests deeper than {max_depth} levels: flatten this data"


def value_problem(value: Any, *, at: tuple[str | int, ...] = (), max_depth: int = MAX_DEPTH) -> tuple[str, str] | None:
    """The first problem of a JSON-like value as (path, what is wrong), or None when it is fine.

    The path reads like `who.tags[2]`, starting with `at` (the name of `value`, if any).
    """
    stack: list[tuple[Any, tuple[str | int, ...]]] = [(value, at)]
    while stack:
        item, path = stack.pop()
        if isinstance(item, str):
            problem = text_problem(item)
            if problem is not None:
                return show_path(path), problem
        elif isinstance(item, dict | list):
            if len(path) - len(at) >= max_depth:
                return show_path(path), depth_message(max_depth)
            if isinstance(item, dict):
                for key, child in item.items():
                    if isinstance(key, str) and (problem := text_problem(key)) is not None:
                        return show_path(path), f"has a key that {problem}"
                    stack.append((child, (*path, str(key))))
            else:
                stack.extend((child, (*path, i)) for i, child in enumerate(item))
    return None


def show_path(path: tuple[str | int, ...], limit: int = 12) -> str:
    """`a.b[0]`; a long path keeps its first and last parts (a deep value's path is deep too)."""
    parts = [f"[{p}]" if isinstance(p, int) else ("." if i else "") + _key(p) for i, p in enumerate(path)]
    if len(parts) > limit:
        parts = [*parts[: limit // 2], f"…({len(parts) - limit} more)…", *parts[-limit // 2 :]]
    return "".join(parts)


def _key(key: str) -> str:
    return key if key.isidentifier() else ascii(key)
