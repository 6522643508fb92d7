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
    # dir(), not vars(): names a package imports on first use (PEP 562 `__getattr__` and `__dir__`)
    # count too, and getattr() checks that each of them resolves.
    public = {
        name
        for name in dir(module)
        if not name.startswith("_") and not inspect.ismodule(getattr(module, name)) and name != "annotations"
    }
    assert sorted(public) == sorted(module.__all__)


def test_the_handler_api_is_importable_from_workers() -> None:
    import workers

    for name in ("handler", "StepContext", "RetryableStepError", "NonRetryableStepError"):
        assert name in workers.__all__
