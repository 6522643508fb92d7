"""Each package's `__all__` is exactly what it exposes (the habit of httpx's test_exported_members).

A name added to a package without `__all__` (or listed there but gone) fails here, so `from
workers import *`, the docs and type checkers agree with the code. Submodules are not members.
"""

from __future__ import annotations

import importlib
import inspect

import pytest


@pytest.mark.parametrize("package", ["orchestrator", "workers", "patterns"])
def test_all_lists_exactly_the_public_members(package: str) -> None:
    module = importlib.import_module(package)
    public = {
        name
        for name, value in vars(module).items()
        if not name.startswith("_") and not inspect.ismodule(value) and name != "annotations"
    }
    assert sorted(public) == sorted(module.__all__)


def test_the_handler_api_is_importable_from_workers() -> None:
    import workers

    for name in ("handler", "StepContext", "RetryableStepError", "NonRetryableStepError"):
        assert name in workers.__all__
