"""The tile math, ledger side (ledger.tiles) and auditor side (audit.tiles): against each other,
against the spec's own examples, against an independent computation of the tree (audit.merkle)
and against the RFC 6962 vectors the transparency-dev reference ships."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import random
from pathlib import Path

import pytest

from audit import tiles as audit_tiles
from audit.merkle import root_of
from ledger import tiles
from ledger.merkle import MerkleTree, leaf_hash
from ledger.tiles import TilePathError, TileRef
from tests.helpers.tiles import tiled_log

REPO = Path(__file__).resolve().parents[2]


def _entries(n: int) -> list[bytes]:
    return [hashlib.sha256(i.to_bytes(8, "big")).digest()[: 1 + i % 31] for i in range(n)]


# -- paths ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("n", "spelled"),
    [(0, "000"), (5, "005"), (999, "999"), (1000, "x001/000"), (1234067, "x001/x234/067")],
)
def test_index_spelling_is_the_specs(n: int, spelled: str) -> None:
    assert tiles.format_index(n) == audit_tiles.format_index(n) == spelled


def test_both_sides_write_the_same_paths_and_the_ledger_reads_them_back() -> None:
    rng = random.Random(7)
    indexes = [0, 1, 255, 256, 999, 1000, 1001, 10**6, 2**56 - 1, *rng.sample(range(10**12), 40)]
    for n in indexes:
        for level in (None, 0, 1, 5, 63):
            for width in (1, 17, 255, 256):
                path = tiles.tile_path(TileRef(level, n, width))
                assert path == audit_tiles.tile_path(level, n, width)
                assert tiles.parse_tile_path(path) == TileRef(level, n, width)


@pytest.mark.parametrize(
    "path",
    [
        "tile/0/1",  # not zero-padded
        "tile/0/0001",
        "tile/0/x000/001",  # a second spelling of 001
        "tile/0/x001",  # an x element last
        "tile/0/001/002",  # no x on a leading element
        "tile/00/000",  # level with a leading zero
        "tile/64/000",  # past level 63
        "tile/0/000.p/0",
        "tile/0/000.p/256",
        "tile/0/000.p/007",
        "tile/0/000.p/",
        "tile/entries/000.p/1000",
        "tile/../checkpoint",
        "tile/0/../../etc/passwd",
        "tile/0/%30%30%30",
        "tile/0/000/",
        "tile/data/000",
        "tile/0/" + "x999/" * 7 + "000",  # more than 2**64
        "tile//000",
    ],
)
def test_every_other_spelling_is_refused_with_a_reason(path: str) -> None:
    with pytest.raises(TilePathError) as caught:
        tiles.parse_tile_path(path)
    assert str(caught.value)


# -- which tiles a tree has -------------------------------------------------------------------


def test_the_specs_example_tree_of_70000() -> None:
    by_level: dict[int, list[TileRef]] = {}
    for ref in tiles.tiles_for_size(70_000):
        assert ref.level is not None
        by_level.setdefault(ref.level, []).append(ref)
    assert sorted(by_level) == [0, 1, 2]
    level0, level1, level2 = by_level[0], by_level[1], by_level[2]
    assert [r.width for r in level0] == [256] * 273 + [112]
    assert [r.width for r in level1] == [256, 17]
    assert [(r.index, r.width) for r in level2] == [(0, 1)]


def test_a_tree_of_256_is_one_full_tile_and_a_partial_of_width_1() -> None:
    assert list(tiles.tiles_for_size(256)) == [TileRef(0, 0), TileRef(1, 0, 1)]
    assert list(tiles.tiles_for_size(0)) == []


def test_a_tile_exists_only_within_the_size() -> None:
    assert tiles.exists_in(TileRef(0, 0), 256)
    assert not tiles.exists_in(TileRef(0, 1), 511)
    assert tiles.exists_in(TileRef(0, 1, 255), 511)
    assert tiles.exists_in(TileRef(0, 1, 12), 511)  # an older checkpoint's partial tile
    assert not tiles.exists_in(TileRef(1, 0, 2), 511)
    assert tiles.exists_in(TileRef(1, 0, 1), 511)
    assert not tiles.exists_in(TileRef(None, 2, 1), 512)
    assert not tiles.exists_in(TileRef(63, 0, 1), 2**63)


# -- what a tile holds --------------------------------------------------------------------------


@pytest.mark.parametrize("size", [1, 2, 255, 256, 257, 300, 511, 512, 65536 + 700])
def test_every_hash_of_every_tile_is_the_subtree_root_computed_independently(size: int) -> None:
    leaves = [leaf_hash(e) for e in _entries(size)]
    tree = MerkleTree.from_leaves(leaves)
    rng = random.Random(size)
    for ref in tiles.tiles_for_size(size):
        assert ref.level is not None
        data = tiles.tile_hashes(tree, ref)
        assert len(data) == 32 * ref.width
        span = 256**ref.level
        # Every hash at level 0 (cheap), a sample above (each costs a subtree of 256**L leaves).
        picks = (
            range(ref.width) if ref.level == 0 else rng.sample(range(ref.width), min(3, ref.width))
        )
        for i in picks:
            lo = (ref.index * 256 + i) * span
            assert data[32 * i : 32 * (i + 1)] == root_of(leaves[lo : lo + span]), (ref, i)


def _rfc6962_vectors() -> Path:
    root = Path(os.environ.get("STEWARD_SHARED_VECTORS", REPO.parent / "shared" / "vectors"))
    if not (root / "rfc6962").is_dir():
        pytest.fail(f"shared vectors not found at {root} (set STEWARD_SHARED_VECTORS)")
    return root / "rfc6962"


# The eight leaves of the RFC 6962 reference tree that transparency-dev's vectors are made from.
RFC6962_LEAVES = [
    bytes.fromhex(h)
    for h in (
        "",
        "00",
        "10",
        "2021",
        "3031",
        "40414243",
        "5051525354555657",
        "606162636465666768696a6b6c6d6e6f",
    )
]


def test_the_partial_tiles_of_the_rfc6962_reference_tree_give_the_vectors_roots() -> None:
    """Each size of the reference tree the vectors name: its one partial level-0 tile (read from the tiles a
    static log would serve) hashes to the root the reference's happy-path vectors name."""
    roots: dict[int, bytes] = {}
    for path in _rfc6962_vectors().glob("*/*/happy-path.json"):
        v = json.loads(path.read_text())
        if "treeSize" in v:
            roots[v["treeSize"]] = base64.b64decode(v["root"])
        else:
            roots[v["size1"]] = base64.b64decode(v["root1"])
            roots[v["size2"]] = base64.b64decode(v["root2"])
    assert len(roots) >= 4 and 8 in roots, sorted(roots)
    for size in sorted(roots):
        served = tiled_log(RFC6962_LEAVES[:size], "unused note\n")
        tile = served[f"tile/0/000.p/{size}"]
        hashes = [tile[i : i + 32] for i in range(0, len(tile), 32)]
        assert root_of(hashes) == roots[size], size
        assert (
            audit_tiles.read_bundle(served[f"tile/entries/000.p/{size}"], "b")
            == RFC6962_LEAVES[:size]
        )


# -- entry bundles ------------------------------------------------------------------------------


def test_bundles_frame_entries_with_a_16_bit_length_both_ways() -> None:
    entries = [b"", b"x", bytes(300), bytes(range(256)) * 255 + bytes(255)]
    bundle = tiles.entry_bundle(entries)
    assert bundle[:2] == b"\x00\x00" and bundle[2:4] == b"\x00\x01"
    assert tiles.read_entry_bundle(bundle) == audit_tiles.read_bundle(bundle, "b") == entries
    with pytest.raises(Exception, match="16-bit"):
        tiles.entry_bundle([bytes(65536)])
    with pytest.raises(audit_tiles.TileError, match="says 5 bytes"):
        audit_tiles.read_bundle(b"\x00\x05abc", "b")


# -- the auditor's reader over what the ledger side serves ----------------------------------------


@pytest.mark.parametrize("size", [1, 255, 256, 257, 65536 + 300])
def test_the_auditor_reads_back_every_entry_and_checks_every_tile(size: int) -> None:
    entries = _entries(size)
    served = tiled_log(entries, "note\n")
    fetched: list[str] = []

    def fetch(path: str) -> bytes | None:
        fetched.append(path)
        return served.get(path)

    reader = audit_tiles.TiledLogReader(size, fetch)
    assert list(reader.entries()) == entries
    hash_tiles = {tiles.tile_path(r) for r in tiles.tiles_for_size(size)}
    assert reader.tiles_checked == len(hash_tiles)
    assert {p for p in fetched if not p.startswith("tile/entries/")} == hash_tiles


@pytest.mark.parametrize("where", ["tile/0/000", "tile/1/000.p/2", "tile/0/002.p/1"])
def test_a_tile_that_contradicts_the_entries_is_named(where: str) -> None:
    served = tiled_log(_entries(513), "note\n")
    tile = bytearray(served[where])
    tile[-1] ^= 1
    served[where] = bytes(tile)
    reader = audit_tiles.TiledLogReader(513, served.get)
    with pytest.raises(audit_tiles.TileError, match=where.replace(".", r"\.")):
        list(reader.entries())


def test_a_bundle_the_server_lacks_ends_the_log_there() -> None:
    served = tiled_log(_entries(600), "note\n")
    del served["tile/entries/001"]
    reader = audit_tiles.TiledLogReader(600, served.get)
    assert len(list(reader.entries())) == 256
    assert reader.truncated_at == 256


def test_a_bundle_short_of_its_width_ends_the_log_after_its_entries() -> None:
    entries = _entries(600)
    served = tiled_log(entries[:590], "note\n", size=600)
    assert "tile/entries/002.p/88" in served and "tile/0/002.p/88" not in served
    reader = audit_tiles.TiledLogReader(600, served.get)
    assert list(reader.entries()) == entries[:590]
    assert reader.truncated_at == 590
    served["tile/entries/002.p/88"] = tiles.entry_bundle([*entries[512:600], b"extra"])
    with pytest.raises(audit_tiles.TileError, match="89 entries, the tile is 88 wide"):
        list(audit_tiles.TiledLogReader(600, served.get).entries())
