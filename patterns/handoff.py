"""Handoff: a gate handler checks a step's output before the step's dependents start.

A gate handler receives the gated step's output as its `output` argument (plus its own
`with:`) and returns either a boolean or a mapping `{approved: bool, feedback: any}`.
A rejection runs the step again — the handler sees the feedback as `ctx.feedback` — up to
the gate's `max_attempts`; then the step fails and the workflow's failure policy applies.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True, slots=True)
class Verdict:
    approved: bool
    feedback: Any = None
    problem: str | None = None  # the gate's output was not a verdict

    def error(self, handler: str, rejections: int, max_attempts: int) -> dict[str, Any]:
        """The gated step's error once it may not run again."""
        message = self.problem or (
            f"gate {handler!r} rejected the output {rejections} time(s) (max_attempts {max_attempts})"
            + (f"; last feedback: {self.feedback}" if self.feedback is not None else "")
        )
        return {"type": "GateRejected", "message": message, "feedback": self.feedback, "retryable": False}


def verdict_of(output: Any) -> Verdict:
    """Read a gate handler's output; anything but a bool or `{approved: bool, …}` is a problem."""
    if isinstance(output, bool):
        return Verdict(approved=output)
    if isinstance(output, dict) and isinstance(output.get("approved"), bool):
        return Verdict(approved=output["approved"], feedback=output.get("feedback"))
    return Verdict(
        approved=False,
        problem="a gate handler must return true/false or {approved: true|false, feedback: …}; "
        f"it returned {type(output).__name__}",
    )
