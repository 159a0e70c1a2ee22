"""What the start-up verification of the store costs (#14, attack 7), in one run.

Over a SQLite log store holding the generated ledger (bench.ledgergen) with its checkpoints:

* **fold only**: what the writer's start did before the verification existed, replayed inline:
  read every record, decode it, check it with ``ledger.rules`` and fold it (state and Merkle
  tree), then verify every stored checkpoint note and compare its root;
* **verified start**: ``LedgerServer.start()`` as the server runs it now: the same pass through
  ``ledger.integrity`` (chain, foreign records vs damage, every checkpoint).

They alternate (which goes first alternates too), ``--rounds`` times each, and the medians and
their ratio are reported: the verification reuses the fold's pass, so the ratio should stay
near 1. On a loaded machine the per-start times move by tens of per cent; use 3 rounds or more.

Run: python -m bench.startup [--smoke] [--events N] [--rounds R]
"""

from __future__ import annotations

import shutil
import tempfile
import time
from pathlib import Path

from bench.common import Report, median, parser
from bench.ledgergen import ledger


def fold_only(store: object, key_public: bytes) -> int:
    """The replay the writer ran before this change (decode, rules, fold; then checkpoints)."""
    from ledger import checkpoint as notes
    from ledger.core import LedgerCore
    from ledger.errors import FormatError
    from ledger.formats import decode_log_entry
    from ledger.rules import check
    from ledger.store.base import LogStore

    assert isinstance(store, LogStore)
    core = LedgerCore()
    for record in store.read(0):
        try:
            e = decode_log_entry(record.value)
        except FormatError:
            continue
        if check(core.state, e) is not None:
            continue
        core.commit(e)
    state = core.state
    assert state.checkpoint_public_key == key_public
    verifier = notes.Verifier(state.checkpoint_key_name, state.checkpoint_public_key)
    for stored in store.checkpoints():
        cp = notes.verify_checkpoint(stored.note, verifier, state.origin)
        assert cp.root == core.tree.root(cp.size)
    return core.size


def verified_start(store: object, key: object) -> int:
    from ledger.keys import PrivateKey
    from ledger.store.base import LogStore
    from ledger.writer import LedgerServer

    assert isinstance(store, LogStore) and isinstance(key, PrivateKey)
    writer = LedgerServer(store, key, checkpoint_every_ms=0)
    report = writer.start()
    writer.stop()
    writer.close()
    return report.entries


def main(argv: list[str] | None = None) -> int:
    p = parser(__doc__ or "")
    p.add_argument("--events", type=int, default=100_000)
    p.add_argument("--rounds", type=int, default=2, help="timed starts of each kind")
    args = p.parse_args(argv)
    events = 3_000 if args.smoke else args.events

    from ledger.heap import tune_collector
    from ledger.scenario import Cast
    from ledger.store.sqlite import SQLiteLogStore

    generated = ledger(events)
    # A copy: a verified start writes the store's tiles (ledger.tile_store), and the cached
    # ledger must stay as generated for every other bench and test. The first verified start
    # writes them all, as the first start after an upgrade does; later ones compare.
    workdir = Path(tempfile.mkdtemp(prefix="steward-bench-startup-"))
    path = workdir / "ledger.sqlite"
    shutil.copy(generated.sqlite_path(), path)
    key = Cast.create(seed="steward-bench").checkpoint_key
    tune_collector()  # as the server does before its replay
    times: dict[str, list[float]] = {"fold only": [], "verified start": []}
    sizes = set()
    for round_ in range(args.rounds):
        # Alternate which goes first: the second start of a round inherits a larger heap.
        order = list(times) if round_ % 2 == 0 else list(reversed(times))
        for name in order:
            store = SQLiteLogStore(path)
            started = time.perf_counter()
            size = (
                fold_only(store, key.public.raw)
                if name == "fold only"
                else verified_start(store, key)
            )
            times[name].append(time.perf_counter() - started)
            store.close()
            sizes.add(size)
    assert sizes == {generated.events}, sizes
    before, after = median(times["fold only"]), median(times["verified start"])
    checkpoints = len(generated.checkpoint_notes)
    report = Report(
        "startup", params={"events": events, "rounds": args.rounds, "checkpoints": checkpoints}
    )
    report.add("fold only (median)", before, "s")
    report.add("verified start (median)", after, "s")
    report.add("verified start / fold only", after / before, "ratio")
    shutil.rmtree(workdir)
    report.emit()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
