"""Group commit: callers whose batch is stored return at once, not after the next transaction."""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from pathlib import Path

import pytest

from infra.processes import wait_for
from ledger.core import Receipt
from ledger.errors import StoreUnavailableError
from ledger.formats import encode_signed_event
from ledger.scenario import Cast, Flow
from ledger.store.sqlite import SQLiteLogStore
from ledger.writer import LedgerServer


class GatedStore(SQLiteLogStore):
    """A real SQLite store whose n-th append waits until the test opens gate n."""

    def __init__(self, path: Path) -> None:
        super().__init__(path)
        self.gates: dict[int, threading.Event] = {}
        self.calls = 0

    def append(
        self, records: Sequence[tuple[bytes, bytes]], checkpoint: tuple[int, str] | None = None
    ) -> list[int]:
        index, self.calls = self.calls, self.calls + 1  # only the server's writer thread appends
        gate = self.gates.get(index)
        if gate is not None and not gate.wait(30):
            raise AssertionError(f"gate {index} was never opened")
        return super().append(records, checkpoint)


def _until(what: str, condition: Callable[[], bool]) -> None:
    wait_for(what, condition, 10, every=0.005)


def _with_a_proposal(server: LedgerServer, flow: Flow) -> bytes:
    """Genesis, grants, policy and one proposal; the proposal's entry hash."""
    server.append(encode_signed_event(flow.genesis()))
    server.append_batch([encode_signed_event(g) for g in flow.grants()])
    server.append(encode_signed_event(flow.policy()))
    return server.append(encode_signed_event(flow.propose())).leaf_hash


def test_a_stored_caller_does_not_wait_for_the_next_transaction(tmp_path: Path) -> None:
    cast = Cast.create()
    flow = Flow(cast)
    store = GatedStore(tmp_path / "ledger.db")
    server = LedgerServer(
        store, cast.checkpoint_key, checkpoint_every_entries=10**6, checkpoint_every_ms=0
    )
    server.start()
    try:
        proposal = _with_a_proposal(server, flow)
        events = [encode_signed_event(flow.health(proposal, 0)) for _ in range(10)]
        first = store.calls
        gates = [threading.Event() for _ in range(3)]
        store.gates = {first + i: gate for i, gate in enumerate(gates)}
        results: dict[int, Receipt] = {}

        def append(i: int) -> threading.Thread:
            def run() -> None:
                results[i] = server.append(events[i])

            thread = threading.Thread(target=run, daemon=True)
            thread.start()
            return thread

        x = append(0)  # transaction 1, held at the store
        _until("the first transaction reached the store", lambda: store.calls == first + 1)
        group = [append(i) for i in range(1, 7)]  # checked meanwhile, stored in transaction 2
        _until(
            "six appends checked and waiting for the store",
            lambda: sum(len(f.requests) for f in server.group_commit.folded) == 6,
        )
        gates[0].set()
        _until("the second transaction reached the store", lambda: store.calls == first + 2)
        gates[1].set()
        # New callers arrive as transaction 2 ends: one of them stores the next transaction,
        # held at the store; every caller of transaction 2 is answered all the same.
        later = [append(i) for i in range(7, 10)]
        _until("transaction 3 reached the store", lambda: store.calls == first + 3)
        for thread in [x, *group]:
            thread.join(5)
        waiting = [i for i, t in enumerate([x, *group]) if t.is_alive()]
        assert waiting == [], (
            f"callers {waiting} of a stored transaction still wait for the next one"
        )
        assert sorted(results) == list(range(7))
        gates[2].set()
        for thread in later:
            thread.join(10)
        assert sorted(results) == list(range(10))
        assert 3 <= store.calls - first <= 5, (
            f"{store.calls - first} transactions, expected 3 to 5 (1, the queued 6 in one, the last 3)"
        )
        assert len({r.seq for r in results.values()}) == 10
    finally:
        for gate in store.gates.values():
            gate.set()
        server.stop()
        store.close()


def test_a_slow_store_append_is_logged(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """An append the store holds up (a broker restarting) leaves a line in the server's log."""
    import logging

    import ledger.writer

    monkeypatch.setattr(ledger.writer, "SLOW_STORE_APPEND_S", 0.2)
    cast = Cast.create()
    flow = Flow(cast)
    store = GatedStore(tmp_path / "ledger.db")
    server = LedgerServer(store, cast.checkpoint_key, checkpoint_every_ms=0)
    server.start()
    try:
        server.append(encode_signed_event(flow.genesis()))
        assert "store_append_slow" not in caplog.text
        gate = threading.Event()
        store.gates = {store.calls: gate}
        threading.Timer(0.4, gate.set).start()
        with caplog.at_level(logging.WARNING, logger="ledger.server"):
            receipts = server.append_batch([encode_signed_event(g) for g in flow.grants()])
        slow = [r.getMessage() for r in caplog.records if "store_append_slow" in r.getMessage()]
        assert len(slow) == 1, caplog.text
        assert slow[0].startswith(f"store_append_slow seq=1 count={len(receipts)} seconds=0.")
    finally:
        server.stop()
        store.close()


class CountingStore(SQLiteLogStore):
    """A real SQLite store that records each store call: ('append', size of the note it
    carried or None) or ('save_checkpoint', size)."""

    def __init__(self, path: Path) -> None:
        super().__init__(path)
        self.calls: list[tuple[str, int | None]] = []

    def append(
        self, records: Sequence[tuple[bytes, bytes]], checkpoint: tuple[int, str] | None = None
    ) -> list[int]:
        self.calls.append(("append", checkpoint[0] if checkpoint else None))
        return super().append(records, checkpoint)

    def save_checkpoint(self, size: int, note: str) -> None:
        self.calls.append(("save_checkpoint", size))
        super().save_checkpoint(size, note)


def test_a_due_checkpoint_rides_in_the_next_batchs_transaction(tmp_path: Path) -> None:
    """With the timer running, the checkpoint due after a batch is stored with the next batch
    (one store call, not two) and is for the log as it stood before that batch: never a note
    for a tree the store has not committed yet. Without a next batch the tick publishes it."""
    cast = Cast.create()
    flow = Flow(cast)
    store = CountingStore(tmp_path / "ledger.db")
    server = LedgerServer(
        store, cast.checkpoint_key, checkpoint_every_entries=4, checkpoint_every_ms=60_000
    )
    server.start()
    try:
        server.append(encode_signed_event(flow.genesis()))
        server.append_batch([encode_signed_event(g) for g in flow.grants()])
        size_after_grants = server.head().size
        assert size_after_grants >= 4
        store.calls.clear()
        server.append(encode_signed_event(flow.policy()))
        # The policy's batch carried the checkpoint for the log before it; no extra transaction.
        assert store.calls == [("append", size_after_grants)]
        assert [cp.size for cp in server.checkpoints()][-1] == size_after_grants
        assert [(c.size, c.note) for c in store.checkpoints()][-1] == (
            size_after_grants,
            server.checkpoints()[-1].note,
        )
        proposal = server.append(encode_signed_event(flow.propose())).leaf_hash
        store.calls.clear()
        server.append_batch([encode_signed_event(flow.health(proposal, 0)) for _ in range(4)])
        assert store.calls == [("append", None)]  # 2 entries since the last note: none due
        size = server.head().size
        # Due now, and no batch follows: the on-demand path (as the tick does) publishes it.
        assert server.checkpoint(publish_now=True).size == size
        assert store.calls[-1] == ("save_checkpoint", size)
    finally:
        server.stop()
        store.close()


class FailingStore(GatedStore):
    """A GatedStore whose appends numbered in `fail` raise once their gate opens."""

    def __init__(self, path: Path) -> None:
        super().__init__(path)
        self.fail: set[int] = set()

    def append(
        self, records: Sequence[tuple[bytes, bytes]], checkpoint: tuple[int, str] | None = None
    ) -> list[int]:
        index = self.calls
        positions = super().append([], None) if index in self.fail else None
        if positions is not None:
            raise StoreUnavailableError(f"append {index} failed (test)")
        return super().append(records, checkpoint)


def test_a_failed_store_write_fails_every_group_checked_on_top_of_it(tmp_path: Path) -> None:
    """Groups are checked while the previous one is being stored. When that store write fails,
    every group checked on top of it fails too, even one that only held a duplicate receipt of
    an entry of the failed write: nothing unstored is ever acknowledged. The core is rebuilt
    from the store, and the same events then go in at the same seqs."""
    cast = Cast.create()
    flow = Flow(cast)
    store = FailingStore(tmp_path / "ledger.db")
    server = LedgerServer(store, cast.checkpoint_key, checkpoint_every_ms=0)
    server.start()
    try:
        proposal = _with_a_proposal(server, flow)
        size = server.head().size
        events = [encode_signed_event(flow.health(proposal, i % 3)) for i in range(3)]
        gate = threading.Event()
        store.gates = {store.calls: gate}
        store.fail = {store.calls}
        outcomes: dict[str, object] = {}

        def run(name: str, batch: list[bytes]) -> threading.Thread:
            def go() -> None:
                try:
                    outcomes[name] = server.append_batch(batch)
                except Exception as exc:  # the outcome is what is checked
                    outcomes[name] = exc

            thread = threading.Thread(target=go, daemon=True)
            thread.start()
            return thread

        first = run("first", events[:2])  # its store write is held, then fails
        _until("the first write reached the store", lambda: server.group_commit.writing != [])
        # Checked on top of it while it is held: a duplicate of its event and a new one.
        second = run("second", [events[1], events[2]])
        _until("the second group was checked", lambda: len(server.group_commit.folded) == 1)
        assert server.head().size == size  # readers see only what is durable
        gate.set()
        for thread in (first, second):
            thread.join(10)
        assert isinstance(outcomes["first"], StoreUnavailableError), outcomes
        assert isinstance(outcomes["second"], StoreUnavailableError), outcomes
        assert server.head().size == size
        assert [r.position for r in store.read(0)] == list(range(size))
        # Rebuilt from the store: the same events go in at the same seqs, once.
        receipts = server.append_batch(events)
        assert [r.seq for r in receipts if isinstance(r, Receipt)] == [size, size + 1, size + 2]
        assert not any(r.duplicate for r in receipts if isinstance(r, Receipt))
        assert server.head().size == size + 3
    finally:
        for gate in store.gates.values():
            gate.set()
        server.stop()
        server.close()
        store.close()
