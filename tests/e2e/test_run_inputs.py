"""`ctx.inputs` end to end: handlers read the run's inputs, stored once per run in Redis
(orchestrator/run_inputs.py) rather than copied into each step message, in a plain step and in
`for_each` items over 100 KiB of inputs; the key is gone once the run finished, a key Redis
lost mid-run is written back with the run's next steps, and a Redis restarted empty gets it back
with the steps the reconciler re-publishes."""

from __future__ import annotations

import pytest

from orchestrator.dev import RedisServer
from orchestrator.keys import Keys
from orchestrator.store.leases import partition_of
from tests.e2e.conftest import Env
from tests.e2e.test_execution import assert_projection_matches_log, finish
from tests.helpers import assert_eventually

pytestmark = [pytest.mark.e2e, pytest.mark.integration]

BLOB = "x" * (100 * 1024)
ITEMS = 300

READS = """
name: reads_inputs
inputs:
  order: {type: string, required: true}
  blob: {type: string, required: true}
  items: {type: array, required: true}
steps:
  - id: plain
    handler: test.inputs
    with: {seconds: 1}
  - id: each
    handler: test.inputs
    needs: [plain]
    for_each: "${{ inputs.items }}"
    with: {item: "${{ item }}"}
"""

TWO_STEPS = """
name: two_steps
inputs:
  order: {type: string, required: true}
  blob: {type: string, required: true}
steps:
  - id: first
    handler: test.inputs
    with: {seconds: 2}
  - id: second
    handler: test.inputs
    needs: [first]
"""


def inputs_key(e2e: Env, run_id: str) -> str:
    return Keys(e2e.settings.namespace).run_inputs(partition_of(run_id, e2e.settings.coordinator.partitions), run_id)


def test_handlers_read_ctx_inputs_in_a_plain_step_and_in_for_each_items(e2e: Env) -> None:
    e2e.start(workers=2, concurrency=16)
    run_id = e2e.submit(READS, inputs={"order": "o-42", "blob": BLOB, "items": list(range(ITEMS))})
    key = inputs_key(e2e, run_id)
    # While `plain` runs, Redis holds one copy of the inputs for the whole run.
    assert_eventually(lambda: e2e.redis.exists(key), timeout=60, message=e2e.log)
    assert e2e.redis.strlen(key) > 100 * 1024
    assert 0 < e2e.redis.ttl(key) <= 30 * 24 * 3600

    doc = finish(e2e, run_id, timeout=120)
    assert doc["status"] == "succeeded", e2e.log()
    seen = {"keys": ["blob", "items", "order"], "order": "o-42", "blob": 100 * 1024}
    assert doc["steps"]["plain"]["output"] == {"item": None, **seen}
    assert doc["steps"]["each"]["output"] == [{"item": i, **seen} for i in range(ITEMS)]
    # Deleted once the run finished (in the coordinator's next publish, so shortly after).
    assert_eventually(lambda: not e2e.redis.exists(key), timeout=30, message=e2e.log)
    assert_projection_matches_log(e2e, run_id)


def test_an_inputs_key_redis_lost_mid_run_is_written_back_with_the_next_step(e2e: Env) -> None:
    e2e.start(workers=1)
    run_id = e2e.submit(TWO_STEPS, inputs={"order": "o-7", "blob": BLOB})
    key = inputs_key(e2e, run_id)
    assert_eventually(
        lambda: e2e.run(run_id)["steps"].get("first", {}).get("status") == "running", timeout=60, message=e2e.log
    )
    assert e2e.redis.delete(key) == 1  # lost while the rest of Redis survived (a lagging replica took over)

    doc = finish(e2e, run_id, timeout=60)
    assert doc["status"] == "succeeded", e2e.log()
    assert doc["steps"]["second"]["output"] == {"item": None, "keys": ["blob", "order"], "order": "o-7", "blob": 102400}
    # Written back right after the step was published: a worker that read it first failed it
    # retryably (InputsUnavailableError) and the retry found the key.
    assert doc["steps"]["second"]["attempts"] in (1, 2)
    assert "run_inputs_restored" in e2e.log()
    assert_eventually(lambda: not e2e.redis.exists(key), timeout=30, message=e2e.log)


def test_a_redis_restarted_empty_gets_the_inputs_key_back_with_the_re_published_steps(
    e2e_own_redis: Env, own_redis: RedisServer
) -> None:
    e2e = e2e_own_redis
    e2e.start(workers=1)
    run_id = e2e.submit(TWO_STEPS.replace("seconds: 2", "seconds: 4"), inputs={"order": "o-9", "blob": BLOB})
    key = inputs_key(e2e, run_id)
    assert_eventually(
        lambda: e2e.run(run_id)["steps"].get("first", {}).get("status") == "running", timeout=60, message=e2e.log
    )
    own_redis.restart(empty=True)  # no AOF: the streams and the inputs key are gone
    # The reconciler sees the data loss and re-publishes `first`, its run's inputs key ahead of it.
    assert_eventually(lambda: e2e.redis.exists(key), timeout=30, message=e2e.log)
    assert "redis_data_loss_detected" in e2e.log()

    doc = finish(e2e, run_id, timeout=60)
    assert doc["status"] == "succeeded", e2e.log()
    assert doc["steps"]["second"]["output"] == {"item": None, "keys": ["blob", "order"], "order": "o-9", "blob": 102400}
    assert_eventually(lambda: not e2e.redis.exists(key), timeout=30, message=e2e.log)
