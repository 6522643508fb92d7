"""Client.signal / approve / reject, and the HTTP routes, the same over both transports (the pattern of
test_client_contract.py, whose module cluster this reuses): one contract, whichever the transport."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import pytest

from orchestrator import AsyncClient, Client
from orchestrator.errors import RunNotFoundError, SubmitError
from orchestrator.state import StepStatus
from orchestrator.wait_errors import ApproverRefusedError
from tests.e2e.conftest import Env
from tests.e2e.test_api import ApiServer
from tests.e2e.test_client_contract import TRANSPORTS, client, cluster, env, options  # noqa: F401 - fixtures
from tests.helpers import assert_eventually

pytestmark = [pytest.mark.e2e, pytest.mark.integration]

REVIEWED = """
name: client-reviewed
steps:
  - id: review
    approval: {approvers: [alice]}
  - id: paid
    needs: [review]
    wait: {signal: payment-webhook}
"""


def waiting(c: Client, run_id: str, step: str, cluster_env: Env) -> None:
    assert_eventually(
        lambda: (s := c.status(run_id).steps.get(step)) is not None and s.status is StepStatus.WAITING,
        timeout=30,
        message=cluster_env.log,
    )


def test_approve_and_signal_finish_a_run(client: Client, env: Env) -> None:  # noqa: F811 - fixtures
    run = client.submit(REVIEWED)
    waiting(client, run.id, "review", env)
    key = f"pay-{uuid.uuid4().hex}"
    first = client.signal(run.id, "payment-webhook", {"amount": 7}, idempotency_key=key)
    again = client.signal(run.id, "payment-webhook", {"amount": 8}, idempotency_key=key)
    assert (again.signal_id, first.duplicate, again.duplicate) == (first.signal_id, False, True)
    with pytest.raises(ApproverRefusedError, match="'bob' is not an approver"):
        client.approve(run.id, "review", by="bob")
    with pytest.raises(SubmitError, match="is not waiting for an approval"):
        client.approve(run.id, "paid", by="alice")
    client.approve(run.id, "review", by="alice", comment="fine")
    assert run.result(timeout=60) == {"paid": {"amount": 7}}
    assert run.status().steps["review"].output["by"] == "alice"
    with pytest.raises(SubmitError, match="already succeeded"):
        client.signal(run.id, "payment-webhook")
    with pytest.raises(RunNotFoundError, match="no run 'r-missing'"):
        client.signal("r-missing", "payment-webhook")
    with pytest.raises(SubmitError, match="must be a signal name"):
        client.signal(run.id, "not a name")


@pytest.mark.parametrize("kind", TRANSPORTS)
def test_the_async_client_rejects(kind: str, cluster: tuple[Env, ApiServer]) -> None:  # noqa: F811
    async def scenario() -> None:
        async with AsyncClient(**options(kind, cluster), timeout=30) as aclient:
            run = await aclient.submit(REVIEWED)
            for _ in range(600):
                step = (await run.status()).steps.get("review")
                if step is not None and step.status is StepStatus.WAITING:
                    break
                await asyncio.sleep(0.05)
            await aclient.reject(run.id, "review", by="alice", comment="no")
            doc = await aclient.wait(run.id, timeout=60)
            assert doc.status == "failed"
            error: Any = doc.steps["review"].error
            assert error["type"] == "ApprovalRejected"

    asyncio.run(scenario())


def test_the_http_routes_answer_with_their_status_codes(cluster: tuple[Env, ApiServer]) -> None:  # noqa: F811
    cluster_env, api = cluster
    with Client(**options("direct", cluster), timeout=30) as direct:
        run = direct.submit(REVIEWED)
        waiting(direct, run.id, "review", cluster_env)
    with api.client() as http:
        base = f"/v1/runs/{run.id}"
        sent = http.post(f"{base}/signals/payment-webhook", json={"amount": 1}, headers={"Idempotency-Key": "k1"})
        assert sent.status_code == 202, sent.text
        repeated = http.post(f"{base}/signals/payment-webhook", json={"amount": 1}, headers={"Idempotency-Key": "k1"})
        assert repeated.status_code == 200
        assert repeated.json()["duplicate"] is True
        assert http.post(f"{base}/steps/review/approve", json={"by": "mallory"}).status_code == 403
        assert http.post(f"{base}/steps/paid/approve", json={"by": "alice"}).status_code == 409
        assert http.post(f"{base}/steps/review/approve", content=b"{nope").status_code == 422
        assert http.post("/v1/runs/r-missing/signals/x").status_code == 404
        assert http.post(f"{base}/signals/bad%20name").status_code == 422
        listed = http.get("/v1/runs", params={"status": "waiting"})
        assert listed.status_code == 200, listed.text
        assert run.id in [r["run_id"] for r in listed.json()["runs"]]
        approved = http.post(f"{base}/steps/review/approve", json={"by": "alice"})
        assert approved.status_code == 202, approved.text
        assert approved.json()["decision"] == "approve"
        schema = http.get("/openapi.json").json()
        assert "/v1/runs/{run_id}/signals/{name}" in schema["paths"]
        assert "/v1/runs/{run_id}/steps/{step}/reject" in schema["paths"]
