"""Swarm: N replicas of a step run in parallel and a vote turns their outputs into one.

Pure tally used by the run engine. Outputs are compared by value (canonical JSON, keys
sorted), so two replicas agree when they return equal JSON documents. The step's output
is the consensus; the replicas that disagreed or failed are recorded as dissent.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import orjson

from orchestrator.state import TERMINAL_STEP_STATUSES, StepRecord, StepStatus
from orchestrator.step_keys import StepKey

VOTES = ("majority", "unanimous", "first")


@dataclass(frozen=True, slots=True)
class Tally:
    decided: bool  # a consensus exists, or can no longer be reached
    consensus: bool
    output: Any
    record: dict[str, Any]  # agreed replicas, dissent, counts: stored with the step

    @property
    def error(self) -> dict[str, Any]:
        """The step's error when the vote decided without a consensus."""
        failed = sum(1 for d in self.record["dissent"] if "error" in d)
        return {
            "type": "NoQuorum",
            "message": f"no {self.record['vote']} consensus: the largest group of agreeing replicas has "
            f"{len(self.record['agreed'])}, {self.record['quorum']} needed ({failed} of "
            f"{self.record['replicas']} replicas failed)",
            "retryable": False,
        }


def count_votes(steps: Mapping[str, StepRecord], step_id: str, *, replicas: int, quorum: int, vote: str) -> Tally:
    """Tally the replicas `step_id[0..replicas-1]` of a run's projection heard so far."""
    outputs: dict[int, Any] = {}
    errors: dict[int, str] = {}
    for index in range(replicas):
        replica = steps.get(str(StepKey.item(step_id, index)))
        if replica is None:
            continue
        if replica.status is StepStatus.SUCCEEDED:
            outputs[index] = replica.output
        elif replica.status in TERMINAL_STEP_STATUSES:
            error = replica.error or {}
            errors[index] = f"{error.get('type', 'Error')}: {error.get('message', '')}"
    return tally(replicas=replicas, quorum=quorum, vote=vote, outputs=outputs, errors=errors)


def _canonical(value: Any) -> bytes:
    return orjson.dumps(value, option=orjson.OPT_SORT_KEYS)


def tally(
    *,
    replicas: int,
    quorum: int,
    vote: str,
    outputs: dict[int, Any],
    errors: dict[int, str],
) -> Tally:
    """Decide a swarm from the replicas heard so far.

    `outputs` maps replica index → output of the replicas that succeeded, in any order;
    `errors` maps replica index → error text of the replicas that failed for good.
    `first` decides as soon as `quorum` replicas agree; `majority` and `unanimous` wait
    for every replica, so that the dissent is complete. `unanimous` also needs every
    replica that succeeded to agree (and at least `quorum` of them, all by default).
    """
    groups: dict[bytes, list[int]] = {}
    for index in sorted(outputs):
        groups.setdefault(_canonical(outputs[index]), []).append(index)
    # The largest group wins; ties go to the group whose first member has the lowest index.
    best = max(groups.values(), key=lambda members: (len(members), -members[0]), default=[])
    heard = len(outputs) + len(errors)
    left = replicas - heard
    needed = quorum
    reached = len(best) >= needed and (vote != "unanimous" or len(groups) == 1)
    hopeless = len(best) + left < needed
    decided = (reached or hopeless) if vote == "first" else left == 0
    dissent = [{"replica": i, "output": outputs[i]} for i in sorted(outputs) if i not in best]
    dissent += [{"replica": i, "error": errors[i]} for i in sorted(errors)]
    record = {
        "vote": vote,
        "replicas": replicas,
        "quorum": needed,
        "agreed": best,
        "dissent": dissent,
        "heard": heard,
    }
    return Tally(decided=decided, consensus=reached, output=outputs[best[0]] if best else None, record=record)
