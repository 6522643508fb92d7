"""A run's inputs, stored once in Redis for `ctx.inputs` instead of copied into every step message.

Step messages (schema version 2) carry only what their step needs; a handler still reads the
run's inputs as `ctx.inputs` (docs/spec.md §4). So each run's inputs live once in Redis, at
`Keys.run_inputs(partition, run_id)` (in the slot of the partition's streams), as JSON with
sorted keys, and each step message of a run with inputs names their digest (`inputs_digest`,
empty for a run without inputs: nothing to fetch). A worker reads the key once per run and
digest (`workers.inputs.InputsCache`), so a 10,000-item `for_each` costs one GET per worker, and
Redis holds one copy of the inputs instead of 10,000.

The coordinator writes the key in the pipeline that publishes the run's step messages, before
them (`InputsPublisher.stage`): `SET NX EX` the first time this coordinator publishes for the
run, then only `EXPIRE` (refreshing the 30-day backstop expiry, `INPUTS_TTL`, without sending
the inputs again). An `EXPIRE` that finds no key (Redis lost it) is followed by the `SET NX`
(`InputsPublisher.published`), and after a detected data loss every run writes it again, so the
reconciler's re-published steps bring the key back with them. When the run finishes the key is
deleted (`finished`), in the next publish pipeline.

Hooks (post and session) do not get `ctx.inputs`: they may run after their run finished and its
inputs key is gone; they reference what they need in their `with:`.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import msgspec
import structlog

from orchestrator.keys import Keys

if TYPE_CHECKING:
    import redis
    from redis.client import Pipeline

    from orchestrator.messages import Dispatch

log = structlog.get_logger(__name__)

# Backstop expiry of an inputs key, refreshed at every publish of one of the run's steps: a run
# whose key was never deleted (its coordinator died as it finished) does not hold memory forever.
INPUTS_TTL = 30 * 24 * 3600

_encoder = msgspec.json.Encoder(order="sorted")


def encode_inputs(values: Mapping[str, Any]) -> bytes:
    """The stored form of a run's inputs: JSON with sorted keys, the same bytes on any coordinator."""
    return _encoder.encode(values)


def digest_of(data: bytes) -> str:
    """What a step message names the inputs by (and a worker checks what it read against)."""
    return hashlib.blake2b(data, digest_size=12).hexdigest()


@dataclass(frozen=True, slots=True, eq=False)
class RunInputs:
    """The inputs of one run, by reference (the engine's dict, not a copy), with their digest."""

    run_id: str
    partition: int
    values: Mapping[str, Any]
    digest: str

    @classmethod
    def of(cls, run_id: str, partition: int, values: Mapping[str, Any]) -> RunInputs | None:
        """None for a run without inputs: its messages name no digest and nothing is stored."""
        if not values:
            return None
        return cls(run_id, partition, values, digest_of(encode_inputs(values)))

    def encoded(self) -> bytes:
        return encode_inputs(self.values)


@dataclass(slots=True)
class StagedInputs:
    """What one pipeline does about inputs keys; its replies come first in the pipeline's."""

    writes: list[tuple[RunInputs, bool]] = field(default_factory=list)  # (inputs, SET NX sent)
    deletes: list[tuple[str, str]] = field(default_factory=list)  # (run id, key)
    commands: int = 0


class InputsPublisher:
    """The coordinator's side: each run's inputs key next to the run's step messages."""

    def __init__(self, keys: Keys, *, ttl: int = INPUTS_TTL) -> None:
        self.keys = keys
        self.ttl = ttl
        # Run id → partition of the runs whose key this coordinator wrote since it last forgot
        # (a failed write, Redis data loss): their later publishes only refresh the expiry.
        self._written: dict[str, int] = {}
        self._to_delete: dict[str, str] = {}  # run id → key of finished runs, deleted at the next publish

    @property
    def has_deletes(self) -> bool:
        return bool(self._to_delete)

    def stage(self, pipe: Pipeline, dispatches: Sequence[Dispatch]) -> StagedInputs:
        """Queue the inputs keys' commands at the head of `pipe`, before the steps' XADDs."""
        staged = StagedInputs()
        runs: dict[str, RunInputs] = {}
        for d in dispatches:
            if d.inputs is not None:
                runs.setdefault(d.inputs.run_id, d.inputs)
        for run_id, key in self._to_delete.items():
            if run_id not in runs:  # retried after it finished: its new steps need the key
                pipe.delete(key)  # one key per DEL: a cluster pipeline routes each by its slot
                staged.deletes.append((run_id, key))
        for run_id in [r for r in self._to_delete if r in runs]:
            del self._to_delete[run_id]
        for inputs in runs.values():
            key = self.keys.run_inputs(inputs.partition, inputs.run_id)
            fresh = inputs.run_id not in self._written
            if fresh:
                pipe.set(key, inputs.encoded(), nx=True, ex=self.ttl)
            pipe.expire(key, self.ttl)  # SET NX leaves an existing key's expiry alone
            staged.writes.append((inputs, fresh))
        staged.commands = len(staged.deletes) + sum(2 if fresh else 1 for _, fresh in staged.writes)
        return staged

    def published(self, staged: StagedInputs, replies: Sequence[Any], client: redis.Redis) -> None:
        """Book the executed pipeline; write back any key an `EXPIRE` found missing."""
        for run_id, _ in staged.deletes:
            self._to_delete.pop(run_id, None)
        index = len(staged.deletes)
        missing: list[RunInputs] = []
        for inputs, fresh in staged.writes:
            index += 2 if fresh else 1
            if not fresh and not replies[index - 1]:
                missing.append(inputs)
            self._written[inputs.run_id] = inputs.partition
        for inputs in missing:
            # Redis lost it (a failover, an eviction) though not all its data: the steps just
            # published would fail to read it; write it back now (retried steps then find it).
            client.set(self.keys.run_inputs(inputs.partition, inputs.run_id), inputs.encoded(), nx=True, ex=self.ttl)
            log.warning("run_inputs_restored", run_id=inputs.run_id, reason="inputs key missing from Redis")

    def finished(self, run_id: str, partition: int) -> None:
        """The run reached a terminal state: delete its key at the next publish."""
        self._written.pop(run_id, None)
        self._to_delete[run_id] = self.keys.run_inputs(partition, run_id)

    def forget(self) -> None:
        """Write every run's key again at its next publish (after a failed write or a data loss)."""
        self._written.clear()

    def release(self, partitions: Iterable[int]) -> None:
        """Partitions changed hands: stop tracking their runs."""
        gone = set(partitions)
        self._written = {r: p for r, p in self._written.items() if p not in gone}
