"""Locust users that submit workflows through Steppe's HTTP API and time each run end to end.

Every task submits one workflow *shape* and polls the run until it is terminal. Besides the
HTTP calls themselves (`POST /v1/runs`, `GET /v1/runs/[id]`), locust's statistics get one
entry of type `RUN` per shape whose response time is submit → terminal state, and whose
failure count is the runs that did not succeed (or did not finish within the deadline).
The end of a run is its `finished_at` as recorded by the server, which shares this process's
clock (targets are loopback only), so the polling interval does not inflate the latency.

    noop        one builtin.noop step                        (YAML body)
    chain5      five noop steps in a line                    (YAML body)
    fanout20    twenty parallel noop steps and a join        (JSON body, workflow as a mapping)
    fail_retry  a step that fails once, then succeeds on its retry  (JSON body, workflow as text)

Environment: STEPPE_API_TOKEN (sent as a bearer token when set), LOADTEST_RUN_TIMEOUT (seconds
a run may take before it counts as failed, default 60), LOADTEST_POLL_MAX (longest pause between
polls, default 0.5 s; polling starts at 50 ms and backs off).
The target must be a loopback address: this file refuses any other host.
"""

from __future__ import annotations

import ipaddress
import os
import time
from datetime import datetime
from typing import Any
from urllib.parse import urlsplit

import orjson
from locust import HttpUser, between, events, stats, task
from locust.env import Environment

TERMINAL = frozenset({"succeeded", "failed", "cancelled", "compensated", "compensation_failed"})
RUN_TIMEOUT = float(os.environ.get("LOADTEST_RUN_TIMEOUT", "60"))
POLL_MIN, POLL_MAX = 0.05, float(os.environ.get("LOADTEST_POLL_MAX", "0.5"))

NOOP = """
name: lt-noop
steps:
  - id: only
    handler: builtin.noop
"""

CHAIN5 = "name: lt-chain5\nsteps:\n" + "".join(
    f"  - id: s{i}\n    handler: builtin.noop\n" + (f"    needs: [s{i - 1}]\n" if i else "") for i in range(5)
)

FANOUT20: dict[str, Any] = {
    "name": "lt-fanout20",
    "steps": [
        *({"id": f"branch{i:02d}", "handler": "builtin.noop"} for i in range(20)),
        {"id": "join", "handler": "builtin.echo", "needs": [f"branch{i:02d}" for i in range(20)], "with": {"n": 20}},
    ],
}

FAIL_RETRY = """
name: lt-fail-retry
steps:
  - id: flaky
    handler: builtin.fail
    with: {message: "failing once on purpose", times: 1}
    retry: {max_attempts: 3, initial_delay: 100ms, jitter: false}
"""

YAML_HEADERS = {"Content-Type": "application/yaml"}
JSON_HEADERS = {"Content-Type": "application/json"}


class RunDidNotSucceedError(Exception):
    """A run ended in a state other than `succeeded`, or not within LOADTEST_RUN_TIMEOUT."""


@events.init.add_listener  # type: ignore[untyped-decorator]  # locust's event hooks are untyped
def _loopback_only(environment: Environment, **_: Any) -> None:
    host = urlsplit(environment.host or "").hostname or ""
    try:
        loopback = host == "localhost" or ipaddress.ip_address(host).is_loopback
    except ValueError:
        loopback = False
    if not loopback:
        raise SystemExit(f"refusing to load-test {environment.host!r}: only loopback targets (127.0.0.1) are allowed")


@events.test_stop.add_listener  # type: ignore[untyped-decorator]  # see above
def _final_csv_snapshot(environment: Environment, **_: Any) -> None:
    # Locust's CSV writer snapshots the statistics every CSV_STATS_INTERVAL_SEC and makes no final
    # write at exit; one more turn puts the runs that ended during --stop-timeout into the CSV.
    if environment.parsed_options is not None and environment.parsed_options.csv_prefix:
        time.sleep(stats.CSV_STATS_INTERVAL_SEC * 1.5)


class WorkflowUser(HttpUser):
    """Submits a weighted mix of workflow shapes and follows each run to its end."""

    wait_time = between(0.05, 0.2)

    def on_start(self) -> None:
        token = os.environ.get("STEPPE_API_TOKEN")
        if token:
            self.client.headers["Authorization"] = f"Bearer {token}"

    @task(4)
    def noop(self) -> None:
        self.run_shape("noop", NOOP.encode(), YAML_HEADERS)

    @task(2)
    def chain5(self) -> None:
        self.run_shape("chain5", CHAIN5.encode(), YAML_HEADERS)

    @task(1)
    def fanout20(self) -> None:
        self.run_shape("fanout20", orjson.dumps({"workflow": FANOUT20}), JSON_HEADERS)

    @task(1)
    def fail_retry(self) -> None:
        self.run_shape("fail_retry", orjson.dumps({"workflow": FAIL_RETRY}), JSON_HEADERS)

    def run_shape(self, shape: str, body: bytes, headers: dict[str, str]) -> None:
        submitted_at = time.time()
        with self.client.post("/v1/runs", data=body, headers=headers, name="POST /v1/runs", catch_response=True) as r:
            if r.status_code != 201:
                r.failure(f"{r.status_code}: {r.text[:300]}")
                return
            run_id = r.json()["run_id"]
        doc = self.poll(run_id, deadline=submitted_at + RUN_TIMEOUT)
        status = str(doc.get("status", "timed out"))
        error = None if status == "succeeded" else RunDidNotSucceedError(f"run {run_id} ended as {status}")
        events.request.fire(  # type: ignore[no-untyped-call]  # see above
            request_type="RUN",
            name=shape,
            response_time=((finished_at(doc) or time.time()) - submitted_at) * 1000,
            response_length=0,
            exception=error,
            context={},
        )

    def poll(self, run_id: str, *, deadline: float) -> dict[str, Any]:
        """The run's status document once terminal; `{}` when it could not be followed to its end."""
        delay = POLL_MIN
        while time.time() < deadline:
            time.sleep(delay)  # cooperative: locust runs users as gevent greenlets (time is patched)
            delay = min(delay * 1.5, POLL_MAX)
            with self.client.get(f"/v1/runs/{run_id}", name="GET /v1/runs/[id]", catch_response=True) as r:
                if r.status_code != 200:
                    r.failure(f"{r.status_code}: {r.text[:300]}")
                    return {"status": "unreadable"}
                doc: dict[str, Any] = r.json()
            if doc["status"] in TERMINAL:
                return doc
        return {}


def finished_at(doc: dict[str, Any]) -> float | None:
    """When the run ended, by the server's clock (the same clock as ours: targets are loopback only).

    Using it instead of the time the poll noticed the end keeps the polling interval out of the latency."""
    value = doc.get("finished_at")
    return datetime.fromisoformat(value).timestamp() if isinstance(value, str) else None
