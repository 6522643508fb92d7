"""Flow-control series (docs/spec.md §12.2): throttled steps and slots in use, per kind and key.

Keys are user data (a customer id can be one), so a key's series are removed as soon as an
admission sees it idle (nothing held, nobody waiting): only keys in use are exported. Each
coordinator reports what its last admission of a key counted; dashboards take the max.
"""

from __future__ import annotations

import contextlib

from orchestrator.metrics import LIMIT_CAPACITY, LIMIT_IN_USE, STEPS_THROTTLED
from orchestrator.store.limits import Admission


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
