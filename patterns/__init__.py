"""Coordination patterns: saga, dead letters, retry, circuit breaker, hooks, supervisor, …

Layering: these modules build on the shared contract in `orchestrator` (state, wire
messages, keys, settings, errors) and are used by the coordinator engine and workers.
"""

__all__: list[str] = []  # each pattern is used from its module (patterns.saga, patterns.breaker, …)
