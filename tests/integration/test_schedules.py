"""Deployed workflow versions and the scheduler against the real PostgreSQL (and Redis for the wake-ups):
content-addressed versions, runs recording their version, one run per tick with two schedulers,
a tick retried after a crash, overlap and catch-up policies."""

from __future__ import annotations

import datetime as dt
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from orchestrator import deployed, schedule_ops
from orchestrator.errors import SubmitError
from orchestrator.scheduler import Scheduler
from orchestrator.settings import Settings
from orchestrator.store.queries import RunQueries
from orchestrator.store.runs import RunStore
from orchestrator.store.schedules import ScheduleStore
from orchestrator.store.workflows import WorkflowNotDeployedError, WorkflowStore, parse_ref
from orchestrator.submit import Submitter

pytestmark = pytest.mark.integration

DOC = """\
name: {name}
inputs:
  n: {{type: integer, default: 1}}
steps:
  - id: a
    handler: builtin.echo
    with: {{n: "${{{{ inputs.n }}}}", v: {v}}}
"""
T0 = dt.datetime(2030, 1, 1, tzinfo=dt.UTC)  # ticks of the tests' schedules, far from the wall clock


@pytest.fixture
def submitter(database_url: str, redis_url: str, namespace: str) -> Iterator[Submitter]:
    settings = Settings(redis_url=redis_url, database_url=database_url, namespace=namespace)
    store = RunStore(database_url, pool_size=4)
    store.open()
    with store.connection() as conn, conn.transaction():  # each test fires only its own schedules
        conn.execute("DELETE FROM schedules")
    client = redis.Redis.from_url(redis_url)
    yield Submitter(settings=settings, store=store, client=client)
    client.close()
    store.close()


def a_name() -> str:
    return f"wf-{uuid.uuid4().hex[:8]}"


def deploy(submitter: Submitter, name: str, v: int = 1) -> int:
    return deployed.deploy(submitter, DOC.format(name=name, v=v), filename="t.yaml", base_dir=None).version


def test_identical_content_is_the_same_version_and_new_content_the_next(submitter: Submitter) -> None:
    name = a_name()
    first = deployed.deploy(submitter, DOC.format(name=name, v=1), filename="t.yaml", base_dir=None)
    assert (first.version, first.created) == (1, True)
    # Same document with a comment and other spacing: the same canonical definition.
    again = deployed.deploy(submitter, "# nightly\n" + DOC.format(name=name, v=1), filename="t.yaml", base_dir=None)
    assert (again.version, again.created) == (1, False)
    assert deploy(submitter, name, v=2) == 2
    assert deploy(submitter, name, v=1) == 1
    store = WorkflowStore(submitter.store)
    assert store.get(name)["version"] == 2
    assert [r["version"] for r in store.versions(name)] == [1, 2]
    assert any(r["name"] == name and r["versions"] == 2 for r in store.list_latest())
    with pytest.raises(WorkflowNotDeployedError, match=r"has no version 7: its versions are 1\.\.2"):
        store.get(name, 7)
    with pytest.raises(WorkflowNotDeployedError, match="deploy it first"):
        store.get(a_name())


def test_parallel_deploys_of_one_name_get_distinct_versions(submitter: Submitter) -> None:
    name = a_name()
    versions: list[int] = []
    threads = [threading.Thread(target=lambda v=v: versions.append(deploy(submitter, name, v))) for v in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(versions) == [1, 2, 3, 4]


def test_parse_ref() -> None:
    assert parse_ref("nightly") == ("nightly", None)
    assert parse_ref("nightly@3") == ("nightly", 3)
    assert parse_ref("nightly@latest") == ("nightly", None)
    for bad in ("nightly@x", "nightly@0", "a b", "x@1@2"):
        with pytest.raises(SubmitError):
            parse_ref(bad)


def test_a_run_of_a_deployed_version_records_it_and_keeps_its_definition(submitter: Submitter) -> None:
    name = a_name()
    deploy(submitter, name, v=1)
    old = deployed.submit_ref(submitter, f"{name}@1", inputs={"n": 5}, check_handlers=False)
    deploy(submitter, name, v=2)
    new = deployed.submit_ref(submitter, name, check_handlers=False)
    assert (old.version, new.version) == (1, 2)
    queries = RunQueries(submitter.store)
    assert queries.get_run(old.run_id)["definition"]["steps"][0]["with"]["v"] == 1
    assert queries.get_run(new.run_id)["definition"]["steps"][0]["with"]["v"] == 2
    assert [r["run_id"] for r in queries.list_runs(workflow=f"{name}@1")] == [old.run_id]
    assert [r["run_id"] for r in queries.list_runs(workflow=f"{name}@2")] == [new.run_id]
    assert {r["run_id"] for r in queries.list_runs(workflow=name)} == {old.run_id, new.run_id}
    assert queries.list_runs(workflow=f"{name}@9") == []


def add_schedule(submitter: Submitter, name: str, *, start: dt.datetime = T0, **kwargs: object) -> str:
    schedule_id = f"s-{uuid.uuid4().hex[:8]}"
    request = schedule_ops.ScheduleRequest(schedule_id=schedule_id, workflow=name, **kwargs)  # type: ignore[arg-type]
    schedule_ops.add(submitter, request, now=start)
    return schedule_id


def scheduler_at(submitter: Submitter, clock: list[float]) -> Scheduler:
    return Scheduler(submitter=submitter, clock=lambda: clock[0])


def all_partitions(submitter: Submitter) -> list[int]:
    return list(range(submitter.settings.coordinator.partitions))


def runs_of(submitter: Submitter, schedule_id: str) -> list[dict[str, object]]:
    return ScheduleStore(submitter.store).recent_runs(schedule_id, limit=100)


def at(seconds: float) -> list[float]:
    return [(T0 + dt.timedelta(seconds=seconds)).timestamp()]


def test_two_schedulers_firing_the_same_tick_start_one_run(submitter: Submitter) -> None:
    name = a_name()
    deploy(submitter, name)
    schedule_id = add_schedule(submitter, name, every="10s", overlap="allow")
    clock = at(10.01)
    schedulers = [scheduler_at(submitter, clock), scheduler_at(submitter, clock)]
    barrier = threading.Barrier(2)
    started: list[int] = []

    def fire(s: Scheduler) -> None:
        barrier.wait()
        started.append(s.tick(all_partitions(submitter)))

    threads = [threading.Thread(target=fire, args=(s,)) for s in schedulers]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(started) == [0, 1]
    [run] = runs_of(submitter, schedule_id)
    assert run["idempotency_key"] == f"schedule:{schedule_id}:2030-01-01T00:00:10Z"
    row = ScheduleStore(submitter.store).get(schedule_id)
    assert row["next_tick_at"] == T0 + dt.timedelta(seconds=20)
    assert (row["fired_count"], row["last_run_id"]) == (1, run["run_id"])
    # Both again, later in the same tick: nothing more.
    assert [s.tick(all_partitions(submitter)) for s in schedulers] == [0, 0]


def test_a_tick_whose_row_was_not_advanced_is_fired_again_as_the_same_run(submitter: Submitter) -> None:
    name = a_name()
    deploy(submitter, name)
    schedule_id = add_schedule(submitter, name, every="10s", overlap="allow")
    scheduler_at(submitter, at(10.01)).tick(all_partitions(submitter))
    [first] = runs_of(submitter, schedule_id)
    # A coordinator that died after submitting but before its UPDATE committed: the row is as before.
    with submitter.store.connection() as conn, conn.transaction():
        conn.execute(
            "UPDATE schedules SET next_tick_at = %s, next_fire_at = %s, last_run_id = NULL WHERE schedule_id = %s",
            (T0 + dt.timedelta(seconds=10), T0 + dt.timedelta(seconds=10), schedule_id),
        )
    scheduler_at(submitter, at(10.5)).tick(all_partitions(submitter))
    assert [r["run_id"] for r in runs_of(submitter, schedule_id)] == [first["run_id"]]
    assert ScheduleStore(submitter.store).get(schedule_id)["last_run_id"] == first["run_id"]


def test_only_the_partitions_given_are_fired(submitter: Submitter) -> None:
    name = a_name()
    deploy(submitter, name)
    schedule_id = add_schedule(submitter, name, every="10s")
    mine = ScheduleStore(submitter.store).get(schedule_id)["partition"]
    others = [p for p in all_partitions(submitter) if p != mine]
    assert scheduler_at(submitter, at(10.01)).tick(others) == 0
    assert scheduler_at(submitter, at(10.02)).tick([mine]) == 1


def test_overlap_skip_waits_for_the_previous_run_and_allow_does_not(submitter: Submitter) -> None:
    name = a_name()
    deploy(submitter, name)
    skip = add_schedule(submitter, name, every="10s")
    allow = add_schedule(submitter, name, every="10s", overlap="allow")
    cancel = add_schedule(submitter, name, every="10s", overlap="cancel_previous")
    for second in (10.01, 20.01, 30.01):  # no coordinator runs them: the first run stays pending
        scheduler_at(submitter, at(second)).tick(all_partitions(submitter))
    assert len(runs_of(submitter, skip)) == 1
    assert len(runs_of(submitter, allow)) == 3
    cancelled = runs_of(submitter, cancel)
    assert len(cancelled) == 3
    store = ScheduleStore(submitter.store)
    assert (store.get(skip)["skipped_count"], store.get(allow)["skipped_count"]) == (2, 0)
    with submitter.store.connection() as conn:
        asked = conn.execute(
            "SELECT count(*) AS n FROM run_commands WHERE command = 'cancel' AND run_id = ANY(%s)",
            ([r["run_id"] for r in cancelled],),
        ).fetchone()
    assert asked is not None
    assert asked["n"] == 2  # each new tick asked its predecessor to cancel


@pytest.mark.parametrize(("catchup", "expected"), [("none", 0), ("latest", 1), ("all", 3)])
def test_ticks_missed_while_no_coordinator_ran_follow_catchup(
    submitter: Submitter, catchup: str, expected: int
) -> None:
    name = a_name()
    deploy(submitter, name)
    schedule_id = add_schedule(submitter, name, every="2s", overlap="allow", catchup=catchup)
    # Ticks at 2, 4, 6 s passed while nothing ran; a coordinator comes back at 7.5 s.
    assert scheduler_at(submitter, at(7.5)).tick(all_partitions(submitter)) == expected
    runs = runs_of(submitter, schedule_id)
    assert len(runs) == expected
    row = ScheduleStore(submitter.store).get(schedule_id)
    assert row["next_tick_at"] == T0 + dt.timedelta(seconds=8)
    assert row["skipped_count"] == 3 - expected


def test_a_failing_tick_records_its_error_and_the_schedule_keeps_ticking(submitter: Submitter) -> None:
    name = a_name()
    deploy(submitter, name)
    schedule_id = add_schedule(submitter, name, every="10s", inputs={"n": 1})
    with submitter.store.connection() as conn, conn.transaction():
        conn.execute('UPDATE schedules SET inputs = \'{"n": "nope"}\' WHERE schedule_id = %s', (schedule_id,))
    scheduler_at(submitter, at(10.01)).tick(all_partitions(submitter))
    row = ScheduleStore(submitter.store).get(schedule_id)
    assert "n" in row["last_error"]
    assert row["next_tick_at"] == T0 + dt.timedelta(seconds=20)


def test_add_refuses_what_cannot_run_and_pause_resume_trigger(submitter: Submitter, tmp_path: Path) -> None:
    name = a_name()
    with pytest.raises(WorkflowNotDeployedError):
        add_schedule(submitter, name, every="10s")
    deploy(submitter, name)
    with pytest.raises(SubmitError, match=r"--overlap is skip\|allow\|cancel_previous, not .queue."):
        add_schedule(submitter, name, every="10s", overlap="queue")
    with pytest.raises(SubmitError, match="unknown time zone"):
        add_schedule(submitter, name, cron="0 2 * * *", timezone="Nowhere/Land")
    with pytest.raises(SubmitError):
        add_schedule(submitter, name, every="10s", inputs={"n": "text"})
    schedule_id = add_schedule(submitter, name, cron="0 2 * * *", timezone="Europe/Berlin")
    with pytest.raises(SubmitError, match="exists already"):
        schedule_ops.add(
            submitter, schedule_ops.ScheduleRequest(schedule_id=schedule_id, workflow=name, every="5s"), now=T0
        )
    doc = schedule_ops.describe(ScheduleStore(submitter.store).get(schedule_id))
    assert doc["next_fire_at"] == "2030-01-01T02:00:00+01:00"
    assert doc["upcoming"][1] == "2030-01-02T02:00:00+01:00"
    assert schedule_ops.pause(submitter, schedule_id)["next_fire_at"] is None
    assert scheduler_at(submitter, at(86400 * 3)).tick(all_partitions(submitter)) == 0  # paused
    resumed = schedule_ops.resume(submitter, schedule_id, now=T0 + dt.timedelta(days=3))
    assert resumed["next_fire_at"] == "2030-01-04T02:00:00+01:00"  # the days paused are not caught up
    manual = schedule_ops.trigger(submitter, schedule_id, now=T0)
    assert manual.version == 1
    assert [r["run_id"] for r in runs_of(submitter, schedule_id)] == [manual.run_id]
    ScheduleStore(submitter.store).remove(schedule_id)
    with pytest.raises(SubmitError, match="no schedule"):
        ScheduleStore(submitter.store).get(schedule_id)
