"""Proof times and tree memory: the tree in memory and the tree kept as tlog-tiles, one run.

Builds the same tree of ``--size`` leaves (1,000,000 by default; issue #19 asks for
10,000,000) twice: on :class:`ledger.merkle.MemoryNodeStore` (every level in memory, the
baseline and what a server on Kafka holds) and on :class:`ledger.tile_store.TileNodeStore`
over a real SQLite store's ``log_tiles`` table (what a server on SQLite holds), writing the
completed tiles every 1,000 leaves as the ledger's store thread does. Then the same random
inclusion and consistency proofs against both (goal: p99 under 1 ms), with the tiled tree's
cache starting cold, so most level-0 tiles a proof needs are read back from SQLite and
checked. Reports appends/s, the memory each tree holds (its own accounting: hash bytes, not
the interpreter's overhead) and the tiled/memory ratios. Every proof produced is checked
equal between the two trees, and the first of each kind verified.

Run: python -m bench.proofs [--smoke] [--size N] [--samples N]
"""

from __future__ import annotations

import hashlib
import random
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from bench.common import Report, median, parser, percentile, timed
from ledger.merkle import MemoryNodeStore, MerkleTree, verify_consistency, verify_inclusion
from ledger.store.sqlite import SQLiteLogStore
from ledger.tile_store import TileNodeStore

WRITE_EVERY = 1000  # leaves between the tiles handed to the storage, as a busy writer does
MS = 1000.0


def _leaf(i: int) -> bytes:
    return hashlib.sha256(i.to_bytes(8, "big")).digest()


def _build(tree: MerkleTree, size: int, on_batch: Callable[[int], None], progress: bool) -> float:
    start = time.perf_counter()
    for i in range(size):
        tree.append(_leaf(i))
        if (i + 1) % WRITE_EVERY == 0:
            on_batch(i + 1)
        if progress and i and i % 1_000_000 == 0:
            print(f"  appended {i:,} leaves…", flush=True)
    on_batch(size)
    return time.perf_counter() - start


def main(argv: list[str] | None = None) -> int:
    p = parser(__doc__ or "")
    p.add_argument("--size", type=int, default=1_000_000)
    p.add_argument("--samples", type=int, default=500)
    args = p.parse_args(argv)
    size = 20_000 if args.smoke else args.size
    samples = 50 if args.smoke else args.samples
    report = Report("proofs", params={"size": size, "samples": samples})
    progress = not args.smoke

    memory = MemoryNodeStore()
    plain = MerkleTree(memory)
    took = _build(plain, size, lambda _n: None, progress)
    report.add("append (leaf hashes in)", size / took, "leaves/s")
    report.add("tree memory", memory.nbytes / 2**20, "MiB")

    with tempfile.TemporaryDirectory(prefix="steward-bench-tiles-") as tmp:
        store = SQLiteLogStore(Path(tmp) / "tiles.db")
        storage = store.tile_storage()
        assert storage is not None
        tiles = TileNodeStore(storage)
        tiled = MerkleTree(tiles)

        def write(n: int) -> None:
            due = tiles.tiles_to_write(n)
            if due:
                storage.write_tiles(due)
                tiles.written(due)

        took_tiled = _build(tiled, size, write, progress)
        report.add("tiled: append, tiles written to SQLite", size / took_tiled, "leaves/s")
        report.add("tiled: append / in memory", took / took_tiled, "x")
        report.add("tiled: tree memory after the build", tiles.nbytes / 2**20, "MiB")
        on_disk = sum(f.stat().st_size for f in Path(tmp).iterdir())  # the file and its WAL
        report.add("tiled: tiles in SQLite", on_disk / 2**20, "MiB")
        assert tiled.root() == plain.root()

        rng = random.Random(7)
        indexes = [rng.randrange(size) for _ in range(samples)]
        old_sizes = [rng.randrange(1, size) for _ in range(samples)]
        results: dict[str, list[float]] = {}
        for name, tree in (("", plain), ("tiled: ", tiled)):
            incl: list[float] = []
            for index in indexes:
                incl += timed(lambda index=index, t=tree: t.inclusion_proof(index, size), 1)
            cons: list[float] = []
            for old in old_sizes:
                cons += timed(lambda old=old, t=tree: t.consistency_proof(old, size), 1)
            results[name + "incl"], results[name + "cons"] = incl, cons
            for kind, values in (("inclusion", incl), ("consistency", cons)):
                p99 = percentile(values, 99) * MS
                report.add(f"{name}{kind} proof p50", median(values) * MS, "ms")
                report.add(f"{name}{kind} proof p99", p99, "ms", "< 1 ms", p99 < 1)
        report.add("tiled: tiles read back from SQLite", tiles.reads, "tiles")
        report.add("tiled: tree memory after the proofs (cache full)", tiles.nbytes / 2**20, "MiB")
        for kind in ("incl", "cons"):
            ratio = percentile(results["tiled: " + kind], 99) / percentile(results[kind], 99)
            label = "inclusion" if kind == "incl" else "consistency"
            report.add(f"tiled / in memory, {label} proof p99", ratio, "x")

        # Wrong answers measured fast are worthless: both trees give the same proofs.
        root = plain.root()
        for index in indexes:
            assert tiled.inclusion_proof(index, size) == plain.inclusion_proof(index, size)
        for old in old_sizes:
            assert tiled.consistency_proof(old, size) == plain.consistency_proof(old, size)
        index, old = indexes[0], old_sizes[0]
        assert verify_inclusion(
            plain.leaf(index), index, size, plain.inclusion_proof(index, size), root
        )
        assert verify_consistency(
            old, size, plain.consistency_proof(old, size), plain.root(old), root
        )
        store.close()
    report.emit()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
