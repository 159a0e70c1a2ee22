"""The Replayer: folds a real SQLite log store, skips forged records, restarts from snapshots."""

from __future__ import annotations

import dataclasses
import threading
from pathlib import Path

import sqlalchemy as sa

from controller.replay import Replayer, SnapshotStore, snapshot_table
from ledger.formats import KillScope, SignedEvent, make_entry
from ledger.store.sqlite import SQLiteLogStore
from tests.unit.harness import Harness


def write_log(h: Harness, store: SQLiteLogStore, start: int = 0) -> None:
    entries = h.core.entries or []
    store.append([(e.body.event_id, e.entry_bytes) for e in entries[start:]])


def test_replay_folds_every_valid_entry(tmp_path: Path) -> None:
    h = Harness()
    h.approved()
    store = SQLiteLogStore(tmp_path / "log.db")
    write_log(h, store)
    r = Replayer(store)
    assert r.catch_up() == h.core.size
    assert r.state.ledger.size == h.core.size
    assert r.state.ledger.last_hash == h.core.state.last_hash
    assert r.state.invalid == 0 and r.state.applied == h.core.size


def test_forged_and_garbage_records_are_skipped_and_counted(tmp_path: Path) -> None:
    h = Harness()
    h.approved()
    store = SQLiteLogStore(tmp_path / "log.db")
    write_log(h, store)
    # Written straight into storage, bypassing the ledger: a kill switch with a zeroed signature,
    # and bytes that are not an entry at all.
    kill = h.flow.kill(KillScope("GLOBAL"))
    forged = SignedEvent(kill.body, (dataclasses.replace(kill.signatures[0], sig=bytes(64)),))
    bad = make_entry(h.core.size, h.core.state.last_hash, forged, h.now)
    store.append([(b"x" * 16, bad.entry_bytes), (b"y" * 16, b"not an entry")])
    # The real log goes on after them.
    h.ok(h.flow.health(next(iter(h.core.state.proposals)), 0, True))
    write_log(h, store, start=h.core.size - 1)
    r = Replayer(store)
    r.catch_up()
    assert r.state.invalid == 2
    assert not r.state.ledger.kill_switches
    assert r.state.ledger.size == h.core.size


def test_restart_from_snapshot_continues_where_it_stopped(tmp_path: Path) -> None:
    h = Harness()
    p, _ = h.approved()
    store = SQLiteLogStore(tmp_path / "log.db")
    write_log(h, store)
    snaps = SnapshotStore(tmp_path / "snap.db")
    r = Replayer(store, snapshots=snaps, source="t")
    r.catch_up()
    r.snapshot()
    first_size = h.core.size
    h.ok(h.flow.health(p, 0, True))
    write_log(h, store, start=first_size)

    again = Replayer(store, snapshots=snaps, source="t")
    assert again.load_snapshot()
    assert again.position == first_size
    assert again.catch_up() == 1  # only the new entry is read
    assert again.state.ledger.size == h.core.size
    with snaps.engine.connect() as conn:
        row = conn.execute(sa.select(snapshot_table)).one()
    assert row.position == first_size and row.size == first_size


def test_a_snapshot_of_another_log_is_discarded(tmp_path: Path) -> None:
    h = Harness()
    h.approved()
    store = SQLiteLogStore(tmp_path / "a.db")
    write_log(h, store)
    snaps = SnapshotStore(tmp_path / "snap.db")
    r = Replayer(store, snapshots=snaps, source="t")
    r.catch_up()
    r.snapshot()
    other = Harness(cast=h.cast)
    other.approved()
    other_store = SQLiteLogStore(tmp_path / "b.db")
    write_log(other, other_store)
    fresh = Replayer(other_store, snapshots=snaps, source="t")
    assert not fresh.load_snapshot()
    fresh.catch_up()
    assert fresh.state.ledger.last_hash == other.core.state.last_hash


def test_follow_folds_new_entries_and_wakes_the_caller(tmp_path: Path) -> None:
    h = Harness()
    p, _ = h.approved()
    store = SQLiteLogStore(tmp_path / "log.db")
    write_log(h, store)
    snaps = SnapshotStore(tmp_path / "snap.db")
    r = Replayer(store, snapshots=snaps, source="t", snapshot_every_entries=1)
    stop = threading.Event()
    woken = threading.Event()
    t = threading.Thread(target=r.run, args=(stop, woken.set), daemon=True)
    t.start()
    assert r.wait_for_size(h.core.size, 5)
    woken.clear()
    h.ok(h.flow.health(p, 0, True))
    write_log(h, store, start=h.core.size - 1)
    assert r.wait_for_size(h.core.size, 5)
    assert woken.wait(5)
    stop.set()
    t.join(5)
    assert not t.is_alive()
    loaded = SnapshotStore(tmp_path / "snap.db").load("t")
    assert loaded is not None and loaded.state.ledger.size == h.core.size
