"""STEPPE_DURABILITY (issue 21): strict by default, balanced on request, anything else refused at start-up."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from orchestrator.errors import ConfigError
from orchestrator.settings import Settings, parse_durability
from orchestrator.store.runs import session_options

REPO = Path(__file__).resolve().parents[2]
PG = "postgresql://steppe@127.0.0.1:1/steppe"


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("STEPPE_DURABILITY", raising=False)


def test_strict_is_the_default_and_adds_no_session_setting() -> None:
    assert Settings().durability == "strict"
    assert session_options(PG, "strict") is None  # the server's synchronous_commit applies


@pytest.mark.parametrize("value", ["balanced", "BALANCED", " Balanced "])
def test_balanced_comes_from_the_environment_in_any_case(monkeypatch: pytest.MonkeyPatch, value: str) -> None:
    monkeypatch.setenv("STEPPE_DURABILITY", value)
    assert Settings().durability == "balanced"


def test_balanced_keeps_the_urls_own_options() -> None:
    assert session_options(PG, "balanced") == "-c synchronous_commit=off"
    url = PG + "?options=-c%20statement_timeout%3D5000"
    assert session_options(url, "balanced") == "-c statement_timeout=5000 -c synchronous_commit=off"


@pytest.mark.parametrize("value", ["fast", "off", "", "strict,balanced", "relaxed"])
def test_a_bad_value_names_the_variable_the_value_and_the_choices(monkeypatch: pytest.MonkeyPatch, value: str) -> None:
    monkeypatch.setenv("STEPPE_DURABILITY", value)
    with pytest.raises(ConfigError) as refused:
        Settings()
    message = str(refused.value)
    assert "STEPPE_DURABILITY" in message
    assert repr(value) in message
    assert "strict, balanced" in message
    assert refused.value.exit_code == 2


def test_a_non_text_value_is_refused_too() -> None:
    with pytest.raises(ConfigError, match="STEPPE_DURABILITY is 3"):
        parse_durability(3)


@pytest.mark.parametrize("command", ["coordinator", "api"])
def test_the_cli_refuses_to_start_with_the_message_and_exit_2(command: str) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("STEPPE_")}
    env.update(
        {
            "STEPPE_DURABILITY": "fast",
            "STEPPE_REDIS_URL": "redis://127.0.0.1:1/0",
            "STEPPE_DATABASE_URL": "postgresql://nobody@127.0.0.1:1/none",
            "PYTHONPATH": str(REPO),
        }
    )
    done = subprocess.run(
        [sys.executable, "-m", "orchestrator.cli.main", command],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 2, done.stderr
    assert "STEPPE_DURABILITY is 'fast'; it must be one of strict, balanced" in done.stderr
    assert "Traceback" not in done.stderr
