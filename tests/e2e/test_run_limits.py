"""Memory bounded by design, end to end: a 10,000-item for_each over 100 KiB of inputs finishes with
small stream entries; a too-wide for_each is refused at submit; a self-multiplying child workflow
stops at the descendants limit with a message that names it."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from orchestrator.errors import SubmitError
from orchestrator.keys import Keys
from orchestrator.settings import LimitSettings, Settings
from orchestrator.spec import load_workflow
from tests.e2e.conftest import Env, process_env
from tests.e2e.test_execution import assert_projection_matches_log, finish
from tests.helpers import assert_eventually

pytestmark = [pytest.mark.e2e, pytest.mark.integration, pytest.mark.slow]

ITEMS = 10_000
BLOB = "x" * (100 * 1024)
ENTRY_LIMIT = 2048  # bytes of one stream entry; a copy of the inputs made each one > 100 KiB

FAN_OUT = """
name: fan
inputs:
  blob: {type: string, required: true}
  items: {type: array, required: true}
steps:
  - id: each
    handler: builtin.echo
    for_each: "${{ inputs.items }}"
    with: {n: "${{ item }}"}
  - id: size
    handler: builtin.echo
    needs: [each]
    with: {first: "${{ steps.each.output[0].n }}", last: "${{ steps.each.output[-1].n }}"}
"""


def _entry_sizes(e2e: Env, stream: str) -> list[int]:
    entries = e2e.redis.xrange(stream, count=200)
    return [sum(len(k) + len(v) for k, v in fields.items()) for _, fields in entries]


def test_a_10000_item_for_each_over_100_kib_of_inputs_finishes_with_small_stream_entries(e2e: Env) -> None:
    e2e.start(workers=2, concurrency=32)
    run_id = e2e.submit(FAN_OUT, inputs={"blob": BLOB, "items": list(range(ITEMS))})
    stream = Keys(e2e.settings.namespace).queue_stream("default", "normal")

    # While items are queued, look at what Redis holds for them.
    seen = assert_eventually(
        lambda: _entry_sizes(e2e, stream) if e2e.redis.xlen(stream) >= 100 else None,
        timeout=120,
        interval=0.01,
        message=lambda: f"no items queued; cluster log:\n{e2e.log()}",
    )
    assert len(seen) >= 100
    assert max(seen) < ENTRY_LIMIT, max(seen)

    doc = finish(e2e, run_id, timeout=280)
    assert doc["status"] == "succeeded", e2e.log()
    assert doc["outputs"]["size"] == {"first": 0, "last": ITEMS - 1}
    assert len(doc["steps"]["each"]["output"]) == ITEMS
    sizes = _entry_sizes(e2e, stream)
    assert not sizes or max(sizes) < ENTRY_LIMIT
    assert_projection_matches_log(e2e, run_id)


def test_a_for_each_wider_than_the_limit_is_refused_at_submit_with_the_setting_to_change(e2e: Env) -> None:
    with pytest.raises(SubmitError) as info:
        e2e.submit(FAN_OUT, inputs={"blob": "b", "items": list(range(ITEMS + 1))})
    assert str(info.value) == (
        "step 'each' `for_each` (from the inputs) has 10,001 items, over the limit of 10,000 items per for_each "
        "(STEPPE_LIMITS__FOR_EACH_ITEMS); split the list over several runs or steps, or raise the limit"
    )
    with e2e.store.connection() as conn:
        assert conn.execute("SELECT count(*) AS n FROM workflow_runs").fetchone()["n"] == 0  # nothing written


# Three branches of three leaves: 12 child runs, unless the descendants limit stops it. The
# branches are conditional, so submit cannot be sure they start: the limit is met at dispatch.
TREE = """
name: tree
inputs: {grow: {type: boolean, required: true}}
steps:
  - {id: a, workflow: branch, when: "${{ inputs.grow }}"}
  - {id: b, workflow: branch, when: "${{ inputs.grow }}"}
  - {id: c, workflow: branch, when: "${{ inputs.grow }}"}
workflows:
  branch:
    name: branch
    steps:
      - {id: x, workflow: leaf}
      - {id: y, workflow: leaf}
      - {id: z, workflow: leaf}
  leaf:
    name: leaf
    steps:
      - {id: noop, handler: builtin.noop}
"""
DESCENDANTS = 5


@pytest.fixture
def limited(redis_url: str, db_url: str, namespace: str, tmp_path: Path) -> Iterator[Env]:
    limits = LimitSettings(descendants_per_run=DESCENDANTS)
    settings = Settings(redis_url=redis_url, database_url=db_url, namespace=namespace, home=tmp_path, limits=limits)
    env = process_env(redis_url, db_url, namespace, tmp_path, STEPPE_LIMITS__DESCENDANTS_PER_RUN=str(DESCENDANTS))
    handle = Env(settings=settings, env=env, home=tmp_path)
    yield handle
    handle.close()


def _descendants(e2e: Env, root: str) -> list[str]:
    with e2e.store.connection() as conn:
        rows = conn.execute("SELECT run_id FROM workflow_runs WHERE run_id LIKE %s", (root + ".%",)).fetchall()
    return sorted(r["run_id"] for r in rows)


def test_a_multiplying_child_workflow_stops_at_the_descendants_limit(limited: Env) -> None:
    limited.start(workers=1)
    run_id = limited.submitter.submit(load_workflow(TREE), inputs={"grow": True}, check_handlers=False).run_id

    doc = finish(limited, run_id, timeout=120)
    assert doc["status"] == "failed", limited.log()
    children = _descendants(limited, run_id)
    assert len(children) == DESCENDANTS  # 12 without the limit
    records = [r for run in [doc, *(finish(limited, c, timeout=60) for c in children)] for r in run["steps"].values()]
    refused = [r for r in records if (r.get("error") or {}).get("type") == "RunLimitError"]
    assert refused, doc
    message = refused[0]["error"]["message"]
    assert f"over the limit of {DESCENDANTS:,} (STEPPE_LIMITS__DESCENDANTS_PER_RUN)" in message
    assert f"under run {run_id}" in message
    assert not refused[0]["error"]["retryable"]
    assert_projection_matches_log(limited, run_id)


def test_a_child_workflow_tree_certain_to_outgrow_the_limit_is_refused_at_submit(limited: Env) -> None:
    certain = TREE.replace(', when: "${{ inputs.grow }}"', "")
    with pytest.raises(SubmitError) as info:
        limited.submitter.submit(load_workflow(certain), inputs={"grow": True}, check_handlers=False)
    assert str(info.value).startswith("the run would start at least 8 child runs")  # counting stops past the limit
    assert f"over the limit of {DESCENDANTS} (STEPPE_LIMITS__DESCENDANTS_PER_RUN)" in str(info.value)
