"""The body of `POST /v1/runs` → what `Submitter` needs: document text, file name, inputs, idempotency key.

Two body forms:

* YAML (`application/yaml`, `text/yaml`, or no content type): the workflow document itself;
  inputs come as `?input=key=value` (repeatable, JSON values allowed, as `steppe submit --input`).
* JSON (`application/json`): `{"workflow": <YAML text or mapping>, "inputs": {…}, "idempotency_key": "…"}`,
  or `{"workflow_ref": "name@3", …}` for a deployed version (docs/spec.md §12.3).
  A mapping is rendered as block YAML before loading, so that the loader's safety checks and
  error positions apply to it exactly as to a file.

The `Idempotency-Key` header works with both; with a JSON body it must agree with the field.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import orjson
import yaml
from fastapi.exceptions import RequestValidationError
from pydantic import ValidationError
from starlette.exceptions import HTTPException

from orchestrator.api.models import SubmitRequest
from orchestrator.errors import SpecProblem, SpecValidationError
from orchestrator.spec import parse_cli_inputs
from orchestrator.spec.values import MAX_DEPTH, value_problem

YAML_MEDIA_TYPES = frozenset({"application/yaml", "application/x-yaml", "text/yaml", "text/x-yaml"})
BODY_NAME = "<request body>"
_Dumper: Any = getattr(yaml, "CSafeDumper", yaml.SafeDumper)


@dataclass(frozen=True, slots=True)
class Submission:
    source: str | bytes
    filename: str
    inputs: dict[str, Any]
    idempotency_key: str | None
    ref: str | None = None  # a deployed workflow (`workflow_ref`); then `source` is empty


def media_type(content_type: str | None) -> str:
    return (content_type or "").split(";", 1)[0].strip().lower()


def is_json(kind: str) -> bool:
    return kind == "application/json" or (kind.startswith("application/") and kind.endswith("+json"))


def parse_submission(
    *, body: bytes, content_type: str | None, filename: str | None, input_pairs: list[str], header_key: str | None
) -> Submission:
    kind = media_type(content_type)
    if kind in YAML_MEDIA_TYPES or not kind:
        return Submission(body, filename or "<workflow>", parse_cli_inputs(input_pairs), header_key)
    if not is_json(kind):
        raise HTTPException(
            415,
            f"unsupported content type {kind!r}: send the workflow YAML as application/yaml, or "
            '{"workflow": ..., "inputs": {...}} as application/json',
        )
    if input_pairs:
        raise HTTPException(422, "with a JSON body, give inputs in its `inputs` object, not as ?input=")
    request = _envelope(body)
    key = request.idempotency_key
    if header_key is not None and key is not None and header_key != key:
        raise HTTPException(422, "the Idempotency-Key header and the body's idempotency_key differ; send one")
    key = key if key is not None else header_key
    if request.workflow_ref is not None:
        return Submission("", request.workflow_ref, request.inputs, key, ref=request.workflow_ref)
    assert request.workflow is not None  # the model requires one of the two
    source = request.workflow if isinstance(request.workflow, str) else render_yaml(request.workflow)
    return Submission(source, filename or "<workflow>", request.inputs, key)


def render_yaml(document: dict[str, Any]) -> str:
    # The safe dumper quotes every string the loader would read as something else ("on", "1e3", dates).
    return str(yaml.dump(document, Dumper=_Dumper, sort_keys=False, allow_unicode=True, default_flow_style=False))


def _envelope(body: bytes) -> SubmitRequest:
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError as e:
        if "depth limit" in e.msg:  # orjson stops at 1024 levels
            message = "the JSON body nests deeper than 1024 levels: flatten this data"
        else:
            message = f"invalid JSON: {e.msg}; send a JSON object with `workflow` (and optionally `inputs`)"
        raise SpecValidationError([SpecProblem(message, BODY_NAME, e.lineno, e.colno)]) from None
    check_values(data)
    try:
        return SubmitRequest.model_validate(data)
    except ValidationError as e:
        raise RequestValidationError([{**err, "loc": ("body", *err["loc"])} for err in e.errors()]) from None


def check_values(data: Any) -> None:
    """Refuse NUL, unpaired surrogates and deep nesting anywhere in the body before anything walks it
    recursively (rendering the workflow as YAML, pydantic, the store). A workflow given as YAML text is
    left to the loader, which reports the position."""
    if not isinstance(data, dict):
        return  # the model says what the body should be
    for key, value in data.items():
        if key == "workflow" and isinstance(value, str):
            continue
        # Each input counts its levels from its own value, as `validate_inputs` does.
        depth = MAX_DEPTH + 1 if key == "inputs" and isinstance(value, dict) else MAX_DEPTH
        found = value_problem(value, at=("body", str(key)), max_depth=depth)
        if found is not None:
            raise HTTPException(422, f"{found[0]} {found[1]}")
