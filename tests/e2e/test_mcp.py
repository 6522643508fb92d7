"""`steppe mcp` through the official SDK's client over stdio (docs/spec.md §12.8): a real `steppe mcp`
subprocess in front of a real cluster (a coordinator and a worker subprocess, shared by the module)."""

from __future__ import annotations

import json
import sys
import uuid
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

import anyio
import psycopg
import pytest
from mcp.client.session import ClientSession
from mcp.client.stdio import StdioServerParameters, stdio_client

from tests.e2e.conftest import Env, make_env

pytestmark = [pytest.mark.e2e, pytest.mark.integration]

ECHO = """
name: mcp-echo
inputs:
  who: {type: string, required: true}
steps:
  - id: greet
    handler: builtin.echo
    with: {greeting: "hello ${{ inputs.who }}"}
"""

# `handlr` is a typo on line 6, column 5.
BAD = """name: mcp-bad
steps:
  - id: ok
    handler: builtin.noop
  - id: typo
    handlr: builtin.noop
"""

FAILING = """
name: mcp-failing
steps:
  - id: explode
    handler: builtin.fail
    with: {message: "boom: the disk is full", retryable: false}
"""

TOOLS = {
    "validate_workflow",
    "plan_workflow",
    "submit_workflow",
    "get_run",
    "wait_for_run",
    "list_runs",
    "run_history",
    "cancel_run",
    "retry_run",
    "send_signal",
    "approve_step",
    "reject_step",
    "list_workers",
    "list_handlers",
    "list_dead_letters",
    "replay_dead_letter",
}


@pytest.fixture(scope="module")
def cluster(
    redis_url: str, postgres_server: Any, template_database: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Env]:
    name = f"steppe_mcp_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(postgres_server.url_for("postgres"), autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}" TEMPLATE "{template_database}"')
    env = make_env(redis_url, postgres_server.url_for(name), f"t{uuid.uuid4().hex[:12]}", tmp_path_factory.mktemp("m"))
    try:
        env.start(workers=1)
        yield env
    finally:
        env.close()
        with psycopg.connect(postgres_server.url_for("postgres"), autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def with_session(env: Env, body: Callable[[ClientSession], Awaitable[None]]) -> None:
    """Start `steppe mcp` as an MCP client does (a subprocess on stdio) and run `body` in a session."""
    params = StdioServerParameters(
        command=sys.executable, args=["-m", "orchestrator.cli.main", "mcp"], env=env.env, cwd=str(env.home)
    )

    log = env.home / "mcp-stderr.log"

    async def main() -> None:
        with anyio.fail_after(120), log.open("a") as errlog:
            async with stdio_client(params, errlog=errlog) as (read, write), ClientSession(read, write) as session:
                await session.initialize()
                await body(session)

    try:
        anyio.run(main)
    except BaseException:
        print(f"steppe mcp's stderr:\n{log.read_text(errors='replace')[-8000:]}")
        raise


async def call(session: ClientSession, tool: str, **arguments: Any) -> dict[str, Any]:
    result = await session.call_tool(tool, arguments)
    assert not result.is_error, result.content
    assert isinstance(result.structured_content, dict)
    return result.structured_content


async def error_of(session: ClientSession, tool: str, **arguments: Any) -> str:
    result = await session.call_tool(tool, arguments)
    assert result.is_error, result
    text = "\n".join(getattr(c, "text", "") for c in result.content)
    assert "Traceback" not in text
    return text


def test_tools_are_listed_with_their_input_schemas(cluster: Env) -> None:
    async def body(session: ClientSession) -> None:
        listed = {t.name: t for t in (await session.list_tools()).tools}
        assert set(listed) >= TOOLS
        submit = listed["submit_workflow"].input_schema
        assert submit["required"] == ["workflow"]
        assert {"inputs", "idempotency_key", "wait_seconds"} <= set(submit["properties"])
        assert "YAML" in submit["properties"]["workflow"]["description"]
        assert listed["get_run"].input_schema["required"] == ["run_id"]

    with_session(cluster, body)


def test_submit_and_wait_for_the_result(cluster: Env) -> None:
    async def body(session: ClientSession) -> None:
        valid = await call(session, "validate_workflow", workflow=ECHO)
        assert (valid["valid"], valid["workflow"], valid["steps"]) == (True, "mcp-echo", 1)
        done = await call(session, "submit_workflow", workflow=ECHO, inputs={"who": "agent"})
        run_id = done["run_id"]
        assert (done["workflow"], done["created"]) == ("mcp-echo", True)
        finished = await call(session, "wait_for_run", run_id=run_id, timeout_seconds=60)
        assert (finished["finished"], finished["status"]) == (True, "succeeded")
        assert finished["steps"]["greet"]["output"] == {"greeting": "hello agent"}
        assert finished["outputs"] == cluster.run(run_id)["outputs"]
        # In one call, and as a JSON object rather than YAML text.
        mapping = {"name": "mcp-map", "steps": [{"id": "one", "handler": "builtin.echo", "with": {"n": 3}}]}
        waited = await call(session, "submit_workflow", workflow=mapping, wait_seconds=60)
        assert waited["run"]["status"] == "succeeded"
        assert waited["run"]["steps"]["one"]["output"] == {"n": 3}
        listed = await call(session, "list_runs", workflow="mcp-echo")
        assert [r["run_id"] for r in listed["runs"]] == [run_id]
        events = (await call(session, "run_history", run_id=run_id))["events"]
        assert events[0]["type"] == "run.submitted"
        assert events[-1]["type"] == "run.succeeded"

    with_session(cluster, body)


def test_workers_and_handlers_are_found_by_handler(cluster: Env) -> None:
    async def body(session: ClientSession) -> None:
        capable = await call(session, "list_workers", handler="builtin.echo")
        assert len(capable["workers"]) == 1
        assert len(capable["coordinators"]) == 1
        assert (await call(session, "list_workers", handler="nobody.serves.this"))["workers"] == []
        handlers = {h["handler"]: h for h in (await call(session, "list_handlers"))["handlers"]}
        assert handlers["builtin.echo"]["queues"] == ["default"]
        assert handlers["builtin.echo"]["workers"] == [capable["workers"][0]["id"]]

    with_session(cluster, body)


def test_errors_are_the_cli_messages_as_tool_errors(cluster: Env) -> None:
    async def body(session: ClientSession) -> None:
        invalid = await error_of(session, "submit_workflow", workflow=BAD)
        assert "<workflow>:6:5" in invalid
        assert "handlr" in invalid
        assert "1 problem(s) found" in invalid
        assert "<workflow>:6:5" in await error_of(session, "validate_workflow", workflow=BAD)
        unknown = await error_of(session, "get_run", run_id="r-doesnotexist")
        assert "no run 'r-doesnotexist'" in unknown
        assert "steppe runs" in unknown
        assert "no run" in await error_of(session, "wait_for_run", run_id="not a run id!", timeout_seconds=1)
        unserved = await error_of(
            session, "submit_workflow", workflow=ECHO.replace("builtin.echo", "x.missing"), inputs={"who": "a"}
        )
        assert "x.missing" in unserved
        # A finished run cannot be cancelled: the client's refusal, word for word.
        failed = await call(session, "submit_workflow", workflow=FAILING, wait_seconds=60)
        assert failed["run"]["status"] == "failed"
        assert "boom: the disk is full" in json.dumps(failed["run"]["steps"]["explode"]["error"])
        refused = await error_of(session, "cancel_run", run_id=failed["run_id"])
        assert "already failed" in refused
        assert "unknown run status 'exploded'" in await error_of(session, "list_runs", status="exploded")
        assert "dead-letter status" in await error_of(session, "list_dead_letters", status="gone")

    with_session(cluster, body)


def test_a_dead_letter_is_listed_and_replayed_with_new_arguments(cluster: Env) -> None:
    """The dead letter of a failed run (written as a worker writes one after max_deliveries) is
    listed, refused while it cannot be replayed, and replayed with edited arguments to success."""
    from orchestrator.store.dead_letters import DeadLetterStore
    from patterns.dead_letter import DeadLetter, DeadLetterReason

    workflow = FAILING.replace("mcp-failing", "mcp-dlq")

    async def body(session: ClientSession) -> None:
        failed = await call(session, "submit_workflow", workflow=workflow, wait_seconds=60)
        run_id = failed["run_id"]
        assert failed["run"]["status"] == "failed"
        letter = DeadLetter(
            queue="default",
            stream_id=f"{uuid.uuid4().int % 10**12}-0",
            reason=DeadLetterReason.MAX_DELIVERIES,
            error="delivered 4 times (max_deliveries=3)",
            run_id=run_id,
            step_key="explode",
            attempt=1,
            delivery_count=4,
            payload={"handler": "builtin.fail", "args": {"message": "boom", "retryable": False}},
        )
        DeadLetterStore(cluster.store).merge([letter])
        (listed,) = (await call(session, "list_dead_letters", run_id=run_id))["dead_letters"]
        assert (listed["reason"], listed["step_key"], listed["status"]) == ("MaxDeliveriesExceeded", "explode", "dead")
        assert listed["payload"]["args"] == {"message": "boom", "retryable": False}
        assert "steppe dlq list" in await error_of(session, "replay_dead_letter", dead_letter_id=987654321)
        new_args = {"message": "fixed", "retryable": False, "times": 0}
        replayed = await call(session, "replay_dead_letter", dead_letter_id=listed["dead_letter_id"], args=new_args)
        assert replayed == {"run_id": run_id, "step": "explode", "overrides": True}
        done = await call(session, "wait_for_run", run_id=run_id, timeout_seconds=60)
        assert done["status"] == "succeeded", done
        assert (await call(session, "list_dead_letters", run_id=run_id))["dead_letters"][0]["status"] == "replayed"
        again = await error_of(session, "replay_dead_letter", dead_letter_id=listed["dead_letter_id"])
        assert "replayed" in again or "succeeded" in again

    with_session(cluster, body)


WAITS = """
name: mcp-waits
steps:
  - id: review
    approval: {approvers: [alice]}
  - id: paid
    needs: [review]
    wait: {signal: payment}
  - id: publish
    needs: [paid]
    handler: builtin.echo
    with: {amount: "${{ steps.paid.output.amount }}", by: "${{ steps.review.output.by }}"}
"""


def test_a_waiting_run_is_approved_and_signalled_to_its_result(cluster: Env) -> None:
    async def body(session: ClientSession) -> None:
        run_id = (await call(session, "submit_workflow", workflow=WAITS))["run_id"]
        with anyio.fail_after(60):
            while (await call(session, "get_run", run_id=run_id))["steps"].get("review", {}).get("status") != "waiting":
                await anyio.sleep(0.1)
        refused = await error_of(session, "approve_step", run_id=run_id, step="review", by="mallory")
        assert "mallory" in refused
        assert "alice" in refused
        assert "not waiting" in await error_of(session, "approve_step", run_id=run_id, step="publish", by="alice")
        approved = await call(session, "approve_step", run_id=run_id, step="review", by="alice", comment="ok")
        assert approved == {"run_id": run_id, "step": "review", "decision": "approved"}
        first = await call(
            session, "send_signal", run_id=run_id, name="payment", payload={"amount": 5}, idempotency_key="k1"
        )
        again = await call(
            session, "send_signal", run_id=run_id, name="payment", payload={"amount": 6}, idempotency_key="k1"
        )
        assert (first["duplicate"], again["duplicate"]) == (False, True)
        done = await call(session, "wait_for_run", run_id=run_id, timeout_seconds=60)
        assert done["status"] == "succeeded", done
        assert done["steps"]["publish"]["output"] == {"amount": 5, "by": "alice"}
        late = await error_of(session, "send_signal", run_id=run_id, name="payment", payload=1)
        assert "succeeded" in late

    with_session(cluster, body)
