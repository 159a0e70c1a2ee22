"""C2SP tlog-tiles (https://c2sp.org/tlog-tiles): tile coordinates, paths, contents, bundles.

A tiled log serves its Merkle tree as *tiles*: tile ``N`` at level ``L`` is the run of 256
consecutive hashes ``MTH(D[(N*256 + i) * 256**L : (N*256 + i + 1) * 256**L])``, ``i`` from 0
to 255. Level 0 holds leaf hashes; every hash of level ``L + 1`` is the root of a full tile of
level ``L``. The rightmost tiles of a tree are *partial*: of width ``W`` from 1 to 255, never
empty. The leaves themselves are served as *entry bundles*, the entries of level-0 tile ``N``
each framed by a big-endian uint16 length.

Paths: ``tile/<L>/<N>[.p/<W>]`` and ``tile/entries/<N>[.p/<W>]``. ``L`` is a decimal from 0 to
63 and ``W`` one from 1 to 255, both without leading zeros; ``N`` is written in zero-padded
three-digit elements, all but the last prefixed with ``x`` (1234067 is ``x001/x234/067``).
:func:`parse_tile_path` accepts exactly the paths :func:`tile_path` writes (one spelling per
tile, so caches cannot be fed a second copy under another name).

Tile level ``L`` is level ``8 * L`` of :class:`ledger.merkle.MerkleTree`'s node store (entry
``i`` of store level ``k`` is the hash of leaves ``[i * 2**k, (i + 1) * 2**k)``), so the tiles
of any size the tree has reached are read straight from it, never recomputed.

Steward's entries are the Merkle leaves' data (docs/FORMAT.md §4): an entry bundle carries the
entry bytes, each hashing to its leaf. The audit side has its own copy of this math
(audit/tiles.py); tests check the two against each other and against the tree.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

from ledger.errors import FormatError
from ledger.merkle import MerkleTree

__all__ = [
    "MAX_BUNDLE_ENTRY_BYTES",
    "MAX_LEVEL",
    "TILE_HEIGHT",
    "TILE_WIDTH",
    "TilePathError",
    "TileRef",
    "entry_bundle",
    "exists_in",
    "format_index",
    "hashes_at_level",
    "parse_tile_path",
    "read_entry_bundle",
    "tile_hashes",
    "tile_path",
    "tiles_for_size",
]

TILE_HEIGHT = 8
TILE_WIDTH = 1 << TILE_HEIGHT  # 256 hashes, 8,192 bytes in a full tile
MAX_LEVEL = 63
MAX_BUNDLE_ENTRY_BYTES = 0xFFFF  # the uint16 length prefix of an entry in a bundle
# An index below 2**64 has at most 20 digits: seven three-digit elements.
_MAX_INDEX_ELEMENTS = 7

_DECIMAL = re.compile(r"0|[1-9][0-9]*")
_LEVEL = r"[0-9]{1,20}"
_INDEX = r"(?:x[0-9]{3}/)*[0-9]{3}"
_WIDTH = r"[0-9]{1,20}"
_PATH = re.compile(
    rf"tile/(?P<level>{_LEVEL}|entries)/(?P<index>{_INDEX})(?:\.p/(?P<width>{_WIDTH}))?"
)


class TilePathError(FormatError):
    """A path that is not a tlog-tiles path as the spec writes it; the message says why."""


@dataclass(frozen=True)
class TileRef:
    """One tile: its level (``None`` for an entry bundle), index and width (256 when full)."""

    level: int | None
    index: int
    width: int = TILE_WIDTH

    @property
    def is_entries(self) -> bool:
        return self.level is None

    @property
    def is_partial(self) -> bool:
        return self.width < TILE_WIDTH


def format_index(n: int) -> str:
    """``n`` as the path elements of a tile index: ``1234067`` -> ``x001/x234/067``."""
    if not isinstance(n, int) or n < 0:
        raise ValueError(f"tile index {n!r}: expected an integer >= 0")
    elements = [f"{n % 1000:03d}"]
    n //= 1000
    while n:
        elements.append(f"x{n % 1000:03d}")
        n //= 1000
    return "/".join(reversed(elements))


def tile_path(ref: TileRef) -> str:
    """The path of a tile or entry bundle, as c2sp.org/tlog-tiles writes it."""
    where = "entries" if ref.level is None else str(ref.level)
    suffix = f".p/{ref.width}" if ref.is_partial else ""
    return f"tile/{where}/{format_index(ref.index)}{suffix}"


def parse_tile_path(path: str) -> TileRef:
    """The tile a path names; :class:`TilePathError` for anything but the one canonical spelling."""
    m = _PATH.fullmatch(path)
    if m is None:
        raise TilePathError(
            f"{path[:200]!r} is not a tile path: expected tile/<L>/<N>[.p/<W>] or "
            "tile/entries/<N>[.p/<W>], N in three-digit elements (x001/x234/067)"
        )
    level_s, index_s, width_s = m["level"], m["index"], m["width"]
    elements = index_s.split("/")
    if len(elements) > _MAX_INDEX_ELEMENTS:
        raise TilePathError(f"tile index {index_s[:60]}...: more than 2**64 is never a tile")
    if len(elements) > 1 and elements[0] == "x000":
        raise TilePathError(
            f"tile index {index_s}: a leading x000 element is not the canonical spelling"
        )
    level = None
    if level_s != "entries":
        if not _DECIMAL.fullmatch(level_s):
            raise TilePathError(f"tile level {level_s}: a decimal without leading zeros")
        level = int(level_s)
        if level > MAX_LEVEL:
            raise TilePathError(f"tile level {level}: levels go from 0 to {MAX_LEVEL}")
    width = TILE_WIDTH
    if width_s is not None:
        if not _DECIMAL.fullmatch(width_s):
            raise TilePathError(f"partial tile width {width_s}: a decimal without leading zeros")
        width = int(width_s)
        if not 0 < width < TILE_WIDTH:
            raise TilePathError(
                f"partial tile width {width}: a partial tile is 1 to {TILE_WIDTH - 1} wide"
            )
    index = int("".join(e.lstrip("x") for e in elements))
    return TileRef(level, index, width)


def hashes_at_level(level: int, size: int) -> int:
    """How many hashes tile level ``level`` holds for a tree of ``size`` leaves (full tiles of
    the level below, or leaves at level 0): ``floor(size / 256**level)``."""
    return size >> (TILE_HEIGHT * level)


def exists_in(ref: TileRef, size: int) -> bool:
    """Whether a tree of ``size`` leaves determines every hash of ``ref`` (so it may be served):
    full tiles once complete, and any partial width up to what the tree holds."""
    have = hashes_at_level(0 if ref.level is None else ref.level, size)
    return ref.index * TILE_WIDTH + ref.width <= have


def tiles_for_size(size: int) -> Iterator[TileRef]:
    """Every hash tile a tree of ``size`` leaves needs, level by level, left to right: the full
    tiles and, where a level's count is not a multiple of 256, its partial tile."""
    level = 0
    while True:
        have = hashes_at_level(level, size)
        if have == 0:
            return
        full, rest = divmod(have, TILE_WIDTH)
        for n in range(full):
            yield TileRef(level, n)
        if rest:
            yield TileRef(level, full, rest)
        level += 1


def tile_hashes(tree: MerkleTree, ref: TileRef) -> bytes:
    """The bytes of hash tile ``ref`` read from ``tree`` (which must hold all of its hashes)."""
    if ref.level is None:
        raise ValueError("an entry bundle holds entries, not hashes")
    store, store_level = tree.store, TILE_HEIGHT * ref.level
    first = ref.index * TILE_WIDTH
    return b"".join(store.get(store_level, first + i) for i in range(ref.width))


def entry_bundle(entries: Iterable[bytes]) -> bytes:
    """An entry bundle: each entry as a big-endian uint16 length, then its bytes."""
    out = bytearray()
    for i, entry in enumerate(entries):
        if len(entry) > MAX_BUNDLE_ENTRY_BYTES:
            raise FormatError(
                f"entry {i} of the bundle is {len(entry)} bytes: tlog-tiles frames entries "
                f"with a 16-bit length, at most {MAX_BUNDLE_ENTRY_BYTES}",
                field="entry",
            )
        out += len(entry).to_bytes(2, "big")
        out += entry
    return bytes(out)


def read_entry_bundle(data: bytes) -> list[bytes]:
    """The entries of a bundle; :class:`FormatError` if a length runs past the data."""
    entries: list[bytes] = []
    at = 0
    while at < len(data):
        if at + 2 > len(data):
            raise FormatError(f"entry bundle: 1 byte at offset {at}, a length needs 2")
        n = int.from_bytes(data[at : at + 2], "big")
        at += 2
        if at + n > len(data):
            raise FormatError(
                f"entry bundle: entry {len(entries)} is {n} bytes at offset {at}, "
                f"{len(data) - at} remain"
            )
        entries.append(bytes(data[at : at + n]))
        at += n
    return entries
