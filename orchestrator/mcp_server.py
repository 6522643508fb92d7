"""`steppe mcp`: a Model Context Protocol server on the official `mcp` SDK (docs/spec.md §12.8).

The tools are thin: each one validates its arguments through its signature (which becomes its
input schema) and calls `orchestrator.mcp_tools.SteppeTools`. A SteppeError becomes an MCP tool
error (`is_error`) whose text is the CLI's message — a workflow's problems one per line with
their positions — never a traceback; anything else is logged on stderr and the agent sees only
that the tool failed.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import TYPE_CHECKING, Annotated, Any, ParamSpec, TypeVar

from pydantic import Field

from orchestrator import __version__
from orchestrator.errors import SpecValidationError, SteppeError
from orchestrator.mcp_tools import MAX_WAIT, SteppeTools

if TYPE_CHECKING:
    from mcp.server.mcpserver import MCPServer

P = ParamSpec("P")
R = TypeVar("R")

INSTRUCTIONS = """\
Steppe runs workflows (YAML documents of steps that call handlers on workers). Typical use:
validate_workflow, then submit_workflow (wait_seconds > 0 to get the result in the same call) or
wait_for_run; get_run shows every step; a run waiting for a signal or an approval goes on with
send_signal / approve_step / reject_step; failed runs can be retried with retry_run; list_workers /
list_handlers say which handlers live workers serve; dead letters are listed and replayed with
list_dead_letters / replay_dead_letter. Errors say what was wrong and what to do."""

Workflow = Annotated[
    str | dict[str, Any],
    Field(
        description="The workflow: its YAML text (a document with `name` and `steps`), the same document as a "
        "JSON object, or the path of a .yaml file on the machine running `steppe mcp`"
    ),
]
RunId = Annotated[str, Field(description="A run id as submit_workflow or list_runs return it, e.g. 'r-0123abcd…'")]
Wait = Annotated[
    float,
    Field(ge=0, le=MAX_WAIT, description="Seconds to wait for the run to finish (it keeps running afterwards)"),
]


def tool_errors(func: Callable[P, R]) -> Callable[P, R]:
    """Raise a SteppeError as the SDK's ToolError carrying the CLI's message."""
    from mcp.server.mcpserver.exceptions import ToolError

    @functools.wraps(func)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return func(*args, **kwargs)
        except SpecValidationError as e:
            lines = [f"error {p}" for p in e.problems] + [f"{len(e.problems)} problem(s) found"]
            raise ToolError("\n".join(lines)) from None
        except SteppeError as e:
            raise ToolError(f"error: {e}") from None

    return wrapper


def build_server(tools: SteppeTools) -> MCPServer[Any]:
    # Long on purpose: one short registration per MCP tool, closures over `tools`; kept in one place.
    """The MCP server whose tools call `tools`."""
    from mcp.server.mcpserver import MCPServer

    server: MCPServer[Any] = MCPServer(
        "steppe", title="Steppe workflows", instructions=INSTRUCTIONS, version=__version__, log_level="WARNING"
    )

    def validate_workflow(workflow: Workflow) -> dict[str, Any]:
        """Check a workflow without running it: every problem with its line and column, or its shape."""
        return tools.validate(workflow)

    def plan_workflow(workflow: Workflow) -> dict[str, Any]:
        """The execution plan of a workflow: waves of parallel steps, critical path, width per queue."""
        return tools.plan(workflow)

    def submit_workflow(
        workflow: Workflow,
        inputs: Annotated[dict[str, Any] | None, Field(description="The run's inputs, by input name")] = None,
        idempotency_key: Annotated[
            str | None, Field(description="Submitting the same key again returns the first run")
        ] = None,
        check_handlers: Annotated[
            bool, Field(description="Refuse handlers no live worker serves (false to submit anyway)")
        ] = True,
        wait_seconds: Annotated[
            float, Field(ge=0, le=MAX_WAIT, description="Also wait this long for the run to finish (0: return at once)")
        ] = 0.0,
    ) -> dict[str, Any]:
        """Validate and start a run of a workflow; returns its run id (and its status document when waited for)."""
        return tools.submit(
            workflow,
            inputs=inputs,
            idempotency_key=idempotency_key,
            check_handlers=check_handlers,
            wait_seconds=wait_seconds,
        )

    def get_run(run_id: RunId) -> dict[str, Any]:
        """A run's status document: status, inputs, outputs, and every step's status, attempts, output and error."""
        return tools.get(run_id)

    def wait_for_run(run_id: RunId, timeout_seconds: Wait = 60.0) -> dict[str, Any]:
        """Wait until a run finishes or the timeout passes; its status document with `finished`."""
        return tools.wait(run_id, timeout_seconds=timeout_seconds)

    def list_runs(
        status: Annotated[
            str | None, Field(description="Only runs in this status: pending, running, succeeded, failed, cancelled")
        ] = None,
        workflow: Annotated[str | None, Field(description="Only runs of this workflow name")] = None,
        limit: Annotated[int, Field(ge=1, le=1000, description="At most this many runs")] = 50,
    ) -> dict[str, Any]:
        """Recent runs, newest first."""
        return tools.runs(status=status, workflow=workflow, limit=limit)

    def run_history(
        run_id: RunId,
        after: Annotated[int, Field(ge=0, description="Only events after this sequence number")] = 0,
    ) -> dict[str, Any]:
        """A run's append-only event log, oldest first (step starts, results, retries, cancellations)."""
        return tools.history(run_id, after=after)

    def cancel_run(run_id: RunId) -> dict[str, Any]:
        """Cancel a run that has not finished (its compensations run)."""
        return tools.cancel(run_id)

    def retry_run(run_id: RunId) -> dict[str, Any]:
        """Resume a failed or cancelled run from its failed steps; returns once its coordinator took it."""
        return tools.retry(run_id)

    def send_signal(
        run_id: RunId,
        name: Annotated[str, Field(description="The name the waiting step waits for")],
        payload: Annotated[Any, Field(description="JSON data: the output of the step that waits for it")] = None,
        idempotency_key: Annotated[
            str | None, Field(description="Sending the same key again is accepted once (`duplicate`)")
        ] = None,
    ) -> dict[str, Any]:
        """Send a signal to a run: the first step waiting for it (now or later) succeeds with the payload."""
        return tools.signal(run_id, name, payload=payload, idempotency_key=idempotency_key)

    def approve_step(
        run_id: RunId,
        step: Annotated[str, Field(description="The id of the run's waiting `approval:` step")],
        by: Annotated[str | None, Field(description="Who approves (the step may name its approvers)")] = None,
        comment: Annotated[str | None, Field(description="Why, kept in the step's output")] = None,
    ) -> dict[str, Any]:
        """Approve a run's waiting approval step: it succeeds with {approved, by, comment, at}."""
        return tools.decide(run_id, step, approve=True, by=by, comment=comment)

    def reject_step(
        run_id: RunId,
        step: Annotated[str, Field(description="The id of the run's waiting `approval:` step")],
        by: Annotated[str | None, Field(description="Who rejects (the step may name its approvers)")] = None,
        comment: Annotated[str | None, Field(description="Why")] = None,
    ) -> dict[str, Any]:
        """Reject a run's waiting approval step: it fails with ApprovalRejected (the run's on_failure applies)."""
        return tools.decide(run_id, step, approve=False, by=by, comment=comment)

    def list_workers(
        handler: Annotated[str | None, Field(description="Only workers that serve this handler")] = None,
    ) -> dict[str, Any]:
        """Live workers (queues, handlers, concurrency, load) and coordinators, from their heartbeats."""
        return tools.workers(handler=handler)

    def list_handlers() -> dict[str, Any]:
        """Every handler some live worker serves, with those workers and their queues."""
        return tools.handlers()

    def list_dead_letters(
        run_id: Annotated[str | None, Field(description="Only this run's dead letters")] = None,
        status: Annotated[str | None, Field(description="dead or replayed")] = None,
        reason: Annotated[str | None, Field(description="e.g. MaxDeliveriesExceeded, UndecodableMessage")] = None,
        limit: Annotated[int, Field(ge=1, le=1000)] = 50,
    ) -> dict[str, Any]:
        """Dead letters (messages no worker could complete), newest first, with the original step message."""
        return tools.dead_letters(run_id=run_id, status=status, reason=reason, limit=limit)

    def replay_dead_letter(
        dead_letter_id: Annotated[int, Field(description="The id list_dead_letters returned")],
        args: Annotated[
            dict[str, Any] | None, Field(description="Replacement arguments for the step (default: as they were)")
        ] = None,
    ) -> dict[str, Any]:
        """Resume a dead letter's run from its failed steps, optionally with new arguments for its step."""
        return tools.replay(dead_letter_id, args=args)

    for fn in (
        validate_workflow,
        plan_workflow,
        submit_workflow,
        get_run,
        wait_for_run,
        list_runs,
        run_history,
        cancel_run,
        retry_run,
        send_signal,
        approve_step,
        reject_step,
        list_workers,
        list_handlers,
        list_dead_letters,
        replay_dead_letter,
    ):
        server.add_tool(tool_errors(fn))
    return server
