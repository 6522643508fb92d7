"""The UI's actions on waiting steps (docs/spec.md §12.1), CSRF-checked like cancel and retry:
approve or reject an `approval:` step, send a signal with a JSON payload. Each redirects to the run."""

from __future__ import annotations

import json
from urllib.parse import quote

from fastapi import APIRouter, Request
from starlette.responses import Response

from orchestrator.api.ui.actions import _act, _status
from orchestrator.api.ui.web import Ui
from orchestrator.errors import SubmitError
from orchestrator.signals import Signaller

__all__ = ["wait_actions"]

wait_actions = APIRouter(prefix="/ui", include_in_schema=False)


def _signaller(ui: Ui) -> Signaller:
    return Signaller(settings=ui.res.settings, store=ui.res.store(), client=ui.res.redis)


@wait_actions.post("/runs/{run_id}/steps/{step}/decide")
async def decide(request: Request, run_id: str, step: str) -> Response:
    def do(ui: Ui, form: dict[str, str]) -> str:
        _status(ui, run_id)
        decision = form.get("decision")
        if decision not in ("approve", "reject"):
            raise SubmitError("choose Approve or Reject")
        by = form.get("by", "").strip() or None
        comment = form.get("comment", "").strip() or None
        _signaller(ui).decide(run_id, step, approve=decision == "approve", by=by, comment=comment)
        return f"/ui/runs/{quote(run_id)}?done={decision}"

    return await _act(request, do)


@wait_actions.post("/runs/{run_id}/signals")
async def send_signal(request: Request, run_id: str) -> Response:
    def do(ui: Ui, form: dict[str, str]) -> str:
        _status(ui, run_id)
        text = form.get("data", "").strip()
        try:
            payload = json.loads(text) if text else None
        except ValueError as e:
            raise SubmitError(f'the payload is not JSON ({e}); write it like {{"amount": 42}}') from e
        _signaller(ui).signal(run_id, form.get("name", ""), payload)
        return f"/ui/runs/{quote(run_id)}?done=signal"

    return await _act(request, do)
