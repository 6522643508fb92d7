"""Redis 7 losing its data under blocked readers (docs/reliability.md 8): FLUSHALL mid-run, restart in LOADING.

Redis 7 answers a client blocked in XREADGROUP with `-UNBLOCKED the stream key no longer exists`
when FLUSHALL deletes the stream under it (6.2 left the client blocked), and a restarted server
answers `-LOADING` while it reads its AOF. Neither may take a coordinator or a worker down: they
recreate their groups, back off, and the reconciler re-publishes from PostgreSQL.
"""

from __future__ import annotations

import socket
import threading
import time

import pytest
import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from orchestrator.dev import RedisServer
from tests.faults.harness import FaultEnv, ledger_chain
from tests.faults.invariants import (
    check_applied_once,
    check_dead_letters,
    check_effectively_once,
    check_event_logs,
    check_nothing_stranded,
    report,
    wait_terminal,
)
from tests.faults.test_redis import in_flight_steps, workers_alive_and_registered
from tests.helpers import assert_eventually

pytestmark = [pytest.mark.faults, pytest.mark.integration]


def admin(server: RedisServer) -> redis.Redis:
    """A client allowed every command (DEBUG, CONFIG SET, REPLICAOF), without client-side retries."""
    url = getattr(server, "admin_url", server.url)  # a secured dev server denies those to the app user
    return redis.Redis.from_url(url, socket_timeout=5, retry=Retry(NoBackoff(), 0))


def all_processes_alive(env: FaultEnv) -> bool:
    return all(p.poll() is None for p in env.cluster.coordinators + env.cluster.workers)


def test_8_flushall_mid_run_keeps_coordinator_and_workers_up(
    faults_own_redis: FaultEnv, own_redis: RedisServer
) -> None:
    env = faults_own_redis
    control = admin(own_redis)
    env.start(workers=2, concurrency=4)
    runs = [env.submit(ledger_chain("flushed", 3, 0.8)) for _ in range(6)]
    assert_eventually(lambda: len(env.witness("calls")) >= 4, timeout=15)
    in_flight = in_flight_steps(env)
    # Twice, so that the second flush hits loops that already recovered from the first once.
    control.flushall()
    flushed = time.monotonic()
    assert_eventually(lambda: env.log_events("redis_data_loss_detected"), timeout=15, message=env.log_text)
    calls = len(env.witness("calls"))
    assert_eventually(lambda: len(env.witness("calls")) > calls, timeout=20, message=env.log_text)
    in_flight += in_flight_steps(env)
    control.flushall()
    wait_terminal(env, runs, deadline=60)
    done_s = time.monotonic() - flushed

    assert all_processes_alive(env), f"a process exited after FLUSHALL:\n{env.log_text()[-4000:]}"
    assert {env.run(r)["status"] for r in runs} == {"succeeded"}
    keys = [f"{r}/s{i}" for r in runs for i in range(3)]
    once = check_effectively_once(env, keys, injected=in_flight, per_key=2)
    check_applied_once(env, runs)
    check_event_logs(env, runs)
    check_nothing_stranded(env)
    check_dead_letters(env, [])
    time.sleep(2 * float(env.env["STEPPE_WORKER__HEARTBEAT_INTERVAL"]) + 1)
    assert workers_alive_and_registered(env), "a worker stopped heartbeating after FLUSHALL"
    assert "Traceback" not in env.log_text()
    assert not env.log_events("worker_loop_crashed")
    report(
        "8-redis7-flushall",
        redis=own_redis.binary.version,
        in_flight_at_flushes=in_flight,
        unblocked_errors=len([e for e in env.log_events() if "UNBLOCKED" in str(e.get("error", ""))]),
        all_done_s=done_s,
        duplicate_calls=once.duplicates,
    )


def answers_loading(server: RedisServer) -> bool:
    """Whether the Redis answers PING with `-LOADING`."""
    client = admin(server)
    try:
        client.ping()
    except redis.BusyLoadingError:
        return True
    except redis.RedisError:
        return False
    finally:
        client.close()
    return False


def test_8_restart_in_loading_state_is_waited_out(
    faults_own_redis: FaultEnv, own_redis: RedisServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A restart whose AOF takes seconds to load: every command meanwhile gets `-LOADING`."""
    if own_redis.binary.version_info < (7,):
        pytest.skip(
            "Redis 6.2 cannot answer clients while loading a small AOF (no loading-process-events-interval-bytes)"
        )
    env = faults_own_redis
    control = admin(own_redis)
    control.execute_command("DEBUG", "POPULATE", 5000, "filler", 10)
    control.bgrewriteaof()  # into the AOF's base file, which `key-load-delay` slows down
    assert_eventually(lambda: not control.info("persistence")["aof_rewrite_in_progress"], timeout=15)
    control.close()
    env.start(workers=2, concurrency=4)
    runs = [env.submit(ledger_chain("loading", 3, 0.5)) for _ in range(4)]
    assert_eventually(lambda: len(env.witness("calls")) >= 2, timeout=15)
    in_flight = in_flight_steps(env)

    loading_seen = threading.Event()
    done = threading.Event()

    def probe() -> None:
        while not done.is_set() and not loading_seen.is_set():
            if answers_loading(own_redis):
                loading_seen.set()
            time.sleep(0.02)

    watcher = threading.Thread(target=probe, daemon=True)
    watcher.start()
    # 1 ms per key while loading (about 5 s), answering clients (LOADING) after every KiB read.
    argv = own_redis._argv
    slow = ["--key-load-delay", "1000", "--loading-process-events-interval-bytes", "1024"]
    monkeypatch.setattr(own_redis, "_argv", lambda: [*argv(), *slow])
    own_redis.kill()
    restarted = time.monotonic()
    own_redis.restart(timeout=60)  # returns once it answers PONG, i.e. after loading
    loading_s = time.monotonic() - restarted
    done.set()
    watcher.join(timeout=5)
    wait_terminal(env, runs, deadline=60)
    done_s = time.monotonic() - restarted

    assert loading_seen.is_set(), "the restarted Redis never answered LOADING; the scenario did not happen"
    assert all_processes_alive(env), f"a process exited during LOADING:\n{env.log_text()[-4000:]}"
    assert {env.run(r)["status"] for r in runs} == {"succeeded"}
    keys = [f"{r}/s{i}" for r in runs for i in range(3)]
    once = check_effectively_once(env, keys, injected=in_flight, per_key=2)
    check_applied_once(env, runs)
    check_event_logs(env, runs)
    check_nothing_stranded(env)
    check_dead_letters(env, [])
    assert "Traceback" not in env.log_text()
    report(
        "8-redis7-loading",
        redis=own_redis.binary.version,
        loading_s=loading_s,
        all_done_s=done_s,
        duplicate_calls=once.duplicates,
    )


def error_count(control: redis.Redis, code: str) -> int:
    """How many `-<code>` error replies Redis sent so far (INFO errorstats, Redis >= 6.2)."""
    stats = control.info("errorstats")
    return int(stats.get(f"errorstat_{code}", {}).get("count", 0))


def test_8_demoted_to_replica_readonly_then_masterdown_is_waited_out(
    faults_own_redis: FaultEnv, own_redis: RedisServer
) -> None:
    """The Redis every process talks to becomes a replica (a failover that left them behind):
    writes, XREADGROUP included, get `-READONLY`; with stale reads off every command gets
    `-MASTERDOWN`. Then it is promoted back, its data intact."""
    env = faults_own_redis
    env.start(workers=2, concurrency=4)
    runs = [env.submit(ledger_chain("demoted", 3, 0.5)) for _ in range(6)]
    assert_eventually(lambda: len(env.witness("calls")) >= 4, timeout=15)
    with socket.socket() as s:  # a port nobody listens on: the "master" never answers
        s.bind(("127.0.0.1", 0))
        nowhere = s.getsockname()[1]
    control = admin(own_redis)
    readonly_before = error_count(control, "READONLY")
    in_flight = in_flight_steps(env)
    control.replicaof("127.0.0.1", nowhere)
    demoted = time.monotonic()
    # Every process keeps trying: the coordinator's and both workers' reads, heartbeats, results.
    assert_eventually(lambda: error_count(control, "READONLY") >= readonly_before + 10, timeout=15)
    control.config_set("replica-serve-stale-data", "no")
    assert_eventually(lambda: error_count(control, "MASTERDOWN") >= 10, timeout=15)
    control.config_set("replica-serve-stale-data", "yes")
    control.replicaof("NO", "ONE")
    wait_terminal(env, runs, deadline=60)
    done_s = time.monotonic() - demoted

    assert all_processes_alive(env), f"a process exited while Redis was a replica:\n{env.log_text()[-4000:]}"
    assert {env.run(r)["status"] for r in runs} == {"succeeded"}
    keys = [f"{r}/s{i}" for r in runs for i in range(3)]
    once = check_effectively_once(env, keys, injected=in_flight, per_key=2)
    check_applied_once(env, runs)
    check_event_logs(env, runs)
    check_nothing_stranded(env)
    check_dead_letters(env, [])
    assert "Traceback" not in env.log_text()
    assert not env.log_events("redis_data_loss_detected"), "a replica keeps its data: nothing was lost"
    report(
        "8-redis7-readonly-masterdown",
        redis=own_redis.binary.version,
        readonly_replies=error_count(control, "READONLY") - readonly_before,
        masterdown_replies=error_count(control, "MASTERDOWN"),
        all_done_s=done_s,
        duplicate_calls=once.duplicates,
    )
