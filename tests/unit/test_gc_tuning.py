"""The long-running processes' collector settings (orchestrator/gc_tuning.py)."""

from __future__ import annotations

import gc
from collections.abc import Iterator

import pytest

from orchestrator import gc_tuning


@pytest.fixture
def restored_gc() -> Iterator[None]:
    thresholds = gc.get_threshold()
    yield
    gc.unfreeze()
    gc.set_threshold(*thresholds)


@pytest.mark.usefixtures("restored_gc")
def test_tune_freezes_what_start_up_built_and_makes_collections_rarer() -> None:
    gc.unfreeze()
    gc_tuning.tune()
    assert gc.get_threshold() == gc_tuning.THRESHOLDS
    assert gc.get_threshold()[0] > 700  # CPython's default collects every 700 allocations
    assert gc.get_freeze_count() > 0
    assert gc.isenabled()  # cycles are still collected
