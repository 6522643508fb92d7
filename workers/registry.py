"""Handler registry: names in YAML resolve to functions registered here, never to import paths."""

from __future__ import annotations

import importlib
import inspect
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, TypeVar

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
