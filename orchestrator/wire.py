"""Messages on the Redis streams, encoded as JSON with msgspec (typed, fast, no pickle).

Each stream entry carries one field, ``m``, holding one of these structs. Every struct
has a ``v`` schema version so that old and new processes can tell each other apart.

Versions: 1 — step messages carried a copy of the run's inputs (`inputs`); 2 — they carry
only what the step needs (its resolved `args`) and, for a run with inputs, their digest
(`inputs_digest`): the inputs themselves are stored once per run in Redis and read by the
worker for `ctx.inputs` (`orchestrator.run_inputs`), so that a 10,000-item `for_each` does not
hold 10,000 copies of them. A version-1 message still decodes and its handler gets its inline
`inputs` as `ctx.inputs`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, Literal, TypeVar

import msgspec

from orchestrator.sanitize import storable

SCHEMA_VERSION = 2
# Versions a current process still reads (see the module docstring for what changed).
SUPPORTED_VERSIONS = frozenset({1, 2})
FIELD = b"m"

StepKind = Literal["step", "compensate", "hook", "gate", "pre"]
ResultStatus = Literal["started", "succeeded", "failed", "cancelled", "dead_lettered", "deferred"]
ControlKind = Literal["submitted", "cancel", "retry", "wake", "limits"]


class StepMessage(msgspec.Struct, omit_defaults=True, forbid_unknown_fields=False):
    """One attempt of one step instance, published on a queue stream."""

    run: str
    # step key: the step id, `id[i]` for a for_each item or swarm replica, `id:compensate` for its
    # compensation, `id:gate` for its handoff gate, `id:pre-N` for pre hook N checking it
    step: str
    attempt: int
    handler: str
    partition: int
    args: dict[str, Any] = {}
    timeout: float = 300.0
    kind: StepKind = "step"
    workflow: str = ""
    # The digest of the run's inputs stored at `Keys.run_inputs` (schema version 2), read by the
    # worker for `ctx.inputs`; empty when the run has none (nothing to fetch) and for hooks.
    inputs_digest: str = ""
    # Version 1 only: a copy of the run's inputs. Never written by version 2.
    inputs: dict[str, Any] | None = None
    breaker: str | None = None
    # fail_max, reset_timeout (seconds), exclude (error type names not counted) of `breaker`
    breaker_config: dict[str, Any] | None = None
    # For hooks: the event that triggered them ({type, run_id, workflow, step, attempt, seq, data}).
    event: dict[str, Any] | None = None
    # Handoff: what the step's gate said about the previous attempt's output.
    feedback: Any = None
    # What the step's `pre` hooks added (`{annotations: {…}}` in their output).
    annotations: dict[str, Any] | None = None
    # W3C trace context of the run's span (orchestrator/tracing.py), only when the coordinator traces.
    # Optional within version 2: a worker that predates it ignores it, one that has it and gets a
    # message without it traces nothing for that attempt.
    traceparent: str = ""
    v: int = SCHEMA_VERSION

    @property
    def idempotency_key(self) -> str:
        """Stable across attempts and redeliveries of the same step instance."""
        return f"{self.run}/{self.step}"


class StepErrorInfo(msgspec.Struct, omit_defaults=True):
    """What went wrong in a handler (secrets already redacted)."""

    type: str
    message: str
    traceback: str = ""
    retryable: bool = True


class ResultMessage(msgspec.Struct, omit_defaults=True, forbid_unknown_fields=False):
    """A worker's report about one attempt, published on the run's partition results stream."""

    run: str
    step: str
    attempt: int
    status: ResultStatus
    worker: str = ""
    output: Any = None
    error: StepErrorInfo | None = None
    duration: float = 0.0
    deliveries: int = 1
    stream_id: str = ""
    queue: str = ""
    # Names of the secrets whose values the worker replaced by its marker in `output` (never values).
    redacted: list[str] = []
    v: int = SCHEMA_VERSION


class ControlMessage(msgspec.Struct, omit_defaults=True, forbid_unknown_fields=False):
    """A wake-up for the coordinator owning a partition; the durable request lives in PostgreSQL."""

    kind: ControlKind
    run: str = ""
    v: int = SCHEMA_VERSION


_encoder = msgspec.json.Encoder()
_step_decoder = msgspec.json.Decoder(StepMessage)
_result_decoder = msgspec.json.Decoder(ResultMessage)
_control_decoder = msgspec.json.Decoder(ControlMessage)


def encode(message: StepMessage | ResultMessage | ControlMessage) -> bytes:
    """JSON bytes of `message`; text UTF-8 cannot encode (a handler's unpaired surrogate) is
    escaped by the rule of `orchestrator.sanitize` instead of failing the publisher."""
    try:
        return _encoder.encode(message)
    except UnicodeEncodeError:
        return _encoder.encode(storable(msgspec.to_builtins(message)))


def decode_step(data: bytes) -> StepMessage:
    """Decode a step message; raises msgspec.DecodeError / ValidationError on garbage."""
    return _step_decoder.decode(data)


def decode_result(data: bytes) -> ResultMessage:
    """Decode a result for the coordinator, with NUL in any string escaped (`orchestrator.sanitize`):
    this is where handlers' outputs, errors and tracebacks enter the coordinator, so nothing
    PostgreSQL refuses gets past here. Raises msgspec.DecodeError / ValidationError on garbage."""
    return _decode_storable(_result_decoder, data, ResultMessage)


def decode_control(data: bytes) -> ControlMessage:
    return _decode_storable(_control_decoder, data, ControlMessage)


_T = TypeVar("_T")


def _decode_storable(decoder: msgspec.json.Decoder[_T], data: bytes, type_: type[_T]) -> _T:
    try:
        if b"\\u0000" not in data:  # msgspec refuses raw NUL bytes and unpaired surrogate escapes
            return decoder.decode(data)
        return msgspec.convert(storable(msgspec.json.decode(data)), type_)
    except RecursionError:
        raise msgspec.DecodeError("JSON is nested too deeply to decode") from None


def dumps(value: Any) -> bytes:
    """JSON-encode any JSON-compatible value (used for payload size checks)."""
    return _encoder.encode(value)


# Dead-letter reasons of stream entries no process may act on.
UNDECODABLE = "UndecodableMessage"
UNKNOWN_VERSION = "UnknownSchemaVersion"
_M = TypeVar("_M", StepMessage, ResultMessage, ControlMessage)


def version_problem(message: StepMessage | ResultMessage | ControlMessage) -> str | None:
    """Why this process must not act on `message` (a schema version it does not read), or None.

    A decoder fills the fields it knows and ignores the others, so a message of an unknown
    version decodes; acting on it could misread what its producer meant."""
    if message.v in SUPPORTED_VERSIONS:
        return None
    known = ", ".join(str(v) for v in sorted(SUPPORTED_VERSIONS))
    return (
        f"schema version {message.v} is not one this process reads ({known}): run the same Steppe "
        "version on every coordinator and worker, then replay the dead letter if it still matters"
    )


def read_entry(
    fields: Mapping[bytes, bytes], decode: Callable[[bytes], _M]
) -> tuple[_M, None] | tuple[None, tuple[str, str]]:
    """The message of a stream entry, or why not: `(message, None)` or `(None, (reason, error))`."""
    try:
        message = decode(fields.get(FIELD, b""))
    except (msgspec.DecodeError, msgspec.ValidationError) as e:
        return None, (UNDECODABLE, str(e) or type(e).__name__)
    problem = version_problem(message)
    if problem is not None:
        return None, (UNKNOWN_VERSION, problem)
    return message, None
