"""Proof times at 1,000,000 entries: inclusion and consistency (goal: under 1 ms each).

Also reports the cost of appending (the tree keeps only perfect-subtree hashes) and the
memory the tree holds. Run: python -m bench.proofs [--smoke] [--size N]
"""

from __future__ import annotations

import hashlib
import random
import time

from bench.common import Report, median, parser, percentile, timed
from ledger.merkle import MerkleTree, verify_consistency, verify_inclusion


def main(argv: list[str] | None = None) -> int:
    p = parser(__doc__ or "")
    p.add_argument("--size", type=int, default=1_000_000)
    p.add_argument("--samples", type=int, default=500)
    args = p.parse_args(argv)
    size = 20_000 if args.smoke else args.size
    samples = 50 if args.smoke else args.samples
    report = Report("proofs", params={"size": size, "samples": samples})

    tree = MerkleTree()
    start = time.perf_counter()
    for i in range(size):
        tree.append(hashlib.sha256(i.to_bytes(8, "big")).digest())
        if not args.smoke and i and i % 200_000 == 0:
            print(f"  appended {i:,} leaves…", flush=True)
    build = time.perf_counter() - start
    report.add("append (leaf hashes in)", size / build, "leaves/s")
    nbytes = getattr(tree.store, "nbytes", 0)
    if nbytes:
        report.add("tree memory", nbytes / 2**20, "MiB")

    rng = random.Random(7)
    root = tree.root()
    indexes = [rng.randrange(size) for _ in range(samples)]
    incl: list[float] = []
    for index in indexes:
        incl += timed(lambda index=index: tree.inclusion_proof(index, size), 1)
    old_sizes = [rng.randrange(1, size) for _ in range(samples)]
    cons: list[float] = []
    for old in old_sizes:
        cons += timed(lambda old=old: tree.consistency_proof(old, size), 1)
    ms = 1000.0
    report.add("inclusion proof p50", median(incl) * ms, "ms")
    report.add(
        "inclusion proof p99",
        percentile(incl, 99) * ms,
        "ms",
        "< 1 ms",
        percentile(incl, 99) * ms < 1,
    )
    report.add("consistency proof p50", median(cons) * ms, "ms")
    report.add(
        "consistency proof p99",
        percentile(cons, 99) * ms,
        "ms",
        "< 1 ms",
        percentile(cons, 99) * ms < 1,
    )

    # Every produced proof verifies (a benchmark that measures wrong answers is worthless).
    for index in indexes[:20]:
        assert verify_inclusion(
            tree.leaf(index), index, size, tree.inclusion_proof(index, size), root
        )
    for old in old_sizes[:20]:
        assert verify_consistency(
            old, size, tree.consistency_proof(old, size), tree.root(old), root
        )
    report.emit()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
