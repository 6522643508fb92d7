"""`steppe signal | approve | reject`: durable waits (docs/spec.md §12.1).

Exit codes: 0 accepted; 1 the run is finished, or the step is not waiting for an approval;
2 no such run, a bad signal name or payload, or an approver the step does not name; 3 Redis or
PostgreSQL unreachable.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import typer

from orchestrator.cli.common import console, load_settings, report_errors
from orchestrator.cli.context import connect
from orchestrator.errors import SubmitError


def _payload(data: str | None, data_file: Path | None) -> Any:
    if data is not None and data_file is not None:
        raise SubmitError("give the payload with --data or --data-file, not both")
    try:
        if data_file is not None:
            return json.loads(data_file.read_text())
        return json.loads(data) if data is not None else None
    except OSError as e:
        raise SubmitError(f"cannot read {data_file}: {e.strerror or e}") from e
    except ValueError as e:
        raise SubmitError(f"the payload is not JSON ({e}); write it like --data '{{\"amount\": 42}}'") from e
    except RecursionError:
        raise SubmitError("the payload nests too deeply: flatten this data") from None


def register(app: typer.Typer) -> None:
    @app.command()
    @report_errors
    def signal(
        run_id: str,
        name: str,
        data: str | None = typer.Option(None, "--data", help="The payload, JSON (the waiting step's output)"),
        data_file: Path | None = typer.Option(None, "--data-file", help="Read the JSON payload from a file"),
        idempotency_key: str | None = typer.Option(
            None, "--idempotency-key", help="Send the same key again and the signal is accepted once"
        ),
    ) -> None:
        """Send signal NAME to a run: the first step waiting for it (now or later) continues with the payload."""
        from orchestrator.signals import Signaller

        payload = _payload(data, data_file)
        with connect(load_settings()) as clients:
            signaller = Signaller(settings=clients.settings, store=clients.store, client=clients.redis)
            receipt = signaller.signal(run_id, name, payload, idempotency_key=idempotency_key)
        if receipt.duplicate:
            console.print(
                f"signal {name} for {run_id} was already accepted with this idempotency key (#{receipt.signal_id})"
            )
        else:
            console.print(f"signal {name} accepted for {run_id} (#{receipt.signal_id})")

    def _decide(run_id: str, step: str, by: str | None, comment: str | None, *, approve: bool) -> None:
        from orchestrator.signals import Signaller

        with connect(load_settings()) as clients:
            signaller = Signaller(settings=clients.settings, store=clients.store, client=clients.redis)
            receipt = signaller.decide(run_id, step, approve=approve, by=by, comment=comment)
        verb = "approval" if approve else "rejection"
        console.print(f"{verb} of step {step} of {run_id} accepted (#{receipt.signal_id})")

    by_option = typer.Option(None, "--by", help="Who decides (required when the step names its approvers)")
    comment_option = typer.Option(None, "--comment", help="Why; recorded with the decision")

    @app.command()
    @report_errors
    def approve(run_id: str, step: str, by: str | None = by_option, comment: str | None = comment_option) -> None:
        """Approve a waiting `approval:` step: it succeeds with {approved, by, comment, at}."""
        _decide(run_id, step, by, comment, approve=True)

    @app.command()
    @report_errors
    def reject(run_id: str, step: str, by: str | None = by_option, comment: str | None = comment_option) -> None:
        """Reject a waiting `approval:` step: it fails with ApprovalRejected (no retry; `on_failure` applies)."""
        _decide(run_id, step, by, comment, approve=False)
