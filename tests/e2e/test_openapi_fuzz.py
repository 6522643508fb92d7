"""Schemathesis against a real `steppe api` in front of real Redis and PostgreSQL: whatever it sends,
the answer is never a 5xx, and its status, content type, headers and body are the ones /openapi.json
documents. Bounded: a few examples per operation, each request with a deadline."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis.checks import not_a_server_error
from schemathesis.generation.modes import GenerationMode
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from tests.e2e.conftest import process_env
from tests.e2e.test_api import HELLO, TOKEN, ApiServer

pytestmark = [pytest.mark.e2e, pytest.mark.integration, pytest.mark.slow]

CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
]
MAX_EXAMPLES = 50  # per operation and generation mode
REQUEST_TIMEOUT = 20.0  # seconds; `?wait=` is capped below it by STEPPE_API_MAX_WAIT


@pytest.fixture(scope="module")
def fuzzed_server(redis_url: str, database_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ApiServer]:
    home = tmp_path_factory.mktemp("api-fuzz")
    env = process_env(redis_url, database_url, "openapi-fuzz", Path(home))
    server = ApiServer(env, home, STEPPE_API_MAX_WAIT="2", STEPPE_API_READY_TIMEOUT="2")
    yield server
    server.stop()


@pytest.fixture(scope="module")
def api_schema(fuzzed_server: ApiServer) -> schemathesis.BaseSchema:
    return schemathesis.openapi.from_url(f"{fuzzed_server.url}/openapi.json")


def fuzz(operation: schemathesis.APIOperation, mode: GenerationMode) -> None:
    """MAX_EXAMPLES requests to one operation; raises on the first answer that fails a check."""

    @given(case=operation.as_strategy(generation_mode=mode))
    @settings(
        max_examples=MAX_EXAMPLES,
        deadline=timedelta(seconds=REQUEST_TIMEOUT),
        suppress_health_check=list(HealthCheck),
        derandomize=True,  # the same examples on every run: a failure is reproducible
        phases=[Phase.explicit, Phase.generate],  # no shrinking: the time stays bounded
        database=None,
    )
    def run(case: schemathesis.Case) -> None:
        case.call_and_validate(headers={"Authorization": f"Bearer {TOKEN}"}, checks=CHECKS, timeout=REQUEST_TIMEOUT)

    run()


@pytest.mark.parametrize("mode", [GenerationMode.POSITIVE, GenerationMode.NEGATIVE])
def test_no_5xx_and_every_response_is_documented(
    api_schema: schemathesis.BaseSchema, fuzzed_server: ApiServer, mode: GenerationMode
) -> None:
    # One operation after another (schemathesis' own pytest loader does not run on pytest 9).
    failures = {}
    operations = [result.ok() for result in api_schema.get_all_operations()]
    assert len(operations) >= 7, [op.label for op in operations]
    for operation in operations:
        try:
            fuzz(operation, mode)
        except Unsatisfiable:
            assert mode is GenerationMode.NEGATIVE, operation.label  # nothing to negate (no parameters)
        except Exception as e:  # every operation is tried; all failures are reported together
            failures[operation.label] = f"{type(e).__name__}: {e}"[:3000]
    assert not failures, "\n\n".join(f"{label}:\n{text}" for label, text in failures.items()) + fuzzed_server.log()


def test_the_documents_of_a_real_run_are_as_documented(api_schema: schemathesis.BaseSchema) -> None:
    """Random input rarely makes a valid run: submit one and check every document that shows it."""
    auth = {"Authorization": f"Bearer {TOKEN}"}
    submit = api_schema["/v1/runs"]["POST"].Case(
        body={"workflow": HELLO, "inputs": {"who": "fuzz"}},
        media_type="application/json",
        query={"check_handlers": False, "wait": 0.1},  # `wait` embeds the status document
    )
    created = submit.call_and_validate(headers=auth, checks=CHECKS, timeout=REQUEST_TIMEOUT)
    assert created.status_code == 201, created.text
    run_id = created.json()["run_id"]
    assert created.json()["run"]["run_id"] == run_id
    for path, method, params, query in (
        ("/v1/runs/{run_id}", "GET", {"run_id": run_id}, {"include_definition": True}),
        ("/v1/runs", "GET", None, {"workflow": "api-hello"}),
        ("/v1/runs/{run_id}/cancel", "POST", {"run_id": run_id}, None),
    ):
        case = api_schema[path][method].Case(path_parameters=params, query=query)
        response = case.call_and_validate(headers=auth, checks=CHECKS, timeout=REQUEST_TIMEOUT)
        assert response.status_code < 300, (path, response.text)
