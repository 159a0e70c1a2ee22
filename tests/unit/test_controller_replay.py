"""The Replayer: folds a real SQLite log store, skips forged records, restarts from snapshots."""

from __future__ import annotations

import dataclasses
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa

import controller.replay
from controller.replay import Replayer, SnapshotStore
from controller.snapshot_store import head_table
from ledger.formats import KillScope, SignedEvent, make_entry
from ledger.sigcheck import SignatureChecker
from ledger.store.sqlite import SQLiteLogStore
from tests.unit.harness import Harness


def write_log(h: Harness, store: SQLiteLogStore, start: int = 0) -> None:
    entries = h.core.entries or []
    store.append([(e.body.event_id, e.entry_bytes) for e in entries[start:]])


@pytest.fixture(params=["in-process", "worker", "native"])
def checker(
    request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch
) -> Iterator[SignatureChecker | None]:
    """Replay folds entry by entry (no checker), or in chunks whose signatures a worker
    process or the native verifier checks first; chunks of 3 so grants and their first use
    share chunks."""
    if request.param == "in-process":
        yield None
        return
    monkeypatch.setattr(controller.replay, "CATCH_UP_CHUNK", 3)
    c = SignatureChecker(1, min_pooled=1, native=request.param == "native")
    yield c
    assert c.fallbacks == 0
    c.close()


def test_replay_folds_every_valid_entry(tmp_path: Path, checker: SignatureChecker | None) -> None:
    h = Harness()
    h.approved()
    store = SQLiteLogStore(tmp_path / "log.db")
    write_log(h, store)
    r = Replayer(store, checker=checker)
    assert r.catch_up() == h.core.size
    assert r.state.ledger.size == h.core.size
    assert r.state.ledger.last_hash == h.core.state.last_hash
    assert r.state.invalid == 0 and r.state.applied == h.core.size


def test_forged_and_garbage_records_are_skipped_and_counted(
    tmp_path: Path, checker: SignatureChecker | None
) -> None:
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
    r = Replayer(store, checker=checker)
    folded: list[int] = []
    r.on_fold = lambda e, position: folded.append(e.seq)
    r.catch_up()
    assert r.state.invalid == 2
    assert not r.state.ledger.kill_switches
    assert r.state.ledger.size == h.core.size
    # The notifications see only what was folded: the forged kill switch is never announced.
    assert folded == list(range(h.core.size))


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
        row = conn.execute(sa.select(head_table)).one()
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


def test_a_key_revoked_inside_a_chunk_signs_nothing_after_it(
    tmp_path: Path, checker: SignatureChecker | None, caplog: pytest.LogCaptureFixture
) -> None:
    """The worker only says a signature is valid; whether its key may still sign is the
    rules' call on the state at that seq, even when grant, use and revocation share a chunk."""
    h = Harness()
    p = h.proposal()
    store = SQLiteLogStore(tmp_path / "log.db")
    write_log(h, store)
    evalbot = h.flow.cast["evalbot"].key.public
    before = h.core.size
    h.ok(h.flow.eval(p, "safety", 0.99))
    h.ok(h.flow.revoke(evalbot.key_id))
    write_log(h, store, start=before)
    # Straight into storage after the revocation: a validly signed eval by the revoked key.
    late = make_entry(h.core.size, h.core.state.last_hash, h.flow.eval(p, "quality", 0.9), h.now)
    store.append([(late.body.event_id, late.entry_bytes)])
    r = Replayer(store, checker=checker)
    r.catch_up()
    assert r.state.ledger.size == h.core.size  # the late eval was not folded
    assert r.state.invalid == 1
    assert "code=KEY_REVOKED" in caplog.text
    assert r.state.ledger.last_hash == h.core.state.last_hash
