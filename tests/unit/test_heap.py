"""ledger.heap: the loaded state leaves the collector's scans; garbage cycles
made afterwards are still collected."""

from __future__ import annotations

import gc
import weakref
from collections.abc import Iterator

import pytest

from ledger.heap import _freeze_after_full_collection, settle_heap


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
