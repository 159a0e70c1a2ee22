"""Snapshot pacing: a snapshot write stalls the fold (a kill switch waits behind it), so
snapshots are spaced by their own cost and, under a steady stream, wait for a pause."""

from __future__ import annotations

import time
from pathlib import Path

from controller.replay import SNAPSHOT_BUSY_FACTOR, SNAPSHOT_DUTY_FACTOR, Replayer, SnapshotStore
from ledger.store.sqlite import SQLiteLogStore
from tests.unit.harness import Harness


def _replayer(tmp_path: Path) -> Replayer:
    h = Harness()
    h.base()  # genesis, grants, a policy
    store = SQLiteLogStore(tmp_path / "log.db")
    store.append([(e.body.event_id, e.entry_bytes) for e in h.core.entries or []])
    r = Replayer(
        store,
        snapshots=SnapshotStore(tmp_path / "snap.db"),
        source="t",
        snapshot_every_entries=1,
        snapshot_every_seconds=5.0,
    )
    assert r.catch_up() == h.core.size > 1
    return r


def test_catch_up_snapshots_when_due_and_then_nothing_is_due(tmp_path: Path) -> None:
    r = _replayer(tmp_path)  # every_entries=1: catch_up() wrote a snapshot
    assert r.snapshots is not None and r.snapshots.load("t") is not None
    assert r._since_snapshot == 0
    assert not r.snapshot_due(idle=True, now=time.monotonic() + 100)  # nothing new since


def test_snapshots_are_spaced_by_their_own_cost(tmp_path: Path) -> None:
    r = _replayer(tmp_path)
    r.snapshot()
    r._since_snapshot = 10  # entries folded since (as handle() counts them)
    r._last_snapshot_cost = 1.5  # a write that took 1.5 s (about 1,000,000 entries)
    start = r._last_snapshot
    assert not r.snapshot_due(idle=True, now=start + 10)  # every_seconds passed, cost not
    assert not r.snapshot_due(idle=True, now=start + SNAPSHOT_DUTY_FACTOR * 1.5 - 0.01)
    assert r.snapshot_due(idle=True, now=start + SNAPSHOT_DUTY_FACTOR * 1.5)


def test_under_a_steady_stream_a_snapshot_waits_for_a_pause_but_not_forever(tmp_path: Path) -> None:
    r = _replayer(tmp_path)
    r.snapshot()
    r._since_snapshot = 10_000
    start = r._last_snapshot
    assert r.snapshot_due(idle=True, now=start + 5)
    assert not r.snapshot_due(idle=False, now=start + 5)
    assert r.snapshot_due(idle=False, now=start + SNAPSHOT_BUSY_FACTOR * 5.0)


def test_the_cost_of_the_last_write_is_measured(tmp_path: Path) -> None:
    r = _replayer(tmp_path)
    before = time.monotonic()
    r.snapshot()
    assert 0 < r._last_snapshot_cost <= time.monotonic() - before
