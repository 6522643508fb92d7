"""deploy/redis/users.acl in a real Redis 7: each user may run exactly what its process needs.

The file is loaded as shipped (only the password hashes replaced by fresh passwords, plus an
admin user for the test itself). Forbidden commands are refused with NOPERM; the granted ones
work on the keys they are for; and a coordinator, two workers and the CLI, each with its own
user, finish a workflow that retries and trips a breaker, and cancel another mid-step, while
Redis refuses them nothing (its ACL LOG stays empty).
"""

from __future__ import annotations

import os
import secrets
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from orchestrator.dev import PostgresServer, RedisServer
from orchestrator.dev.cluster import LocalCluster
from orchestrator.dev.redis_server import RedisBinary
from orchestrator.keys import COORDINATOR_GROUP, WORKER_GROUP, Keys
from orchestrator.settings import Settings
from orchestrator.spec import load_workflow
from orchestrator.store.db import upgrade
from orchestrator.store.queries import RunQueries
from orchestrator.store.runs import RunStore
from orchestrator.submit import Submitter
from tests.conftest import private_dir
from tests.e2e.conftest import FAST_ENV
from tests.helpers import assert_eventually

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
ACL_FILE = ROOT / "deploy" / "redis" / "users.acl"
REDIS7 = ROOT / ".steppe-tools" / "redis7" / "usr" / "bin" / "redis-server"
ADMIN = "acl-test-admin"
USERS = ("steppe-coordinator", "steppe-worker", "steppe-keda")
K = Keys("steppe")  # the namespace users.acl is written for
# redis-py announces itself with CLIENT SETINFO and ignores a refusal; Redis < 7.2 has no such
# subcommand, so users.acl cannot grant it without failing to load there.
IGNORED_REFUSALS = {"client|setinfo", "client"}


def acl_with_passwords(path: Path) -> dict[str, str]:
    """users.acl with fresh passwords instead of its placeholder hashes, plus the test's admin."""
    passwords = {user: secrets.token_hex(12) for user in (*USERS, ADMIN)}
    lines = []
    for line in ACL_FILE.read_text().splitlines():
        words = line.split()
        if len(words) > 2 and words[1] in passwords:
            words = [w if not w.startswith("#") else ">" + passwords[words[1]] for w in words]
        lines.append(" ".join(words))
    lines.append(f"user {ADMIN} on >{passwords[ADMIN]} ~* &* +@all")
    path.write_text("\n".join(lines) + "\n")
    return passwords


class AclRedis(RedisServer):
    """A redis-server whose users come from an ACL file (not the dev server's generated ones)."""

    secured = False
    acl_passwords: dict[str, str] = {}  # noqa: RUF012 - set on the subclass made per test

    @property
    def ping_auth(self) -> tuple[str, str] | None:
        return (ADMIN, self.acl_passwords[ADMIN])

    def _argv(self) -> list[str]:
        return [*super()._argv(), "--aclfile", str(self.data_dir / "users.acl")]

    def url_of(self, user: str) -> str:
        return f"redis://{user}:{self.acl_passwords[user]}@127.0.0.1:{self.port}/0"


@pytest.fixture(scope="module")
def acl_redis() -> Iterator[AclRedis]:
    if not REDIS7.exists():
        pytest.fail(f"no Redis 7 at {REDIS7}: run `make install` (it unpacks Debian's redis-server 7 there)")
    binary = RedisBinary.probe(REDIS7)
    assert binary.version_info >= (7,), binary
    base = private_dir("steppe-acl-")
    data = base / "redis"
    data.mkdir()
    passwords = acl_with_passwords(data / "users.acl")

    class AclRedisForTest(AclRedis):
        acl_passwords = passwords

    server_class = AclRedisForTest
    server = server_class.start(data, binary=binary, appendonly=False)
    assert isinstance(server, AclRedis)
    try:
        yield server
    finally:
        server.stop(timeout=10)
        server.kill()


def client(server: AclRedis, user: str) -> redis.Redis:
    return redis.Redis.from_url(server.url_of(user), socket_timeout=10)


@pytest.fixture
def admin(acl_redis: AclRedis) -> Iterator[redis.Redis]:
    with client(acl_redis, ADMIN) as c:
        c.flushall()
        c.execute_command("ACL", "LOG", "RESET")
        queue = K.queue_stream("default")
        for stream, group in ((queue, WORKER_GROUP), (K.results_stream(0), COORDINATOR_GROUP)):
            c.xgroup_create(stream, group, id="0", mkstream=True)
        c.xadd(queue, {"m": "step"})
        c.set(K.run_inputs(2, "r1"), '{"n":1}')
        c.hset(K.breaker("payments"), mapping={"state": "closed"})
        c.xadd(K.dlq_stream, {"m": "dead"})
        yield c


def refusals(admin: redis.Redis) -> list[dict[str, Any]]:
    return [e for e in admin.acl_log() if e.get("object") not in IGNORED_REFUSALS]


# -- forbidden ------------------------------------------------------------------------------------

QUEUE, RESULTS, CONTROL = K.queue_stream("default"), K.results_stream(0), K.control_stream(0)
FORBIDDEN: dict[str, list[tuple[Any, ...]]] = {
    "steppe-worker": [
        ("XADD", QUEUE, "*", "m", "forged step"),  # a step on any queue, for any handler
        ("XADD", K.queue_stream("payments", "high"), "*", "m", "forged"),
        ("XADD", CONTROL, "*", "m", "forged control"),
        ("DEL", QUEUE),
        ("DEL", RESULTS),
        ("DEL", K.dlq_stream),
        ("XDEL", QUEUE, "0-1"),
        ("XTRIM", QUEUE, "MAXLEN", "0"),
        ("XGROUP", "DESTROY", QUEUE, WORKER_GROUP),
        ("XGROUP", "SETID", QUEUE, WORKER_GROUP, "$"),
        ("XREADGROUP", "GROUP", COORDINATOR_GROUP, "w", "STREAMS", RESULTS, ">"),  # read others' results
        ("XRANGE", K.dlq_stream, "-", "+"),
        ("SET", K.breaker("payments"), "open"),  # clobber a breaker
        ("DEL", K.breaker("payments")),
        ("EXPIRE", K.breaker("payments"), "1"),
        ("ZADD", K.cancelled, "1", "someone-elses-run"),
        ("ZREM", K.cancelled, "run"),
        ("SET", K.epoch, "x"),
        ("SET", K.coordinator("c1"), "x"),
        ("SET", K.run_inputs(0, "r1"), "forged inputs"),  # what another run's handlers read
        ("DEL", K.run_inputs(0, "r1")),
        ("EXPIRE", K.run_inputs(0, "r1"), "1"),
        ("SET", "anything", "x"),
        ("FLUSHALL",),
        ("FLUSHDB",),
        ("KEYS", "*"),
        ("SCAN", "0"),
        ("CONFIG", "GET", "*"),
        ("CONFIG", "SET", "dir", "/tmp"),
        ("EVAL", "return 1", "0"),
        ("DEBUG", "SLEEP", "0"),
        ("SHUTDOWN",),
        ("ACL", "LIST"),
        ("MONITOR",),
    ],
    "steppe-coordinator": [
        ("XREADGROUP", "GROUP", WORKER_GROUP, "c", "STREAMS", QUEUE, ">"),  # steal steps from workers
        ("XACK", QUEUE, WORKER_GROUP, "0-1"),
        ("XCLAIM", QUEUE, WORKER_GROUP, "c", "0", "0-1"),
        ("DEL", QUEUE),
        ("DEL", RESULTS),
        ("XDEL", RESULTS, "0-1"),
        ("XGROUP", "DESTROY", RESULTS, COORDINATOR_GROUP),
        ("HSET", K.breaker("payments"), "state", "open"),
        ("SET", K.worker("w1"), "forged worker"),
        ("ZADD", K.workers, "1", "forged-worker"),
        ("SET", "anything", "x"),
        ("GET", "anything"),
        ("GET", K.run_inputs(0, "r1")),  # it writes the inputs keys, never reads them
        ("FLUSHALL",),
        ("KEYS", "*"),
        ("CONFIG", "SET", "dir", "/tmp"),
        ("EVAL", "return 1", "0"),
        ("DEBUG", "SLEEP", "0"),
        ("SHUTDOWN",),
        ("ACL", "SETUSER", "intruder", "on", ">pw", "+@all"),
        ("MODULE", "LIST"),
    ],
    "steppe-keda": [
        ("XADD", QUEUE, "*", "m", "forged"),
        ("XREADGROUP", "GROUP", WORKER_GROUP, "k", "STREAMS", QUEUE, ">"),
        ("XRANGE", QUEUE, "-", "+"),
        ("DEL", QUEUE),
        ("XLEN", RESULTS),
        ("FLUSHALL",),
    ],
}


@pytest.mark.parametrize(
    ("user", "command"),
    [(user, cmd) for user, cmds in FORBIDDEN.items() for cmd in cmds],
    ids=lambda v: v if isinstance(v, str) else " ".join(str(a) for a in v[:2])[:40],
)
def test_forbidden_commands_are_refused(
    acl_redis: AclRedis, admin: redis.Redis, user: str, command: tuple[Any, ...]
) -> None:
    before = admin.dbsize()
    with client(acl_redis, user) as c, pytest.raises(redis.exceptions.NoPermissionError):
        c.execute_command(*command)
    assert admin.dbsize() == before
    assert admin.xlen(QUEUE) == 1
    assert admin.hget(K.breaker("payments"), "state") == b"closed"


def test_anonymous_clients_are_refused(acl_redis: AclRedis) -> None:
    with redis.Redis(host="127.0.0.1", port=acl_redis.port) as anonymous, pytest.raises(redis.AuthenticationError):
        anonymous.ping()


# -- needed ---------------------------------------------------------------------------------------


def test_worker_commands_work(acl_redis: AclRedis, admin: redis.Redis) -> None:
    """Everything workers/streams.py, workers/inputs.py and patterns/breaker.py send, on the keys they send it to."""
    with client(acl_redis, "steppe-worker") as w:
        assert w.ping()
        w.xgroup_create(K.queue_stream("new"), WORKER_GROUP, id="0", mkstream=True)
        [[_, [(entry, _)]]] = w.xreadgroup(WORKER_GROUP, "w1", {QUEUE: ">"}, count=10, block=100)
        assert w.xpending_range(QUEUE, WORKER_GROUP, "-", "+", 10, idle=0)
        assert w.xclaim(QUEUE, WORKER_GROUP, "w1", 0, [entry], justid=True) == [entry]
        assert w.xrange(QUEUE, min=entry, max=entry)
        with w.pipeline(transaction=True) as pipe:  # a flush: results, dead letters, acks
            pipe.xadd(K.results_stream(3), {"m": "result"})
            pipe.xadd(K.dlq_stream, {"m": "dead"})
            pipe.xack(QUEUE, WORKER_GROUP, entry)
            assert pipe.execute()[-1] == 1
        with w.pipeline(transaction=False) as pipe:  # heartbeat, eviction, deregistration
            pipe.set(K.worker("w1"), "{}", ex=10)
            pipe.zadd(K.workers, {"w1": time.time()})
            pipe.zrangebyscore(K.workers, 0, time.time(), withscores=True)
            pipe.mget([K.worker("w1"), K.worker("w2")])
            pipe.zremrangebyscore(K.workers, 0, 1)
            pipe.zrem(K.workers, "w1")
            pipe.delete(K.worker("w1"))
            pipe.execute()
        assert w.zmscore(K.cancelled, ["r1", "r2"]) == [None, None]
        assert w.get(K.run_inputs(2, "r1")) == b'{"n":1}'  # ctx.inputs (workers.inputs)
        breaker = K.breaker("payments")
        with w.pipeline(transaction=True) as pipe:  # a breaker transition under WATCH
            pipe.watch(breaker)
            assert pipe.hgetall(breaker) == {b"state": b"closed"}
            pipe.time()
            pipe.multi()
            pipe.hset(breaker, mapping={"state": "open", "fail_counter": 3})
            pipe.execute()
        w.hincrby(breaker, "success_counter", 1)  # PybreakerStorage
        assert w.hget(breaker, "state") == b"open"
        assert w.time()
    assert refusals(admin) == []


def test_coordinator_and_cli_commands_work(acl_redis: AclRedis, admin: redis.Redis) -> None:
    """What coordinator.py, bus.py, streams.py, children.py, submit.py and the CLI send."""
    with client(acl_redis, "steppe-coordinator") as c:
        assert c.ping()
        assert c.config_get("maxmemory-policy") == {"maxmemory-policy": "noeviction"}
        assert c.set(K.epoch, "e1", nx=True)
        assert c.get(K.epoch) == b"e1"
        for stream in (K.queue_stream("new"), CONTROL, K.results_stream(1)):
            c.xgroup_create(stream, WORKER_GROUP if ":q:" in stream else COORDINATOR_GROUP, id="0", mkstream=True)
        with c.pipeline(transaction=True) as pipe:  # the commit's publish: inputs, dispatches and acks
            pipe.delete(K.run_inputs(0, "finished-run"))
            pipe.set(K.run_inputs(0, "r2"), '{"n":2}', nx=True, ex=60)
            pipe.expire(K.run_inputs(0, "r2"), 60)
            pipe.xadd(QUEUE, {"m": "step"})
            pipe.xadd(CONTROL, {"m": "wake"})
            pipe.xadd(RESULTS, {"m": "child finished"})
            pipe.xack(RESULTS, COORDINATOR_GROUP, "0-1")
            pipe.execute()
        assert c.xreadgroup(COORDINATOR_GROUP, "c1", {RESULTS: ">", CONTROL: ">"}, count=10, block=100)
        c.xautoclaim(RESULTS, COORDINATOR_GROUP, "c2", 0, "0-0", count=500)
        for stream, group in ((QUEUE, WORKER_GROUP), (RESULTS, COORDINATOR_GROUP)):  # trimming and metrics
            assert c.xinfo_groups(stream)
            c.xpending(stream, group)
            c.xpending_range(stream, group, "-", "+", 1)
            c.xpending_range(stream, group, "-", "+", 1, consumername="c1")  # hand_back of a lost partition
            assert c.xrange(stream, "-", "+", count=1000)
            assert c.xlen(stream)
            c.xtrim(stream, minid="0-1", approximate=False)
        assert c.xrevrange(K.dlq_stream, count=10)
        assert c.xlen(K.dlq_stream)
        c.xadd(K.dlq_stream, {"m": "garbage on a results stream"})
        c.xtrim(K.dlq_stream, minid="0-1", approximate=False)  # `steppe dlq purge`
        with c.pipeline(transaction=False) as pipe:  # coordinator heartbeat
            pipe.set(K.coordinator("c1"), "{}", ex=20)
            pipe.zadd(K.coordinators, {"c1": time.time()})
            pipe.zremrangebyscore(K.coordinators, 0, 1)
            pipe.zcard(K.coordinators)
            pipe.execute()
        assert c.zrange(K.coordinators, 0, -1) == [b"c1"]
        assert c.zrange(K.workers, 0, -1) == []
        assert c.zcount(K.workers, 0, "+inf") == 0
        assert c.mget([K.worker("w1"), K.coordinator("c1")]) == [None, b"{}"]
        c.zadd(K.cancelled, {"r1": time.time()})
        c.zrem(K.cancelled, "r1")
        c.zrem(K.coordinators, "c1")
    with client(acl_redis, "steppe-keda") as k:
        assert k.xlen(QUEUE)
        assert k.xinfo_groups(QUEUE)
        k.xpending(QUEUE, WORKER_GROUP)
    assert refusals(admin) == []


# -- end to end -----------------------------------------------------------------------------------

WORKFLOW = """
name: acl_e2e
inputs: {order: {type: string, required: true}}
breakers:
  flaky: {fail_max: 2, reset_timeout: 1s}
steps:
  - id: flaky
    handler: builtin.fail
    with: {times: 3}
    circuit_breaker: flaky
    retry: {max_attempts: 8, backoff: fixed, initial_delay: 200ms, jitter: false}
  - id: slow
    handler: builtin.sleep
    needs: [flaky]
    with: {seconds: 1.5}
  - id: done
    handler: builtin.echo
    needs: [slow]
    with: {value: "${{ steps.slow.output.slept }}"}
"""

CANCELLED = """
name: acl_cancelled
steps:
  - id: long
    handler: builtin.sleep
    with: {seconds: 60}
"""


@pytest.fixture
def acl_database(postgres_server: PostgresServer) -> Iterator[str]:
    name = f"steppe_acl_{uuid.uuid4().hex[:8]}"
    postgres_server.create_database(name)
    upgrade(postgres_server.owner_url(name))
    yield postgres_server.app_url(name)
    postgres_server.drop_database(name)


def steppe_cli(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(
        [sys.executable, "-m", "orchestrator.cli.main", "--log-level", "WARNING", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode in (0, 1), f"steppe {' '.join(args)}: exit {done.returncode}\n{done.stderr}"
    return done


def test_coordinator_workers_and_cli_run_a_workflow_with_their_own_users(
    acl_redis: AclRedis, admin: redis.Redis, acl_database: str, tmp_path: Path
) -> None:
    admin.flushall()
    base = {
        **os.environ,
        **FAST_ENV,
        "STEPPE_DATABASE_URL": acl_database,
        "STEPPE_NAMESPACE": "steppe",
        "STEPPE_HOME": str(tmp_path),
        "PYTHONPATH": str(ROOT),
    }
    coordinator_url = acl_redis.url_of("steppe-coordinator")
    coordinator_env = {**base, "STEPPE_REDIS_URL": coordinator_url}
    worker_env = {k: v for k, v in base.items() if k != "STEPPE_DATABASE_URL"}  # workers need Redis only
    worker_env["STEPPE_REDIS_URL"] = acl_redis.url_of("steppe-worker")
    settings = Settings(redis_url=coordinator_url, database_url=acl_database, namespace="steppe", home=tmp_path)
    log = tmp_path / "cluster.log"
    coordinators = LocalCluster(settings, log_path=log, env=coordinator_env)
    workers = LocalCluster(settings, log_path=log, env=worker_env)
    store = RunStore(acl_database, pool_size=2)
    store.open()
    queries = RunQueries(store)
    try:
        coordinators.start_coordinator()
        for _ in range(2):
            workers.start_worker(queues=["default"], concurrency=4)
        with client(acl_redis, "steppe-coordinator") as c:
            workers.wait_for_workers(c, 2, timeout=90)
            submitter = Submitter(settings=settings, store=store, client=c)
            run_id = submitter.submit(load_workflow(WORKFLOW), inputs={"order": "o-1"}).run_id  # workers GET them
            doomed = submitter.submit(load_workflow(CANCELLED)).run_id

            def steps_of(run: str) -> dict[str, Any]:
                steps: dict[str, Any] = queries.get_run(run)["steps"]
                return steps

            assert_eventually(
                lambda: steps_of(doomed).get("long", {}).get("status") == "running",
                timeout=90,
                message=lambda: log.read_text()[-3000:],
            )
            steppe_cli(coordinator_env, "cancel", doomed)
            assert_eventually(
                lambda: (
                    queries.get_run(run_id)["status"] == "succeeded"
                    and queries.get_run(doomed)["status"] == "cancelled"
                ),
                timeout=180,
                message=lambda: log.read_text()[-4000:],
            )
            for command in (("status", run_id), ("history", run_id), ("workers",), ("runs",), ("dlq", "list")):
                steppe_cli(coordinator_env, *command)
        assert steps_of(run_id)["flaky"]["attempts"] >= 4
        assert admin.keys("*:inputs:*") == []  # the coordinator deleted the run's inputs key
        assert admin.hget(K.breaker("flaky"), "opened_at")  # the workers opened it (HSET under WATCH)
        assert all(p.poll() is None for p in coordinators.coordinators + workers.workers), log.read_text()[-4000:]
        assert refusals(admin) == [], log.read_text()[-3000:]
        assert "NOPERM" not in log.read_text()
    finally:
        workers.stop()
        coordinators.stop()
        store.close()
