"""`steppe bench floor`: the least program doing, per step, the durable work Steppe's contract requires.

No engine: no YAML, no validation, no planning, no templates, no retries, timers, hooks, limits or
recovery. What is left is what any implementation of the contract (docs/spec.md: a run's submission
and every transition durable in PostgreSQL before it is acted on; steps and results travel on Redis
streams, acknowledged only once their effect is durable) must send, with the same statements and
tables (Steppe's schema, its indexes and its lease fence) and the same process shape as
`steppe bench all`: this process is the producer (inside the timing), one floor coordinator process
and two floor worker processes, on the same private Redis and PostgreSQL with the same durability.

Per one-step workflow (the 20,000-runs shape), exactly:

- producer: the run row and its `run.submitted` event by COPY, one transaction per 2,000 runs
  (`RunStore.create_runs`, as `Submitter.submit_many`); one control entry per run (XADD
  `{ns:pP}:control`, pipelined per 2,000);
- coordinator, admitting: the entry read (XREADGROUP over the partitions' control and results
  streams, COUNT 500), the run read back (one `SELECT … FROM workflow_runs WHERE run_id = ANY`
  per batch), then in the batch's ONE transaction: events `run.started` + `step.dispatched`, the
  step row (`dispatched`) and the run row (version-checked, fenced by the partition lease);
  after the commit, in one pipeline: XADD of the step message to `{ns:q:default}:normal`, XACK
  of the entries read, and the next XREADGROUP without BLOCK (only an empty one is followed by a
  blocking XREADGROUP: one round trip per batch while there is a backlog);
- worker: XREADGROUP over the queue's three priority streams (COUNT = 16 slots), then per read
  one MULTI/EXEC: XADD of each result to `{ns:pP}:results`, one XACK of the entries, and the next
  XREADGROUP without BLOCK (as the coordinator's);
- coordinator, finishing: the result read (same XREADGROUP), then in the batch's ONE transaction:
  events `step.succeeded` + `run.succeeded`, the step row (`succeeded`) and the run row
  (`finished_at` set); after the commit, one pipeline with the XACK of the entries read.

So 5 event rows, 1 run row inserted and updated twice, 1 step row inserted and updated once, 2
coordinator commits shared by every run of their batches (plus the producer's per 2,000), and on
Redis 3 XADDs (control, step, result), 3 XREADGROUP deliveries and 3 XACKs per step. The wide
workflow (one run, N steps) writes the same per step (`step.dispatched`, `step.succeeded`, one step
row inserted and updated) plus one run row update per batch; its submission is one INSERT of the
run with its definition (`RunStore.create_run`) and one control entry. A chain hop is one result
read, one commit (`step.succeeded` of the hop, `step.dispatched` + step row of the next, the run
row), one XADD of the next step message with the XACK, one worker read and MULTI.

The statements are Steppe's own (`orchestrator.store.batch_write`, `orchestrator.store.runs`), fed
the same JSON documents; the messages are Steppe's wire structs (`orchestrator.wire`). Left out
as engine logic, not durable work: the coordinator's read of a new run's (empty) step rows, its
leases' renewal (the floor holds every partition for the whole benchmark), heartbeats, reconcile
passes and metrics. The producer waits for the end the way `ClusterBench` does (polling PostgreSQL: the run's status,
or the oldest 500 pending run ids of the one-step workflows).
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import redis

from orchestrator import bus
from orchestrator.dev.benchmark import POLL, cpu_by_role, settle_database, wait_runs_finished
from orchestrator.errors import InfrastructureError
from orchestrator.keys import COORDINATOR_GROUP, WORKER_GROUP, Keys
from orchestrator.settings import Settings
from orchestrator.store import batch_write
from orchestrator.store.leases import partition_of
from orchestrator.store.queries import RunQueries
from orchestrator.store.runs import NewRun, RunStore
from orchestrator.submit import new_run_id
from orchestrator.wire import (
    FIELD,
    ControlMessage,
    ResultMessage,
    StepMessage,
    decode_control,
    decode_result,
    decode_step,
    encode,
)

__all__ = ["FloorBench", "definition_of", "main"]

QUEUE = "default"
HANDLER = "builtin.noop"
SUBMIT_BATCH = 2000  # runs per producer transaction, as `ClusterBench.many_one_step_workflows`
LEASE_HOURS = 24  # the floor coordinator holds every partition for the whole benchmark


def definition_of(name: str, steps: int, *, chain: bool) -> tuple[dict[str, Any], dict[str, Any]]:
    """The definition and plan documents Steppe stores for a noop workflow of `steps` steps (no validation)."""
    ids = [f"s{i}" for i in range(steps)]
    rows = [
        {"id": s, "with": {}, "needs": [ids[i - 1]] if chain and i else [], "handler": HANDLER}
        for i, s in enumerate(ids)
    ]
    definition = {
        "name": name,
        "hooks": [],
        "steps": rows,
        "inputs": {},
        "breakers": {},
        "defaults": {},
        "workflows": {},
        "on_failure": "fail",
    }
    waves = [[s] for s in ids] if chain else [ids]
    plan = {
        "edges": steps - 1 if chain else 0,
        "nodes": steps,
        "waves": waves,
        "critical_path": ids if chain else ids[:1],
    }
    return definition, plan


# -- the coordinator process ----------------------------------------------------------------------


@dataclass(slots=True)
class _Run:
    workflow: str
    partition: int
    version: int
    steps: int
    chain: bool
    seq: int = 1
    done: int = 0

    def outputs(self) -> dict[str, Any]:
        """The outputs of its sink steps (noop: {}), as Steppe's `run.succeeded` and final state hold."""
        sinks = [self.steps - 1] if self.chain else range(self.steps)
        return {f"s{i}": {} for i in sinks}


class FloorCoordinator:
    """Admits runs, dispatches their steps, applies their results: one commit, then publish, per batch."""

    def __init__(self, settings: Settings, keys: Keys, *, owner: str, batch_size: int) -> None:
        self.keys = keys
        self.owner = owner
        self.batch_size = batch_size
        self.partitions = settings.coordinator.partitions
        self.redis = bus.connect(settings)
        self.store = RunStore(settings.resolved_database_url(), pool_size=1, durability=settings.durability)
        self.runs: dict[str, _Run] = {}
        self.consumer = f"floor-coordinator-{os.getpid()}"

    def run_forever(self) -> None:
        self.store.open()
        wanted = {}
        for p in range(self.partitions):
            wanted[self.keys.control_stream(p)] = ">"
            wanted[self.keys.results_stream(p)] = ">"
        reply: Any = None
        while True:
            if not reply:
                reply = self.redis.xreadgroup(
                    COORDINATOR_GROUP, self.consumer, wanted, count=self.batch_size, block=1000
                )
            if reply:
                reply = self.batch(reply, wanted)

    def batch(self, reply: Any, wanted: dict[str, str]) -> Any:
        """One read: admit and apply, ONE commit, then one pipeline of the dispatches, the XACKs and the
        next read (without blocking; an empty one is followed by a blocking read). Returns that read."""
        acks, submitted, results = _sort(reply)
        events: list[dict[str, Any]] = []
        steps: list[dict[str, Any]] = []
        touched: dict[str, bool] = {}  # run id → finished
        dispatches: list[StepMessage] = []
        with self.store.connection() as conn:
            if submitted:
                self._admit(conn, submitted, events, steps, touched, dispatches)
            for result in results:
                self._apply(result, events, steps, touched, dispatches)
            writes = [self._run_row(run_id, finished) for run_id, finished in touched.items()]
            with conn.pipeline(), conn.transaction(), conn.cursor() as cur:
                if events:
                    cur.execute(batch_write._INSERT_EVENTS, (batch_write.rows_json(events),))
                if steps:
                    cur.execute(batch_write._UPSERT_STEPS, (batch_write.rows_json(steps),))
                if writes:
                    cur.execute(batch_write._UPDATE_RUNS, (batch_write.rows_json(writes), self.owner, len(writes)))
        for run_id, finished in touched.items():
            self.runs[run_id].version += 1
            if finished:
                del self.runs[run_id]
        pipe = self.redis.pipeline(transaction=False)
        for message in dispatches:
            pipe.xadd(self.keys.queue_stream(QUEUE), {FIELD: encode(message)})
        for stream, ids in acks.items():
            pipe.xack(stream, COORDINATOR_GROUP, *ids)
        pipe.xreadgroup(COORDINATOR_GROUP, self.consumer, wanted, count=self.batch_size)
        return pipe.execute()[-1]

    def _admit(
        self,
        conn: Any,
        run_ids: list[str],
        events: list[dict[str, Any]],
        steps: list[dict[str, Any]],
        touched: dict[str, bool],
        dispatches: list[StepMessage],
    ) -> None:
        rows = conn.execute(
            "SELECT run_id, workflow, partition, definition, inputs, version FROM workflow_runs WHERE run_id = ANY(%s)",
            (run_ids,),
        ).fetchall()
        for row in rows:
            defined = row["definition"]["steps"]
            chain = len(defined) > 1 and bool(defined[1]["needs"])
            run = _Run(row["workflow"], row["partition"], row["version"], len(defined), chain)
            self.runs[row["run_id"]] = run
            run.seq += 1
            events.append(_event(row["run_id"], run.seq, "run.started", None, None, {}))
            for step in defined[:1] if chain else defined:
                self._dispatch(row["run_id"], run, step["id"], events, steps, dispatches)
            touched[row["run_id"]] = False

    def _dispatch(
        self,
        run_id: str,
        run: _Run,
        step: str,
        events: list[dict[str, Any]],
        steps: list[dict[str, Any]],
        dispatches: list[StepMessage],
    ) -> None:
        run.seq += 1
        events.append(_event(run_id, run.seq, "step.dispatched", step, 1, {"queue": QUEUE, "handler": HANDLER}))
        steps.append(_step_row(run_id, step, "dispatched", None))
        dispatches.append(
            StepMessage(
                run=run_id, step=step, attempt=1, handler=HANDLER, partition=run.partition, workflow=run.workflow
            )
        )

    def _apply(
        self,
        result: ResultMessage,
        events: list[dict[str, Any]],
        steps: list[dict[str, Any]],
        touched: dict[str, bool],
        dispatches: list[StepMessage],
    ) -> None:
        run = self.runs.get(result.run)
        if run is None:
            return
        run.seq += 1
        run.done += 1
        events.append(_event(result.run, run.seq, "step.succeeded", result.step, result.attempt, {"output": {}}))
        steps.append(_step_row(result.run, result.step, "succeeded", result.output))
        finished = run.done == run.steps
        if run.chain and not finished:
            self._dispatch(result.run, run, f"s{run.done}", events, steps, dispatches)
        if finished:
            run.seq += 1
            events.append(_event(result.run, run.seq, "run.succeeded", None, None, {"outputs": run.outputs()}))
        touched[result.run] = finished

    def _run_row(self, run_id: str, finished: bool) -> dict[str, Any]:
        run = self.runs[run_id]
        state: dict[str, Any] = {"workflow": run.workflow}
        if finished:
            state = {"outputs": run.outputs(), "workflow": run.workflow}
        return {
            "run_id": run_id,
            "expected": run.version,
            "status": "succeeded" if finished else "running",
            "state": state,
            "last_seq": run.seq,
            "finished": finished,
        }


def _sort(reply: Any) -> tuple[dict[bytes, list[bytes]], list[str], list[ResultMessage]]:
    """The entries read: ids to acknowledge by stream, runs submitted, results."""
    acks: dict[bytes, list[bytes]] = {}
    submitted: list[str] = []
    results: list[ResultMessage] = []
    for stream, entries in reply:
        for entry_id, fields in entries:
            acks.setdefault(stream, []).append(entry_id)
            if stream.endswith(b":control"):
                submitted.append(decode_control(fields[FIELD]).run)
            else:
                results.append(decode_result(fields[FIELD]))
    return acks, submitted, results


def _event(run_id: str, seq: int, kind: str, step: str | None, attempt: int | None, data: Any) -> dict[str, Any]:
    return {"run_id": run_id, "seq": seq, "type": kind, "step_key": step, "attempt": attempt, "data": data}


def _step_row(run_id: str, step: str, status: str, output: Any) -> dict[str, Any]:
    return {
        "run_id": run_id,
        "step_key": step,
        "step_id": step,
        "status": status,
        "attempt": 1,
        "output": output,
        "error": None,
        "due_at": None,
        "detail": {},
    }


# -- the worker process ---------------------------------------------------------------------------


def worker_forever(settings: Settings, keys: Keys, *, concurrency: int) -> None:
    """Read up to `concurrency` step messages, then one MULTI: their results XADDed, the entries XACKed,
    and the next read (without blocking; an empty one is followed by a blocking read)."""
    client = bus.connect(settings)
    worker = f"floor-worker-{os.getpid()}"
    wanted = dict.fromkeys(keys.queue_streams(QUEUE), ">")
    reply: Any = None
    while True:
        if not reply:
            reply = client.xreadgroup(WORKER_GROUP, worker, wanted, count=concurrency, block=1000)
        if not reply:
            continue
        pipe = client.pipeline(transaction=True)
        for stream, entries in reply:
            for entry_id, fields in entries:
                step = decode_step(fields[FIELD])
                result = ResultMessage(
                    run=step.run,
                    step=step.step,
                    attempt=step.attempt,
                    status="succeeded",
                    worker=worker,
                    output={},
                    stream_id=entry_id.decode(),
                    queue=QUEUE,
                )
                pipe.xadd(keys.results_stream(step.partition), {FIELD: encode(result)})
            pipe.xack(stream, WORKER_GROUP, *[entry_id for entry_id, _ in entries])
        pipe.xreadgroup(WORKER_GROUP, worker, wanted, count=concurrency)
        reply = pipe.execute()[-1]


# -- the producer: this process -------------------------------------------------------------------


class FloorBench:
    """Starts the floor's coordinator and workers on the servers `settings` names; runs the shapes."""

    def __init__(self, settings: Settings, *, workers: int = 2, concurrency: int = 16, batch_size: int = 500) -> None:
        self.settings = settings
        self.workers = workers
        self.concurrency = concurrency
        self.batch_size = batch_size
        self.keys = Keys(f"{settings.namespace}f{uuid.uuid4().hex[:4]}")
        self.owner = f"floor-{uuid.uuid4().hex[:8]}"
        self.procs: dict[str, list[subprocess.Popen[bytes]]] = {"coordinators": [], "workers": []}
        self.server_pids: dict[str, list[int]] = {}  # as `ClusterBench.server_pids`, for `cpu_by_role`

    def __enter__(self) -> FloorBench:
        self.redis: redis.Redis = bus.connect(self.settings)
        self.store = RunStore(self.settings.resolved_database_url(), pool_size=2, durability=self.settings.durability)
        self.store.open()
        partitions = self.settings.coordinator.partitions
        bus.ensure_partition_groups(self.redis, self.keys, range(partitions))
        bus.ensure_queue_groups(self.redis, self.keys, [QUEUE])
        with self.store.connection() as conn:
            conn.execute(
                "INSERT INTO coordinator_leases (partition) SELECT generate_series(0, %s - 1) ON CONFLICT DO NOTHING",
                (partitions,),
            )
            taken = conn.execute(
                "UPDATE coordinator_leases SET owner = %s, token = token + 1,"
                " expires_at = now() + make_interval(hours => %s)"
                " WHERE partition < %s AND (owner IS NULL OR expires_at < now())",
                (self.owner, LEASE_HOURS, partitions),
            ).rowcount
        if taken != partitions:
            self.store.close()
            raise InfrastructureError(
                f"the floor could lease only {taken} of {partitions} partitions: a Steppe coordinator holds the "
                "others; stop it (the floor needs the database to itself) and run again"
            )
        env = dict(
            os.environ,
            STEPPE_REDIS_URL=self.settings.resolved_redis_url(),
            STEPPE_DATABASE_URL=self.settings.resolved_database_url(),
            STEPPE_NAMESPACE=self.settings.namespace,
            STEPPE_HOME=str(self.settings.home),
            STEPPE_COORDINATOR__PARTITIONS=str(partitions),
            STEPPE_DURABILITY=self.settings.durability,
        )
        argv = [sys.executable, "-m", "orchestrator.dev.floor", self.keys.namespace]
        self.procs["coordinators"].append(
            subprocess.Popen([*argv, "coordinator", self.owner, str(self.batch_size)], env=env)
        )
        for _ in range(self.workers):
            self.procs["workers"].append(subprocess.Popen([*argv, "worker", str(self.concurrency)], env=env))
        return self

    def __exit__(self, *exc: object) -> None:
        for proc in self._all():
            proc.terminate()
        for proc in self._all():
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        with self.store.connection() as conn:
            conn.execute(
                "UPDATE coordinator_leases SET owner = NULL, expires_at = NULL WHERE owner = %s", (self.owner,)
            )
        self.store.close()
        self.redis.close()

    def _all(self) -> Iterator[subprocess.Popen[bytes]]:
        for procs in self.procs.values():
            yield from procs

    # -- shapes (the same as ClusterBench's) ----------------------------------------------------

    def many_one_step_workflows(self, n: int) -> float:
        name = f"floor-runs-{uuid.uuid4().hex[:8]}"
        definition, plan = definition_of(name, 1, chain=False)
        partitions = self.settings.coordinator.partitions
        started = time.perf_counter()
        run_ids: list[str] = []
        for offset in range(0, n, SUBMIT_BATCH):
            rows = []
            for _ in range(min(SUBMIT_BATCH, n - offset)):
                run_id = new_run_id()
                rows.append(NewRun(run_id, name, partition_of(run_id, partitions), definition, {}, plan))
            self.store.create_runs(rows)
            self._notify(rows)
            run_ids += [r.run_id for r in rows]
        wait_runs_finished(self.store, run_ids, timeout=max(120, n / 50), between_polls=self._check_alive)
        return time.perf_counter() - started

    def one_wide_workflow(self, n: int) -> float:
        return self._one_run("wide", n, chain=False, timeout=max(120, n / 50))

    def chain(self, length: int) -> float:
        return self._one_run("chain", length, chain=True, timeout=120)

    def _one_run(self, kind: str, steps: int, *, chain: bool, timeout: float) -> float:
        name = f"floor-{kind}-{uuid.uuid4().hex[:8]}"
        started = time.perf_counter()
        definition, plan = definition_of(name, steps, chain=chain)
        run_id = new_run_id()
        run = NewRun(run_id, name, partition_of(run_id, self.settings.coordinator.partitions), definition, {}, plan)
        self.store.create_run(run)
        self._notify([run])
        self._wait_run(run_id, timeout=timeout)
        return time.perf_counter() - started

    def _notify(self, rows: list[NewRun]) -> None:
        entries = [
            (self.keys.control_stream(r.partition), ControlMessage(kind="submitted", run=r.run_id)) for r in rows
        ]
        bus.send(self.redis, entries)

    def _wait_run(self, run_id: str, *, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if RunQueries(self.store).run_status(run_id) == "succeeded":
                return
            self._check_alive()
            time.sleep(POLL)
        raise InfrastructureError(f"floor run {run_id} did not finish within {timeout:.0f}s")

    def _check_alive(self) -> None:
        dead = [p for p in self._all() if p.poll() is not None]
        if dead:
            raise InfrastructureError(
                f"a floor process exited (pid {dead[0].pid}, code {dead[0].returncode}); its error is above"
            )

    # -- measurement helpers ---------------------------------------------------------------------

    def settle(self) -> None:
        """As `ClusterBench.settle`: vacuum and checkpoint outside the timing."""
        settle_database(self.settings)

    def durability(self) -> dict[str, str]:
        """STEPPE_DURABILITY, PostgreSQL's fsync and the floor sessions' synchronous_commit, Redis's AOF."""
        with self.store.connection() as conn:
            pg = {n: str(conn.execute(f"SHOW {n}").fetchone()[n]) for n in ("fsync", "synchronous_commit")}  # type: ignore[index]
        aof = self.redis.config_get("appendonly").get("appendonly", "?")
        fsync = self.redis.config_get("appendfsync").get("appendfsync", "?")
        return {
            "steppe": f"STEPPE_DURABILITY={self.settings.durability}",
            "postgresql": f"fsync={pg['fsync']} synchronous_commit={pg['synchronous_commit']} (floor sessions)",
            "redis": f"appendonly={aof} appendfsync={fsync}",
        }

    def cpu_by_role(self) -> dict[str, float]:
        """CPU seconds used so far by each part (as `ClusterBench.cpu_by_role`)."""
        return cpu_by_role(
            [p.pid for p in self.procs["coordinators"]], [p.pid for p in self.procs["workers"]], self.server_pids
        )


def main(argv: list[str]) -> None:
    """`python -m orchestrator.dev.floor NAMESPACE coordinator OWNER BATCH | worker CONCURRENCY`."""
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    settings = Settings()
    keys = Keys(argv[0])
    if argv[1] == "coordinator":
        FloorCoordinator(settings, keys, owner=argv[2], batch_size=int(argv[3])).run_forever()
    else:
        worker_forever(settings, keys, concurrency=int(argv[2]))


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        main(sys.argv[1:])
