"""Every shipped dashboard query and alert expression returns series from a live cluster.

Runs deploy/check_dashboards.py (a real Prometheus scraping a coordinator and two workers that
run a workload of builtin steps, with the least-privilege Redis ACL users and PostgreSQL roles of
deploy/) against the session's PostgreSQL. `make prometheus` installs the binary it needs.
"""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest

from orchestrator.dev import PostgresServer

CHECK = Path(__file__).resolve().parents[2] / "deploy" / "check_dashboards.py"

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def check_module() -> ModuleType:
    spec = importlib.util.spec_from_file_location("deploy_check_dashboards", CHECK)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def test_dashboards_and_alerts_return_series_from_a_live_cluster(postgres_server: PostgresServer) -> None:
    check = check_module()
    if check.find_prometheus() is None:
        pytest.skip(f"no prometheus binary: {check.INSTALL_HINT}")
    done = subprocess.run(
        [
            sys.executable,
            str(CHECK),
            "--pg-admin-url",
            postgres_server.url_for("postgres"),
            "--pg-credentials",  # the roles are the cluster's: their passwords stay as they are
            str(postgres_server.data_dir.parent / "postgres.credentials.json"),
        ],
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )
    assert done.returncode == 0, f"exit {done.returncode}\n{done.stdout[-4000:]}\n{done.stderr[-8000:]}"
    assert "OK:" in done.stdout
