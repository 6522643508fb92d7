"""Handler registry: names in YAML resolve to functions registered here, never to import paths.

Also the rules of the *worker* registry in Redis (`{ns}:workers`, `{ns}:worker:<id>`): how long an
entry lives without a heartbeat, and which entries a worker evicts (`stale_workers`).
"""

from __future__ import annotations

import importlib
import inspect
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

import orjson

from orchestrator.errors import ConfigError

HANDLER_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_.-]{0,127}$")
F = TypeVar("F", bound=Callable[..., Any])


@dataclass(frozen=True, slots=True)
class Handler:
    name: str
    func: Callable[..., Any]
    is_async: bool
    signature: inspect.Signature


class HandlerRegistry:
    """Maps handler names to functions."""

    def __init__(self) -> None:
        self._handlers: dict[str, Handler] = {}

    def register(self, name: str, func: Callable[..., Any]) -> None:
        if not HANDLER_NAME.match(name):
            raise ConfigError(f"handler name {name!r} must match {HANDLER_NAME.pattern}")
        existing = self._handlers.get(name)
        if existing is not None and existing.func is not func:
            raise ConfigError(
                f"handler {name!r} is registered twice ({existing.func.__module__} and {func.__module__})"
            )
        self._handlers[name] = Handler(name, func, inspect.iscoroutinefunction(func), inspect.signature(func))

    def get(self, name: str) -> Handler | None:
        return self._handlers.get(name)

    def names(self) -> list[str]:
        return sorted(self._handlers)

    def __contains__(self, name: object) -> bool:
        return name in self._handlers


default_registry = HandlerRegistry()


def handler(name: str, *, registry: HandlerRegistry | None = None) -> Callable[[F], F]:
    """Register a sync or async function as the handler `name`."""

    def decorate(func: F) -> F:
        (registry or default_registry).register(name, func)
        return func

    return decorate


def import_modules(modules: Iterable[str]) -> None:
    """Import user handler modules (`--import pkg.module`); their decorators register handlers."""
    for module in modules:
        try:
            importlib.import_module(module)
        except ImportError as e:
            raise ConfigError(
                f"cannot import handler module {module!r}: {e}; check --import / STEPPE_IMPORTS "
                "and that the module is on PYTHONPATH"
            ) from e


# -- the worker registry in Redis -------------------------------------------------------------------

HEARTBEAT_MISSES = 3  # a worker that missed this many of its own heartbeats is gone
MIN_ENTRY_TTL = 2.0  # seconds; no entry expires sooner, however short its interval


def entry_ttl(heartbeat_interval: float) -> float:
    """How long a worker's registry entry stays without a heartbeat: 3 of *its own* intervals."""
    return max(HEARTBEAT_MISSES * heartbeat_interval, MIN_ENTRY_TTL)


def stale_workers(now: float, entries: Mapping[str, bytes | None]) -> list[str]:
    """The ids among `entries` (id → its `{ns}:worker:<id>` JSON, None when expired) to evict.

    Each entry is judged by the interval its worker advertises (`heartbeat_interval`), never
    by the evicting worker's own: mixed settings must not evict a live worker. An entry of an
    older worker, without that field, stays as long as its key, which it set to expire after
    3 of its own intervals.
    """
    stale: list[str] = []
    for worker_id, raw in entries.items():
        if raw is None:
            stale.append(worker_id)
            continue
        try:
            info = orjson.loads(raw)
            interval = float(info["heartbeat_interval"])
            beat = float(info["heartbeat"])
        except (orjson.JSONDecodeError, KeyError, TypeError, ValueError):
            continue  # no advertised interval (or unreadable): its key's TTL decides
        if now - beat > entry_ttl(interval):
            stale.append(worker_id)
    return stale
