"""Every Redis key and stream name Steppe uses, built from the namespace.

Layout (``ns`` is ``Settings.namespace``, default ``steppe``)::

    {ns:q:<queue>}:<priority>   stream  step messages of one queue and priority (high|normal|low);
                                        consumer group ``workers``. The hash tag keeps the three
                                        priority streams of a queue in one Redis Cluster slot.
    {ns:p<N>}:results           stream  worker → coordinator results of runs in partition N;
                                        consumer group ``coordinators``
    {ns:p<N>}:control           stream  wake-ups for partition N (run submitted, cancel, retry);
                                        consumer group ``coordinators``
    {ns:p<N>}:inputs:<run_id>   string  the inputs of one run of partition N (JSON, keys sorted),
                                        written once (SET NX) by the coordinator in the pipeline that
                                        publishes the run's steps, read (GET) by workers for
                                        ``ctx.inputs``, deleted when the run finishes; expires 30 days
                                        after the last publish as a backstop. The partition's hash tag
                                        keeps it in the slot of the partition's streams.
    {ns}:dlq                    stream  dead letters: original payload, error, stream id, deliveries
    {ns}:workers                zset    worker id → last heartbeat (unix seconds)
    {ns}:worker:<id>            string  JSON description of a live worker; expires after its TTL
    {ns}:coordinators           zset    coordinator id → last heartbeat
    {ns}:coordinator:<id>       string  JSON description of a live coordinator; expires after its TTL
    {ns}:cancelled              zset    run id → cancel time; workers cancel in-flight steps of these runs
    {ns}:breaker:<name>         hash    shared circuit-breaker state
    {ns}:epoch                  string  written by coordinators; its absence means Redis lost its data
"""

from __future__ import annotations

from dataclasses import dataclass

PRIORITIES: tuple[str, ...] = ("high", "normal", "low")
WORKER_GROUP = "workers"
COORDINATOR_GROUP = "coordinators"


@dataclass(frozen=True)
class Keys:
    """Key builder for one namespace."""

    namespace: str = "steppe"

    def queue_stream(self, queue: str, priority: str = "normal") -> str:
        return f"{{{self.namespace}:q:{queue}}}:{priority}"

    def queue_streams(self, queue: str) -> list[str]:
        """The streams of one queue, highest priority first."""
        return [self.queue_stream(queue, p) for p in PRIORITIES]

    def results_stream(self, partition: int) -> str:
        return f"{{{self.namespace}:p{partition}}}:results"

    def control_stream(self, partition: int) -> str:
        return f"{{{self.namespace}:p{partition}}}:control"

    def run_inputs(self, partition: int, run_id: str) -> str:
        return f"{{{self.namespace}:p{partition}}}:inputs:{run_id}"

    @property
    def dlq_stream(self) -> str:
        return f"{{{self.namespace}}}:dlq"

    @property
    def workers(self) -> str:
        return f"{{{self.namespace}}}:workers"

    def worker(self, worker_id: str) -> str:
        return f"{{{self.namespace}}}:worker:{worker_id}"

    @property
    def coordinators(self) -> str:
        return f"{{{self.namespace}}}:coordinators"

    def coordinator(self, coordinator_id: str) -> str:
        return f"{{{self.namespace}}}:coordinator:{coordinator_id}"

    @property
    def cancelled(self) -> str:
        return f"{{{self.namespace}}}:cancelled"

    def breaker(self, name: str) -> str:
        return f"{{{self.namespace}}}:breaker:{name}"

    @property
    def epoch(self) -> str:
        return f"{{{self.namespace}}}:epoch"

    def queue_of_stream(self, stream: str) -> str:
        """Inverse of `queue_stream`: the queue name of a queue stream key."""
        prefix = f"{{{self.namespace}:q:"
        return stream[len(prefix) : stream.rindex("}")]
