"""Sending signals and approval decisions (docs/spec.md §12.1), for the CLI, the API and the client.

`Signaller` stores the signal or decision durably (orchestrator/store/signals.py: the row and its
wake-up command in one transaction), then wakes the run's coordinator on its partition's control
stream (`bus.notify`, like cancel and retry). A lost wake-up only delays delivery: the coordinator
also polls its pending commands.
"""

from __future__ import annotations

import re
from typing import Any

import orjson
import redis

from orchestrator import bus
from orchestrator.errors import SubmitError
from orchestrator.keys import Keys
from orchestrator.sanitize import storable
from orchestrator.settings import Settings
from orchestrator.spec.model import ID_PATTERN, NAME_PATTERN, PATTERN_HINTS, SIGNAL_PATTERN
from orchestrator.store.leases import partition_of
from orchestrator.store.runs import RunStore
from orchestrator.store.signals import SignalReceipt, SignalStore
from orchestrator.wire import ControlMessage

__all__ = ["MAX_KEY_LENGTH", "Signaller", "check_signal_name"]

MAX_KEY_LENGTH = 256  # idempotency keys, approver names and comments are bounded too
MAX_COMMENT_LENGTH = 4096


def check_signal_name(name: str) -> str:
    if not re.fullmatch(SIGNAL_PATTERN, name):
        raise SubmitError(f"signal name {name!r} {PATTERN_HINTS[SIGNAL_PATTERN]}")
    return name


def _check(value: str | None, what: str, pattern: str | None = None, limit: int = MAX_KEY_LENGTH) -> str | None:
    if value is None:
        return None
    if len(value) > limit or "\x00" in value:
        raise SubmitError(f"{what} is longer than {limit} characters or holds a NUL character: shorten it")
    if pattern is not None and not re.fullmatch(pattern, value):
        raise SubmitError(f"{what} {value!r} {PATTERN_HINTS[pattern]}")
    return value


class Signaller:
    """Accepts signals and decisions for runs, then wakes their coordinators."""

    def __init__(self, *, settings: Settings, store: RunStore, client: redis.Redis) -> None:
        self.settings = settings
        self.signals = SignalStore(store)
        self.redis = client
        self.keys = Keys(settings.namespace)

    def signal(
        self, run_id: str, name: str, payload: Any = None, *, idempotency_key: str | None = None, by: str | None = None
    ) -> SignalReceipt:
        """Store signal `name` with `payload` for the run; the same `idempotency_key` twice is accepted once."""
        check_signal_name(name)
        try:
            size = len(orjson.dumps(payload))
        except (TypeError, orjson.JSONEncodeError) as e:
            raise SubmitError(f"the signal's payload is not JSON: {e}") from e
        limit = self.settings.limits.payload_bytes
        if size > limit:
            raise SubmitError(f"the signal's payload is {size} bytes, over the {limit}-byte limit: send less data")
        receipt = self.signals.send(
            run_id,
            name,
            storable(payload),  # text PostgreSQL cannot store (NUL) escaped, as for step outputs
            idempotency_key=_check(idempotency_key, "the idempotency key"),
            by=_check(by, "the sender", NAME_PATTERN),
        )
        if not receipt.duplicate:
            self._wake(run_id)
        return receipt

    def decide(
        self, run_id: str, step_id: str, *, approve: bool, by: str | None = None, comment: str | None = None
    ) -> SignalReceipt:
        """Approve (or reject) the waiting approval step `step_id` of the run, as `by`."""
        _check(step_id, "the step id", ID_PATTERN)
        receipt = self.signals.decide(
            run_id,
            step_id,
            approve=approve,
            by=_check(by, "the approver name", NAME_PATTERN),
            comment=_check(comment, "the comment", limit=MAX_COMMENT_LENGTH),
        )
        self._wake(run_id)
        return receipt

    def _wake(self, run_id: str) -> None:
        partition = partition_of(run_id, self.settings.coordinator.partitions)
        bus.notify(self.redis, self.keys, partition, ControlMessage(kind="wake", run=run_id))
