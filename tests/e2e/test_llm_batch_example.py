"""examples/llm_batch.yaml as shipped: 200 summaries through `concurrency: {key: openai, limit: 8}` and
`rate_limit: {key: openai, limit: 120, per: 1m}`, one batch per customer at a time (about 61 s)."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from orchestrator.spec import load_workflow_file
from tests.e2e.conftest import Env
from tests.helpers import assert_eventually

pytestmark = pytest.mark.e2e

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "llm_batch.yaml"


def test_the_llm_batch_example_respects_both_limits(e2e: Env) -> None:
    e2e.cluster.start_coordinator()
    for _ in range(2):
        e2e.cluster.start_worker(queues=["default"], imports=["examples.llm_handlers"], concurrency=16)
    e2e.cluster.wait_for_workers(e2e.redis, 2)
    spec = load_workflow_file(EXAMPLE)
    began = time.monotonic()
    first = e2e.submitter.submit(spec, inputs={"customer_id": "acme"}).run_id
    second = e2e.submitter.submit(spec, inputs={"customer_id": "acme", "documents": 3}).run_id  # queued
    assert_eventually(lambda: e2e.run(first)["status"] == "succeeded", timeout=150, interval=0.5)
    first_s = time.monotonic() - began
    assert_eventually(lambda: e2e.run(second)["status"] == "succeeded", timeout=30, interval=0.2)
    with e2e.store.connection() as conn:
        rows = conn.execute(
            "SELECT run_id, step_key, type, extract(epoch FROM created_at) AS t FROM workflow_events"
            " WHERE run_id = ANY(%s) AND step_key LIKE 'summarise[%%' ORDER BY t",
            ([first, second],),
        ).fetchall()
        runs = {
            r["run_id"]: r
            for r in conn.execute(
                "SELECT run_id, extract(epoch FROM created_at) AS c, extract(epoch FROM finished_at) AS f"
                " FROM workflow_runs WHERE run_id = ANY(%s)",
                ([first, second],),
            ).fetchall()
        }
    starts = [float(r["t"]) for r in rows if r["type"] == "step.dispatched"]
    assert len(starts) == 203
    assert max(sum(1 for t in starts if s <= t < s + 60) for s in starts) <= 120
    live = 0
    peak = 0
    for r in rows:
        live += 1 if r["type"] == "step.dispatched" else -1 if r["type"] == "step.succeeded" else 0
        peak = max(peak, live)
    assert peak <= 8
    assert float(runs[second]["f"]) > float(runs[first]["f"])  # one batch per customer: it waited
    print(f"llm_batch: 200 summaries in {first_s:.1f} s (rate 120/1m binds: ~60 s), peak in flight {peak}")
