"""Timing settings are checked against each other when a worker or coordinator starts."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from orchestrator.coordinator import Coordinator
from orchestrator.errors import ConfigError
from orchestrator.settings import Settings, check_timing, timing_problems
from tests.e2e.conftest import FAST_ENV
from workers.consumer import Worker
from workers.registry import HandlerRegistry

REPO = Path(__file__).resolve().parents[2]


def settings(**sections: dict[str, Any]) -> Settings:
    return Settings(redis_url="redis://127.0.0.1:1/0", database_url="postgresql://x@127.0.0.1:1/x", **sections)


def fast_env_settings() -> Settings:
    """FAST_ENV (what the e2e and fault tests run with) as Settings."""
    nested: dict[str, dict[str, str]] = {}
    for name, value in FAST_ENV.items():
        section, key = name.removeprefix("STEPPE_").lower().split("__")
        nested.setdefault(section, {})[key] = value
    return settings(**nested)


@pytest.mark.parametrize("role", ["worker", "coordinator"])
def test_defaults_and_the_test_suites_settings_fit_together(role: str) -> None:
    assert timing_problems(settings(), role) == []
    assert timing_problems(fast_env_settings(), role) == []
    check_timing(settings(), role)


def test_a_visibility_timeout_under_three_heartbeats_is_refused_with_what_to_set() -> None:
    bad = settings(worker={"visibility_timeout": 1, "heartbeat_interval": 5})
    with pytest.raises(ConfigError) as refused:
        check_timing(bad, "worker")
    message = str(refused.value)
    assert message.startswith("the worker cannot start with these timing settings: ")
    assert (
        "STEPPE_WORKER__VISIBILITY_TIMEOUT (1 s) is shorter than 3 x STEPPE_WORKER__HEARTBEAT_INTERVAL (5 s)" in message
    )
    assert "a dead worker's steps would never be reclaimed" in message
    assert (
        "STEPPE_WORKER__VISIBILITY_TIMEOUT to at least 15 or STEPPE_WORKER__HEARTBEAT_INTERVAL to at most 0.333333"
        in message
    )
    assert refused.value.exit_code == 2
    assert timing_problems(bad, "coordinator") == []  # not a coordinator setting


@pytest.mark.parametrize(
    ("visibility", "heartbeat", "ok"),
    [(15, 5, True), (14.9, 5, False), (1.5, 0.5, True), (1, 0.5, False), (30, 5, True)],
)
def test_the_visibility_timeout_must_cover_three_heartbeats(visibility: float, heartbeat: float, ok: bool) -> None:
    problems = timing_problems(
        settings(worker={"visibility_timeout": visibility, "heartbeat_interval": heartbeat}), "worker"
    )
    assert (problems == []) is ok, problems


@pytest.mark.parametrize(
    ("section", "values", "role", "expected"),
    [
        (
            "worker",
            {"heartbeat_interval": 0},
            "worker",
            "STEPPE_WORKER__HEARTBEAT_INTERVAL is 0; it must be a positive",
        ),
        (
            "worker",
            {"visibility_timeout": -1},
            "worker",
            "STEPPE_WORKER__VISIBILITY_TIMEOUT is -1; it must be a positive",
        ),
        ("coordinator", {"lease_ttl": 0}, "coordinator", "STEPPE_COORDINATOR__LEASE_TTL is 0; it must be a positive"),
        ("coordinator", {"reconcile_interval": 0}, "coordinator", "STEPPE_COORDINATOR__RECONCILE_INTERVAL is 0;"),
        ("redis", {"block_ms": 0}, "worker", "STEPPE_REDIS__BLOCK_MS is 0; it must be at least 1 (milliseconds)"),
    ],
)
def test_non_positive_durations_are_refused(section: str, values: dict[str, Any], role: str, expected: str) -> None:
    [problem] = timing_problems(settings(**{section: values}), role)
    assert problem.startswith(expected), problem


def test_a_read_blocking_past_the_lease_renewal_interval_is_refused() -> None:
    bad = settings(coordinator={"lease_ttl": 2}, redis={"block_ms": 1000})
    [problem] = timing_problems(bad, "coordinator")
    assert problem == (
        "STEPPE_REDIS__BLOCK_MS (1000 ms) is longer than the coordinator's lease renewal interval, "
        "STEPPE_COORDINATOR__LEASE_TTL / 3 (0.666667 s): a coordinator blocked in a read would let its "
        "partition leases expire and lose them to its peers. Set STEPPE_COORDINATOR__LEASE_TTL to at "
        "least 3 or STEPPE_REDIS__BLOCK_MS to at most 666"
    )
    assert timing_problems(bad, "worker") == []
    assert timing_problems(settings(coordinator={"lease_ttl": 3}, redis={"block_ms": 1000}), "coordinator") == []


def test_every_problem_is_reported_at_once() -> None:
    bad = settings(worker={"visibility_timeout": 0, "heartbeat_interval": 0}, redis={"block_ms": 0})
    assert len(timing_problems(bad, "worker")) == 3


def test_worker_and_coordinator_refuse_before_touching_redis_or_postgres() -> None:
    with pytest.raises(ConfigError, match="VISIBILITY_TIMEOUT"):
        Worker(settings=settings(worker={"visibility_timeout": 2}), registry=HandlerRegistry(), queues=["default"])
    with pytest.raises(ConfigError, match="LEASE_TTL"):
        Coordinator(settings=settings(coordinator={"lease_ttl": 1}), client=None, store=None)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("command", "variable", "value"),
    [("worker", "STEPPE_WORKER__VISIBILITY_TIMEOUT", "1"), ("coordinator", "STEPPE_COORDINATOR__LEASE_TTL", "0.5")],
)
def test_the_cli_says_what_to_set_and_exits_2_without_a_traceback(command: str, variable: str, value: str) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("STEPPE_")}
    env.update({variable: value, "STEPPE_REDIS_URL": "redis://127.0.0.1:1/0", "PYTHONPATH": str(REPO)})
    env["STEPPE_DATABASE_URL"] = "postgresql://nobody@127.0.0.1:1/none"
    done = subprocess.run(
        [sys.executable, "-m", "orchestrator.cli.main", command],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 2, done.stderr
    assert f"the {command} cannot start with these timing settings" in done.stderr
    assert variable in done.stderr
    assert "Traceback" not in done.stderr
