"""The report logic of `steppe bench all | floor`: peers' medians, ratios against goals, CPU per step."""

from __future__ import annotations

from typing import Any

import pytest

from orchestrator.cli.bench_report import GOALS, best, cpu_ms_per_step, durable_medians, peer_medians, ratio_rows


def _runs(*seconds: float, ok: bool = True) -> list[dict[str, Any]]:
    return [{"seconds": s, "ok": ok} for s in seconds]


def _shape(size: int, *seconds: float) -> dict[str, Any]:
    median = sorted(seconds)[len(seconds) // 2]
    return {"size": size, "seconds": list(seconds), "median_s": median, "per_second": size / median}


STEPPE = {
    "throughput_wide": _shape(20000, 4.0, 5.0, 6.0),  # 4,000/s
    "throughput_runs": _shape(20000, 10.0),  # 2,000/s
    "chain": _shape(200, 0.6),  # 3 ms/hop
    "fanout": _shape(1000, 0.25),
}


def test_peer_medians_take_the_median_of_successful_runs_and_per_hop_figures() -> None:
    data = {
        "peer": "celery",
        "variant": "solo",
        "params": {"n": 20000, "chain": 200, "fanout": 1000},
        "runs": {
            "throughput": [*_runs(8.0, 10.0, 12.0), *_runs(1.0, ok=False)],
            "chain": _runs(0.8, 1.0, 0.9),
            "fanout": [],
        },
    }
    m = peer_medians(data)
    assert m["throughput"] == pytest.approx(2000.0)
    assert m["chain"] == pytest.approx(0.9)
    assert m["chain_ms_per_hop"] == pytest.approx(4.5)
    assert m["fanout"] is None


def test_durable_medians_keep_the_best_form_of_each_shape() -> None:
    data = {
        "peer": "dbos",
        "variant": "tuned",
        "params": {"n": 20000, "chain": 200, "chain_queued": 50, "fanout": 1000},
        "postgresql": {"fsync": "on", "synchronous_commit": "on", "shared_buffers": "128MB"},
        "runs": {
            "throughput": _runs(100.0),  # 200/s
            "throughput_batch": _runs(50.0),  # 400/s: the better form
            "chain": _runs(1.0),  # 5 ms/hop
            "chain_queued": _runs(2.0),  # 40 ms/hop over 50 hops
            "fanout": _runs(15.0),
        },
    }
    m = durable_medians(data)
    assert (m["throughput"], m["throughput_form"]) == (pytest.approx(400.0), "throughput_batch")
    assert (m["chain_ms_per_hop"], m["chain_form"]) == (pytest.approx(5.0), "chain")
    assert m["fanout"] == pytest.approx(15.0)
    assert m["fanout_size"] == 1000
    assert m["durability"] == "fsync=on synchronous_commit=on"


def test_best_skips_missing_figures_and_fanouts_of_another_size() -> None:
    peers: dict[str, dict[str, Any]] = {
        "a": {"throughput": 100.0, "fanout": 0.5, "fanout_size": 100},
        "b": {"throughput": None, "fanout": 2.0, "fanout_size": 1000},
        "c": {"throughput": 300.0, "fanout": 3.0, "fanout_size": 1000},
    }
    assert best(peers, "throughput", higher=True) == ("c", 300.0)
    assert best(peers, "fanout", higher=False, size=1000) == ("b", 2.0)
    assert best({}, "throughput", higher=True) is None


def test_ratio_rows_compare_each_shape_with_the_best_of_each_kind_and_judge_the_goals() -> None:
    redis_peers = {
        "dramatiq/t8": {"throughput": 2500.0, "chain_ms_per_hop": 4.0, "fanout": 1.5, "fanout_size": 1000},
        "celery/solo": {"throughput": 900.0, "chain_ms_per_hop": 4.25, "fanout": 3.0, "fanout_size": 1000},
    }
    durable = {"procrastinate/c1": {"throughput": 400.0, "chain_ms_per_hop": 5.0, "fanout": 2.5, "fanout_size": 1000}}
    floor = {"throughput_runs": _shape(20000, 5.0), "chain": _shape(200, 0.5)}  # 4,000/s, 2.5 ms/hop
    rows = {
        (r.shape, r.against): r for r in ratio_rows(STEPPE, redis_peers=redis_peers, durable_peers=durable, floor=floor)
    }

    assert set(rows) == {
        ("throughput_wide", "redis"),
        ("throughput_wide", "durable"),
        ("throughput_runs", "redis"),
        ("throughput_runs", "durable"),
        ("throughput_runs", "floor"),
        ("chain", "redis"),
        ("chain", "durable"),
        ("chain", "floor"),
        ("fanout", "redis"),
        ("fanout", "durable"),
    }
    runs_redis = rows["throughput_runs", "redis"]
    assert (runs_redis.other_name, runs_redis.goal, runs_redis.met) == (
        "dramatiq/t8",
        GOALS["throughput_runs", "redis"][0],
        False,
    )
    assert runs_redis.ratio == pytest.approx(0.8)
    assert rows["throughput_runs", "durable"].ratio == pytest.approx(5.0)
    assert rows["throughput_runs", "durable"].met is False  # the goal is at least 10 times
    assert rows["throughput_wide", "redis"].ratio == pytest.approx(1.6)
    assert rows["throughput_wide", "durable"].goal is None
    assert rows["throughput_wide", "durable"].met is None
    chain = rows["chain", "redis"]
    assert (chain.unit, chain.steppe, chain.other) == ("ms/hop", 3.0, 4.0)
    assert chain.ratio == pytest.approx(0.75)
    assert chain.met is False  # the goal is at most 0.6 times
    assert rows["fanout", "redis"].ratio == pytest.approx(0.25 / 1.5)
    assert rows["fanout", "durable"].met is True  # 0.1 times, within 0.15
    assert rows["throughput_runs", "floor"].ratio == pytest.approx(0.5)
    assert rows["throughput_runs", "floor"].met
    assert rows["chain", "floor"].ratio == pytest.approx(1.2)
    assert rows["chain", "floor"].met


def test_ratio_rows_without_peers_or_floor_are_empty_and_skip_unmeasured_shapes() -> None:
    assert ratio_rows(STEPPE) == []
    only_chain = {"chain": _shape(200, 0.6)}
    rows = ratio_rows(only_chain, floor={"chain": _shape(200, 0.3), "throughput_runs": _shape(10, 1.0)})
    assert [(r.shape, r.against) for r in rows] == [("chain", "floor")]
    assert rows[0].ratio == pytest.approx(2.0)
    assert rows[0].met is False  # the goal is at most 1.5 times
    assert rows[0].to_json()["other_name"] == "floor"


def test_cpu_ms_per_step_by_role_with_a_total() -> None:
    before = {"coordinators": 1.0, "workers": 2.0, "postgresql": 0.0}
    after = {"coordinators": 3.0, "workers": 3.0, "postgresql": 4.0}
    assert cpu_ms_per_step(before, after, 2000) == {
        "coordinators": 1.0,
        "workers": 0.5,
        "postgresql": 2.0,
        "total": 3.5,
    }
    assert cpu_ms_per_step(before, after, 0) == {}
