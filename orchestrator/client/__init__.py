"""The Python client of Steppe (docs/spec.md §12.4): `Client`, `AsyncClient`, run handles and typed documents.

client.py     Client / AsyncClient, Run / AsyncRun, result() and its errors
models.py     RunDocument (the `steppe status --json` document), StepDocument, RunSummary, HistoryEvent
sources.py    what submit() accepts (a mapping, YAML text, a path) → one YAML document
transport.py  what a transport does, and the refusals both apply alike
direct.py     PostgreSQL + Redis, through Submitter and RunStore (the CLI's code paths)
http.py       `steppe api` over httpx, error documents mapped back to SteppeErrors
"""

from __future__ import annotations

from orchestrator.client.client import AsyncClient, AsyncRun, Client, Run
from orchestrator.client.models import HistoryEvent, RunDocument, RunSummary, StepDocument

__all__ = [
    "AsyncClient",
    "AsyncRun",
    "Client",
    "HistoryEvent",
    "Run",
    "RunDocument",
    "RunSummary",
    "StepDocument",
]
