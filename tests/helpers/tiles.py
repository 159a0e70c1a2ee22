"""A tiled log as a static host would serve it: every path of C2SP tlog-tiles -> its bytes,
computed with the ledger's tile code from entries and one checkpoint note (which is served as
given, so a test can serve a wrong or tampered one)."""

from __future__ import annotations

from pathlib import Path

from ledger import tiles
from ledger.merkle import MerkleTree, leaf_hash


def tiled_log(
    entries: list[bytes], checkpoint_note: str, size: int | None = None
) -> dict[str, bytes]:
    """``checkpoint``, every hash tile and every entry bundle of the tree of ``entries``.

    ``size`` is the size the checkpoint names when it is not ``len(entries)`` (a tampered log
    that lost entries): the bundles are then named for that size and hold the entries there
    are, as a server that serves what it stores would; the hash tiles are those of the entries.
    """
    tree = MerkleTree.from_leaves(leaf_hash(e) for e in entries)
    served = {"checkpoint": checkpoint_note.encode()}
    for ref in tiles.tiles_for_size(len(entries)):
        served[tiles.tile_path(ref)] = tiles.tile_hashes(tree, ref)
    for ref in tiles.tiles_for_size(len(entries) if size is None else size):
        if ref.level == 0:
            bundle = tiles.TileRef(None, ref.index, ref.width)
            first = ref.index * tiles.TILE_WIDTH
            served[tiles.tile_path(bundle)] = tiles.entry_bundle(entries[first : first + ref.width])
    return served


def write_tiled_log(
    directory: Path, entries: list[bytes], checkpoint_note: str, size: int | None = None
) -> Path:
    """The same as files under ``directory``, for any static HTTP server to serve."""
    for path, data in tiled_log(entries, checkpoint_note, size).items():
        target = directory / path
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(data)
    return directory


class MemoryTileLog:
    """A ledger.tiles_http.TileLog over entries in memory and one checkpoint note: the HTTP
    layer's tests, without a writer."""

    def __init__(self, entries: list[bytes], note: str | None, size: int | None = None) -> None:
        self._entries = entries
        self._tree = MerkleTree.from_leaves(leaf_hash(e) for e in entries)
        self.note = note
        self.size = len(entries) if size is None else size

    def published_checkpoint_text(self) -> str | None:
        return self.note

    def checkpoint_size(self, text: str) -> int:
        return self.size

    def tile_hashes(self, ref: tiles.TileRef) -> bytes:
        return tiles.tile_hashes(self._tree, ref)

    def entries(self, start: int, count: int) -> list[bytes]:
        return self._entries[start : start + count]
