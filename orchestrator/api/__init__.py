"""HTTP API of `steppe api`: submit, inspect, cancel, retry and list runs; probes; OpenAPI at /docs.

app.py         create_app(): the FastAPI application, its middleware and error handlers
config.py      ApiSettings (STEPPE_API_…): bearer token, body limit, wait cap, pool size
resources.py   the process's one Redis client and one run-store pool (opened in the lifespan)
limits.py      ASGI middleware refusing over-size bodies before they are read
query.py       ASGI middleware refusing query strings that hold NUL
readiness.py   the /readyz checks and their user-free failure phrases
submission.py  request body (YAML, or a JSON envelope) → what Submitter needs
errors.py      SteppeError → HTTP status and the `{"errors": [...]}` body
models.py      request and response models (they also document /docs)
routes.py      /v1/runs…, /healthz, /readyz
"""

from __future__ import annotations

from orchestrator.api.app import create_app
from orchestrator.api.config import ApiSettings

__all__ = ["ApiSettings", "create_app"]
