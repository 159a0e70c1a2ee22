"""The contract every LogStore backend passes.

A backend's test module subclasses :class:`StoreContract` and provides a `store_factory`
fixture: ``store_factory()`` returns a fresh, empty store, and ``store_factory(reopen=store)``
closes `store` and returns a new store object over the same underlying log (same file, same
topic), the way a restarted process would see it.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

import pytest

from ledger.errors import StoreError
from ledger.store.base import LogStore

Factory = Callable[..., LogStore]


def _records(n: int, start: int = 0) -> list[tuple[bytes, bytes]]:
    return [
        (f"key-{i}".encode(), f"value-{i}".encode() * (1 + i % 3)) for i in range(start, start + n)
    ]


class StoreContract:
    def test_empty_store(self, store_factory: Factory) -> None:
        store = store_factory()
        assert list(store.read(0)) == []
        assert store.checkpoints() == []
        assert list(store.read(store.end_position())) == []

    def test_append_returns_increasing_positions_and_read_returns_the_records(
        self, store_factory: Factory
    ) -> None:
        store = store_factory()
        first = store.append(_records(3))
        second = store.append(_records(2, start=3))
        positions = first + second
        assert positions == sorted(positions) and len(set(positions)) == 5
        got = list(store.read(0))
        assert [(r.key, r.value) for r in got] == _records(5)
        assert [r.position for r in got] == positions
        assert store.end_position() > positions[-1]

    def test_read_from_a_position_and_with_a_limit(self, store_factory: Factory) -> None:
        store = store_factory()
        positions = store.append(_records(6))
        tail = list(store.read(positions[2]))
        assert [r.key for r in tail] == [k for k, _ in _records(6)[2:]]
        assert [r.key for r in store.read(positions[1], limit=2)] == [b"key-1", b"key-2"]
        assert list(store.read(store.end_position())) == []

    def test_empty_batch_is_a_no_op(self, store_factory: Factory) -> None:
        store = store_factory()
        assert store.append([]) == []
        assert list(store.read(0)) == []

    def test_records_survive_reopening(self, store_factory: Factory) -> None:
        store = store_factory()
        store.append(_records(4))
        store.save_checkpoint(4, "note-4\n")
        reopened = store_factory(reopen=store)
        assert [(r.key, r.value) for r in reopened.read(0)] == _records(4)
        assert [(c.size, c.note) for c in reopened.checkpoints()] == [(4, "note-4\n")]
        more = reopened.append(_records(1, start=4))
        assert [r.key for r in reopened.read(more[0])] == [b"key-4"]

    def test_checkpoints_are_all_kept_in_order(self, store_factory: Factory) -> None:
        store = store_factory()
        for size in (1, 5, 9):
            store.save_checkpoint(size, f"cp {size}\n")
        assert [(c.size, c.note) for c in store.checkpoints()] == [
            (1, "cp 1\n"),
            (5, "cp 5\n"),
            (9, "cp 9\n"),
        ]

    def test_a_checkpoint_stored_with_a_batch_is_kept_with_it(self, store_factory: Factory) -> None:
        store = store_factory()
        first = store.append(_records(3))
        more = store.append(_records(2, start=3), (3, "cp 3\n"))
        assert len(more) == 2 and more[0] > first[-1]
        assert [(r.key, r.value) for r in store.read(0)] == _records(5)
        assert store.end_position() > more[-1]  # (Kafka: past the commit marker too)
        assert list(store.read(store.end_position())) == []
        assert [(c.size, c.note) for c in store.checkpoints()] == [(3, "cp 3\n")]
        store.save_checkpoint(5, "cp 5\n")
        assert store.append([], (5, "cp 5 again\n")) == []  # an empty batch keeps the note alone
        assert [(c.size, c.note) for c in store.checkpoints()] == [
            (3, "cp 3\n"),
            (5, "cp 5\n"),
            (5, "cp 5 again\n"),
        ]

    def test_cosignatures_are_added_to_a_checkpoint_without_changing_its_note(
        self, store_factory: Factory
    ) -> None:
        store = store_factory()
        note = "origin\n3\nroot\n\n\u2014 origin sig\n"
        store.save_checkpoint(3, note)
        store.save_checkpoint(5, "cp 5\n")
        store.add_cosignatures(3, note, ["\u2014 w1 aaaa"])
        store.add_cosignatures(3, note, ["\u2014 w1 aaaa", "\u2014 w2 bbbb"])  # again: kept once
        expected = [(3, note, ("\u2014 w1 aaaa", "\u2014 w2 bbbb")), (5, "cp 5\n", ())]
        assert [(c.size, c.note, c.cosignatures) for c in store.checkpoints()] == expected
        reopened = store_factory(reopen=store)
        assert [(c.size, c.note, c.cosignatures) for c in reopened.checkpoints()] == expected

    def test_follow_yields_existing_then_new_records(self, store_factory: Factory) -> None:
        store = store_factory()
        store.append(_records(2))
        seen: list[bytes] = []
        done = threading.Event()

        def consume() -> None:
            for record in store.follow(0, idle_timeout=0.1):
                if record is not None:
                    seen.append(record.key)
                if len(seen) == 4 or done.is_set():
                    return

        thread = threading.Thread(target=consume, daemon=True)
        thread.start()
        time.sleep(0.3)
        store.append(_records(2, start=2))
        thread.join(timeout=30)
        done.set()
        assert seen == [b"key-0", b"key-1", b"key-2", b"key-3"]

    def test_follow_yields_none_when_idle(self, store_factory: Factory) -> None:
        store = store_factory()
        iterator = store.follow(0, idle_timeout=0.05)
        assert next(iterator) is None

    def test_large_values_round_trip(self, store_factory: Factory) -> None:
        store = store_factory()
        value = bytes(range(256)) * 256  # 64 KiB of every byte value
        store.append([(b"k", value)])
        assert [r.value for r in store.read(0)] == [value]

    def test_many_small_batches_keep_order(self, store_factory: Factory) -> None:
        store = store_factory()
        for i in range(50):
            store.append([(b"k%d" % i, b"v%d" % i)])
        assert [r.key for r in store.read(0)] == [b"k%d" % i for i in range(50)]

    def test_errors_are_store_errors(self, store_factory: Factory) -> None:
        store = store_factory()
        store.close()
        with pytest.raises(StoreError):
            store.append(_records(1))
