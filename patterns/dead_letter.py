"""Dead letters as plain data: records from the dead-letter stream, replay requests, display helpers.

A worker dead-letters a queue entry that was delivered more than `max_deliveries` times,
cannot be decoded, has an unknown schema version, or vanished while pending: it XADDs the
entry to `{ns}:dlq` (fields `stream id queue deliveries reason error m worker`; `m` is the
original message, `error` already redacted) and reports the step as dead-lettered, upon which
the coordinator writes a `dead_letters` row. The coordinator dead-letters results and control
entries it cannot decode or read the same way (`unreadable_entry`; their queue is the stream).
A `DeadLetter` is one row to write, built in one place per source: `DeadLetter.from_stream_entry`
(the `{ns}:dlq` stream), `DeadLetter.from_result` (a step a worker dead-lettered) and
`DeadLetter.compensation` (a compensation that failed for good); `stream_entry` builds the
`{ns}:dlq` fields of a worker's and of the coordinator's entries alike. The rest decides what a
replay may do. No I/O.

Secrets: a step message carries `${{ secrets.NAME }}` references, never their values (only a
worker resolves them, from its own environment), so the original message is safe to keep.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

import msgspec
import orjson

from orchestrator.spec.values import value_problem
from orchestrator.wire import FIELD, ResultMessage, decode_step

REPLAYABLE_RUN_STATUSES = ("failed", "cancelled")
# What a dead letter keeps of an entry the coordinator will not apply (garbage can be large).
RAW_LIMIT = 8 * 1024
# What a dead letter keeps of the original step message (the rest is in the run itself).
PAYLOAD_FIELDS = ("handler", "kind", "args", "timeout", "workflow", "breaker")


class DeadLetterReason(StrEnum):
    """Why an entry or a step was dead-lettered. The values are the `dead_letters.reason` text
    rows have always held (what `steppe dlq list` shows and `--reason` filters on); `parse` maps
    the other spellings that older code wrote onto them."""

    MAX_DELIVERIES = "MaxDeliveriesExceeded"  # a worker: delivered more than max_deliveries times
    UNDECODABLE = "UndecodableMessage"  # a worker or the coordinator: not a message it can decode
    UNKNOWN_VERSION = "UnknownSchemaVersion"  # a schema version this process does not read
    TRIMMED = "TrimmedEntry"  # a worker: the entry was deleted from its stream while pending
    COMPENSATION_FAILED = "compensation_failed"  # the coordinator: a compensation failed for good
    UNKNOWN = "unknown"  # a stream entry without a reason, or with one this version does not know

    @classmethod
    def parse(cls, text: str | None) -> DeadLetterReason:
        """The reason `text` names in any spelling Steppe wrote (`MaxDeliveriesExceeded`,
        `max_deliveries`, `max-deliveries`, …); UNKNOWN for an empty or unknown one."""
        return _REASONS.get(_folded(text or ""), cls.UNKNOWN)

    @classmethod
    def spellings(cls, text: str) -> list[str]:
        """Every stored text that means what `text` means (for filtering rows written by older
        versions too); `[text]` alone when it names no reason."""
        folded = _folded(text)
        if folded not in _REASONS:
            return [text]
        reason = _REASONS[folded]
        return [reason.value, *(alias for alias in _ALIASES.get(reason, ()) if alias != reason.value)]


# Other texts older versions stored for a reason: the coordinator wrote `max_deliveries` for a
# dead-lettered result without an error. (`parse` also takes the member names: `undecodable`, …)
_ALIASES: dict[DeadLetterReason, tuple[str, ...]] = {DeadLetterReason.MAX_DELIVERIES: ("max_deliveries",)}


def _folded(text: str) -> str:
    return text.strip().lower().replace("_", "").replace("-", "").replace(" ", "")


_REASONS: dict[str, DeadLetterReason] = {
    _folded(spelling): reason
    for reason in DeadLetterReason
    for spelling in (reason.value, reason.name, *_ALIASES.get(reason, ()))
}


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """One `dead_letters` row to write (`orchestrator.store.dead_letters.write`); rows are keyed by
    `queue` and `stream_id`, so writing one again changes nothing.

    queue           the queue of a worker's entry, the stream of a coordinator's, "?" when unknown
    stream_id       the original stream entry id; a made-up unique one where there is none
    reason          why (`DeadLetterReason`)
    error           what went wrong, redacted, NUL escaped
    run_id, step_key, attempt   the step, when the message could be decoded
    delivery_count  how many times the entry was delivered (0: not a delivery)
    payload         the replayable part of the original step message (PAYLOAD_FIELDS), if decodable
    raw             the original message as text (stream entries only)
    created_at      when the entry was added to the dead-letter stream; None: when written
    """

    queue: str
    stream_id: str
    reason: DeadLetterReason
    error: str
    run_id: str | None = None
    step_key: str | None = None
    attempt: int | None = None
    delivery_count: int = 0
    payload: dict[str, Any] | None = None
    raw: str | None = None
    created_at: dt.datetime | None = None

    @classmethod
    def from_stream_entry(cls, entry_id: bytes | str, fields: Mapping[bytes, bytes]) -> DeadLetter:
        """A `{ns}:dlq` stream entry (`stream_entry`) as a row."""
        raw = fields.get(FIELD) or fields.get(b"m")
        run_id, step_key, attempt = None, None, None
        if raw:
            try:
                message = decode_step(raw)
                run_id, step_key, attempt = message.run, message.step, message.attempt
            except (msgspec.DecodeError, msgspec.ValidationError):
                pass
        deliveries = _text(fields.get(b"deliveries"))
        reason, error = _reason_and_error(_text(fields.get(b"reason")), _storable(_text(fields.get(b"error"))))
        return cls(
            run_id=run_id,
            step_key=step_key,
            attempt=attempt,
            queue=_text(fields.get(b"queue")) or "?",
            stream_id=_text(fields.get(b"id")) or _text(entry_id),
            delivery_count=int(deliveries) if deliveries.isdigit() else 0,
            reason=reason,
            error=error,
            payload=payload_of(raw),
            raw=_storable(_text(raw)),
            created_at=stream_id_time(_text(entry_id)),
        )

    @classmethod
    def from_result(cls, result: ResultMessage) -> DeadLetter:
        """The row of a step a worker dead-lettered (its entry, with the message, is in the stream)."""
        if result.error is None:
            reason, error = DeadLetterReason.MAX_DELIVERIES, "dead-lettered"
        else:
            reason, error = _reason_and_error(result.error.type, result.error.message)
        return cls(
            run_id=result.run,
            step_key=result.step,
            attempt=result.attempt,
            queue=result.queue or "?",
            stream_id=result.stream_id or f"{result.run}/{result.step}/{result.attempt}",
            delivery_count=result.deliveries,
            reason=reason,
            error=error,
        )

    @classmethod
    def compensation(
        cls, *, run_id: str, step_key: str, attempt: int, queue: str, error: Mapping[str, Any]
    ) -> DeadLetter:
        """The row of a compensation that failed for good (no stream entry: nothing to merge)."""
        return cls(
            run_id=run_id,
            step_key=step_key,
            attempt=attempt,
            queue=queue,
            stream_id=f"compensation:{run_id}/{step_key}/{attempt}",
            reason=DeadLetterReason.COMPENSATION_FAILED,
            error=f"{error.get('type', 'Error')}: {error.get('message', '')}",
        )


def _reason_and_error(text: str, error: str) -> tuple[DeadLetterReason, str]:
    """The reason `text` names; a reason this version does not know stays readable in the error."""
    reason = DeadLetterReason.parse(text)
    if reason is DeadLetterReason.UNKNOWN and text and _folded(text) != _folded(reason.value):
        return reason, f"{text}: {error}"
    return reason, error


def stream_entry(
    *,
    stream: str,
    entry_id: bytes,
    queue: str,
    deliveries: int,
    reason: DeadLetterReason,
    error: str,
    raw: bytes,
    by: str,
) -> dict[str, Any]:
    """The fields of a `{ns}:dlq` entry: where the entry was (`stream`, `id`, its `queue`), why, the
    original message (`m`) and who dead-lettered it (`worker`). `error` must be redacted already."""
    return {
        "stream": stream,
        "id": entry_id,
        "queue": queue,
        "deliveries": deliveries,
        "reason": reason.value,
        "error": error,
        "m": raw,
        "worker": by,
    }


def _text(value: bytes | str | None) -> str:
    if value is None:
        return ""
    return value.decode(errors="backslashreplace") if isinstance(value, bytes) else value


def _storable(text: str) -> str:
    """PostgreSQL text and JSONB cannot hold NUL: keep it visible as an escape instead."""
    return text.replace("\x00", "\\x00")


def stream_id_time(stream_id: str) -> dt.datetime | None:
    """When an entry was added, from its stream id (`<unix ms>-<seq>`); None for other ids."""
    millis = stream_id.split("-", 1)[0]
    return dt.datetime.fromtimestamp(int(millis) / 1000, dt.UTC) if millis.isdigit() else None


def minid_before(cutoff: dt.datetime) -> str:
    """The XTRIM MINID that removes the stream entries added before `cutoff`."""
    return str(int(cutoff.timestamp() * 1000))


def payload_of(raw: bytes | None) -> dict[str, Any] | None:
    """The replayable part of an original step message, or None when it cannot be decoded."""
    if not raw:
        return None
    try:
        message = decode_step(raw)
    except (msgspec.DecodeError, msgspec.ValidationError):
        return None
    payload = {name: getattr(message, name) for name in PAYLOAD_FIELDS}
    if b"\\u0000" in orjson.dumps(payload):
        return None  # not storable as JSONB; the raw text keeps it
    return payload


def unreadable_entry(
    stream: str, entry_id: bytes, fields: Mapping[bytes, bytes], reason: str, error: str, *, by: str
) -> dict[str, Any]:
    """The `{ns}:dlq` fields for a results or control stream entry the coordinator will not apply
    (undecodable, or of an unknown schema version): the entry's message, or all its fields as
    JSON when it has others, cut to RAW_LIMIT bytes. Its "queue" is the stream it came from."""
    if set(fields) <= {FIELD}:
        raw = fields.get(FIELD, b"")
    else:
        raw = orjson.dumps({_text(k): _text(v) for k, v in fields.items()})
    if len(raw) > RAW_LIMIT:
        error = f"{error} (the entry's {len(raw):,} bytes are cut to the first {RAW_LIMIT:,})"
    return stream_entry(
        stream=stream,
        entry_id=entry_id,
        queue=stream,
        deliveries=1,
        reason=DeadLetterReason.parse(reason),
        error=error,
        raw=raw[:RAW_LIMIT],
        by=by,
    )


def replay_problem(record: Mapping[str, Any], run_status: str | None) -> str | None:
    """Why this dead letter cannot be replayed now (a message that says what to do), or None."""
    ref = f"dead letter {record['dead_letter_id']}"
    if not record.get("run_id"):
        return (
            f"{ref} belongs to no run (its message could not be decoded: {record.get('reason')}); "
            f"there is nothing to resume. Inspect it with `steppe dlq show {record['dead_letter_id']}` "
            "and remove it with `steppe dlq purge`"
        )
    if run_status is None:
        return f"{ref} belongs to run {record['run_id']}, which no longer exists; remove it with `steppe dlq purge`"
    if run_status not in REPLAYABLE_RUN_STATUSES:
        if run_status in ("pending", "running", "compensating"):
            return (
                f"run {record['run_id']} is still {run_status}; replay once it has finished "
                f"(`steppe watch {record['run_id']}`)"
            )
        return (
            f"run {record['run_id']} is {run_status}; only failed or cancelled runs can be resumed. "
            "Submit a new run instead"
        )
    return None


def overrides_payload(step_key: str, args: Any) -> dict[str, Any]:
    """The payload of the `retry` run command that replays `step_key` with edited arguments."""
    if not isinstance(args, dict):
        raise TypeError(f"the arguments of a step are a JSON object, not {type(args).__name__}")
    return {"overrides": {step_key: args}}


def parse_args(text: str, *, source: str) -> dict[str, Any]:
    """Edited step arguments: a JSON object. ValueError says what is wrong and where."""
    try:
        value = orjson.loads(text)
    except orjson.JSONDecodeError as e:
        raise ValueError(f"{source} is not valid JSON ({e}); write the step's arguments as a JSON object") from e
    if not isinstance(value, dict):
        raise ValueError(f"{source} holds a JSON {type(value).__name__}; the step's arguments are a JSON object")
    found = value_problem(value, at=("args",))
    if found is not None:
        raise ValueError(f"in {source}, {found[0]} {found[1]}")
    return value


def one_line(text: str | None, width: int = 80) -> str:
    """The first line of an error, shortened for a table cell."""
    first = (text or "").strip().splitlines()[0] if (text or "").strip() else ""
    return first if len(first) <= width else first[: width - 1] + "…"
