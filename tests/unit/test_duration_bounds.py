"""Durations are bounded (issue 14, case 1): no workflow setting can produce a due time PostgreSQL refuses."""

from __future__ import annotations

import datetime as dt
import math
import random
import textwrap
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from orchestrator.cli import spec_cmds
from orchestrator.durations import MAX_DURATION, DurationError, parse_duration
from orchestrator.errors import SpecValidationError
from orchestrator.spec import load_workflow
from patterns.retry import RetryPolicy, compute_backoff

HUGE_RETRY = textwrap.dedent(
    """\
    name: huge
    steps:
      - id: a
        handler: builtin.fail
        with: {times: 1}
        retry: {initial_delay: 99999999999d, max_delay: 99999999999d}
    """
)
MESSAGE = "99999999999d is longer than the maximum of 100 years (36500d): use a shorter delay"


def test_the_maximum_is_accepted_and_anything_longer_is_refused() -> None:
    assert parse_duration("36500d") == MAX_DURATION
    assert parse_duration(MAX_DURATION) == MAX_DURATION
    with pytest.raises(DurationError, match=r"36500d1s is longer than the maximum of 100 years \(36500d\)"):
        parse_duration("36500d1s")
    with pytest.raises(DurationError, match=r"longer than the maximum of 100 years"):
        parse_duration(MAX_DURATION + 0.001)
    with pytest.raises(DurationError, match=r"longer than the maximum of 100 years"):
        parse_duration(10**400)  # an int beyond float range: refused, not an OverflowError
    # What PostgreSQL's timestamptz and Python's datetime need: now + the maximum is a valid date.
    assert (dt.datetime.now(dt.UTC) + dt.timedelta(seconds=MAX_DURATION)).year < 9999


def test_a_huge_retry_delay_is_refused_at_its_position() -> None:
    with pytest.raises(SpecValidationError) as info:
        load_workflow(HUGE_RETRY, filename="wf.yaml")
    found = [(p.line, p.column, p.message) for p in info.value.problems]
    assert found == [
        (6, 28, f"step 'a', retry.initial_delay: {MESSAGE}"),
        (6, 53, f"step 'a', retry.max_delay: {MESSAGE}"),
    ]


@pytest.mark.parametrize(
    ("fragment", "where"),
    [
        (
            "    timeout: 40000d\n",
            "step 'a', timeout: 40000d is longer than the maximum of 100 years (36500d): use a shorter timeout",
        ),
        ("    estimate: 40000d\n", "step 'a', estimate: 40000d is longer"),
        ("    compensate: {handler: builtin.echo, timeout: 40000d}\n", "step 'a', compensate.timeout: 40000d"),
        ("    compensate: {handler: builtin.echo, retry: {max_delay: 40000d}}\n", "compensate.retry.max_delay"),
        ("defaults: {timeout: 40000d}\n", "defaults.timeout: 40000d is longer"),
        ("defaults: {retry: {initial_delay: 40000d, max_delay: 40000d}}\n", "defaults.retry.initial_delay"),
        ("breakers: {db: {reset_timeout: 40000d}}\n", "breakers.db.reset_timeout: 40000d is longer"),
    ],
)
def test_every_duration_field_is_bounded(fragment: str, where: str) -> None:
    doc = "name: wf\nsteps:\n  - id: a\n    handler: builtin.echo\n"
    with pytest.raises(SpecValidationError) as info:
        load_workflow(doc + fragment, filename="wf.yaml")
    messages = [p.message for p in info.value.problems]
    assert any(where in m for m in messages), messages


def test_steppe_validate_refuses_it_with_exit_2(tmp_path: Path) -> None:
    path = tmp_path / "huge.yaml"
    path.write_text(HUGE_RETRY)
    app = typer.Typer()
    spec_cmds.register(app)
    result = CliRunner().invoke(app, ["validate", str(path)])
    assert result.exit_code == 2, result.output
    assert f"huge.yaml:6:28: step 'a', retry.initial_delay: {MESSAGE}" in result.output


@pytest.mark.parametrize("backoff", ["exponential", "fixed", "linear"])
def test_backoff_is_clamped_even_for_a_policy_that_skipped_validation(backoff: str) -> None:
    # A RetryPolicy is a plain dataclass that never validates: the scheduler clamps on its own.
    for delay in (8.64e15, math.inf, math.nan, 1e308):
        policy = RetryPolicy(backoff=backoff, initial_delay=delay, max_delay=delay)  # type: ignore[arg-type]
        for failures in (1, 2, 40):
            seconds = compute_backoff(failures, policy, random.Random(1))
            assert 0 <= seconds <= MAX_DURATION, (delay, failures, seconds)
            dt.datetime.fromtimestamp(1.8e9 + seconds, dt.UTC)  # a storable due time
