"""`ctx.inputs` on the worker: the run's inputs, read from Redis once per run and kept in an LRU.

Step messages name the run's inputs by digest instead of carrying them (`orchestrator.run_inputs`
describes the key and who writes it). Before a handler is called, `InputsCache.get` returns them:
from its cache when another step of the run ran on this worker, else with one GET shared by
every step of the run waiting for it (a 10,000-item `for_each` costs one GET per worker). The
cache holds the stored JSON bytes, bounded in entries and bytes; each step decodes its own copy
on first access (`RunInputsView`), so a handler mutating a nested value cannot change what
another step sees.

A key that is missing (Redis lost it before the coordinator wrote it back) or that holds other
inputs than the message names fails the step retryably, before its handler runs, with
`InputsUnavailableError`: the coordinator restores the key when it publishes the run's steps
again (its reconciler, or the retry itself).
"""

from __future__ import annotations

import asyncio
from collections import OrderedDict
from collections.abc import Iterator, Mapping
from types import MappingProxyType
from typing import Any, NoReturn

import msgspec
import redis
import redis.asyncio as aioredis

from orchestrator.errors import NonRetryableStepError, RetryableStepError
from orchestrator.keys import Keys
from orchestrator.run_inputs import digest_of
from orchestrator.wire import StepMessage

EMPTY: Mapping[str, Any] = MappingProxyType({})

HOOK_INPUTS = (
    "ctx.inputs is not available to hooks: a hook may run after its run finished, when the run's inputs "
    'are no longer kept; pass what the hook needs in its `with:`, e.g. `with: {order: "${{ inputs.order_id }}"}`'
)


class InputsUnavailableError(RetryableStepError):
    """The run's inputs could not be read for `ctx.inputs`; a later attempt may find them."""


class RunInputsView(Mapping[str, Any]):
    """`ctx.inputs`: a read-only mapping of the run's inputs, decoded on first access."""

    __slots__ = ("_raw", "_values")

    def __init__(self, raw: bytes | None = None, values: Mapping[str, Any] | None = None) -> None:
        self._raw = raw
        self._values = values

    def _decoded(self) -> Mapping[str, Any]:
        if self._values is None:
            assert self._raw is not None
            self._values = msgspec.json.decode(self._raw)
            self._raw = None
        return self._values

    def __getitem__(self, key: str) -> Any:
        return self._decoded()[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._decoded())

    def __len__(self) -> int:
        return len(self._decoded())

    def __repr__(self) -> str:  # names only: values may be sensitive and end up in logs
        return f"<ctx.inputs {sorted(self._decoded())!r}>"


class HookInputs(Mapping[str, Any]):
    """`ctx.inputs` of a post or session hook: every access fails, saying to use `with:`.

    Not an empty mapping: `ctx.inputs.get("x")` returning None would hide that nothing is there."""

    def _fail(self) -> NoReturn:
        raise NonRetryableStepError(HOOK_INPUTS)

    def __getitem__(self, key: str) -> Any:
        self._fail()

    def __iter__(self) -> Iterator[str]:
        self._fail()

    def __len__(self) -> int:  # noqa: PLE0303 - it never returns: every access fails with the message
        self._fail()

    def __contains__(self, key: object) -> bool:
        self._fail()

    def get(self, key: str, default: Any = None) -> Any:
        self._fail()

    def __repr__(self) -> str:
        return "<ctx.inputs not available to hooks: use the hook's `with:`>"


class InputsCache:
    """Reads runs' inputs keys for `ctx.inputs`: an LRU of their bytes, one GET per miss."""

    def __init__(
        self,
        client: aioredis.Redis,
        keys: Keys,
        *,
        max_entries: int = 1024,
        max_bytes: int = 64 * 1024 * 1024,
    ) -> None:
        self.client = client
        self.keys = keys
        self.max_entries = max_entries
        self.max_bytes = max_bytes
        self._entries: OrderedDict[tuple[str, str], bytes] = OrderedDict()
        self._bytes = 0
        self._loading: dict[tuple[str, str], asyncio.Task[bytes]] = {}

    def __len__(self) -> int:
        return len(self._entries)

    async def get(self, message: StepMessage) -> bytes:
        """The stored inputs of `message`'s run; `InputsUnavailableError` when Redis lacks them."""
        entry = (message.run, message.inputs_digest)
        raw = self._entries.get(entry)
        if raw is not None:
            self._entries.move_to_end(entry)
            return raw
        task = self._loading.get(entry)
        if task is None:
            task = asyncio.ensure_future(self._load(message))
            task.add_done_callback(_retrieve)
            self._loading[entry] = task
            task.add_done_callback(lambda _: self._loading.pop(entry, None))
        # Shielded: a step cancelled while waiting does not cancel the read the others wait for.
        return await asyncio.shield(task)

    async def _load(self, message: StepMessage) -> bytes:
        key = self.keys.run_inputs(message.partition, message.run)
        try:
            raw: bytes | None = await self.client.get(key)
        except (redis.RedisError, OSError) as e:
            raise InputsUnavailableError(
                f"cannot read the inputs of run {message.run} from Redis ({type(e).__name__}: {e}); the step is retried"
            ) from e
        if raw is None:
            raise InputsUnavailableError(
                f"the inputs of run {message.run} are missing from Redis (key {key}): Redis lost them, and "
                "the coordinator writes them back when it publishes the run's steps again; the step is retried"
            )
        found = digest_of(raw)
        if found != message.inputs_digest:
            raise InputsUnavailableError(
                f"Redis holds other inputs for run {message.run} (digest {found}) than this step was "
                f"dispatched with ({message.inputs_digest}); the step is retried"
            )
        self._remember((message.run, message.inputs_digest), raw)
        return raw

    def _remember(self, entry: tuple[str, str], raw: bytes) -> None:
        if len(raw) > self.max_bytes:
            return
        old = self._entries.pop(entry, None)
        self._bytes -= len(old) if old is not None else 0
        self._entries[entry] = raw
        self._bytes += len(raw)
        while len(self._entries) > self.max_entries or self._bytes > self.max_bytes:
            _, evicted = self._entries.popitem(last=False)
            self._bytes -= len(evicted)


def _retrieve(task: asyncio.Task[bytes]) -> None:
    """Mark a failed read's error as seen: every waiting step gets it, maybe none is left."""
    if not task.cancelled():
        task.exception()


async def inputs_of(message: StepMessage, cache: InputsCache | None) -> Mapping[str, Any]:
    """`ctx.inputs` for one attempt (schema version 1 messages carry them inline)."""
    if message.v == 1 or message.inputs is not None:
        return RunInputsView(values=message.inputs or {})
    if message.kind == "hook":
        return HookInputs()
    if not message.inputs_digest:
        return EMPTY
    if cache is None:
        raise InputsUnavailableError(f"this worker has no Redis client to read the inputs of run {message.run}")
    return RunInputsView(raw=await cache.get(message))
