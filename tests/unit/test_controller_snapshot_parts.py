"""The incremental snapshot (issue #19): parts that hold what changed, a chain that restores the
folded state at every cut, compaction off the fold, and damage or failure that costs a replay,
never a wrong state."""

from __future__ import annotations

import threading
from pathlib import Path
from types import MappingProxyType
from typing import Any

import pytest
import sqlalchemy as sa

import controller.snapshot_store as snapshot_store
from controller.errors import SnapshotError
from controller.index_rows import rows_table
from controller.packed_index import PackedIndex, merge_sorted, seq_decode, seq_encode
from controller.replay import Replayer
from controller.snapshot import encode_state
from controller.snapshot_parts import ChangeLog, decode_part, encode_part, merge_parts
from controller.snapshot_store import (
    PartRow,
    SnapshotStore,
    _read_blobs,
    chunk_table,
    compaction_plan,
    docs_table,
    head_table,
    legacy_table,
    part_table,
)
from controller.state import ControllerState
from ledger.formats import LogEntry
from ledger.store.sqlite import SQLiteLogStore
from tests.unit.harness import Harness
from tests.unit.test_controller_snapshot import rich_harness


def fold(entries: list[LogEntry]) -> ControllerState:
    state = ControllerState()
    for e in entries:
        assert state.fold(e) is None
    return state


def longer_harness() -> tuple[Harness, bytes]:
    """rich_harness, then a second rollout, health reports and a step: ~40 entries."""
    h, p = rich_harness()
    for i in range(6):
        h.ok(h.flow.health(p, 0, i % 3 != 0))
    h.ok(h.flow.step(p, 1, 50, "ADVANCED"))
    q = h.ok(h.flow.propose("registry.example/model-server:v4", deployment="third"))
    evals = (h.ok(h.flow.eval(q, "safety", 0.99)), h.ok(h.flow.eval(q, "quality", 0.91)))
    h.ok(h.flow.approve(q, evals, "alice"))
    h.ok(h.flow.approve(q, evals, "bob"))
    h.ok(h.flow.step(q, 0, 10, "STARTED"))
    for _ in range(4):
        h.ok(h.flow.health(q, 0, True))
    return h, p


def write_log(h: Harness, store: SQLiteLogStore, start: int = 0) -> None:
    store.append([(e.body.event_id, e.entry_bytes) for e in (h.core.entries or [])[start:]])


def parts(snaps: SnapshotStore) -> list[Any]:
    with snaps.engine.connect() as conn:
        rows = conn.execute(sa.select(part_table).order_by(part_table.c.first)).all()
        return [decode_part(_read_blobs(conn, "t", r)) for r in rows]


@pytest.fixture
def small_thresholds(monkeypatch: pytest.MonkeyPatch) -> None:
    # Compaction at the sizes of a test log (the defaults wait for thousands of entries), and
    # parts cut in several chunks, as a base of millions of entries is.
    monkeypatch.setattr(snapshot_store, "REBASE_MIN_ENTRIES", 4)
    monkeypatch.setattr(snapshot_store, "CHUNK_BYTES", 1000)


@pytest.mark.usefixtures("small_thresholds")
def test_every_cut_of_the_chain_restores_the_folded_state(tmp_path: Path) -> None:
    h, _ = longer_harness()
    entries = list(h.core.entries or [])
    store = SQLiteLogStore(tmp_path / "log.db")
    snaps = SnapshotStore(tmp_path / "snap.db", background=False)
    r = Replayer(store, snapshots=snaps, source="t")
    merged_before = 0
    for i, e in enumerate(entries):
        store.append([(e.body.event_id, e.entry_bytes)])
        r.catch_up()
        assert r.snapshot()
        expected = fold(entries[: i + 1])
        assert r.state == expected  # tracking and compaction never change what is folded
        loaded = SnapshotStore(tmp_path / "snap.db").load("t")
        assert loaded is not None and loaded.state == expected, f"after entry {i}"
        assert loaded.position == i + 1
        # The restored state folds on exactly as the original does.
        if i + 1 < len(entries):
            assert loaded.state.fold(entries[i + 1]) is None
    assert snaps.compactions > merged_before
    # Compaction moved the base forward and trimmed the dicts in front of it.
    assert len(r.state.ledger.event_ids.recent) < len(entries) // 2  # type: ignore[attr-defined]


def test_a_part_holds_only_what_changed(tmp_path: Path) -> None:
    h, p = longer_harness()
    store = SQLiteLogStore(tmp_path / "log.db")
    write_log(h, store)
    snaps = SnapshotStore(tmp_path / "snap.db", background=False)
    r = Replayer(store, snapshots=snaps, source="t")
    r.catch_up()
    r.snapshot()
    size = h.core.size
    h.ok(h.flow.health(p, 1, True))
    write_log(h, store, start=size)
    r.catch_up()
    r.snapshot()
    *_, base, part = parts(snaps)
    assert base.size_before == 0 and base.size == size
    assert (part.size_before, part.size, part.entries) == (size, size + 1, 1)
    assert [row.entry_hash for row in part.proposals] == [p]  # the one proposal named
    assert len(part.proposals) < len(base.proposals)
    # Version 2: the index additions are rows beside the part, which counts them.
    assert part.indexes["event_ids"] == (b"", b"") and part.indexes["evals"] == (b"", b"")
    assert part.index_rows == {
        **base.index_rows,
        "event_ids": size + 1,
        "entry_seqs": size + 1,
        "entry_types": size + 1,
    }
    assert index_row_counts(snaps) == [size + 1, size + 1, size + 1, base.index_rows["evals"]]
    assert not r.state.ledger.event_ids.recent  # type: ignore[attr-defined]


def index_row_counts(snaps: SnapshotStore) -> list[int]:
    with snaps.engine.connect() as conn:
        found = dict(
            conn.execute(
                sa.select(rows_table.c.ix, sa.func.count()).group_by(rows_table.c.ix)
            ).all()
        )
    return [int(found.get(ix, 0)) for ix in range(4)]


def test_the_fold_lock_is_free_while_a_part_is_encoded_and_written(tmp_path: Path) -> None:
    h, p = longer_harness()
    store = SQLiteLogStore(tmp_path / "log.db")
    write_log(h, store)
    writing, release = threading.Event(), threading.Event()

    class SlowStore(SnapshotStore):
        def write_part(self, *args: Any, **kwargs: Any) -> None:
            writing.set()
            assert release.wait(10)
            super().write_part(*args, **kwargs)

    snaps = SlowStore(tmp_path / "snap.db", background=False)
    r = Replayer(store, snapshots=snaps, source="t")
    r.catch_up()
    t = threading.Thread(target=r.snapshot)
    t.start()
    assert writing.wait(10)
    # Meanwhile the fold goes on: a new entry (a kill switch would be one) is folded at once.
    size = h.core.size
    h.ok(h.flow.health(p, 1, False))
    write_log(h, store, start=size)
    assert r.lock.acquire(timeout=1)
    r.lock.release()
    r.catch_up()
    assert r.state.ledger.size == size + 1
    release.set()
    t.join(10)
    assert SnapshotStore(tmp_path / "snap.db").load("t").state == fold(
        (h.core.entries or [])[:size]
    )  # type: ignore[union-attr]
    # The entry folded during the write goes into the next part.
    r.snapshot()
    assert SnapshotStore(tmp_path / "snap.db").load("t").state == fold(h.core.entries or [])  # type: ignore[union-attr]


def test_a_failed_write_changes_nothing_and_its_changes_go_into_the_next(tmp_path: Path) -> None:
    h, p = longer_harness()
    store = SQLiteLogStore(tmp_path / "log.db")
    write_log(h, store)
    snaps = SnapshotStore(tmp_path / "snap.db", background=False)
    r = Replayer(store, snapshots=snaps, source="t")
    r.catch_up()
    r.snapshot()
    size = h.core.size
    h.ok(h.flow.health(p, 1, False))
    write_log(h, store, start=size)
    r.catch_up()

    def refuse_the_head(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        # The part row is inserted, then the head update fails: the transaction rolls back.
        if statement.startswith("UPDATE controller_snapshot_heads"):
            raise OSError("disk full")

    before = parts(snaps)
    sa.event.listen(snaps.engine, "before_cursor_execute", refuse_the_head)
    with pytest.raises(OSError, match="disk full"):
        r.snapshot()
    sa.event.remove(snaps.engine, "before_cursor_execute", refuse_the_head)
    assert [(x.first, x.last, x.size) for x in parts(snaps)] == [
        (x.first, x.last, x.size) for x in before
    ]
    loaded = SnapshotStore(tmp_path / "snap.db").load("t")
    assert loaded is not None and loaded.state == fold((h.core.entries or [])[:size])
    # The proposal the failed part held is still marked changed, and the entry unwritten.
    r.snapshot()
    last = parts(snaps)[-1]
    assert [row.entry_hash for row in last.proposals] == [p] and last.entries == 1
    loaded = SnapshotStore(tmp_path / "snap.db").load("t")
    assert loaded is not None and loaded.state == fold(h.core.entries or [])


def _chain(tmp_path: Path) -> tuple[Harness, SQLiteLogStore, SnapshotStore]:
    h, p = longer_harness()
    store = SQLiteLogStore(tmp_path / "log.db")
    write_log(h, store)
    snaps = SnapshotStore(tmp_path / "snap.db", background=False)
    r = Replayer(store, snapshots=snaps, source="t")
    r.catch_up()
    r.snapshot()
    for ok in (True, False, True):
        size = h.core.size
        h.ok(h.flow.health(p, 1, ok))
        write_log(h, store, start=size)
        r.catch_up()
        r.snapshot()
    assert len(parts(snaps)) == 4  # a base and three parts (below the compaction thresholds)
    return h, store, snaps


def _damage(snaps: SnapshotStore, how: str) -> None:
    with snaps.engine.begin() as conn:
        if how == "a part missing":
            conn.execute(part_table.delete().where(part_table.c.first == 3))
        elif how == "a part bit-flipped":
            where = (chunk_table.c.first == 2, chunk_table.c.chunk == 0)
            data = bytes(conn.execute(sa.select(chunk_table.c.data).where(*where)).scalar_one())
            conn.execute(
                chunk_table.update().where(*where).values(data=data[:-1] + bytes([data[-1] ^ 1]))
            )
        elif how == "a chunk missing":
            conn.execute(
                chunk_table.delete().where(chunk_table.c.first == 1, chunk_table.c.chunk == 1)
            )
        elif how == "the last part missing":
            conn.execute(part_table.delete().where(part_table.c.first == 4))
        elif how == "a row naming another part":
            row2 = conn.execute(sa.select(part_table).where(part_table.c.first == 2)).one()
            data = conn.execute(
                sa.select(chunk_table.c.data).where(chunk_table.c.first == 2)
            ).scalar_one()
            conn.execute(chunk_table.update().where(chunk_table.c.first == 3).values(data=data))
            conn.execute(
                part_table.update().where(part_table.c.first == 3).values(length=row2.length)
            )
        elif how == "the head disagreeing with its state":
            conn.execute(head_table.update().values(applied=sa.literal(3)))
        elif how == "no base":
            conn.execute(part_table.delete().where(part_table.c.first == 1))


@pytest.mark.parametrize(
    "how",
    [
        "a part missing",
        "a part bit-flipped",
        "a chunk missing",
        "the last part missing",
        "a row naming another part",
        "the head disagreeing with its state",
        "no base",
    ],
)
def test_a_damaged_chain_means_a_full_replay(
    tmp_path: Path, how: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    if how == "a chunk missing":
        monkeypatch.setattr(snapshot_store, "CHUNK_BYTES", 1000)  # the base in several chunks
    h, store, snaps = _chain(tmp_path)
    _damage(snaps, how)
    fresh = Replayer(store, snapshots=SnapshotStore(tmp_path / "snap.db"), source="t")
    assert not fresh.load_snapshot()
    assert fresh.catch_up() == h.core.size
    assert fresh.state == fold(h.core.entries or [])
    # The next snapshot starts a new chain: a base, which loads.
    fresh.snapshot()
    assert [x.size_before for x in parts(snaps)] == [0]
    again = Replayer(store, snapshots=SnapshotStore(tmp_path / "snap.db"), source="t")
    assert again.load_snapshot() and again.state == fold(h.core.entries or [])


def test_a_version_1_snapshot_still_loads_and_the_next_snapshot_replaces_it(tmp_path: Path) -> None:
    h, p = longer_harness()
    store = SQLiteLogStore(tmp_path / "log.db")
    write_log(h, store)
    snaps = SnapshotStore(tmp_path / "snap.db", background=False)
    state = fold(h.core.entries or [])
    with snaps.engine.begin() as conn:  # what earlier code wrote: one whole snapshot
        conn.execute(
            legacy_table.insert().values(
                source="t",
                position=h.core.size,
                last_position=h.core.size - 1,
                size=state.ledger.size,
                applied=state.applied,
                invalid=state.invalid,
                state=encode_state(state),
                taken_at_ms=0,
            )
        )
    r = Replayer(store, snapshots=snaps, source="t")
    assert r.load_snapshot() and r.state == state and r.catch_up() == 0
    size = h.core.size
    h.ok(h.flow.health(p, 1, True))
    write_log(h, store, start=size)
    r.catch_up()
    r.snapshot()
    assert [x.size_before for x in parts(snaps)] == [0]  # a base, not a part after version 1
    with snaps.engine.connect() as conn:
        assert conn.execute(sa.select(sa.func.count()).select_from(legacy_table)).scalar() == 0
    loaded = SnapshotStore(tmp_path / "snap.db").load("t")
    assert loaded is not None and loaded.state == fold(h.core.entries or [])


def test_merging_any_run_of_parts_holds_what_the_run_held(tmp_path: Path) -> None:
    h, _store, snaps = _chain(tmp_path)
    chain = parts(snaps)
    from controller.snapshot_parts import state_from_parts

    rows = snaps.index_rows("t")
    whole = state_from_parts(chain, rows)
    assert whole == fold(h.core.entries or [])
    for i in range(len(chain)):
        for j in range(i + 1, len(chain) + 1):
            merged = decode_part(encode_part(merge_parts(chain[i:j])))
            assert (merged.first, merged.last) == (chain[i].first, chain[j - 1].last)
            assert merged.index_rows == chain[j - 1].index_rows
            assert state_from_parts([*chain[:i], merged, *chain[j:]], rows) == whole
    with pytest.raises(SnapshotError, match="without its index rows"):
        state_from_parts(chain)
    with pytest.raises(SnapshotError, match="does not follow"):
        merge_parts([chain[0], chain[2]])
    with pytest.raises(SnapshotError, match="does not start with a base"):
        state_from_parts(chain[1:])


def test_compaction_in_the_background_merges_parts_and_the_indexes_stay_rows(
    tmp_path: Path,
) -> None:
    h, p = longer_harness()
    store = SQLiteLogStore(tmp_path / "log.db")
    write_log(h, store)
    snaps = SnapshotStore(tmp_path / "snap.db")  # background compaction, as the controller runs
    r = Replayer(store, snapshots=snaps, source="t")
    r.catch_up()
    r.snapshot()
    # Enough parts to pass REBASE_SHARE of the base: the compactor writes a new base.
    for i in range(h.core.size // 3 + 2):
        size = h.core.size
        h.ok(h.flow.health(p, 1, i % 2 == 0))
        write_log(h, store, start=size)
        r.catch_up()
        assert r.snapshot()
    assert snaps.wait_idle(30)
    assert snaps.compactions >= 1
    rows = snaps.part_rows("t")
    assert rows[0].size_before == 0 and rows[0].size > h.core.size // 2
    # The indexes were never in the parts: every entry is a row once its part is written, and
    # memory holds none of them.
    index = r.state.ledger.entry_seqs
    assert isinstance(index, PackedIndex) and index.rows is not None
    assert index.count == h.core.size and not index.recent
    assert index_row_counts(snaps)[:3] == [h.core.size] * 3
    assert r.state == fold(h.core.entries or [])
    assert SnapshotStore(tmp_path / "snap.db").load("t").state == r.state  # type: ignore[union-attr]
    snaps.close()


def test_compaction_plan_merges_tiers_and_rebases_at_a_quarter() -> None:
    def chain(base: int, *sizes: int) -> list[PartRow]:
        rows, at = [PartRow(1, 1, 0, base)], base
        for k, n in enumerate(sizes, start=2):
            rows.append(PartRow(k, k, at, at + n))
            at += n
        return rows

    assert compaction_plan(chain(1_000_000)) == []
    assert compaction_plan(chain(1_000_000, 500, 500, 500)) == []
    four = chain(1_000_000, 500, 500, 500, 500)
    assert compaction_plan(four) == four[1:]
    # A larger part before the small ones is not merged with them.
    mixed = chain(1_000_000, 8_000, 500, 500, 500, 500)
    assert compaction_plan(mixed) == mixed[2:]
    assert compaction_plan(chain(1_000_000, 8_000, 500, 500, 500)) == []
    # The later parts hold a quarter of the base: everything becomes one base.
    big = chain(100_000, 20_000, 5_000)
    assert compaction_plan(big) == big
    assert compaction_plan(chain(10_000, 3_000)) == chain(10_000, 3_000)
    assert compaction_plan(chain(1_000, 300)) == []  # under REBASE_MIN_ENTRIES
    # Not a chain that starts with a base: left alone (a load refuses it anyway).
    assert compaction_plan(chain(1_000_000, 500, 500, 500, 500)[1:]) == []


def test_packed_index_tracks_additions_and_rebases() -> None:
    live = {bytes([i]) * 4: i for i in (5, 1, 3)}
    index = PackedIndex.growing(live, 4, 8, seq_decode, seq_encode)
    assert index.recent is live and len(index) == 3 and index.count == 0
    assert index.unpersisted() == list(live.items())
    index.mark_persisted(7, 2)
    index[bytes([9]) * 4] = 9
    assert index.unpersisted() == [(bytes([3]) * 4, 3), (bytes([9]) * 4, 9)]
    keys, values = merge_sorted(
        b"", b"", 4, 8, sorted((k, seq_encode(v)) for k, v in list(live.items())[:2])
    )
    with pytest.raises(SnapshotError, match="expected 0 \\+ 0 \\+ 2"):
        index.rebase(keys + bytes([7]) * 4, values + seq_encode(7), 7)
    # A base being written sets the additions aside; lookups still find them, and an
    # unwritten base puts them back in their order.
    aside = index.freeze()
    index[bytes([4]) * 4] = 4
    assert aside == {bytes([i]) * 4: i for i in (5, 1, 3, 9)} and list(index.recent) == [
        bytes([4]) * 4
    ]
    assert index[bytes([5]) * 4] == 5 and bytes([9]) * 4 in index and len(index) == 5
    with pytest.raises(ValueError, match="already indexed"):
        index[bytes([5]) * 4] = 6
    index.thaw()
    assert index.frozen is None and list(index.recent) == [bytes([i]) * 4 for i in (5, 1, 3, 9, 4)]
    del index.recent[bytes([4]) * 4]  # (dict-level, to get back to the case below)
    index._added -= 1
    index.mark_persisted(7, 2)
    index.rebase(keys, values, 7)
    assert index.count == 2 and list(index.recent) == [bytes([3]) * 4, bytes([9]) * 4]
    assert index.persisted == 0 and index.pending == []
    assert dict(index) == {bytes([i]) * 4: i for i in (1, 3, 5, 9)}
    with pytest.raises(SnapshotError, match="in the base and added again"):
        merge_sorted(keys, values, 4, 8, [(bytes([1]) * 4, seq_encode(1))])
    with pytest.raises(SnapshotError, match="not sorted"):
        merge_sorted(b"", b"", 4, 8, [(b"bbbb", bytes(8)), (b"aaaa", bytes(8))])


def test_the_change_log_records_what_the_fold_names() -> None:
    h, p = longer_harness()
    state = fold(h.core.entries or [])
    state.last_seq = ChangeLog(state.last_seq, through=3, size=state.ledger.size)
    assert not state.last_seq.changed
    h.ok(h.flow.health(p, 1, True))
    assert state.fold((h.core.entries or [])[-1]) is None
    assert state.last_seq.changed == {p} and state.last_seq[p] == h.core.size - 1


def test_a_change_log_not_yet_tracking_records_nothing_until_a_base_begins() -> None:
    from controller.snapshot_parts import begin_full, capture

    h, p = longer_harness()
    state = ControllerState(last_seq=ChangeLog(tracking=False))
    for e in h.core.entries or []:
        assert state.fold(e) is None
    assert state.last_seq.changed is None and state.last_seq == fold(h.core.entries or []).last_seq
    # No part was written from it: a delta would claim to follow a part that does not exist.
    with pytest.raises(SnapshotError, match="no part was written from"):
        capture(state, 1, full=False)
    begin_full(state)
    assert state.last_seq.changed == set()
    h.ok(h.flow.health(p, 1, True))
    assert state.fold((h.core.entries or [])[-1]) is None
    assert state.last_seq.changed == {p}


@pytest.mark.parametrize("last_seq", ["a dict (a state folded by hand)", "a ChangeLog (Replayer)"])
def test_a_base_prepared_in_steps_holds_what_was_folded_between_them(last_seq: str) -> None:
    from controller.snapshot_parts import (
        begin_full,
        capture,
        encode_capture,
        encode_capture_v1,
        prepare_step,
        state_from_parts,
    )

    h, _p = longer_harness()
    entries = list(h.core.entries or [])
    if last_seq.startswith("a dict"):
        state = fold(entries)
    else:
        state = ControllerState(last_seq=ChangeLog(tracking=False))
        for e in entries:
            assert state.fold(e) is None
    prep = begin_full(state)
    assert not prepare_step(state, prep, proposals=1)
    (encoded,) = prep.rows  # the first proposal encoded, before the fold goes on
    # Between two steps the fold goes on: the encoded proposal is named again, a new one
    # arrives, and the indexes get additions after the ones set aside.
    h.ok(h.flow.health(encoded, 0, False))
    late = h.ok(h.flow.propose("registry.example/model-server:v9", deployment="late"))
    for e in (h.core.entries or [])[len(entries) :]:
        assert state.fold(e) is None
    while not prepare_step(state, prep, proposals=1):
        pass
    taken = capture(state, 1, full=True, prepared=prep)
    assert taken.changed == {encoded, late}
    everything = fold(h.core.entries or [])
    # Version 2: the rows to write beside the part hold every entry, sorted.
    encode_capture(taken)
    event_ids = list(taken.rows["event_ids"])
    assert taken.counts["event_ids"] == len(event_ids) == len(everything.ledger.event_ids)
    assert dict(event_ids) == {k: seq_encode(v) for k, v in everything.ledger.event_ids.items()}
    assert [k for k, _ in taken.rows["entry_seqs"]] == sorted(everything.ledger.entry_seqs)
    # Version 1 (the indexes in the part) from the same capture restores the whole state.
    part = decode_part(encode_capture_v1(taken))
    assert part.index_rows is None
    assert state_from_parts([part]) == everything
    # In the order they were submitted, the one submitted between the steps last.
    assert [r.entry_hash for r in part.proposals] == list(everything.ledger.proposals)
    assert part.proposals[-1].entry_hash == late


def test_the_proposals_submitted_since_a_base_began_are_the_last_ones() -> None:
    from controller.snapshot_parts import _submitted_since

    proposals = {bytes([i]) * 32: i for i in range(5)}
    assert _submitted_since(proposals, 5) == []  # type: ignore[arg-type]
    assert _submitted_since(proposals, 3) == [bytes([3]) * 32, bytes([4]) * 32]  # type: ignore[arg-type]
    # Another mapping (the ledger server's spilled one): listed, the same answer.
    view = MappingProxyType(proposals)
    assert _submitted_since(view, 2) == list(proposals)[2:]  # type: ignore[arg-type]
    with pytest.raises(SnapshotError, match="6 proposals when the base was begun, 5 now"):
        _submitted_since(proposals, 6)  # type: ignore[arg-type]


def test_a_failed_base_puts_the_additions_back_and_the_next_base_holds_them(tmp_path: Path) -> None:
    h, p = longer_harness()
    store = SQLiteLogStore(tmp_path / "log.db")
    write_log(h, store)
    snaps = SnapshotStore(tmp_path / "snap.db", background=False)
    r = Replayer(store, snapshots=snaps, source="t")
    r.catch_up()

    def refuse_the_head(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        if statement.startswith("INSERT INTO controller_snapshot_heads"):
            raise OSError("disk full")

    sa.event.listen(snaps.engine, "before_cursor_execute", refuse_the_head)
    with pytest.raises(OSError, match="disk full"):
        r.snapshot()
    sa.event.remove(snaps.engine, "before_cursor_execute", refuse_the_head)
    assert parts(snaps) == [] and snaps.load("t") is None
    index = r.state.ledger.event_ids
    assert isinstance(index, PackedIndex) and index.frozen is None and index.count == 0
    assert r.state == fold(h.core.entries or [])
    size = h.core.size
    h.ok(h.flow.health(p, 1, True))
    write_log(h, store, start=size)
    r.catch_up()
    assert r.snapshot()
    assert [x.size_before for x in parts(snaps)] == [0]
    loaded = SnapshotStore(tmp_path / "snap.db").load("t")
    assert loaded is not None and loaded.state == fold(h.core.entries or [])


# --------------------------------------------------------------------------------------------
# Version 2: the per-entry indexes as rows beside the parts


def test_a_restart_reads_no_index_row_until_the_fold_asks(tmp_path: Path) -> None:
    h, store, _snaps = _chain(tmp_path)
    again = SnapshotStore(tmp_path / "snap.db")
    fresh = Replayer(store, snapshots=again, source="t")
    assert fresh.load_snapshot()
    rows = again.index_rows("t")
    assert rows.lookups == 0  # the restart read the parts only
    index = fresh.state.ledger.event_ids
    assert isinstance(index, PackedIndex) and index.rows is rows and not index.recent
    size = h.core.size
    p = next(iter(fresh.state.ledger.proposals))
    h.ok(h.flow.health(p, 1, True))
    write_log(h, store, start=size)
    assert fresh.catch_up() == 1
    assert rows.lookups > 0  # the fold looked keys up in the rows
    assert fresh.state == fold(h.core.entries or [])
    # A key added since the part is in memory until the next part makes it a row.
    assert len(index.recent) == 1
    assert fresh.snapshot() and not index.recent and index.count == h.core.size


def test_a_version_1_chain_still_loads_and_the_next_part_is_a_version_2_base(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import controller.replay as replay_module
    from controller.snapshot_parts import encode_capture_v1

    h, p = longer_harness()
    store = SQLiteLogStore(tmp_path / "log.db")
    write_log(h, store)
    with monkeypatch.context() as m:  # what the code before version 2 wrote
        m.setattr(replay_module, "encode_capture", encode_capture_v1)
        snaps = SnapshotStore(tmp_path / "snap.db", background=False)
        old = Replayer(store, snapshots=snaps, source="t")
        old.catch_up()
        old.snapshot()
        size = h.core.size
        h.ok(h.flow.health(p, 1, True))
        write_log(h, store, start=size)
        old.catch_up()
        old.snapshot()
        snaps.close()
    snaps = SnapshotStore(tmp_path / "snap.db", background=False)
    assert [x.index_rows for x in parts(snaps)] == [None, None]
    assert index_row_counts(snaps) == [0, 0, 0, 0]
    r = Replayer(store, snapshots=snaps, source="t")
    assert r.load_snapshot() and r.state == fold(h.core.entries or [])
    size = h.core.size
    h.ok(h.flow.health(p, 1, False))
    write_log(h, store, start=size)
    r.catch_up()
    assert r.snapshot()
    (base,) = parts(snaps)  # the version 1 chain replaced by one base, of version 2
    assert base.size_before == 0 and base.index_rows is not None
    assert index_row_counts(snaps)[:3] == [h.core.size] * 3
    loaded = SnapshotStore(tmp_path / "snap.db").load("t")
    assert loaded is not None and loaded.state == fold(h.core.entries or [])


def test_a_damaged_index_row_stops_the_fold_and_drops_the_snapshot(tmp_path: Path) -> None:
    h, store, snaps = _chain(tmp_path)
    with snaps.engine.begin() as conn:  # one bit of every row's value flipped
        for key, ix, value in conn.execute(
            sa.select(rows_table.c.key, rows_table.c.ix, rows_table.c.value)
        ).all():
            flipped = bytes([value[0] ^ 1]) + bytes(value[1:])
            conn.execute(
                rows_table.update()
                .where(rows_table.c.key == key, rows_table.c.ix == ix)
                .values(value=flipped)
            )
    again = SnapshotStore(tmp_path / "snap.db")
    fresh = Replayer(store, snapshots=again, source="t")
    assert fresh.load_snapshot()  # the rows are not read at load
    size = h.core.size
    p = next(iter(fresh.state.ledger.proposals))
    h.ok(h.flow.health(p, 1, True))  # names the proposal: its entry is looked up
    write_log(h, store, start=size)
    with pytest.raises(SnapshotError, match="index row damaged"):
        fresh.catch_up()
    # The head is gone: the next start replays the log and comes to the right state.
    restarted = Replayer(store, snapshots=SnapshotStore(tmp_path / "snap.db"), source="t")
    assert not restarted.load_snapshot()
    restarted.catch_up()
    assert restarted.state == fold(h.core.entries or [])


def test_a_chain_replaced_under_the_controller_is_refused_not_overwritten(tmp_path: Path) -> None:
    # Its indexes are rows of the chain it wrote: a base would have to hold them, and they are
    # not in memory. (Only another writer, or a hand in the database, moves the head.)
    h, store, snaps = _chain(tmp_path)
    first = Replayer(store, snapshots=snaps, source="t")
    assert first.load_snapshot()
    size = h.core.size
    p = next(iter(first.state.ledger.proposals))
    h.ok(h.flow.health(p, 1, True))
    write_log(h, store, start=size)
    first.catch_up()
    with snaps.engine.begin() as conn:
        conn.execute(head_table.delete())
    chain = [(x.first, x.last) for x in parts(snaps)]
    with pytest.raises(SnapshotError, match="replaced under this controller"):
        first.snapshot()
    assert [(x.first, x.last) for x in parts(snaps)] == chain  # nothing written
    assert first.state == fold(h.core.entries or [])  # the fold is unharmed
    assert first.state.last_seq.changed  # type: ignore[attr-defined]  # still to be written


def test_one_controller_at_a_time_writes_a_snapshot_database(tmp_path: Path) -> None:
    # Two controllers on one file would read each other's index rows as their own.
    first = SnapshotStore(tmp_path / "snap.db", exclusive=True)
    with pytest.raises(SnapshotError, match=r"snap\.db is in use by another controller"):
        SnapshotStore(tmp_path / "snap.db", exclusive=True)
    reader = SnapshotStore(tmp_path / "snap.db")  # not exclusive: tools and tests may read
    reader.close()
    first.close()
    SnapshotStore(tmp_path / "snap.db", exclusive=True).close()  # released with the store


class _Rows:
    """Rows of one index in a dict (a unit test of PackedIndex's logic, not of SQL)."""

    def __init__(self, items: dict[bytes, bytes]) -> None:
        self.items = items

    def get(self, ix: int, key: bytes) -> bytes | None:
        assert ix == 3
        return self.items.get(key)

    def keys(self, ix: int) -> Any:
        return iter(sorted(self.items))


def test_packed_index_on_rows_reads_adds_and_absorbs() -> None:
    rows = _Rows({bytes([k]) * 4: seq_encode(k) for k in (1, 2, 3)})
    index = PackedIndex.on_rows(rows, 3, 3, 4, 8, seq_decode, seq_encode)
    assert index[bytes([2]) * 4] == 2 and bytes([3]) * 4 in index and len(index) == 3
    assert bytes([9]) * 4 not in index and b"\x01" not in index  # a key of another width
    index[bytes([2]) * 4] = 2  # the same value again: accepted
    with pytest.raises(ValueError, match="already indexed with another value"):
        index[bytes([2]) * 4] = 7
    index[bytes([5]) * 4] = 5
    index[bytes([4]) * 4] = 4
    assert len(index) == 5 and list(index)[:3] == sorted(rows.items)
    assert index.unpersisted() == [(bytes([5]) * 4, 5), (bytes([4]) * 4, 4)]
    rows.items[bytes([5]) * 4] = seq_encode(5)  # a part wrote the first addition
    index.absorb(1)
    assert index.recent == {bytes([4]) * 4: 4} and index.count == 4 and len(index) == 5
    assert index[bytes([5]) * 4] == 5
    with pytest.raises(SnapshotError, match="base is rows"):
        index.rebase(b"", b"", 1)


def test_with_background_snapshots_the_follower_folds_while_a_part_is_written(
    tmp_path: Path,
) -> None:
    # steward-controller's mode: the follower (Replayer.run) hands a due snapshot to a thread
    # and goes on; a write that fails is logged and the follower goes on as well.
    h, p = longer_harness()
    store = SQLiteLogStore(tmp_path / "log.db")
    write_log(h, store)
    writing, release = threading.Event(), threading.Event()
    fail = [False]

    class SlowStore(SnapshotStore):
        def write_part(self, *args: Any, **kwargs: Any) -> None:
            writing.set()
            assert release.wait(10)
            if fail[0]:
                raise OSError("disk full")
            super().write_part(*args, **kwargs)

    snaps = SlowStore(tmp_path / "snap.db", background=False)
    r = Replayer(
        store,
        snapshots=snaps,
        source="t",
        snapshot_every_entries=1,
        snapshot_every_seconds=0.01,
        background_snapshots=True,
    )
    stop = threading.Event()
    follower = threading.Thread(target=r.run, args=(stop,), kwargs={"idle_timeout": 0.02})
    follower.start()
    try:
        assert writing.wait(10)  # the first snapshot (a base) is being written
        size = h.core.size
        h.ok(h.flow.health(p, 1, False))
        write_log(h, store, start=size)
        assert r.wait_for_size(size + 1, 10)  # folded while the base is held up
        fail[0] = True
        release.set()
        r.wait_for_snapshot(10)
        assert follower.is_alive()
        h.ok(h.flow.health(p, 1, True))  # after a failed write, the follower still folds
        write_log(h, store, start=size + 1)
        assert r.wait_for_size(size + 2, 10)
        fail[0] = False
    finally:
        stop.set()
        h.ok(h.flow.health(p, 1, True))  # an entry to wake the follower so it sees `stop`
        write_log(h, store, start=h.core.size - 1)
        follower.join(10)
    assert not follower.is_alive()
    # On the way out the follower writes a last part: everything it folded is in the chain.
    loaded = SnapshotStore(tmp_path / "snap.db").load("t")
    assert loaded is not None and loaded.state == r.state


# --------------------------------------------------------------------------------------------
# Version 2: proposals restored from columns, their evidence read when first needed


def test_a_restart_reads_no_evidence_until_a_proposal_is_read(tmp_path: Path) -> None:
    h, store, _snaps = _chain(tmp_path)
    reads: list[int] = []

    class Counting(SnapshotStore):
        def _docs_loader(self, source: str, first: int) -> Any:
            load = super()._docs_loader(source, first)

            def counted() -> bytes:
                reads.append(first)
                return load()

            return counted

    fresh = Replayer(store, snapshots=Counting(tmp_path / "snap.db"), source="t")
    assert fresh.load_snapshot()
    assert reads == []
    assert fresh.state == fold(h.core.entries or [])  # reads every proposal's evidence
    assert sorted(reads) == sorted(set(reads)) and reads  # each part's once


def test_damaged_evidence_stops_the_reader_and_drops_the_snapshot(tmp_path: Path) -> None:
    h, store, snaps = _chain(tmp_path)
    with snaps.engine.begin() as conn:
        (first, data) = conn.execute(
            sa.select(docs_table.c.first, docs_table.c.data).order_by(docs_table.c.first)
        ).first()
        flipped = bytes([data[0] ^ 1]) + bytes(data[1:])
        conn.execute(docs_table.update().where(docs_table.c.first == first).values(data=flipped))
    fresh = Replayer(store, snapshots=SnapshotStore(tmp_path / "snap.db"), source="t")
    assert fresh.load_snapshot()  # the evidence is not read at load
    with pytest.raises(SnapshotError, match="evidence damaged"):
        for p in fresh.state.ledger.proposals.values():
            _ = p.proposal
    restarted = Replayer(store, snapshots=SnapshotStore(tmp_path / "snap.db"), source="t")
    assert not restarted.load_snapshot()  # the head was dropped: the log is replayed
    restarted.catch_up()
    assert restarted.state == fold(h.core.entries or [])


@pytest.mark.usefixtures("small_thresholds")
def test_parts_merged_after_a_restart_keep_the_evidence_of_unread_proposals(
    tmp_path: Path,
) -> None:
    h, _ = longer_harness()
    store = SQLiteLogStore(tmp_path / "log.db")
    write_log(h, store)
    r = Replayer(store, snapshots=SnapshotStore(tmp_path / "snap.db", background=False), source="t")
    r.catch_up()
    r.snapshot()
    snaps = SnapshotStore(tmp_path / "snap.db", background=False)
    fresh = Replayer(store, snapshots=snaps, source="t")
    assert fresh.load_snapshot()  # nothing of the evidence read yet
    restored = list(fresh.state.ledger.proposals.values())
    merged_before = snaps.compactions
    for i in range(h.core.size // 2):  # parts enough for a new base: the old one is deleted
        size = h.core.size
        # New proposals: nothing restored is read (a health report would read its proposal).
        h.ok(h.flow.propose(f"registry.example/model-server:n{i}", deployment="fifth"))
        write_log(h, store, start=size)
        fresh.catch_up()
        assert fresh.snapshot()
    assert snaps.compactions > merged_before
    base = parts(snaps)[0]
    assert base.size_before == 0 and base.last > 1  # a new base: part 1's rows are gone
    assert all(set(p.__dict__) == {"_p", "_k"} for p in restored)  # still unread
    assert fresh.state == fold(h.core.entries or [])  # every proposal's evidence, still there
    loaded = SnapshotStore(tmp_path / "snap.db").load("t")
    assert loaded is not None and loaded.state == fresh.state


# --------------------------------------------------------------------------------------------
# A base never holds the interpreter for a whole index at once


def test_keys_in_buckets_come_out_in_the_order_one_sort_gives() -> None:
    import os

    from controller.snapshot_parts import _in_key_order

    rng_keys = [os.urandom(32) for _ in range(5000)] + [os.urandom(16) for _ in range(50)]
    edges = [b"\x00" * 32, b"\xff" * 32, b"\x00" + b"\xff" * 31, b"\xff" + b"\x00" * 31]
    same_first = [b"\x7f" + os.urandom(31) for _ in range(300)]  # one bucket only
    for keys in (rng_keys + edges, same_first, [], edges):
        runs = list(_in_key_order(iter(keys)))
        assert [k for run in runs for k in run] == sorted(keys)
        assert all(run for run in runs)  # no empty run
        assert len({run[0][0] for run in runs}) == len(runs)  # one run per first byte
    with pytest.raises(SnapshotError, match="empty"):
        list(_in_key_order([b"\x01" * 32, b""]))


def test_packed_runs_take_values_from_the_additions_and_check_widths() -> None:
    import os

    from controller.snapshot_parts import INDEXES, _packed_runs

    spec = next(s for s in INDEXES if s[0] == "entry_seqs")
    aside = {os.urandom(32): i for i in range(1000)}
    added = {os.urandom(32): 5000 + i for i in range(20)}
    keys, values, count = _packed_runs([*aside, *added], aside.get, added, spec)
    everything = {**aside, **added}
    assert count == len(everything)
    packed_keys, packed_values = b"".join(keys), b"".join(values)
    ordered = sorted(everything)
    assert packed_keys == b"".join(ordered)
    assert packed_values == b"".join(seq_encode(everything[k]) for k in ordered)
    with pytest.raises(SnapshotError, match="not 32 bytes"):
        _packed_runs([b"\x01" * 31], {b"\x01" * 31: 1}.get, {}, spec)


def test_a_written_base_is_emptied_a_piece_at_a_time_and_the_state_stays_whole(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import controller.replay as replay_module
    from controller.snapshot_parts import release_base

    released: list[Any] = []

    def keep(c: Any) -> None:
        sizes = [len(d) for d in c.aside.values()]
        release_base(c)
        released.append((c, sizes))

    monkeypatch.setattr(replay_module, "release_base", keep)
    h, p = longer_harness()
    store = SQLiteLogStore(tmp_path / "log.db")
    write_log(h, store)
    snaps = SnapshotStore(tmp_path / "snap.db", background=False)
    r = Replayer(store, snapshots=snaps, source="t")
    r.catch_up()
    assert r.snapshot()
    ((base, sizes),) = released
    assert base.full and sum(sizes) > 0  # it held the replay's indexes, set aside
    assert all(len(d) == 0 for d in base.aside.values())
    assert not base.proposals.ready and not base.proposals.order
    assert r.state == fold(h.core.entries or [])
    # The chain goes on from it, and a restart reads it back whole.
    size = h.core.size
    h.ok(h.flow.health(p, 1, True))
    write_log(h, store, start=size)
    r.catch_up()
    assert r.snapshot()
    assert len(released) == 1  # a delta part is not a base
    loaded = SnapshotStore(tmp_path / "snap.db").load("t")
    assert loaded is not None and loaded.state == fold(h.core.entries or [])
