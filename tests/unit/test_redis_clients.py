"""Redis Cluster URLs and slot grouping (pure: no server)."""

from __future__ import annotations

import pytest

from orchestrator.errors import ConfigError
from orchestrator.keys import Keys
from orchestrator.redis_clients import is_cluster_url, parse_cluster_url, slot_groups


def test_cluster_url_lists_every_seed_with_credentials_and_tls() -> None:
    target = parse_cluster_url("rediss+cluster://steppe:p%40ss@10.0.0.1:7000,10.0.0.2:7001,redis-c/0")
    assert target.seeds == [("10.0.0.1", 7000), ("10.0.0.2", 7001), ("redis-c", 6379)]
    assert target.options == {"username": "steppe", "password": "p@ss", "ssl": True}
    assert parse_cluster_url("redis+cluster://127.0.0.1:7000").options == {}


def test_only_cluster_schemes_select_the_cluster_client() -> None:
    assert is_cluster_url("redis+cluster://h:1")
    assert is_cluster_url("REDISS+CLUSTER://h:1")
    assert not is_cluster_url("redis://h:6379/0")
    assert not is_cluster_url("rediss://h:6379/0")


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("redis+cluster:///0", "names no Redis Cluster node"),
        ("redis+cluster://h:7000/3", "only database 0"),
        ("redis://h:7000", "not a Redis Cluster URL"),
    ],
)
def test_bad_cluster_urls_say_what_to_write(url: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        parse_cluster_url(url)


def test_a_queue_reads_in_one_slot_and_partitions_spread_over_slots() -> None:
    keys = Keys("steppe")
    queue = dict.fromkeys(keys.queue_streams("default"), ">")
    assert slot_groups(queue) == [queue]  # high, normal, low: one XREADGROUP
    partitions = {s: ">" for p in range(4) for s in (keys.control_stream(p), keys.results_stream(p))}
    groups = slot_groups(partitions)
    assert len(groups) == 4  # one read per partition, its control and results streams together
    assert all(len(g) == 2 for g in groups)
