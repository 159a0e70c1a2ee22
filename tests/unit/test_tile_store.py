"""The tree kept as tlog-tiles (ledger.tile_store) is the in-memory tree, node for node.

Every root, proof and tile of a :class:`TileNodeStore` tree equals that of the plain
:class:`MemoryNodeStore` tree over the same leaves, at every size tried, whether the tiles
come from memory, from the cache or read back from the storage; a damaged stored tile is an
error, never a wrong proof; a replay rewrites what the storage lacks or holds wrong.
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Sequence

import pytest

from ledger import tiles
from ledger.errors import DataLossError, StoreUnavailableError
from ledger.merkle import MemoryNodeStore, MerkleTree, verify_inclusion
from ledger.tile_store import MemoryTileStorage, StoredTile, TileDamagedError, TileNodeStore

# Past one full level-1 tile (65,536 leaves), so tile level 1 is read back from the storage.
SIZE = 66_000


def _leaves(n: int, salt: bytes = b"") -> list[bytes]:
    return [hashlib.sha256(salt + i.to_bytes(8, "big")).digest() for i in range(n)]


LEAVES = _leaves(SIZE)


@pytest.fixture(scope="module")
def memory_tree() -> MerkleTree:
    return MerkleTree.from_leaves(LEAVES, MemoryNodeStore())


def _tiled(storage: MemoryTileStorage, n: int, *, cache_tiles: int = 1) -> TileNodeStore:
    """A tile tree of the first n leaves, every completed tile written as the ledger does."""
    store = TileNodeStore(storage, cache_tiles=cache_tiles)
    tree = MerkleTree(store)
    for i, leaf in enumerate(LEAVES[:n]):
        tree.append(leaf)
        if i % 1000 == 999:
            store.written(_write(storage, store, i + 1))
    store.written(_write(storage, store, n))
    return store


def _write(storage: MemoryTileStorage, store: TileNodeStore, size: int) -> list[StoredTile]:
    due = store.tiles_to_write(size)
    if due:
        storage.write_tiles(due)
    return due


def test_every_root_proof_and_tile_equals_the_memory_trees(memory_tree: MerkleTree) -> None:
    storage = MemoryTileStorage()
    store = _tiled(storage, SIZE)
    tree = MerkleTree(store)
    assert tree.size == SIZE and store.unwritten == 0
    rng = random.Random(7)
    sizes = [1, 2, 255, 256, 257, 65_535, 65_536, 65_537, SIZE, *rng.sample(range(1, SIZE), 40)]
    for size in sizes:
        assert tree.root(size) == memory_tree.root(size), size
        for index in {0, size - 1, rng.randrange(size)}:
            proof = tree.inclusion_proof(index, size)
            assert proof == memory_tree.inclusion_proof(index, size), (index, size)
            assert verify_inclusion(LEAVES[index], index, size, proof, memory_tree.root(size))
        size1 = rng.randrange(size + 1)
        assert tree.consistency_proof(size1, size) == memory_tree.consistency_proof(size1, size)
    for ref in tiles.tiles_for_size(SIZE):
        assert ref.level is not None
        expected = tiles.tile_hashes(memory_tree, ref)
        assert store.tile(ref.level, ref.index, ref.width) == expected, ref
        assert tiles.tile_hashes(tree, ref) == expected, ref
    # Most of that came back from the storage: the cache holds a single tile.
    assert store.reads > 100


def test_the_storage_holds_the_spec_tiles_and_memory_only_the_edge(
    memory_tree: MerkleTree,
) -> None:
    storage = MemoryTileStorage()
    store = _tiled(storage, SIZE)
    expected = {
        (ref.level, ref.index): tiles.tile_hashes(memory_tree, ref)
        for ref in tiles.tiles_for_size(SIZE)
    }
    # Every tile of the tree, full and partial, at its widest: 257 full level-0 tiles, one
    # full level-1 tile, the partial ones of size 66,000 (width 208 at level 0, 1 at level 1).
    assert storage.tiles == expected
    assert len(storage.tiles[(0, 257)]) == 208 * 32 and len(storage.tiles[(1, 1)]) == 32
    # Memory: the edge (at most 256 nodes per level) and no tile waiting for the storage.
    held = sum(len(nodes) for _first, nodes in store._edge)
    assert held <= 8 * 1024 * 3 and store.unwritten == 0


def test_tiles_wait_for_the_durable_size_before_they_are_handed_out() -> None:
    storage = MemoryTileStorage()
    store = TileNodeStore(storage)
    tree = MerkleTree(store)
    for leaf in LEAVES[:600]:
        tree.append(leaf)
    # Entries durable up to 300: only tile 0/0 (leaves 0-255) may be stored, with the
    # partial tiles of size 300 (0/1 of 44 hashes, 1/0 of one: tile 0/0's root); tile 0/1
    # (leaves 256-511) is complete but not durable yet.
    due = store.tiles_to_write(300)
    assert [(t.level, t.index, t.width) for t in due] == [(0, 0, 256), (0, 1, 44), (1, 0, 1)]
    storage.write_tiles(due)
    store.written(due)
    assert store.unwritten == 1
    # Nothing new completed within 300: nothing to write (partials ride with full tiles).
    assert store.tiles_to_write(300) == []
    due = store.tiles_to_write(600)
    assert [(t.level, t.index, t.width) for t in due] == [(0, 1, 256), (0, 2, 88), (1, 0, 2)]


def test_a_damaged_stored_tile_is_an_error_never_a_wrong_proof() -> None:
    storage = MemoryTileStorage()
    store = _tiled(storage, 3000)
    tree = MerkleTree(store)
    good = tree.inclusion_proof(300, 3000)
    tree.inclusion_proof(0, 3000)  # reads tile 0/0: the one-tile cache lets 0/1 go
    flipped = bytearray(storage.tiles[(0, 1)])
    flipped[5] ^= 1
    storage.tiles[(0, 1)] = bytes(flipped)
    with pytest.raises(
        TileDamagedError, match=r"tile 0/1: its hashes hash to [0-9a-f]{64}, expected"
    ):
        tree.inclusion_proof(300, 3000)
    assert issubclass(TileDamagedError, DataLossError)  # DATA_LOSS over gRPC
    storage.tiles[(0, 1)] = storage.tiles[(0, 1)][:-32]  # a truncated row (nothing was cached)
    with pytest.raises(TileDamagedError, match="holds 8160 bytes, expected 8192 bytes"):
        tree.inclusion_proof(300, 3000)
    del storage.tiles[(0, 1)]
    with pytest.raises(TileDamagedError, match="holds nothing"):
        tree.inclusion_proof(300, 3000)
    # Proofs that do not read that tile are unaffected; the edge never left memory.
    assert tree.inclusion_proof(2999, 3000) == MerkleTree.from_leaves(
        LEAVES[:3000]
    ).inclusion_proof(2999, 3000)
    assert good


def test_a_replay_rewrites_missing_and_different_tiles_and_keeps_good_ones() -> None:
    storage = MemoryTileStorage()
    _tiled(storage, 3000)
    before = dict(storage.tiles)
    del storage.tiles[(0, 2)]
    storage.tiles[(0, 7)] = bytes(8192)  # another log's tile, or zeroed by damage
    writes = storage.writes
    store = TileNodeStore(storage, replaying=True)
    tree = MerkleTree(store)
    for leaf in LEAVES[:3000]:
        tree.append(leaf)
    store.finish_replay()
    assert store.repaired == [(0, 2), (0, 7)]
    assert storage.tiles == before
    assert storage.writes == writes + 1  # one transaction for both
    assert store.unwritten == 0  # nothing held: the storage has every full tile


def test_a_replay_writes_nothing_until_it_is_finished_then_in_batches() -> None:
    """A start that refuses damaged history must leave the store as it found it."""
    storage = MemoryTileStorage()
    store = TileNodeStore(storage, replaying=True)
    tree = MerkleTree(store)
    for leaf in LEAVES[:40_000]:
        tree.append(leaf)
    assert storage.writes == 0 and storage.tiles == {}
    # Proofs during a replay (checkpoint roots) read the tiles still held.
    assert tree.inclusion_proof(5, 40_000) == MerkleTree.from_leaves(
        LEAVES[:40_000]
    ).inclusion_proof(5, 40_000)
    store.finish_replay()
    # 156 full tiles and the partial ones of size 40,000 (0/156 of 64 hashes, 1/0 of 156),
    # 64 per transaction.
    assert storage.writes == 3 and len(storage.tiles) == 158
    assert len(storage.tiles[(0, 156)]) == 64 * 32 and len(storage.tiles[(1, 0)]) == 156 * 32
    assert len(store.repaired) == 156  # the full ones


def test_a_node_store_that_is_not_empty_cannot_start_a_core() -> None:
    from ledger.core import LedgerCore

    tree = MerkleTree.from_leaves(LEAVES[:3])
    with pytest.raises(ValueError, match="needs an empty tree, this one has 3"):
        LedgerCore(tree=tree)


class _FullDisk(MemoryTileStorage):
    """Takes the first `room` writes, then fails as a full disk does."""

    def __init__(self, room: int) -> None:
        super().__init__()
        self.room = room

    def write_tiles(self, tiles: Sequence[StoredTile]) -> None:
        if self.room == 0:
            raise StoreUnavailableError("database or disk is full")
        self.room -= 1
        super().write_tiles(tiles)


def test_tiles_a_replay_could_not_write_are_offered_again_later() -> None:
    storage = _FullDisk(room=1)  # one batch of 64 goes in, then the disk is full
    store = TileNodeStore(storage, replaying=True)
    tree = MerkleTree(store)
    for leaf in LEAVES[:40_000]:
        tree.append(leaf)
    with pytest.raises(StoreUnavailableError):
        store.finish_replay()
    assert len(storage.tiles) == 64 and store.unwritten == 156 - 64
    # Proofs still work from what memory holds; the rest is offered with the next write.
    assert tree.root() == MerkleTree.from_leaves(LEAVES[:40_000]).root()
    storage.room = 10
    for leaf in LEAVES[40_000:40_256]:
        tree.append(leaf)
    due = store.tiles_to_write(40_256)
    storage.write_tiles(due)
    store.written(due)
    assert store.unwritten == 0
    assert all((0, i) in storage.tiles for i in range(157))
