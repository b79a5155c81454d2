"""sealtrail.infra.service: what every long-running process shares."""

from __future__ import annotations

import gc
from collections.abc import Iterator

import pytest

from sealtrail.infra.service import GC_YOUNG_THRESHOLD, StopFlag, backoff, tune_gc


@pytest.fixture
def restored_gc() -> Iterator[None]:
    thresholds = gc.get_threshold()
    yield
    gc.unfreeze()
    gc.set_threshold(*thresholds)


def test_tune_gc_freezes_start_up_objects_and_collects_less_often(restored_gc: None) -> None:
    tune_gc()
    assert gc.get_freeze_count() > 0
    assert gc.get_threshold()[0] == GC_YOUNG_THRESHOLD
    # Cycles are still collected.
    cycle: list[object] = []
    cycle.append(cycle)
    del cycle
    assert gc.collect() >= 1


def test_stop_flag_is_set_by_code_with_its_reason() -> None:
    stop = StopFlag()
    assert not stop.is_set()
    stop.set("asked")
    assert stop.is_set() and stop.reason == "asked"


def test_backoff_grows_and_stays_bounded() -> None:
    delays = backoff()
    first = [next(delays) for _ in range(30)]
    assert first[0] < first[5] and max(first) <= 30
