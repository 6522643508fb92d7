"""Steppe's coordinator side: workflow spec, planner, state store, coordinator loop and CLI.

The Python client is exported here (`from orchestrator import Client, AsyncClient`); it is
imported on first use (PEP 562), so that `steppe --help` does not load it.
"""

from __future__ import annotations

import importlib as _importlib
import typing as _typing

if _typing.TYPE_CHECKING:
    from orchestrator.client import AsyncClient, Client

__version__ = "0.1.0"

__all__ = ["AsyncClient", "Client"]

_LAZY = {"AsyncClient": "orchestrator.client", "Client": "orchestrator.client"}

if not _typing.TYPE_CHECKING:  # mypy sees the imports above; a visible __getattr__ would make every name Any

    def __getattr__(name: str) -> _typing.Any:
        source = _LAZY.get(name)
        if source is None:
            raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
        value = getattr(_importlib.import_module(source), name)
        globals()[name] = value
        return value

    def __dir__() -> list[str]:
        return sorted({*globals(), *_LAZY})
