"""STEPPE_RETENTION__…: durations as users write them, 0 turning retention off, refusals that say why."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from orchestrator.retention import Pruner
from orchestrator.settings import RetentionSettings, Settings


def test_the_default_keeps_finished_runs_thirty_days() -> None:
    cfg = Settings().retention
    assert (cfg.finished_runs, cfg.batch_runs, cfg.interval) == (30 * 86400, 500, 60)


def test_durations_come_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("STEPPE_RETENTION__FINISHED_RUNS", "7d")
    monkeypatch.setenv("STEPPE_RETENTION__INTERVAL", "1m30s")
    monkeypatch.setenv("STEPPE_RETENTION__BATCH_RUNS", "250")
    cfg = Settings().retention
    assert (cfg.finished_runs, cfg.interval, cfg.batch_runs) == (7 * 86400, 90, 250)


def test_zero_keeps_everything() -> None:
    pruner = Pruner(store=None, settings=RetentionSettings(finished_runs="0"))  # type: ignore[arg-type]
    assert not pruner.enabled
    pruner.tick(1e12)  # never touches the (absent) store
    assert pruner.last is None


@pytest.mark.parametrize(
    ("field", "value", "words"),
    [
        ("finished_runs", "thirty days", "invalid duration"),
        ("finished_runs", "-1d", "invalid duration"),
        ("interval", "0", "greater than 0"),
        ("batch_runs", 0, "greater than or equal to 1"),
        ("batch_runs", 20_000, "less than or equal to 10000"),
    ],
)
def test_bad_values_are_refused_in_place(field: str, value: object, words: str) -> None:
    with pytest.raises(ValidationError, match=words):
        RetentionSettings(**{field: value})
