"""Which worker-registry entries a worker evicts: each judged by its own advertised heartbeat interval."""

from __future__ import annotations

import orjson
import pytest

from workers.registry import entry_ttl, stale_workers

NOW = 1_000_000.0


def entry(beat_ago: float, interval: float | None) -> bytes:
    info: dict[str, object] = {"id": "w", "handlers": ["h"], "heartbeat": NOW - beat_ago}
    if interval is not None:
        info["heartbeat_interval"] = interval
    return orjson.dumps(info)


def test_entry_ttl_is_three_of_its_own_heartbeats_and_never_under_two_seconds() -> None:
    assert entry_ttl(5.0) == 15.0
    assert entry_ttl(0.5) == 2.0
    assert entry_ttl(0.1) == 2.0


@pytest.mark.parametrize(
    ("beat_ago", "interval", "stale"),
    [
        (14.0, 5.0, False),  # a slow-beating worker between beats: alive, whatever the evicting worker's interval
        (16.0, 5.0, True),  # missed 3 of its own beats
        (1.9, 0.5, False),
        (2.5, 0.5, True),  # 3 x 0.5 < 2 s: the floor
        (59.0, 20.0, False),
        (61.0, 20.0, True),
    ],
)
def test_each_entry_is_judged_by_its_advertised_interval(beat_ago: float, interval: float, stale: bool) -> None:
    assert stale_workers(NOW, {"w": entry(beat_ago, interval)}) == (["w"] if stale else [])


def test_expired_entries_go_and_old_entries_without_an_interval_live_as_long_as_their_key() -> None:
    entries = {
        "expired": None,  # its key's TTL (3 of its beats) ran out
        "old-format": entry(600.0, None),  # an older worker: its key still exists, so it is alive
        "garbage": b"not json",
        "wrong-type": orjson.dumps({"heartbeat": "x", "heartbeat_interval": 1}),
        "mixed-fast": entry(3.0, 0.5),
        "mixed-slow": entry(10.0, 5.0),
    }
    assert stale_workers(NOW, entries) == ["expired", "mixed-fast"]
