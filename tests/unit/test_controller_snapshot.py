"""The controller's snapshot encoding: round trip, fail-closed decoding, restart semantics."""

from __future__ import annotations

import hashlib
import struct
from pathlib import Path

import pytest
import sqlalchemy as sa

from controller.errors import SnapshotError
from controller.packed_index import PackedIndex, pack
from controller.replay import Replayer, SnapshotStore
from controller.snapshot import MAGIC, VERSION, StoredProposal, decode_state, encode_state
from controller.snapshot_parts import PART_MAGIC, PART_VERSION
from controller.snapshot_store import chunk_table, head_table, part_table
from controller.state import ControllerState
from ledger.formats import KillScope, SignedEvent, make_entry
from ledger.rules import check
from ledger.store.sqlite import SQLiteLogStore
from tests.unit.harness import Harness


def rich_harness() -> tuple[Harness, bytes]:
    """Keys, a policy, two proposals (one rolling out, with health), evals, approvals, a kill switch."""
    h = Harness()
    p, _ = h.approved()
    h.ok(h.flow.step(p, 0, 10, "STARTED"))
    h.ok(h.flow.health(p, 0, True))
    other = h.ok(h.flow.propose("registry.example/model-server:v3", deployment="other"))
    h.ok(h.flow.eval(other, "safety", 0.42))
    h.ok(h.flow.kill(KillScope("PROPOSAL", proposal=other)))
    return h, p


def folded(h: Harness) -> ControllerState:
    state = ControllerState()
    for e in h.core.entries or []:
        assert state.fold(e) is None
    return state


def test_round_trip_equals_the_folded_state() -> None:
    h, _ = rich_harness()
    state = folded(h)
    blob = encode_state(state)
    back = decode_state(blob)
    assert back == state
    assert isinstance(back.ledger.event_ids, PackedIndex)
    assert all(isinstance(p, StoredProposal) for p in back.ledger.proposals.values())
    # Encoding is deterministic, and an untouched restored state encodes to the same bytes.
    assert encode_state(folded(h)) == blob
    assert encode_state(decode_state(blob)) == blob


def test_a_pause_and_the_latest_resume_survive_a_snapshot() -> None:
    # A restarted controller restores from its snapshot: a pause must still hold after it.
    h, p = rich_harness()
    h.ok(h.flow.pause(p))
    h.ok(h.flow.resume(p))
    h.ok(h.flow.pause(p, signer="oncall", reason="again"))
    state = folded(h)
    back = decode_state(encode_state(state))
    assert back == state
    restored = back.ledger.proposals[p]
    assert restored.pause is not None and restored.pause.reason == "again"
    assert restored.last_resume is not None
    assert restored.last_resume.approvers == ("human:alice@example.org",)
    start = h.core.size
    h.ok(h.flow.resume(p, ("bob",)))
    for e in (h.core.entries or [])[start:]:
        assert back.fold(e) is None
    assert back.ledger.proposals[p].pause is None


def test_a_restored_state_judges_and_folds_the_next_entries_like_the_original() -> None:
    h, p = rich_harness()
    restored = decode_state(encode_state(folded(h)))
    start = h.core.size
    h.ok(h.flow.health(p, 0, True))
    h.ok(h.flow.step(p, 1, 50, "ADVANCED"))
    entries = (h.core.entries or [])[start:]
    for e in entries:
        assert restored.fold(e) is None
    assert restored == folded(h)
    # Its next snapshot re-encodes the proposal those entries named and reuses the others.
    assert decode_state(encode_state(restored, compact=True)) == folded(h)
    assert encode_state(restored) == encode_state(folded(h))
    # An event submitted again (its id is in the snapshot's packed index) is refused as by the dicts.
    old = (h.core.entries or [])[3]
    again = make_entry(
        h.core.size,
        h.core.state.last_hash,
        SignedEvent(old.entry.body, old.entry.signatures),
        h.tick(),
    )
    violation = check(restored.ledger, again)
    assert violation is not None and violation.code == "DUPLICATE_EVENT_ID"
    assert violation == check(folded(h).ledger, again)


def test_compacting_keeps_the_contents_and_the_next_snapshot_merges() -> None:
    h, p = rich_harness()
    state = folded(h)
    first = encode_state(state, compact=True)
    assert isinstance(state.ledger.entry_seqs, PackedIndex)
    h.ok(h.flow.health(p, 0, False))
    for e in (h.core.entries or [])[state.ledger.size :]:
        assert state.fold(e) is None
    second = encode_state(state, compact=True)
    assert first != second
    assert decode_state(second) == folded(h)
    assert dict(state.ledger.event_ids) == dict(folded(h).ledger.event_ids)


def test_packed_index_lookups_and_merge() -> None:
    base = {bytes([i]) * 4: i for i in range(0, 200, 2)}
    enc, dec = (lambda v: v.to_bytes(8, "little")), (lambda b: int.from_bytes(b, "little"))
    index = pack(base, 4, 8, dec, enc)
    assert dict(index) == base and len(index) == 100
    assert bytes([2]) * 4 in index and bytes([3]) * 4 not in index and b"\x02" not in index
    index[bytes([3]) * 4] = 3  # new, between two base keys
    index[bytes([2]) * 4] = 2  # the value it has: nothing changes
    with pytest.raises(ValueError, match="already indexed"):
        index[bytes([2]) * 4] = 20  # an entry is indexed once: never another value
    with pytest.raises(ValueError, match="already indexed"):
        index[bytes([3]) * 4] = 30
    assert index[bytes([3]) * 4] == 3 and index[bytes([2]) * 4] == 2 and len(index) == 101
    with pytest.raises(KeyError):
        index[bytes([5]) * 4]
    with pytest.raises(TypeError, match="only grows"):
        del index[bytes([2]) * 4]
    merged = pack(index, 4, 8, dec, enc)
    assert not merged.recent and dict(merged) == {**base, bytes([3]) * 4: 3}
    assert list(merged) == sorted(merged)


def _reseal(body: bytes, version: int = VERSION) -> bytes:
    return struct.pack("<8sH32s", MAGIC, version, hashlib.sha256(body).digest()) + body


@pytest.mark.parametrize(
    "damage",
    [
        "truncated",
        "bit flip",
        "unknown version",
        "other magic",
        "resealed with a section missing",
        "empty",
    ],
)
def test_a_damaged_or_foreign_blob_is_refused(damage: str) -> None:
    h, _ = rich_harness()
    blob = encode_state(folded(h))
    body = blob[42:]
    bad = {
        "truncated": blob[:-7],
        "bit flip": blob[: len(blob) // 2]
        + bytes([blob[len(blob) // 2] ^ 0x10])
        + blob[len(blob) // 2 + 1 :],
        "unknown version": _reseal(body, VERSION + 1),
        "other magic": b"\x80\x05" + blob[2:],  # what a pickle starts with
        "resealed with a section missing": _reseal(body[: -(8 + 32 * 3)]),
        "empty": b"",
    }[damage]
    with pytest.raises(SnapshotError):
        decode_state(bad)


def test_a_resealed_blob_with_wrong_counts_is_refused() -> None:
    h, _ = rich_harness()
    state = folded(h)
    state.ledger.size += 1  # one entry more than the indexes hold
    with pytest.raises(SnapshotError, match="expected size"):
        decode_state(encode_state(state))


def _replayer_with_snapshot(tmp_path: Path) -> tuple[Harness, SQLiteLogStore, SnapshotStore]:
    h, _ = rich_harness()
    store = SQLiteLogStore(tmp_path / "log.db")
    store.append([(e.body.event_id, e.entry_bytes) for e in h.core.entries or []])
    snaps = SnapshotStore(tmp_path / "snap.db")
    r = Replayer(store, snapshots=snaps, source="t")
    r.catch_up()
    r.snapshot()
    return h, store, snaps


def _set_blob(snaps: SnapshotStore, blob: bytes) -> None:
    with snaps.engine.begin() as conn:
        conn.execute(chunk_table.update().values(data=blob))
        conn.execute(part_table.update().values(length=len(blob)))


def _blob(snaps: SnapshotStore) -> bytes:
    """The one part (a base, one chunk) the first snapshot wrote."""
    with snaps.engine.connect() as conn:
        return bytes(conn.execute(sa.select(chunk_table.c.data)).scalar_one())


def _reseal_part(body: bytes, version: int = PART_VERSION) -> bytes:
    return struct.pack("<8sH32s", PART_MAGIC, version, hashlib.sha256(body).digest()) + body


@pytest.mark.parametrize("damage", ["bit flip", "unknown version", "a pickle"])
def test_a_refused_snapshot_leads_to_a_full_replay(tmp_path: Path, damage: str) -> None:
    h, store, snaps = _replayer_with_snapshot(tmp_path)
    blob = _blob(snaps)
    _set_blob(
        snaps,
        {
            "bit flip": blob[:-1] + bytes([blob[-1] ^ 1]),
            "unknown version": _reseal_part(blob[42:], PART_VERSION + 7),
            "a pickle": b"\x80\x05\x95" + bytes(40),
        }[damage],
    )
    fresh = Replayer(store, snapshots=snaps, source="t")
    assert not fresh.load_snapshot()
    assert fresh.position == 0
    assert fresh.catch_up() == h.core.size
    assert fresh.state == folded(h)


def test_a_snapshot_whose_row_disagrees_with_its_state_is_discarded(tmp_path: Path) -> None:
    _h, store, snaps = _replayer_with_snapshot(tmp_path)
    with snaps.engine.begin() as conn:
        conn.execute(head_table.update().values(size=sa.literal(1)))
    assert not Replayer(store, snapshots=snaps, source="t").load_snapshot()


def test_a_snapshot_that_does_not_match_the_log_is_discarded(tmp_path: Path) -> None:
    h, _store, snaps = _replayer_with_snapshot(tmp_path)
    # Another log of the same length: the entry at the snapshot's last position differs.
    other, _ = rich_harness()
    other.tick(5)  # other timestamps, so other entry hashes
    other_store = SQLiteLogStore(tmp_path / "other.db")
    entries = h.core.entries or []
    other_store.append([(e.body.event_id, e.entry_bytes) for e in entries[:-1]])
    other_store.append([(b"z" * 16, b"not the same entry")])
    fresh = Replayer(other_store, snapshots=snaps, source="t")
    assert not fresh.load_snapshot()
    assert fresh.position == 0


def test_the_checks_evidence_survives_a_snapshot() -> None:
    from tests.unit.test_planner_analysis import CHECK, report

    h = Harness()
    p, _ = h.approved(analysis=(CHECK,))
    h.ok(h.flow.step(p, 0, 10, "STARTED"))
    h.ok(h.flow.step(p, 1, 50, "ADVANCED"))
    report(h, p, 0.01, None, 0.2)
    state = folded(h)
    back = decode_state(encode_state(state))
    assert back == state
    assert back.ledger.proposals[p].checks[1]["error-rate"].values == (0.01, None, 0.2)


def test_a_restored_proposal_decodes_its_window_of_the_snapshot_not_all_of_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Whole snapshots (version 1) and chains of version 1: a window of BATCH_WINDOW proposals.
    import controller.snapshot as snapshot_module

    monkeypatch.setattr(snapshot_module, "BATCH_WINDOW", 2)
    h, _ = rich_harness()
    for i in range(4):
        h.ok(h.flow.propose(f"registry.example/model-server:w{i}", deployment="other"))
    state = folded(h)
    back = decode_state(encode_state(state))
    restored = list(back.ledger.proposals.values())
    assert len(restored) >= 5
    _ = restored[2].proposal
    assert ["proposal" in p.__dict__ for p in restored][:5] == [False, False, True, True, False]
    assert back == state
