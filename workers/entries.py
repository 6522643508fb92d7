"""The stream entries a worker handles, typed: a `Delivery` it was handed (read or reclaimed)
and decodes, an `Outgoing` entry of its outbox that the next flush writes
(`workers.streams.WorkerStreams.flush`). No I/O."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import msgspec

from orchestrator.wire import FIELD, ResultMessage, StepErrorInfo, StepMessage, decode_step, version_problem
from patterns.dead_letter import DeadLetterReason, stream_entry

TRIMMED_ERROR = "the entry was deleted from the stream while pending"


@dataclass(frozen=True, slots=True)
class Refused:
    """An entry the worker will not run, dead-lettered instead: its step message when it has one
    that decodes, the raw message, why, and what to tell (not yet redacted)."""

    message: StepMessage | None
    raw: bytes | None
    reason: DeadLetterReason
    error: str


@dataclass(frozen=True, slots=True)
class Delivery:
    """A queue entry handed to this worker: read (`deliveries` 1) or reclaimed from a dead one.
    `fields` is None for an entry deleted (trimmed) from its stream while it was pending."""

    stream: str
    entry_id: bytes
    fields: dict[bytes, bytes] | None
    deliveries: int = 1

    @property
    def raw(self) -> bytes | None:
        return None if self.fields is None else self.fields.get(FIELD, b"")

    def decode(self) -> StepMessage | Refused:
        """The step message, or why not to run it: trimmed, undecodable, or of a schema version
        this worker does not read."""
        raw = self.raw
        if raw is None:
            return Refused(None, None, DeadLetterReason.TRIMMED, TRIMMED_ERROR)
        try:
            message = decode_step(raw)
        except (msgspec.DecodeError, msgspec.ValidationError) as e:
            return Refused(None, raw, DeadLetterReason.UNDECODABLE, str(e))
        unreadable = version_problem(message)
        if unreadable is not None:
            # Never run what this worker may misread; the step fails with the reason (a result of a
            # version the coordinator reads), so its run still ends.
            return Refused(message, raw, DeadLetterReason.UNKNOWN_VERSION, unreadable)
        return message


@dataclass(frozen=True, slots=True)
class Outgoing:
    """One outbox entry about the queue entry (`stream`, `entry_id`): a result for the results
    stream of `partition`, a `{ns}:dlq` entry (`dead`), or both."""

    stream: str
    entry_id: bytes
    partition: int = 0
    result: ResultMessage | None = None
    dead: Mapping[str, Any] | None = None

    @property
    def finishes(self) -> bool:
        """The attempt is over (any result but `started`): the entry leaves the worker's in-flight set."""
        return self.result is not None and self.result.status != "started"

    @property
    def acks(self) -> bool:
        """The queue entry is acknowledged with it: a finished attempt or a dead letter."""
        return self.finishes or self.dead is not None


def started(stream: str, entry_id: bytes, message: StepMessage, *, worker: str) -> Outgoing:
    """The report that an attempt still runs (its entry stays pending)."""
    m = message
    report = ResultMessage(run=m.run, step=m.step, attempt=m.attempt, status="started", worker=worker)
    return Outgoing(stream, entry_id, m.partition, report)


def dead_letter(delivery: Delivery, refused: Refused, *, queue: str, worker: str, error: str) -> Outgoing:
    """A queue entry this worker will not run: its `{ns}:dlq` entry and, for a decodable message,
    the step's `dead_lettered` result, so that its run still ends. `error` is `refused.error`
    redacted."""
    stream, entry_id, deliveries = delivery.stream, delivery.entry_id, delivery.deliveries
    dead = stream_entry(
        stream=stream,
        entry_id=entry_id,
        queue=queue,
        deliveries=deliveries,
        reason=refused.reason,
        error=error,
        raw=refused.raw or b"",
        by=worker,
    )
    message = refused.message
    if message is None:
        # Without a decodable message there is no step to fail: the entry only goes to the DLQ
        # (a result for run "" would reach no run and be counted as a duplicate).
        return Outgoing(stream, entry_id, dead=dead)
    result = ResultMessage(
        run=message.run,
        step=message.step,
        attempt=message.attempt,
        status="dead_lettered",
        worker=worker,
        error=StepErrorInfo(type=refused.reason.value, message=error, retryable=False),
        deliveries=deliveries,
        stream_id=entry_id.decode(),
        queue=queue,
    )
    return Outgoing(stream, entry_id, message.partition, result, dead)
