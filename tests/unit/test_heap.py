"""ledger.heap: the loaded state leaves the collector's scans; garbage cycles
made afterwards are still collected."""

from __future__ import annotations

import gc
import weakref
from collections.abc import Iterator

import pytest

from ledger.heap import (
    SETTLING_THRESHOLDS,
    _freeze_after_full_collection,
    freeze_survivors,
    settle_heap,
    settling_collector,
    tune_collector,
)


@pytest.fixture
def restore_gc() -> Iterator[None]:
    threshold = gc.get_threshold()
    yield
    if _freeze_after_full_collection in gc.callbacks:
        gc.callbacks.remove(_freeze_after_full_collection)
    gc.unfreeze()
    gc.set_threshold(*threshold)


class Node:
    def __init__(self) -> None:
        self.other: Node | None = None


def test_settle_heap_freezes_the_loaded_state_and_still_collects_new_cycles(
    restore_gc: None,
) -> None:
    state = [Node() for _ in range(1000)]  # the replayed log, long-lived
    settle_heap()
    frozen = gc.get_freeze_count()
    assert frozen >= len(state)
    assert gc.get_threshold() == (50_000, 2, 10)
    settle_heap()  # idempotent: one callback, not two
    assert gc.callbacks.count(_freeze_after_full_collection) == 1

    # A garbage cycle made after start is collected by the next collection.
    a, b = Node(), Node()
    a.other, b.other = b, a
    alive = weakref.ref(a)
    del a, b
    assert alive() is not None
    gc.collect(0)
    assert alive() is None

    # Survivors of a full collection are frozen too: scanned once, not again and again.
    more = [Node() for _ in range(1000)]
    gc.collect(2)
    assert gc.get_freeze_count() >= frozen + len(more)


def test_settling_collects_in_small_batches_and_freezes_them_then_tunes_back(
    restore_gc: None,
) -> None:
    settle_heap()
    settling_collector()
    assert gc.get_threshold() == SETTLING_THRESHOLDS
    pauses: list[int] = []

    def count(phase: str, info: dict[str, int]) -> None:
        if phase == "stop" and info["generation"] == 2:
            pauses.append(gc.get_freeze_count())

    gc.callbacks.append(count)
    try:
        # Long-lived state built after the load: each full collection sees a batch of it.
        built = [[i] for i in range(400_000)]
    finally:
        gc.callbacks.remove(count)
    assert len(pauses) >= 2, "full collections came in small batches"
    assert gc.get_freeze_count() >= len(built) // 2  # and what survived them is frozen
    # A garbage cycle made meanwhile is still collected.
    a, b = Node(), Node()
    a.other, b.other = b, a
    alive = weakref.ref(a)
    del a, b
    gc.collect(0)
    assert alive() is None
    tune_collector()
    assert gc.get_threshold() == (50_000, 2, 10)
    assert gc.callbacks.count(_freeze_after_full_collection) == 1


def test_freeze_survivors_freezes_only_in_a_process_that_tuned_the_collector(
    restore_gc: None,
) -> None:
    if _freeze_after_full_collection in gc.callbacks:
        gc.callbacks.remove(_freeze_after_full_collection)
    gc.unfreeze()
    rows = [Node() for _ in range(1000)]  # a base's rows, encoded so far
    freeze_survivors()  # a library caller, nobody tuned the collector: left as it is
    assert gc.get_freeze_count() == 0
    tune_collector()
    freeze_survivors()
    assert gc.get_freeze_count() >= len(rows)
    # Frozen, they still die when their last reference goes.
    alive = weakref.ref(rows[0])
    del rows
    assert alive() is None
