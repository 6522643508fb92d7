"""steppe mcp's server in-process: the tools it lists, validation and planning without servers, and
SteppeErrors turned into tool errors carrying the CLI's message (the e2e suite drives it over stdio)."""

from __future__ import annotations

import asyncio
import datetime as dt
from typing import Any

import pytest
from mcp.server.mcpserver.exceptions import ToolError, UnexpectedToolError

from orchestrator.client import Client
from orchestrator.errors import ConfigError
from orchestrator.mcp_server import build_server, tool_errors
from orchestrator.mcp_tools import SteppeTools, check_wait, plain
from orchestrator.settings import Settings

GOOD = "name: two\nsteps:\n  - id: a\n    handler: builtin.noop\n  - id: b\n    handler: builtin.noop\n    needs: [a]\n"
BAD = "name: bad\nsteps:\n  - id: a\n    handlr: builtin.noop\n"


@pytest.fixture
def server() -> Any:
    # The direct transport connects on first use: validating and planning never do.
    client = Client(settings=Settings(redis_url="redis://127.0.0.1:1", database_url="postgresql://127.0.0.1:1/x"))
    yield build_server(SteppeTools(client))
    client.close()


def call(server: Any, tool: str, **arguments: Any) -> Any:
    return asyncio.run(server.call_tool(tool, arguments)).structured_content


def test_the_tools_and_their_schemas(server: Any) -> None:
    tools = {t.name: t for t in asyncio.run(server.list_tools())}
    assert {"validate_workflow", "submit_workflow", "wait_for_run", "list_handlers", "replay_dead_letter"} <= set(tools)
    wait = tools["wait_for_run"].input_schema["properties"]["timeout_seconds"]
    assert (wait["minimum"], wait["maximum"]) == (0, 3600)
    assert all(t.description for t in tools.values())


def test_validate_and_plan_need_no_servers(server: Any) -> None:
    assert call(server, "validate_workflow", workflow=GOOD) == {
        "valid": True,
        "workflow": "two",
        "steps": 2,
        "edges": 1,
        "waves": 2,
        "expansions": [],
    }
    mapping = {"name": "m", "steps": [{"id": "x", "handler": "builtin.noop"}]}
    assert call(server, "validate_workflow", workflow=mapping)["steps"] == 1
    assert call(server, "plan_workflow", workflow=GOOD)["waves"] == [["a"], ["b"]]


def test_problems_are_a_tool_error_with_their_positions(server: Any) -> None:
    with pytest.raises(ToolError) as caught:
        asyncio.run(server.call_tool("validate_workflow", {"workflow": BAD}))
    assert not isinstance(caught.value, UnexpectedToolError)
    assert "<workflow>:4:5: unknown key 'handlr'" in str(caught.value)
    assert str(caught.value).endswith("1 problem(s) found")


def test_a_steppe_error_keeps_its_message_and_others_are_not_caught() -> None:
    def refuses() -> None:
        raise ConfigError("limit must be between 1 and 1000, not 0")

    with pytest.raises(ToolError, match="error: limit must be between 1 and 1000, not 0"):
        tool_errors(refuses)()

    def crashes() -> None:
        raise RuntimeError("a bug")

    with pytest.raises(RuntimeError):  # the SDK logs it and tells the agent only that the tool failed
        tool_errors(crashes)()


def test_plain_documents_and_wait_bounds() -> None:
    when = dt.datetime(2026, 1, 2, 3, 4, 5, tzinfo=dt.UTC)
    assert plain({"a": [when], "b": (1,)}) == {"a": ["2026-01-02T03:04:05+00:00"], "b": [1]}
    assert check_wait(0) == 0.0
    with pytest.raises(ConfigError, match="call again"):
        check_wait(3601)
