"""Hooks: which hooks an event triggers (pure), and the messages that run them on the `hooks` queue.

A hook is a handler run asynchronously, as a step message on the `hooks` queue, when a
run or step event matches one of its `on` patterns (`step.failed`, `run.*`, `*`). Kinds:
`post` (after step or run events), `session` (run start and end: `run.started`,
`run.finished`), `pre` (before a step's first dispatch: run by the engine as steps of the run,
it may veto or annotate the step). A post/session hook's failure is recorded and logged and never
changes the run; its executions are durable rows (`orchestrator/hook_runner.py`), run at least once.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from fnmatch import fnmatchcase
from typing import Any

from orchestrator.state import RUN_TERMINAL_EVENTS, EventType
from orchestrator.step_keys import StepKey

HOOKS_QUEUE = "hooks"
# Aliases an event is also known by, so that `on: [run.finished]` matches every terminal run event.
_ALIASES: dict[str, tuple[str, ...]] = {str(t): ("run.finished",) for t in RUN_TERMINAL_EVENTS}


def _session(name: str) -> bool:
    return name in ("run.started", "run.finished")


def _pre(name: str) -> bool:
    return name == "step.dispatched"


def _post(name: str) -> bool:
    return name != "step.dispatched"


_KIND_EVENTS: dict[str, Callable[[str], bool]] = {"session": _session, "pre": _pre, "post": _post}


@dataclass(frozen=True, slots=True)
class HookDef:
    """One hook, from a workflow's `hooks:` or from the `workflow_hooks` table."""

    hook_id: int
    name: str
    kind: str
    events: tuple[str, ...]
    handler: str
    args: dict[str, Any] = field(default_factory=dict)
    workflow: str | None = None

    def matches(self, event_type: str, workflow: str) -> bool:
        if self.workflow is not None and self.workflow != workflow:
            return False
        names = (event_type, *_ALIASES.get(event_type, ()))
        allowed = _KIND_EVENTS[self.kind]
        return any(allowed(n) and fnmatchcase(n, pattern) for n in names for pattern in self.events)


def triggered(hooks: Iterable[HookDef], event_type: EventType | str, workflow: str) -> list[HookDef]:
    return [h for h in hooks if h.matches(str(event_type), workflow)]


def hook_step_key(hook_id: int, seq: int) -> str:
    """The step key of one hook execution (`hook:7:42`): unique per hook and triggering event."""
    return str(StepKey.hook(hook_id, seq))


def hook_id_of(step_key: str) -> int:
    return StepKey.parse(step_key).hook_number
