"""Dead letters as plain data: records from the dead-letter stream, replay requests, display helpers.

A worker dead-letters a queue entry that was delivered more than `max_deliveries` times,
cannot be decoded, has an unknown schema version, or vanished while pending: it XADDs the
entry to `{ns}:dlq` (fields `stream id queue deliveries reason error m worker`; `m` is the
original message, `error` already redacted) and reports the step as dead-lettered, upon which
the coordinator writes a `dead_letters` row. The coordinator dead-letters results and control
entries it cannot decode or read the same way (`unreadable_entry`; their queue is the stream).
The functions here turn stream entries into rows of that same shape and decide what a replay
may do. No I/O.

Secrets: a step message carries `${{ secrets.NAME }}` references, never their values (only a
worker resolves them, from its own environment), so the original message is safe to keep.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from typing import Any

import msgspec
import orjson

from orchestrator.spec.values import value_problem
from orchestrator.wire import FIELD, decode_step

REPLAYABLE_RUN_STATUSES = ("failed", "cancelled")
# What a dead letter keeps of an entry the coordinator will not apply (garbage can be large).
RAW_LIMIT = 8 * 1024
# What a dead letter keeps of the original step message (the rest is in the run itself).
PAYLOAD_FIELDS = ("handler", "kind", "args", "timeout", "workflow", "breaker")


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


def record_from_stream(entry_id: bytes | str, fields: Mapping[bytes, bytes]) -> dict[str, Any]:
    """A `{ns}:dlq` stream entry as a `dead_letters` row (the shape `RunStore.commit_batch` takes)."""
    raw = fields.get(FIELD) or fields.get(b"m")
    identity: dict[str, Any] = {"run_id": None, "step_key": None, "attempt": None}
    if raw:
        try:
            message = decode_step(raw)
            identity = {"run_id": message.run, "step_key": message.step, "attempt": message.attempt}
        except (msgspec.DecodeError, msgspec.ValidationError):
            pass
    deliveries = _text(fields.get(b"deliveries"))
    return {
        **identity,
        "queue": _text(fields.get(b"queue")) or "?",
        "stream_id": _text(fields.get(b"id")) or _text(entry_id),
        "delivery_count": int(deliveries) if deliveries.isdigit() else 0,
        "reason": _text(fields.get(b"reason")) or "unknown",
        "error": _storable(_text(fields.get(b"error"))),
        "payload": payload_of(raw),
        "raw": _storable(_text(raw)),
        "created_at": stream_id_time(_text(entry_id)),
    }


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
    return {
        "stream": stream,
        "id": entry_id,
        "queue": stream,
        "deliveries": 1,
        "reason": reason,
        "error": error,
        "m": raw[:RAW_LIMIT],
        "worker": by,
    }


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
