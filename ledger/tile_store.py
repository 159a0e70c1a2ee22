"""The Merkle tree kept as C2SP tlog-tiles: a :class:`~ledger.merkle.NodeStore` whose durable
form is the tiles the ledger serves, so the tree's memory is its right edge, not its history.

:class:`~ledger.merkle.MemoryNodeStore` keeps every perfect-subtree hash of every level in
memory: about 64 bytes per leaf, 640 MB at ten million entries. A tlog-tiles log needs none of
that in memory. Tile ``N`` of tile level ``L`` (ledger.tiles) is the 256 hashes of tree level
``8 * L`` from index ``256 * N``; the tree levels ``8 * L + 1`` to ``8 * L + 7`` above them are
hashed from the tile when read (255 node hashes), and level ``8 * L + 8`` is the next tile
level. So :class:`TileNodeStore` keeps

* the *edge*: for every tree level, the nodes of the tile still being filled at its tile level
  (at most 256 hashes per tile level, a few KB in all);
* full tiles completed but not yet handed to the storage (until the ledger's store has made
  the entries they cover durable: :meth:`TileNodeStore.tiles_to_write`);
* a bounded cache of full tiles read back, each expanded into its eight levels;

and reads every other full tile from its :class:`TileStorage`. A tile read back is checked
before use: its hashes must hash up to the node the level above holds for it (from the edge,
which never left memory, or from an upper tile checked the same way), so a damaged tile is
:class:`TileDamagedError`, never a wrong proof.

The storage is a cache of what the entries determine, never trusted on its own: the ledger
fills a fresh store by replaying its log (``replaying=True``); each full tile completed then
is compared with the stored one and written when missing or different (:meth:`finish_replay`
and :attr:`repaired` say which). Partial tiles are written too (with the full tiles that
complete after them), for readers of the storage, but never read back: the edge holds them.

Pure: the storage is handed in (the SQLite store's is in ledger.store.sqlite), and the tree
math is :class:`~ledger.merkle.MerkleTree`'s. Measured on this machine (bench.proofs --tiles):
see docs/PERFORMANCE.md "Tiled tree".
"""

from __future__ import annotations

import hashlib
import threading
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from ledger.errors import DataLossError
from ledger.merkle import HASH_SIZE
from ledger.tiles import TILE_HEIGHT, TILE_WIDTH

__all__ = [
    "DEFAULT_CACHE_TILES",
    "MemoryTileStorage",
    "StoredTile",
    "TileDamagedError",
    "TileNodeStore",
    "TileStorage",
]

DEFAULT_CACHE_TILES = 512
"""Full tiles kept expanded in memory (about 16 KB each: 8 MB): the upper tiles every proof
walks stay here, so a cold proof reads about one tile per level-0 neighbourhood."""

REPLAY_WRITE_BATCH = 64
"""Tiles per storage transaction when a replay writes what it found missing (512 KB)."""

_FULL_BYTES = TILE_WIDTH * HASH_SIZE


class TileDamagedError(DataLossError):
    """A stored tile is not the tile the tree holds (a flipped bit, a truncated row, a tile of
    another log): observed vs expected in the message. Proofs fail rather than use it; the
    next replay rewrites it from the entries."""


@dataclass(frozen=True)
class StoredTile:
    """One hash tile as stored: tile level, index and its hashes (width = len // 32)."""

    level: int
    index: int
    hashes: bytes

    @property
    def width(self) -> int:
        return len(self.hashes) // HASH_SIZE


class TileStorage(Protocol):
    """Where the tiles live: one row per (level, index), the widest version written."""

    def read_tile(self, level: int, index: int) -> bytes | None:
        """The stored hashes of tile ``(level, index)`` (full or partial), None if absent."""
        ...

    def write_tiles(self, tiles: Sequence[StoredTile]) -> None:
        """Store every tile in one transaction, replacing what each (level, index) held."""
        ...


class MemoryTileStorage:
    """A :class:`TileStorage` in a dict: for tests and for tools without a store."""

    def __init__(self) -> None:
        self.tiles: dict[tuple[int, int], bytes] = {}
        self.writes = 0  # transactions, for tests

    def read_tile(self, level: int, index: int) -> bytes | None:
        return self.tiles.get((level, index))

    def write_tiles(self, tiles: Sequence[StoredTile]) -> None:
        self.writes += 1
        for t in tiles:
            self.tiles[(t.level, t.index)] = bytes(t.hashes)


def _expand(hashes: bytes) -> list[bytes]:
    """A full tile's eight levels: ``out[j]`` packs the 256 >> j nodes of tree level 8L + j,
    and ``out[8]`` the tile's root (the node of level 8L + 8 above it).

    Each pair of children lies side by side in the packed level, so a parent is one SHA-256 of
    ``0x01`` and a 64-byte slice (RFC 6962's node hash, without building ``left + right``):
    150 µs a tile against 260 µs through :func:`~ledger.merkle.node_hash` (measured here).
    """
    out = [hashes]
    level = hashes
    sha256, prefix, pair = hashlib.sha256, b"\x01", 2 * HASH_SIZE
    for _ in range(TILE_HEIGHT):
        level = b"".join(
            [sha256(prefix + level[i : i + pair]).digest() for i in range(0, len(level), pair)]
        )
        out.append(level)
    return out


class TileNodeStore:
    """A :class:`~ledger.merkle.NodeStore` over tlog-tiles (see the module docstring).

    Start it empty and feed it the log from the beginning (``MerkleTree(store)`` then
    ``append``): with ``replaying=True`` each full tile is checked against the storage as it
    completes; call :meth:`finish_replay` after the last entry of the replay. Afterwards full
    tiles wait in memory until :meth:`tiles_to_write` hands them out and :meth:`written` says
    they are stored.

    Threads: one appends (the writer's fold, under its lock); any number may read nodes below
    the counts they have seen at the same time, without that lock, so a proof that reads tiles
    back never holds up an append. A reader takes each level's edge as one (first, nodes) pair,
    which an append replaces rather than cuts; a full tile leaves ``_unwritten`` only after
    the storage has it; the cache has its own lock.
    """

    def __init__(
        self,
        storage: TileStorage,
        *,
        replaying: bool = False,
        cache_tiles: int = DEFAULT_CACHE_TILES,
        scratch: bool = False,
    ) -> None:
        if cache_tiles < 1:
            raise ValueError(f"cache_tiles is {cache_tiles}, expected >= 1")
        self._storage = storage
        self._replaying = replaying
        # A storage the server made for this run alone (ledger.spilled_index), empty at start
        # and never read as evidence: a replay writes each tile as it completes rather than
        # hold every one in memory until the replay is verified (320 MB at ten million).
        self._scratch = scratch
        self._cache_tiles = cache_tiles
        self._counts: list[int] = []  # hashes per tree level
        # Per tree level: (index of the first node kept, those nodes packed). Replaced, never
        # cut, when a new tile starts, so a reader holding the pair sees one consistent edge.
        self._edge: list[tuple[int, bytearray]] = []
        self._unwritten: dict[tuple[int, int], bytes] = {}  # full tiles not yet in storage
        # What the replay found missing or different, by key: written only by finish_replay,
        # so a start that refuses damaged history has written nothing (docs/RECOVERY.md).
        self._repairs: dict[tuple[int, int], bytes] = {}
        self._cache: OrderedDict[tuple[int, int], list[bytes]] = OrderedDict()
        self._cache_lock = threading.Lock()  # readers share the cache; the rest is theirs
        # Full tiles the replay found missing or different (partial ones, stale after any crash
        # between a batch and its next full tile, are rewritten without a word).
        self.repaired: list[tuple[int, int]] = []
        self.reads = 0  # tiles read back from the storage (for tests and the bench)

    # -- NodeStore ---------------------------------------------------------------------------

    def count(self, level: int) -> int:
        return self._counts[level] if 0 <= level < len(self._counts) else 0

    def append(self, level: int, node: bytes) -> None:
        if len(node) != HASH_SIZE:
            raise ValueError(f"node hash is {len(node)} bytes, expected {HASH_SIZE}")
        if level < 0 or level > len(self._counts):
            raise IndexError(f"cannot append to level {level}: {len(self._counts)} levels exist")
        if level == len(self._counts):
            self._counts.append(0)
            self._edge.append((0, bytearray()))
        i = self._counts[level]
        chunk = TILE_WIDTH >> (level % TILE_HEIGHT)  # nodes of this level in one tile
        first, nodes = self._edge[level]
        if i - first == chunk:  # the tile below is complete: this node starts the next one
            self._edge[level] = (i, bytearray(node))
        else:
            nodes += node
        self._counts[level] = i + 1
        if level % TILE_HEIGHT == 0 and (i + 1) % TILE_WIDTH == 0:
            self._completed(level // TILE_HEIGHT, i // TILE_WIDTH, bytes(self._edge[level][1]))

    def get(self, level: int, index: int) -> bytes:
        if not 0 <= index < self.count(level):
            raise IndexError(f"no node at level {level} index {index}")
        first, nodes = self._edge[level]
        if index >= first:
            at = (index - first) * HASH_SIZE
            return bytes(nodes[at : at + HASH_SIZE])
        tile_level, sub = divmod(level, TILE_HEIGHT)
        tile_index, offset = divmod(index, TILE_WIDTH >> sub)
        levels = self._full_tile(tile_level, tile_index)
        return levels[sub][offset * HASH_SIZE : (offset + 1) * HASH_SIZE]

    # -- tiles -------------------------------------------------------------------------------

    def tile(self, level: int, index: int, width: int = TILE_WIDTH) -> bytes:
        """The bytes of hash tile ``(level, index)`` of ``width`` hashes (a prefix of the full
        tile when partial), as tlog-tiles serves it."""
        tree_level = level * TILE_HEIGHT
        first = index * TILE_WIDTH
        if not 0 < width <= TILE_WIDTH or first + width > self.count(tree_level):
            raise IndexError(f"tile {level}/{index} of width {width} is beyond the tree")
        edge_first, nodes = self._edge[tree_level]
        if first >= edge_first:
            at = (first - edge_first) * HASH_SIZE
            return bytes(nodes[at : at + width * HASH_SIZE])
        return self._full_tile(level, index)[0][: width * HASH_SIZE]

    def tiles_to_write(self, size: int) -> list[StoredTile]:
        """What the storage lacks for a tree of ``size`` leaves (entries durable up to there):
        the full tiles completed within it, then its partial tiles. Empty when no full tile
        completed since the last call (partial tiles ride with full ones, so the storage is
        written once per 256 entries, not once per append)."""
        full = [
            StoredTile(level, index, hashes)
            for (level, index), hashes in self._unwritten.items()
            if (index + 1) << (TILE_HEIGHT * (level + 1)) <= size
        ]
        if not full:
            return []
        return full + self._partial_tiles(size)

    def written(self, tiles: Sequence[StoredTile]) -> None:
        """The storage holds ``tiles`` now: the full ones leave memory."""
        for t in tiles:
            if t.width == TILE_WIDTH:
                self._unwritten.pop((t.level, t.index), None)

    def finish_replay(self) -> None:
        """Write what the replay found missing or different (the partial tiles of the size
        replayed included), and leave replay mode. Call it once the replay is verified: until
        then nothing is written. Holds the tiles to write in memory meanwhile: nothing on a
        restart, 8 KB per 256 entries on the first start over a store without tiles (an
        upgrade; 320 MB at ten million entries, once)."""
        partial = [
            t
            for t in self._partial_tiles(self.count(0))
            if self._storage.read_tile(t.level, t.index) != t.hashes
        ]
        batch = [StoredTile(level, index, h) for (level, index), h in self._repairs.items()]
        batch += partial
        self._replaying = False
        try:
            for at in range(0, len(batch), REPLAY_WRITE_BATCH):
                self._storage.write_tiles(batch[at : at + REPLAY_WRITE_BATCH])
                for t in batch[at : at + REPLAY_WRITE_BATCH]:
                    self._repairs.pop((t.level, t.index), None)
        finally:
            # Whatever the storage did not take waits with the tiles appends complete, and is
            # offered again by tiles_to_write.
            self._unwritten.update(self._repairs)
            self._repairs = {}

    @property
    def nbytes(self) -> int:
        """Bytes of hashes held in memory: the edge, the unwritten tiles and the cache."""
        edge = sum(len(nodes) for _first, nodes in self._edge)
        unwritten = len(self._unwritten) * _FULL_BYTES
        cached = sum(len(level) for levels in self._cache.values() for level in levels)
        return edge + unwritten + cached

    @property
    def unwritten(self) -> int:
        """Full tiles held in memory for the storage."""
        return len(self._unwritten)

    # -- internals ---------------------------------------------------------------------------

    def _partial_tiles(self, size: int) -> list[StoredTile]:
        """The partial tiles of the tree of ``size`` leaves, lowest level first."""
        out: list[StoredTile] = []
        level = 0
        while have := size >> (TILE_HEIGHT * level):
            index, width = divmod(have, TILE_WIDTH)
            if width:
                out.append(StoredTile(level, index, self.tile(level, index, width)))
            level += 1
        return out

    def _completed(self, level: int, index: int, hashes: bytes) -> None:
        if not self._replaying:
            self._unwritten[(level, index)] = hashes
            return
        if self._scratch:
            self._storage.write_tiles([StoredTile(level, index, hashes)])
            return
        if self._storage.read_tile(level, index) != hashes:
            self.repaired.append((level, index))
            self._repairs[(level, index)] = hashes

    def _full_tile(self, level: int, index: int) -> list[bytes]:
        key = (level, index)
        with self._cache_lock:
            levels = self._cache.get(key)
            if levels is not None:
                self._cache.move_to_end(key)
                return levels
        hashes = self._unwritten.get(key)
        if hashes is None:
            hashes = self._repairs.get(key)
        checked = hashes is not None  # from memory: the tree's own nodes
        if hashes is None:
            hashes = self._storage.read_tile(level, index)
            self.reads += 1
            if hashes is None or len(hashes) != _FULL_BYTES:
                got = "nothing" if hashes is None else f"{len(hashes)} bytes"
                raise TileDamagedError(
                    f"tile {level}/{index}: the storage holds {got}, expected {_FULL_BYTES} bytes"
                )
        levels = _expand(hashes)
        if not checked:
            parent = self.get((level + 1) * TILE_HEIGHT, index)
            if levels[TILE_HEIGHT] != parent:
                raise TileDamagedError(
                    f"tile {level}/{index}: its hashes hash to {levels[TILE_HEIGHT].hex()}, "
                    f"expected {parent.hex()} (the node the tree holds above it)"
                )
        with self._cache_lock:
            self._cache[key] = levels
            if len(self._cache) > self._cache_tiles:
                self._cache.popitem(last=False)
        return levels
