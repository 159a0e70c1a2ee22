"""The per-entry indexes kept on disk (ledger.spilled_index) answer as the in-memory ones do.

Small flush sizes put almost every key in the scratch table, so the lookups below go to SQLite,
not to the dict in front of it.
"""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
import os
import random
import sqlite3
from pathlib import Path

import pytest

from ledger.core import DuplicateEventIdError, LedgerCore
from ledger.errors import ConfigError
from ledger.formats import SignedEvent, decode_body
from ledger.key_filter import KeyFilter
from ledger.merkle import MemoryNodeStore, MerkleTree
from ledger.scenario import Cast, Flow
from ledger.spilled_index import (
    ENTRY_TYPES,
    FIRST_FLUSH_AT,
    FLUSH_AT,
    FOUND_KEYS,
    WRITE_KEYS,
    ScratchIndexes,
    SpilledEntryIndex,
    SpilledMap,
    SpilledObjects,
    SpilledSeqColumns,
    bulk_insert,
)
from ledger.tile_store import TileNodeStore
from tests.unit.harness import Harness


def _key(i: int, width: int = 32) -> bytes:
    return hashlib.sha256(i.to_bytes(8, "big")).digest()[:width]


@pytest.fixture
def scratch() -> ScratchIndexes:
    db = ScratchIndexes(cache_kib=64)
    yield db
    db.close()


@pytest.mark.parametrize("flush_at", [1, 7, 1000])
@pytest.mark.parametrize(
    ("found_keys", "filtered"), [(0, False), (5, False), (0, True), (FOUND_KEYS, True)]
)
def test_random_additions_and_lookups_agree_with_a_dict(
    scratch: ScratchIndexes, flush_at: int, found_keys: int, filtered: bool
) -> None:
    rng = random.Random(flush_at)
    # A filter with a tiny first layer: many layers, and false positives that must still
    # be answered "absent" by the table.
    spilled: SpilledMap[object] = SpilledMap(
        scratch,
        "t",
        flush_at=flush_at,
        found_keys=found_keys,
        key_filter=KeyFilter(first_layer_keys=16, bits_per_key=2) if filtered else None,
    )
    plain: dict[bytes, object] = {}
    values: list[object] = [7, "HealthReported", b"\x01" * 32, 2**62]
    for i in range(3000):
        k = _key(i)
        v = rng.choice(values) if i % 3 else i
        spilled[k] = v
        plain[k] = v
        probe = _key(rng.randrange(4000))  # a quarter of the probes are absent
        assert spilled.get(probe) == plain.get(probe)
        assert (probe in spilled) == (probe in plain)
    assert len(spilled) == len(plain) == 3000
    assert sorted(spilled) == sorted(plain)
    for k, v in plain.items():
        assert spilled[k] == v
    with pytest.raises(KeyError):
        spilled[_key(5000)]
    assert spilled.get(_key(5000), "none") == "none"
    assert spilled.get("not bytes") is None  # type: ignore[arg-type]
    assert "not bytes" not in spilled


def test_a_filtered_map_asks_its_table_only_for_keys_it_may_hold(scratch: ScratchIndexes) -> None:
    """What the filter and the found keys are for: a new event id costs no query, and a
    proposal referred to again and again costs one."""
    spilled: SpilledMap[object] = SpilledMap(
        scratch, "t", flush_at=100, found_keys=4, key_filter=KeyFilter(first_layer_keys=1000)
    )
    for i in range(1000):
        spilled[_key(i)] = i
    spilled.flush()
    assert spilled.queries == 0
    absent = [_key(i) for i in range(1000, 3000)]
    assert not any(k in spilled for k in absent)
    assert spilled.queries < 0.05 * len(absent)  # the filter's false positives only
    before = spilled.queries
    for _ in range(50):
        assert spilled[_key(7)] == 7 and spilled.get(_key(8)) == 8
    assert spilled.queries == before + 2
    for i in range(20):  # more than found_keys distinct keys: the oldest are read again
        assert spilled[_key(i)] == i
    assert spilled[_key(7)] == 7
    assert spilled.queries == before + 2 + 20 + 1


def test_a_key_the_table_lacks_costs_one_query_when_asked_again_at_once(
    scratch: ScratchIndexes,
) -> None:
    """existing_receipt and then the rules look each new event id up: one that the filter lets
    through (every key here: no filter) is asked of the table once, not twice; and once it is
    added and written to the table, it is found."""
    spilled: SpilledMap[object] = SpilledMap(scratch, "t", flush_at=4, found_keys=0)
    for i in range(8):
        spilled[_key(i)] = i
    new = _key(100)
    assert spilled.get(new) is None and new not in spilled
    assert spilled.queries == 1
    spilled[new] = 100  # in memory first, then in the table
    assert spilled[new] == 100
    for i in range(8, 11):
        spilled[_key(i)] = i  # the fourth addition writes the batch with the new key in it
    assert spilled.queries == 1
    assert spilled[new] == 100 and new in spilled
    assert spilled.queries == 3  # read from the table, not answered "absent" from memory
    other = _key(200)
    assert other not in spilled and spilled.get(other) is None and spilled[new] == 100
    assert spilled.queries == 5


def test_a_spilled_map_only_grows(scratch: ScratchIndexes) -> None:
    spilled: SpilledMap[object] = SpilledMap(scratch, "t", flush_at=2)
    spilled[_key(1)] = 1
    with pytest.raises(TypeError, match="only grows"):
        del spilled[_key(1)]
    with pytest.raises(TypeError, match="bytes"):
        spilled["text"] = 1  # type: ignore[index]
    spilled[_key(2)] = 2  # flushed: both are in the table now
    spilled[_key(1)] = 3
    with pytest.raises(ValueError, match="t: a key added twice"):
        spilled[_key(3)] = 4  # the batch holding the repeated key is written


def _rows(scratch: ScratchIndexes, table: str = "t") -> int:
    (rows,) = scratch.execute(f"SELECT count(*) FROM {table}").fetchone()
    return int(rows)


@pytest.mark.parametrize("filtered", [False, True])
def test_a_generation_is_written_in_slices_while_the_next_fills(
    scratch: ScratchIndexes, filtered: bool
) -> None:
    """A generation of 8 * WRITE_KEYS keys: once full it is written a slice at a time, each
    write a fraction of it, all of it by the time the next generation is full; and
    every lookup on the way answers as a dict does."""
    flush_at = 8 * WRITE_KEYS
    rng = random.Random(8)
    spilled: SpilledMap[object] = SpilledMap(
        scratch,
        "t",
        flush_at=flush_at,
        found_keys=3,
        key_filter=KeyFilter(first_layer_keys=64, bits_per_key=4) if filtered else None,
    )
    plain: dict[bytes, object] = {}
    writes_seen: list[int] = []
    for i in range(3 * flush_at):
        k = _key(i, 16 if i % 2 else 32)
        spilled[k] = plain[k] = i
        if i % 97 == 0:
            probe = _key(rng.randrange(4 * flush_at))
            assert spilled.get(probe) == plain.get(probe)
            assert (probe in spilled) == (probe in plain)
            assert len(spilled) == len(plain)
        if i % 1024 == 0:
            stored = _rows(scratch)
            assert stored + spilled.in_memory == len(plain)
            writes_seen.append(stored)
        if i + 1 == flush_at + flush_at // 2:  # a key written for each addition, by slices
            assert flush_at // 2 - 2 * WRITE_KEYS <= _rows(scratch) <= flush_at // 2
        if i + 1 == 2 * flush_at:  # the first generation in the table, the second closed
            assert _rows(scratch) == flush_at and spilled.in_memory == flush_at
    assert writes_seen[:8] == [0] * 8  # nothing written while the first one filled
    steps = [b - a for a, b in itertools.pairwise(writes_seen)]
    assert max(steps) < flush_at  # written over many additions, never all at once
    assert spilled.writes >= 2 * 8 * 0.8  # two closed generations, about 8 slices each
    assert sorted(spilled) == sorted(plain)
    spilled.flush()
    assert _rows(scratch) == len(plain) and spilled.in_memory == 0
    for k, v in plain.items():
        assert spilled[k] == v


def test_a_map_holds_a_bigger_generation_as_its_table_grows(scratch: ScratchIndexes) -> None:
    """With `share`, a generation is that share of the keys (at least FIRST_FLUSH_AT, at most
    flush_at): a short log holds little in memory, a long one its most."""
    flush_at = 8 * WRITE_KEYS
    spilled: SpilledMap[object] = SpilledMap(scratch, "t", flush_at=flush_at, share=4)
    held_early = held_late = 0
    for i in range(48 * WRITE_KEYS):
        spilled[_key(i)] = i
        if len(spilled) < flush_at:
            held_early = max(held_early, spilled.in_memory)
        elif len(spilled) > 36 * WRITE_KEYS:
            held_late = max(held_late, spilled.in_memory)
    # At most a full generation, and the one before it not yet written.
    assert FIRST_FLUSH_AT - 1 <= held_early <= 2 * FIRST_FLUSH_AT
    assert flush_at - 1 <= held_late <= 2 * flush_at
    assert _rows(scratch) + spilled.in_memory == len(spilled) == 48 * WRITE_KEYS
    with pytest.raises(ValueError, match="share is 0"):
        SpilledMap(scratch, "u", share=0)


def test_a_scratch_map_starts_with_the_smallest_generation(scratch: ScratchIndexes) -> None:
    """What a server's maps do (ScratchIndexes.map): an empty table, so the first generation
    is FIRST_FLUSH_AT keys, written once full, not the FLUSH_AT a long log holds."""
    spilled = scratch.map("t")
    for i in range(2 * FIRST_FLUSH_AT):
        spilled[_key(i)] = i
    assert _rows(scratch) == FIRST_FLUSH_AT < FLUSH_AT


def test_keys_that_share_their_leading_bits_are_written_in_parts(
    scratch: ScratchIndexes,
) -> None:
    """Event ids counted up by their author all fall in one slice: it is written in parts of
    WRITE_KEYS, not in one statement that would hold the fold."""
    flush_at = 8 * WRITE_KEYS
    spilled: SpilledMap[object] = SpilledMap(scratch, "t", flush_at=flush_at)
    before = _rows(scratch)
    biggest = 0
    for i in range(2 * flush_at):
        spilled[i.to_bytes(16, "big")] = i
        stored = _rows(scratch)
        biggest = max(biggest, stored - before)
        before = stored
    assert _rows(scratch) == flush_at  # the first generation, in the table
    assert biggest == 2 * WRITE_KEYS  # six parts of WRITE_KEYS, then the last two together
    assert spilled.writes == 7
    assert [spilled[i.to_bytes(16, "big")] for i in range(0, 2 * flush_at, 999)] == list(
        range(0, 2 * flush_at, 999)
    )


def test_keys_shorter_than_the_slice_prefix_are_kept_too(scratch: ScratchIndexes) -> None:
    spilled: SpilledMap[object] = SpilledMap(scratch, "t", flush_at=4 * WRITE_KEYS)
    keys = [b"", b"\x00", b"\xff", b"\x7f"] + [_key(i) for i in range(4 * WRITE_KEYS)]
    for i, k in enumerate(keys):
        spilled[k] = i
    spilled.flush()
    assert _rows(scratch) == len(keys)
    assert [spilled[k] for k in keys[:4]] == [0, 1, 2, 3]
    assert sorted(spilled) == sorted(keys)


def test_a_key_added_twice_in_a_sliced_generation_is_refused_when_written(
    scratch: ScratchIndexes,
) -> None:
    flush_at = 4 * WRITE_KEYS
    spilled: SpilledMap[object] = SpilledMap(scratch, "t", flush_at=flush_at)
    spilled[_key(0)] = 0
    spilled[_key(0)] = 0  # in memory both times: found out only when its slice is written
    with pytest.raises(ValueError, match="t: a key added twice"):
        for i in range(1, 2 * flush_at):
            spilled[_key(i)] = i
    assert _rows(scratch) < flush_at  # its slice was not written; the ones before it were
    with pytest.raises(ValueError, match="a key added twice"):
        spilled.flush()  # and every later write says so again


@pytest.mark.parametrize("flush_at", [1, 7, 1000])
def test_entry_seqs_and_types_in_one_table_answer_as_two_dicts(
    scratch: ScratchIndexes, flush_at: int
) -> None:
    rng = random.Random(flush_at)
    index = SpilledEntryIndex(SpilledMap(scratch, "entries", flush_at=flush_at, found_keys=3))
    seqs: dict[bytes, int] = {}
    types: dict[bytes, str] = {}
    for seq in range(3000):
        k = _key(seq)
        name = ENTRY_TYPES[seq % len(ENTRY_TYPES)] if seq % 5 else rng.choice(ENTRY_TYPES)
        # In the order LedgerState.apply writes them.
        index.seqs[k], seqs[k] = seq, seq
        index.types[k], types[k] = name, name
        probe = _key(rng.randrange(4000))  # a quarter of the probes are absent
        assert index.seqs.get(probe) == seqs.get(probe)
        assert index.types.get(probe, "nothing") == types.get(probe, "nothing")
        assert (probe in index.types) == (probe in types) == (probe in index.seqs)
    assert len(index.seqs) == len(index.types) == 3000
    assert sorted(index.seqs) == sorted(index.types) == sorted(seqs)
    for k in seqs:
        assert (index.seqs[k], index.types[k]) == (seqs[k], types[k])
    with pytest.raises(KeyError):
        index.types[_key(5000)]
    # One table holds both: a row per entry.
    (rows,) = scratch.execute("SELECT count(*) FROM entries").fetchone()
    assert rows + index.table.in_memory == 3000


def test_an_entry_index_refuses_a_type_without_its_seq_and_an_unknown_type(
    scratch: ScratchIndexes,
) -> None:
    index = SpilledEntryIndex(SpilledMap(scratch, "entries", flush_at=1))
    with pytest.raises(ValueError, match="right after its seq, never alone"):
        index.types[_key(1)] = "HealthReported"
    index.seqs[_key(1)] = 0
    with pytest.raises(ValueError, match="seq 1 set while seq 0 has no type"):
        index.seqs[_key(2)] = 1
    index.seqs[_key(2)] = 1
    with pytest.raises(ValueError, match="right after its seq"):
        index.types[_key(1)] = "HealthReported"  # not the key whose seq is waiting
    index.seqs[_key(3)] = 2
    with pytest.raises(ValueError, match="'Gossip' is not an entry type"):
        index.types[_key(3)] = "Gossip"
    with pytest.raises(ValueError, match="out of range"):
        index.seqs[_key(4)] = -1
    with pytest.raises(TypeError, match="bytes"):
        index.seqs["text"] = 3  # type: ignore[index]
    assert len(index.types) == 0  # nothing half-written: no row without both halves
    index.seqs[_key(5)] = 0
    index.types[_key(5)] = "LedgerGenesis"
    assert (index.seqs[_key(5)], index.types[_key(5)]) == (0, "LedgerGenesis")
    with pytest.raises(TypeError, match="only grows"):
        del index.types[_key(5)]


def test_a_table_name_must_be_an_identifier(scratch: ScratchIndexes) -> None:
    with pytest.raises(ValueError, match="not an identifier"):
        SpilledMap(scratch, "t; DROP TABLE x")


def test_seq_columns_read_back_every_seq_from_memory_and_from_disk(
    scratch: ScratchIndexes,
) -> None:
    columns = SpilledSeqColumns(scratch, flush_at=5)
    rows = [(_key(i), _key(i + 10_000), 1_700_000_000_000 + i) for i in range(23)]
    for row in rows:
        columns.append(*row)
    assert len(columns) == 23
    for seq, row in enumerate(rows):  # 0..19 from the table, 20..22 from memory
        assert columns[seq] == row
    for bad in (-1, 23):
        with pytest.raises(IndexError, match=f"seq {bad} of 23"):
            columns[bad]


def test_the_scratch_database_has_no_name_anyone_could_open(tmp_path: Path) -> None:
    """Created in the directory given and unlinked at once: nothing else can open it, and it
    is gone with the process, even one that is killed."""
    db = ScratchIndexes(tmp_path, cache_kib=64)
    try:
        spilled = db.map("t")
        for i in range(20_000):  # 20,000 keys of 32 bytes: well past a 64 KiB cache
            spilled[_key(i)] = i
        spilled.flush()
        assert db.size_bytes() > 500_000
        assert os.listdir(tmp_path) == []
        assert spilled[_key(12_345)] == 12_345
        # The process still holds it, unlinked, and nothing but it: no journal beside it.
        held = []
        for fd in os.listdir("/proc/self/fd"):
            try:  # (the descriptor listdir itself used is gone by now)
                held.append(os.readlink(f"/proc/self/fd/{fd}"))
            except FileNotFoundError:
                continue
        ours = [h for h in held if h.startswith(str(tmp_path))]
        assert len(ours) == 1 and ours[0].endswith(".sqlite (deleted)"), ours
    finally:
        db.close()


def test_a_directory_that_cannot_hold_it_is_named(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=f"the scratch directory {tmp_path / 'missing'} cannot"):
        ScratchIndexes(tmp_path / "missing")


def _events(flow: Flow) -> list[SignedEvent]:
    events = [flow.genesis(), *flow.grants(), flow.policy()]
    return events + [flow.propose(f"registry.example/m:v{i}") for i in range(40)]


def test_a_core_on_scratch_indexes_folds_and_answers_as_one_in_memory() -> None:
    flow = Flow(Cast.create(seed="spilled"))
    events = _events(flow)
    # Batches of 4: all but the last few additions are looked up in the scratch tables.
    cores = [LedgerCore(), LedgerCore(scratch=ScratchIndexes(cache_kib=64, flush_at=4))]
    try:
        receipts = []
        evals: list[SignedEvent] = []
        for core in cores:
            tick = iter(range(1_700_000_000_000, 1_800_000_000_000, 1000)).__next__
            got = [core.append(e, tick) for e in events]
            if not evals:  # the same events for both cores: the proposal's hash is the same
                proposal = got[-1].leaf_hash
                evals = [flow.eval(proposal, "safety", 0.97), flow.eval(proposal, "quality", 0.86)]
            got += [core.append(e, tick) for e in evals]
            # A retry of an early event: its seq is long in the scratch table by now.
            got.append(core.append(events[3], tick))
            receipts.append(got)
        memory, spilled = cores
        assert receipts[0] == receipts[1]
        assert receipts[1][-1].duplicate and receipts[1][-1].seq == 3
        for name in ("event_ids", "entry_types", "entry_seqs", "evals"):
            a, b = getattr(memory.state, name), getattr(spilled.state, name)
            assert len(a) == len(b), name
            assert {k: a[k] for k in a} == {k: b[k] for k in b}, name
        # The same event id with another body is refused from the table too.
        clash = flow.propose("registry.example/other:v1")
        taken = dataclasses.replace(
            decode_body(clash.body), event_id=decode_body(events[5].body).event_id
        )
        with pytest.raises(DuplicateEventIdError, match="already at seq 5"):
            spilled.existing_receipt(clash, body=taken)
    finally:
        for core in cores:
            core.close()


def test_spilled_objects_keep_every_change_made_after_a_lookup(scratch: ScratchIndexes) -> None:
    """Objects paged out and back in, as a server's proposals are, with changes made to each
    right after looking it up, end up as a dict changed the same way ends up."""
    rng = random.Random(3)
    spilled: SpilledObjects[dict[str, list[int]]] = SpilledObjects(scratch, "objects", hot=3)
    plain: dict[bytes, dict[str, list[int]]] = {}
    for step in range(2000):
        if step % 10 == 0 or not plain:
            k = _key(len(plain))
            spilled[k] = {"changes": []}
            plain[k] = {"changes": []}
        k = rng.choice(list(plain))
        spilled[k]["changes"].append(step)
        plain[k]["changes"].append(step)
    assert spilled.in_memory == 3
    assert spilled.loads > 1000  # most lookups read the object back from the table
    assert len(spilled) == len(plain) == 200
    assert list(spilled) == sorted(plain)
    assert {k: spilled[k] for k in plain} == plain


def test_membership_never_reads_an_object_back(scratch: ScratchIndexes) -> None:
    spilled: SpilledObjects[list[int]] = SpilledObjects(scratch, "objects", hot=1)
    spilled[_key(1)] = [1]
    spilled[_key(2)] = [2]  # _key(1) is pickled out
    loads = spilled.loads
    assert _key(1) in spilled and _key(3) not in spilled and "text" not in spilled
    assert spilled.loads == loads
    assert spilled.get(_key(3)) is None and spilled[_key(1)] == [1]
    spilled[_key(1)] = [10]  # a new value for a key: one key still
    assert len(spilled) == 2 and spilled[_key(1)] == [10] and spilled[_key(2)] == [2]
    with pytest.raises(TypeError, match="only grow"):
        del spilled[_key(1)]
    with pytest.raises(ValueError, match="hot is 0"):
        SpilledObjects(scratch, "other", hot=0)


def test_a_server_state_pages_its_proposals_and_folds_as_the_in_memory_one() -> None:
    """Many proposals, one in memory at a time: every eval and approval reads its proposal
    back, changes it, and the next lookup of another one writes it out."""
    memory = Harness.on("in-memory")
    start = memory.now
    events: list[SignedEvent] = []

    def ok(event: SignedEvent) -> bytes:
        events.append(event)
        return memory.ok(event)

    for event in [memory.flow.genesis(), *memory.flow.grants(), memory.flow.policy()]:
        ok(event)
    proposals = [ok(memory.flow.propose(f"registry.example/m:v{i}")) for i in range(6)]
    for p in proposals + proposals[::-1]:
        ok(memory.flow.eval(p, "safety", 0.97))
    for p in proposals:
        safety = memory.core.state.proposals[p].latest_evals["safety"].entry_hash
        ok(memory.flow.approve(p, (safety, ok(memory.flow.eval(p, "quality", 0.86))), "alice"))

    spilled = Harness.on("spilled")
    spilled.now = start
    for event in events:
        spilled.ok(event)
    objects = spilled.core.state.proposals
    assert isinstance(objects, SpilledObjects) and objects.loads >= 12  # each read back twice+
    assert memory.core.tree.root() == spilled.core.tree.root()
    assert dict(memory.core.state.proposals) == {k: objects[k] for k in objects}
    assert all(len(p.approvals) == 1 for p in memory.core.state.proposals.values())
    for h in (memory, spilled):
        h.core.close()


def test_a_tree_kept_as_tiles_in_the_scratch_file_is_the_memory_tree(
    scratch: ScratchIndexes,
) -> None:
    """A store without tiles (Kafka) keeps the tree's tiles in the scratch file, written as
    its start's replay completes each one (never held until the end, as tiles for the store
    are): read back (a cache of one tile), every root and proof is the in-memory tree's."""
    leaves = [_key(i) for i in range(70_000)]  # past a full level-1 tile (65,536 leaves)
    storage = scratch.tile_storage()
    store = TileNodeStore(storage, cache_tiles=1, replaying=True, scratch=True)
    tree = MerkleTree(store)
    for i, leaf in enumerate(leaves):
        tree.append(leaf)
        if i == 30_000:  # mid-replay: what completed is in the file, not in memory
            assert storage.read_tile(0, 116) is not None and store.nbytes < 64 * 1024
    store.finish_replay()
    assert store.unwritten == 0 and store.repaired == []
    memory = MerkleTree.from_leaves(leaves, MemoryNodeStore())
    rng = random.Random(5)
    for size in (1, 256, 257, 65_536, 65_537, 70_000, *rng.sample(range(1, 70_000), 10)):
        assert tree.root(size) == memory.root(size), size
        index = rng.randrange(size)
        assert tree.inclusion_proof(index, size) == memory.inclusion_proof(index, size)
    assert store.reads > 10  # tiles did come back from the scratch file
    assert storage.read_tile(0, 0) == b"".join(leaves[:256])
    assert storage.read_tile(9, 0) is None


@pytest.mark.parametrize(
    ("values", "bulk"),
    [
        ([0, 1, -1, 2**63 - 1, -(2**63), 7], True),
        (["HealthReported", "EvalRecorded", "", "x" * 300, 'a"b\\c\n\t'], True),
        ([_key(i) for i in range(5)], True),
        ([2**63, 1], False),  # past SQLite's integers
        (["é", "a"], False),  # not ASCII
        ([1, "a"], False),  # mixed
        ([b"ab", b"abc"], False),  # bytes of two widths
        ([b"", b""], False),
        ([1.5, 2.5], False),
    ],
)
def test_bulk_insert_stores_what_row_by_row_stores(
    scratch: ScratchIndexes, values: list[object], bulk: bool
) -> None:
    """The one-statement flush (bulk_insert) is held to executemany: same keys, values and
    SQLite types; rows it does not fit are left to executemany."""
    rows = sorted((_key(i + 100), v) for i, v in enumerate(values))
    scratch.execute("CREATE TABLE a (k BLOB PRIMARY KEY, v) WITHOUT ROWID")
    scratch.execute("CREATE TABLE b (k BLOB PRIMARY KEY, v) WITHOUT ROWID")
    statement = bulk_insert("a", rows)
    assert (statement is not None) == bulk
    if statement is None:
        return
    scratch.execute(*statement)
    scratch.executemany("INSERT INTO b (k, v) VALUES (?, ?)", rows)  # type: ignore[arg-type]
    read = "SELECT k, v, typeof(v) FROM {} ORDER BY k"
    assert (
        scratch.execute(read.format("a")).fetchall() == scratch.execute(read.format("b")).fetchall()
    )
    # A key already there fails the statement whole: nothing of it is left.
    again = bulk_insert("a", sorted([(_key(1), values[0]), rows[0]]))
    assert again is not None
    with pytest.raises(sqlite3.IntegrityError):
        scratch.execute(*again)
    assert scratch.execute("SELECT count(*) FROM a").fetchone()[0] == len(rows)


def test_bulk_insert_needs_keys_of_one_width() -> None:
    assert bulk_insert("t", [(b"ab", 1), (b"abc", 2)]) is None
    # Widths that add up to a multiple of the first one's are still refused.
    assert bulk_insert("t", [(b"ab", 1), (b"cdef", 2), (b"", 3)]) is None
    assert bulk_insert("t", [(b"ab", b"ab"), (b"cd", b"cdef"), (b"ef", b"")]) is None
    assert bulk_insert("t", [(b"", 1)]) is None
    assert bulk_insert("t", []) is None


def test_seq_columns_flush_in_one_statement_reads_back_as_appended(
    scratch: ScratchIndexes,
) -> None:
    columns = SpilledSeqColumns(scratch, flush_at=1000)
    rows = [(_key(i), _key(i + 5000), (-1) ** i * (2**63 - 1 - i)) for i in range(2500)]
    for row in rows:
        columns.append(*row)
    columns.flush()
    typed = scratch.execute(
        "SELECT DISTINCT typeof(leaf), typeof(digest), typeof(at) FROM seq_columns"
    )
    assert typed.fetchall() == [("blob", "blob", "integer")]
    assert [columns[seq] for seq in range(2500)] == rows
    # Hashes of other sizes (never a server's) go row by row, and read back as they came.
    odd = [(b"\x01" * 31, b"\x02" * 33, 5), (b"\x03" * 33, b"\x04" * 31, 6)]
    for row in odd:
        columns.append(*row)
    columns.flush()
    assert [columns[2500], columns[2501]] == odd
