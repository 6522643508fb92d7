"""What starting `steppe` loads: help and document commands never load the Redis, database or engine stacks."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

import orchestrator.spec

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"

# Runs the console script's `main()` with the given arguments, then records every loaded module.
CHILD = """
import json, sys
out = sys.argv[1]
sys.argv = ["steppe", *sys.argv[2:]]
from orchestrator.cli.main import main
code = 0
try:
    main()
except SystemExit as e:
    code = e.code or 0
with open(out, "w") as f:
    json.dump({"code": code, "modules": sorted(sys.modules)}, f)
"""

# Only the commands that talk to Redis or PostgreSQL, or serve, need these.
SERVER_SIDE = (
    "alembic",
    "fastapi",
    "httpx",
    "prometheus_client",
    "psycopg",
    "redis",
    "sqlalchemy",
    "uvicorn",
    "orchestrator.api",
    "orchestrator.bus",
    "orchestrator.coordinator",
    "orchestrator.dev",
    "orchestrator.engine",
    "orchestrator.messages",
    "orchestrator.metrics",
    "orchestrator.store",
    "orchestrator.submit",
    "workers",
)
# Printing help needs none of parsing, validation, planning, settings or logging either.
DOCUMENT_SIDE = (
    "networkx",
    "pydantic_settings",
    "structlog",
    "yaml",
    "orchestrator.planner",
    "orchestrator.settings",
    "orchestrator.spec",
)


def run_cli(tmp_path: Path, *argv: str) -> tuple[int, set[str]]:
    out = tmp_path / "loaded.json"
    proc = subprocess.run(
        [sys.executable, "-c", CHILD, str(out), *argv], capture_output=True, text=True, timeout=60, check=False
    )
    assert out.exists(), proc.stderr
    result = json.loads(out.read_text())
    return result["code"], set(result["modules"])


def among(modules: set[str], packages: tuple[str, ...]) -> list[str]:
    return sorted(m for m in modules if any(m == p or m.startswith(p + ".") for p in packages))


@pytest.mark.parametrize("argv", [["--help"], ["--version"]])
def test_help_and_version_load_only_the_cli(tmp_path: Path, argv: list[str]) -> None:
    code, modules = run_cli(tmp_path, *argv)
    assert code == 0
    assert among(modules, SERVER_SIDE + DOCUMENT_SIDE) == []


@pytest.mark.parametrize(
    "argv",
    [
        ["validate", str(EXAMPLES / "order_saga.yaml")],
        ["plan", str(EXAMPLES / "diamond.yaml")],
        ["bench", "--help"],
    ],
)
def test_document_commands_load_no_redis_database_or_engine(tmp_path: Path, argv: list[str]) -> None:
    code, modules = run_cli(tmp_path, *argv)
    assert code == 0
    assert among(modules, SERVER_SIDE) == []


def test_spec_models_load_without_validation_and_the_planner(tmp_path: Path) -> None:
    out = tmp_path / "loaded.json"
    code = f"import json, sys, orchestrator.spec.model; json.dump(sorted(sys.modules), open({str(out)!r}, 'w'))"
    subprocess.run([sys.executable, "-c", code], timeout=60, check=True)
    loaded = set(json.loads(out.read_text()))
    assert among(loaded, ("networkx", "orchestrator.planner", "orchestrator.spec.validate")) == []


def test_every_public_spec_name_resolves() -> None:
    # The package imports its names on first use (PEP 562): each one in __all__ must still be there.
    assert [name for name in orchestrator.spec.__all__ if not hasattr(orchestrator.spec, name)] == []
