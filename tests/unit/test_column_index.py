"""ColumnIndex (ledger.column_index) behaves as the dict it replaces, in a fraction of the memory."""

from __future__ import annotations

import hashlib
import random
import tracemalloc

import pytest

from ledger.column_index import ColumnIndex
from ledger.core import LedgerCore
from ledger.scenario import Cast, Flow


def _key(i: int, width: int = 16) -> bytes:
    return hashlib.sha256(i.to_bytes(8, "big")).digest()[:width]


def test_random_operations_agree_with_a_dict() -> None:
    rng = random.Random(5)
    index = ColumnIndex.ints(16)
    plain: dict[bytes, int] = {}
    # 60,000 keys: every segment grows several times.
    for i in range(60_000):
        key = _key(rng.randrange(80_000))
        value = rng.randrange(1 << 40)
        index[key] = value  # a key seen before is overwritten, as in a dict
        plain[key] = value
        if i % 997 == 0:
            probe = _key(rng.randrange(100_000))
            assert (probe in index) == (probe in plain)
            assert index.get(probe) == plain.get(probe)
    assert len(index) == len(plain)
    assert list(index) == list(plain)  # insertion order, as a dict
    assert dict(index.items()) == plain
    assert index == plain
    for key, value in plain.items():
        assert index[key] == value


def test_keys_of_another_width_or_type_are_misses_and_cannot_be_added() -> None:
    index = ColumnIndex.ints(16)
    index[_key(1)] = 7
    for other in (_key(1, 15), _key(1, 17), bytearray(_key(1)), "x" * 16, None, 1):
        assert other not in index
        assert index.get(other) is None  # type: ignore[arg-type]
        with pytest.raises(KeyError):
            index[other]  # type: ignore[index]
    with pytest.raises(ValueError, match="key is 15 bytes, expected 16"):
        index[_key(1, 15)] = 1
    with pytest.raises(ValueError, match="key is str bytes, expected 16"):
        index["x" * 16] = 1  # type: ignore[index]
    with pytest.raises(TypeError, match="only grows"):
        del index[_key(1)]
    assert dict(index.items()) == {_key(1): 7}


def test_a_name_column_holds_event_types_in_a_byte_each() -> None:
    index = ColumnIndex.names(32)
    names = ["ProposalSubmitted", "EvalRecorded", "ApprovalRecorded"]
    for i in range(3000):
        index[_key(i, 32)] = names[i % 3]
    assert [index[_key(i, 32)] for i in range(6)] == names * 2
    index[_key(0, 32)] = "RolloutStep"
    assert index[_key(0, 32)] == "RolloutStep"
    many = ColumnIndex.names(4)
    for i in range(256):
        many[i.to_bytes(4, "big")] = f"type{i}"
    with pytest.raises(ValueError, match="at most 256 distinct names"):
        many[(999).to_bytes(4, "big")] = "one too many"
    assert len(many) == 256


def test_memory_per_entry_is_a_fraction_of_a_dicts() -> None:
    n = 100_000
    keys = [_key(i) for i in range(n)]  # allocated before tracing: both hold the same keys
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        plain = {k: i + 1000 for i, k in enumerate(keys)}
        dict_bytes = tracemalloc.get_traced_memory()[0] - before
        del plain
        before = tracemalloc.get_traced_memory()[0]
        index = ColumnIndex.ints(16)
        for i, k in enumerate(keys):
            index[k] = i + 1000
        index_bytes = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    # The dict holds pointers to the caller's keys (and int objects); the index copies each
    # key's 16 bytes and still takes less. With the keys' own objects counted (49 bytes each),
    # as they are when the decoder made them for the dict alone, the gap is wider still.
    assert index_bytes / n < 48, index_bytes / n
    assert index_bytes < dict_bytes, (index_bytes / n, dict_bytes / n)


def test_the_ledger_core_keeps_its_per_entry_maps_as_columns() -> None:
    core = LedgerCore()
    flow = Flow(Cast.create())
    clock = iter(range(1_700_000_000_000, 1_800_000_000_000, 1000))
    events = [flow.genesis(), *flow.grants(), flow.policy()]
    events += [flow.propose(f"registry.example/m:v{i}") for i in range(50)]
    receipts = [core.append(e, lambda: next(clock)) for e in events]
    state = core.state
    assert isinstance(state.event_ids, ColumnIndex) and len(state.event_ids) == len(events)
    for r in receipts:
        assert state.entry_seqs[r.leaf_hash] == r.seq
    assert state.entry_types[receipts[-1].leaf_hash] == "ProposalSubmitted"
    # A retry is answered from the columns with the original receipt.
    again = core.append(events[7], lambda: next(clock))
    assert (again.seq, again.leaf_hash, again.received_at, again.duplicate) == (
        receipts[7].seq,
        receipts[7].leaf_hash,
        receipts[7].received_at,
        True,
    )


def test_keys_alike_but_for_a_few_bytes_still_spread_over_every_segment() -> None:
    """A signer chooses its event ids: keys that share all but their last two bytes (which a
    table indexed by the key's own leading bytes would pile into one probe chain) spread over
    the segments and their slots as any keys do, through Python's randomised hash."""
    index = ColumnIndex.ints(16)
    prefix = b"\x00" * 14
    for i in range(20_000):
        index[prefix + i.to_bytes(2, "big")] = i
    used = index._used
    assert min(used) > 0.5 * 20_000 / 256, sorted(used)[:5]  # no segment starved...
    assert max(used) < 2.0 * 20_000 / 256, sorted(used)[-5:]  # ...and none piled up
    assert all(index[prefix + i.to_bytes(2, "big")] == i for i in range(0, 20_000, 7))
