"""Flow-control series (docs/spec.md §12.2): throttled steps and slots in use, per kind and key.

Keys are user data (a customer id can be one), so a key's series are removed as soon as an
admission sees it idle (nothing held, nobody waiting): only keys in use are exported. Each
coordinator reports what its last admission of a key counted; dashboards take the max.
"""

from __future__ import annotations

import contextlib

from prometheus_client import Gauge

from orchestrator.store.limits import Admission

STEPS_THROTTLED = Gauge(
    "steppe_steps_throttled", "Attempts waiting for a concurrency slot or a rate token", ["kind", "key"]
)
LIMIT_IN_USE = Gauge(
    "steppe_limit_in_use", "Concurrency slots held, or starts within the rate window, per key", ["kind", "key"]
)
LIMIT_CAPACITY = Gauge(
    "steppe_limit_capacity", "The limit of a key as its waiters and holders declare it", ["kind", "key"]
)


def observe(admission: Admission) -> None:
    labels = (admission.kind, admission.key)
    if not admission.held and not admission.waiting:
        for gauge in (STEPS_THROTTLED, LIMIT_IN_USE, LIMIT_CAPACITY):
            with contextlib.suppress(KeyError):
                gauge.remove(*labels)
        return
    STEPS_THROTTLED.labels(*labels).set(admission.waiting)
    LIMIT_IN_USE.labels(*labels).set(admission.held)
    LIMIT_CAPACITY.labels(*labels).set(admission.limit)
