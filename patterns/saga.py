"""Saga ordering: which compensations may run, given which ones have finished."""

from __future__ import annotations

from collections.abc import Iterable, Mapping


def compensation_blockers(dependents: Mapping[str, Iterable[str]], to_compensate: Iterable[str]) -> dict[str, set[str]]:
    """For each step to compensate, the steps whose compensation must finish first.

    A step is undone only after every step that (transitively) depended on it has been
    undone: compensations run in reverse dependency order, independent ones in parallel.
    """
    targets = set(to_compensate)
    blockers: dict[str, set[str]] = {}
    for step in targets:
        seen: set[str] = set()
        stack = list(dependents.get(step, ()))
        while stack:
            current = stack.pop()
            if current in seen:
                continue
            seen.add(current)
            stack.extend(dependents.get(current, ()))
        blockers[step] = seen & targets
    return blockers


def ready_compensations(blockers: Mapping[str, set[str]], started: set[str], finished: set[str]) -> list[str]:
    """Compensations whose blockers have all finished and that have not started yet (sorted)."""
    return sorted(s for s, deps in blockers.items() if s not in started and deps <= finished)
