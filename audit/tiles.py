"""Reading a whole log from C2SP tlog-tiles (https://c2sp.org/tlog-tiles), checking every tile.

Written from the spec, not from the ledger's code (the auditor imports nothing from it): tile
``N`` of level ``L`` holds the 256 hashes ``MTH(D[(N*256 + i) * 256**L : (N*256 + i + 1) *
256**L])``; the rightmost tile of a level is partial (width ``floor(size / 256**L) mod 256``,
never empty, path suffix ``.p/<W>``); entry bundles ``tile/entries/<N>`` frame each entry with
a big-endian uint16 length. Index ``N`` is written as zero-padded three-digit path elements, all
but the last prefixed with ``x``.

:class:`TiledLogReader` yields the entries of a tree of a given size in order, and checks every
tile that tree is made of against them: each level-0 tile against the leaf hashes of its
bundle, each tile above against the roots of the full tiles below, partial tiles included. So
once the caller has checked that the entries' root is the checkpoint's (audit.verify does), every
tile served for that checkpoint is verified. A tile that contradicts the entries raises
:class:`TileError`; a bundle the server does not have (``None`` from ``fetch``), or one with
fewer entries than its width, ends the entries there (after those it has), which the verifier
then reports as a log shorter than its checkpoint.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

from audit.errors import AuditError
from audit.merkle import leaf_hash, node_hash

TILE_HEIGHT = 8
TILE_WIDTH = 256
HASH_SIZE = 32

# fetch(path) -> the resource's bytes, or None when the server has no such resource (404).
Fetch = Callable[[str], "bytes | None"]


class TileError(AuditError):
    """A tile or bundle that is malformed or contradicts the entries it must match."""


def format_index(n: int) -> str:
    """``1234067`` -> ``x001/x234/067``."""
    digits = f"{n:d}"
    digits = "0" * (-len(digits) % 3) + digits
    elements = [digits[i : i + 3] for i in range(0, len(digits), 3)]
    return "/".join([*("x" + e for e in elements[:-1]), elements[-1]])


def tile_path(level: int | None, index: int, width: int = TILE_WIDTH) -> str:
    """``tile/<L>/<N>[.p/<W>]``, or ``tile/entries/<N>[.p/<W>]`` for ``level`` None."""
    where = "entries" if level is None else str(level)
    partial = f".p/{width}" if width < TILE_WIDTH else ""
    return f"tile/{where}/{format_index(index)}{partial}"


def read_bundle(data: bytes, path: str) -> list[bytes]:
    """The entries of an entry bundle (each a uint16 big-endian length, then its bytes)."""
    entries: list[bytes] = []
    at = 0
    while at < len(data):
        if at + 2 > len(data):
            raise TileError(f"{path}: one stray byte at offset {at} after {len(entries)} entries")
        n = int.from_bytes(data[at : at + 2], "big")
        at += 2
        if at + n > len(data):
            raise TileError(
                f"{path}: entry {len(entries)} says {n} bytes at offset {at}, "
                f"{len(data) - at} remain"
            )
        entries.append(data[at : at + n])
        at += n
    return entries


def perfect_root(hashes: list[bytes]) -> bytes:
    """MTH of a power-of-two run of hashes (a full tile's root)."""
    level = hashes
    while len(level) > 1:
        level = [node_hash(level[i], level[i + 1]) for i in range(0, len(level), 2)]
    return level[0]


class TiledLogReader:
    """The entries of the tree of ``size`` leaves, read through ``fetch`` and checked tile by
    tile; :attr:`tiles_checked` counts the hash tiles compared."""

    def __init__(self, size: int, fetch: Fetch) -> None:
        self.size = size
        self._fetch = fetch
        self.tiles_checked = 0
        self.truncated_at: int | None = None  # the first index the server had no bundle for
        # Per level >= 1: the roots of the full tiles below not yet compared with their tile.
        self._pending: list[list[bytes]] = [[]]
        self._next_index: list[int] = [0]

    def entries(self) -> Iterator[bytes]:
        for n in range(-(-self.size // TILE_WIDTH)):
            width = min(TILE_WIDTH, self.size - n * TILE_WIDTH)
            path = tile_path(None, n, width)
            data = self._fetch(path)
            if data is None:
                self.truncated_at = n * TILE_WIDTH
                return
            entries = read_bundle(data, path)
            if len(entries) > width:
                raise TileError(f"{path}: {len(entries)} entries, the tile is {width} wide")
            if len(entries) < width:
                # The server has fewer entries than its checkpoint commits to: the log ends
                # here, and the verifier reports it shorter than the checkpoint.
                self.truncated_at = n * TILE_WIDTH + len(entries)
                yield from entries
                return
            leaves = [leaf_hash(e) for e in entries]
            self._check(0, n, leaves, what=f"the leaf hashes of the entries in {path}")
            yield from entries
            if width == TILE_WIDTH:
                self._push(1, perfect_root(leaves))
        self._finish()

    def _push(self, level: int, root: bytes) -> None:
        """A full tile's root joins the level above; a full run there is compared and climbs."""
        while len(self._pending) <= level:
            self._pending.append([])
            self._next_index.append(0)
        run = self._pending[level]
        run.append(root)
        if len(run) == TILE_WIDTH:
            index = self._next_index[level]
            self._check(level, index, run, what=f"the roots of the full tiles of level {level - 1}")
            self._pending[level] = []
            self._push(level + 1, perfect_root(run))

    def _finish(self) -> None:
        """The partial tiles of the levels above 0: the roots that never filled a tile."""
        for level in range(1, len(self._pending)):
            run = self._pending[level]
            if run:
                self._check(level, self._next_index[level], run, what="the roots below it")

    def _check(self, level: int, index: int, expected: list[bytes], *, what: str) -> None:
        path = tile_path(level, index, len(expected))
        data = self._fetch(path)
        if data is None:
            raise TileError(f"{path}: the server has no such tile, yet its checkpoint needs it")
        if len(data) != HASH_SIZE * len(expected):
            raise TileError(f"{path}: {len(data)} bytes, expected {HASH_SIZE * len(expected)}")
        if data != b"".join(expected):
            first = next(
                i for i, h in enumerate(expected) if data[i * HASH_SIZE : (i + 1) * HASH_SIZE] != h
            )
            raise TileError(
                f"{path}: hash {first} is {data[first * HASH_SIZE : (first + 1) * HASH_SIZE].hex()}, "
                f"not {expected[first].hex()} ({what}): the tiles contradict each other"
            )
        self.tiles_checked += 1
        if level < len(self._next_index):
            self._next_index[level] = index + 1
