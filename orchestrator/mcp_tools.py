"""What `steppe mcp`'s tools do (docs/spec.md §12.8), over the Python client: one code path.

Every operation on runs goes through `orchestrator.client.Client` — the direct transport
(PostgreSQL + Redis, as `steppe submit`) or, with an API URL, `steppe api` over HTTP — so a tool
refuses what the client refuses, with the same SteppeError and the same message as the CLI.
Validating and planning need no servers (the `steppe validate` / `steppe plan` code path). Dead
letters and the worker registry are read the way `steppe dlq` / `steppe workers` read them, which
needs the direct transport (the HTTP API does not serve them).

Return values are plain JSON documents (dates as ISO strings) that `orchestrator.mcp_server`
hands to the agent as the tools' structured output.
"""

from __future__ import annotations

import datetime as dt
import json
import time
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from orchestrator.client import Client
from orchestrator.client.sources import WorkflowSource, resolve
from orchestrator.errors import ConfigError, InfrastructureError, SubmitError

if TYPE_CHECKING:
    from orchestrator.submit import Submitter

MAX_WAIT = 3600.0  # the longest one wait_for_run call blocks (an agent calls again to wait longer)
DEAD_LETTER_STATUSES = ("dead", "replayed")


def plain(value: Any) -> Any:
    """`value` with datetimes as ISO 8601 strings, all the way down (JSON for the agent)."""
    if isinstance(value, dt.datetime):
        return value.isoformat()
    if isinstance(value, Mapping):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [plain(v) for v in value]
    return value


def check_wait(seconds: float) -> float:
    if not 0 <= seconds <= MAX_WAIT:
        raise ConfigError(
            f"timeout_seconds must be between 0 and {MAX_WAIT:g}, not {seconds:g}; to wait longer, call again"
        )
    return float(seconds)


class SteppeTools:
    """The operations behind the MCP tools, each raising SteppeError with an actionable message."""

    def __init__(self, client: Client) -> None:
        self.client = client

    # -- documents: no servers needed ----------------------------------------------------------------

    def validate(self, workflow: WorkflowSource) -> dict[str, Any]:
        from orchestrator.planner import plan
        from orchestrator.spec import load_workflow

        document = resolve(workflow)
        spec = load_workflow(document.text, filename=document.filename)
        result = plan(spec)
        return {
            "valid": True,
            "workflow": spec.name,
            "steps": len(result.nodes),
            "edges": len(result.edges),
            "waves": len(result.waves),
            "expansions": [
                {"step": e.step_id, "pattern": e.pattern, "expanded_to": list(e.step_ids)} for e in spec._expansions
            ],
        }

    def plan(self, workflow: WorkflowSource) -> dict[str, Any]:
        from orchestrator import planner
        from orchestrator.spec import load_workflow

        document = resolve(workflow)
        plan: dict[str, Any] = json.loads(
            planner.render_json(planner.plan(load_workflow(document.text, filename=document.filename)))
        )
        return plan

    # -- runs: through the client --------------------------------------------------------------------

    def submit(
        self,
        workflow: WorkflowSource,
        *,
        inputs: Mapping[str, Any] | None,
        idempotency_key: str | None,
        check_handlers: bool,
        wait_seconds: float,
    ) -> dict[str, Any]:
        run = self.client.submit(
            workflow, inputs=inputs, idempotency_key=idempotency_key, check_handlers=check_handlers
        )
        done: dict[str, Any] = {"run_id": run.id, "workflow": run.workflow, "created": run.created}
        if wait_seconds > 0:
            done["run"] = self.wait(run.id, timeout_seconds=wait_seconds)
        return done

    def get(self, run_id: str) -> dict[str, Any]:
        return self.client.status(run_id).model_dump(mode="json")

    def wait(self, run_id: str, *, timeout_seconds: float) -> dict[str, Any]:
        doc = self.client.wait(run_id, timeout=check_wait(timeout_seconds))
        out: dict[str, Any] = {"finished": doc.finished, **doc.model_dump(mode="json")}
        if not doc.finished:
            out["note"] = (
                f"run {run_id} is still {doc.status} after {timeout_seconds:g}s; call wait_for_run again to keep "
                "waiting, or cancel_run"
            )
        return out

    def runs(self, *, status: str | None, workflow: str | None, limit: int) -> dict[str, Any]:
        rows = self.client.runs(status=status, workflow=workflow, limit=limit)
        return {"runs": [r.model_dump(mode="json") for r in rows]}

    def history(self, run_id: str, *, after: int) -> dict[str, Any]:
        return {"events": [e.model_dump(mode="json") for e in self.client.history(run_id, after=after)]}

    def cancel(self, run_id: str) -> dict[str, Any]:
        self.client.cancel(run_id)
        return {"run_id": run_id, "requested": "cancel"}

    def retry(self, run_id: str) -> dict[str, Any]:
        self.client.retry(run_id)
        return {"run_id": run_id, "requested": "retry", "resumed": True}

    # -- durable waits (§12.1): signals and approval decisions, through the client ----------------------

    def signal(self, run_id: str, name: str, *, payload: Any, idempotency_key: str | None) -> dict[str, Any]:
        done = self.client.signal(run_id, name, payload, idempotency_key=idempotency_key)
        return {"run_id": done.run_id, "signal_id": done.signal_id, "duplicate": done.duplicate}

    def decide(self, run_id: str, step: str, *, approve: bool, by: str | None, comment: str | None) -> dict[str, Any]:
        decide = self.client.approve if approve else self.client.reject
        done = decide(run_id, step, by=by, comment=comment)
        return {"run_id": done.run_id, "step": step, "decision": "approved" if approve else "rejected"}

    # -- registry and dead letters: the direct transport's servers -----------------------------------

    def _direct(self, what: str) -> Submitter:
        from orchestrator.client.direct import DirectTransport

        transport = self.client.transport
        if not isinstance(transport, DirectTransport):
            raise ConfigError(
                f"{what} are read from Redis and PostgreSQL directly, which the HTTP API does not serve: start "
                "`steppe mcp` without --api-url, with STEPPE_REDIS_URL and STEPPE_DATABASE_URL set"
            )
        return transport.submitter

    def workers(self, *, handler: str | None) -> dict[str, Any]:
        from orchestrator.bus import live_members
        from orchestrator.keys import Keys

        submitter = self._direct("workers")
        keys = Keys(submitter.settings.namespace)
        workers = live_members(submitter.redis, keys.workers, keys.worker)
        if handler is not None:
            workers = [w for w in workers if handler in w.get("handlers", ())]
        coordinators = live_members(submitter.redis, keys.coordinators, keys.coordinator)
        return {"workers": workers, "coordinators": coordinators}

    def handlers(self) -> dict[str, Any]:
        served: dict[str, dict[str, Any]] = {}
        for w in self.workers(handler=None)["workers"]:
            for name in w.get("handlers", ()):
                entry = served.setdefault(name, {"handler": name, "workers": [], "queues": set()})
                entry["workers"].append(w["id"])
                entry["queues"].update(w.get("queues", ()))
        return {
            "handlers": [
                {**entry, "queues": sorted(entry["queues"])}
                for _, entry in sorted(served.items(), key=lambda kv: kv[0])
            ]
        }

    def dead_letters(self, *, run_id: str | None, status: str | None, reason: str | None, limit: int) -> dict[str, Any]:
        if status is not None and status not in DEAD_LETTER_STATUSES:
            raise ConfigError(f"unknown dead-letter status {status!r}; use one of: {', '.join(DEAD_LETTER_STATUSES)}")
        if not 1 <= limit <= 1000:
            raise ConfigError(f"limit must be between 1 and 1000, not {limit}")
        store = self._synced()
        rows = store.find(run_id=run_id, status=status, reason=reason, limit=limit)
        for row in rows:
            row.pop("raw", None)
        return {"dead_letters": plain(rows)}

    def replay(self, dead_letter_id: int, *, args: Mapping[str, Any] | None) -> dict[str, Any]:
        from orchestrator.keys import Keys
        from orchestrator.store.dead_letters import check_replayable, replay

        if args is not None and not isinstance(args, Mapping):
            raise SubmitError("args must be a JSON object of the step's arguments (name → value), or left out")
        submitter = self._direct("dead letters")
        store = self._synced()
        row = store.get(dead_letter_id)
        check_replayable(store, row)
        settings = submitter.settings
        run_id = str(row["run_id"])
        seen = max((e.seq for e in self.client.history(run_id)), default=0)
        replay(
            store,
            submitter.redis,
            Keys(settings.namespace),
            partitions=settings.coordinator.partitions,
            row=row,
            args=dict(args) if args is not None else None,
        )
        self._until_resumed(run_id, after=seen)
        return {"run_id": run_id, "step": row["step_key"], "overrides": args is not None}

    def _until_resumed(self, run_id: str, *, after: int) -> None:
        """Return once the run's coordinator took the replay (as `Client.retry` does), so that a
        wait_for_run right after it waits for the new outcome instead of returning the old failure."""
        from orchestrator.client.transport import poll_delays
        from orchestrator.state import EventType

        deadline = time.monotonic() + self.client.timeout
        for delay in poll_delays():
            if any(e.type == EventType.RUN_RESUMED for e in self.client.history(run_id, after=after)):
                return
            if time.monotonic() >= deadline:
                raise InfrastructureError(
                    f"the replay of run {run_id} is recorded, but no coordinator took it within "
                    f"{self.client.timeout:g}s; it is carried out when one runs: check that `steppe coordinator` is up"
                )
            time.sleep(delay)

    def _synced(self) -> Any:
        from orchestrator.keys import Keys
        from orchestrator.store.dead_letters import DeadLetterStore, sync_from_stream

        submitter = self._direct("dead letters")
        store = DeadLetterStore(submitter.store)
        sync_from_stream(submitter.redis, Keys(submitter.settings.namespace), store)
        return store
