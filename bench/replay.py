"""Controller replay at 1,000,000 events: cold replay (ratio to raw Ed25519) and restart time.

* cold replay: ``controller.replay.Replayer.catch_up()`` (with a signature worker process, as
  steward-controller runs it; ``--verify-processes 0`` without) over a SQLite log store holding the
  generated ledger (bench.ledgergen), from position 0 with no snapshot: read, decode, every
  signature and rule checked by the shared ``ledger.rules``, folded into ControllerState.
  Reported as events/s and as a ratio to raw Ed25519 verifications/s in the same run;
* snapshot write: ``Replayer.snapshot()`` (state + position in one SQL transaction): the first
  after the cold replay packs the per-entry indexes; the next one only merges what changed;
* restart from the snapshot: a new Replayer on the same store and snapshot database,
  ``load_snapshot()`` + ``catch_up()``, i.e. what a restarted controller does before it can
  act. Goal: under 2 s at 1,000,000 events. A restored proposal's evidence is decoded on first
  use (controller.snapshot), so the cost deferred to the first reconcile — which looks at every
  proposal's target and phase — is reported too, as is the load average around the run.

Run: python -m bench.replay [--smoke] [--events N] [--profile]
"""

from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path

from bench.audit import RawSampler, hotspots, print_hotspots
from bench.common import Report, median, parser
from bench.ledgergen import ledger


def main(argv: list[str] | None = None) -> int:
    p = parser(__doc__ or "")
    p.add_argument("--events", type=int, default=1_000_000)
    p.add_argument("--restarts", type=int, default=3, help="timed restarts from the snapshot")
    p.add_argument("--profile", action="store_true", help="profile a cold replay of 20,000 events")
    p.add_argument(
        "--default-gc",
        action="store_true",
        help="leave Python's garbage collector as it is, instead of tuning it as "
        "steward-controller does (ledger.heap), to compare",
    )
    p.add_argument(
        "--verify-processes",
        type=int,
        choices=(0, 1),
        default=1,
        help="1 (what steward-controller does): each catch-up chunk's signatures are "
        "checked in a worker process; 0: in the replaying process",
    )
    args = p.parse_args(argv)
    events = 3_000 if args.smoke else args.events

    import sqlalchemy as sa

    from controller.replay import Replayer, SnapshotStore, snapshot_table
    from ledger.sigcheck import SignatureChecker
    from ledger.store.sqlite import SQLiteLogStore

    checker = SignatureChecker(args.verify_processes)
    gen = ledger(events)
    store = SQLiteLogStore(gen.sqlite_path())
    raw = RawSampler(1000 if args.smoke else 5000)
    report = Report(
        "replay",
        params={
            "events": gen.events,
            "proposals": gen.meta["proposals"],
            "verify_processes": args.verify_processes,
            "gc": "default" if args.default_gc else "ledger.heap",
        },
    )
    report.add("load average (1 min) at start", os.getloadavg()[0], "")
    with tempfile.TemporaryDirectory(prefix="steward-bench-replay-") as tmp:
        snapshots = SnapshotStore(Path(tmp) / "snapshots.db")
        never = 10**12  # snapshots only when the bench asks, so they are timed on their own
        cold = Replayer(
            store,
            snapshots=snapshots,
            source="bench",
            snapshot_every_entries=never,
            snapshot_every_seconds=never,
            checker=checker,
        )
        if not args.default_gc:
            from ledger.heap import settle_heap, tune_collector

            tune_collector()  # as steward-controller does around its replay (controller.runtime)
        seconds, raw_rate, read = raw.around(cold.catch_up)
        if not args.default_gc:
            settle_heap()
        state = cold.state
        if state.ledger.size != gen.events or state.invalid:
            raise AssertionError(
                f"replayed {state.ledger.size} valid and {state.invalid} invalid "
                f"of {gen.events} events"
            )
        rate = read / seconds
        report.add("raw Ed25519 verify (mean of samples)", raw_rate, "verif/s")
        report.add("cold replay", rate, "events/s")
        report.add("cold replay / raw", rate / raw_rate, "x")
        # The controller verifies with libsodium (ledger.ed25519): how close the rest comes to it.
        report.add("cold replay / raw libsodium", rate / raw.sodium_around_last(), "x")
        report.add("cold replay total", seconds, "s")

        start = time.perf_counter()
        cold.snapshot()  # the first packs the indexes folded as dicts, after the cold replay
        report.add("snapshot write", time.perf_counter() - start, "s")
        start = time.perf_counter()
        cold.snapshot()  # later ones merge what was folded since into the packed indexes
        report.add("snapshot write (next)", time.perf_counter() - start, "s")
        with snapshots.engine.connect() as conn:
            blob_size = conn.execute(sa.select(sa.func.length(snapshot_table.c.state))).scalar_one()
        report.add("snapshot size", blob_size / 2**20, "MiB")

        restarts: list[float] = []
        for _ in range(1 if args.smoke else args.restarts):
            warm = Replayer(
                store,
                snapshots=snapshots,
                source="bench",
                snapshot_every_entries=never,
                snapshot_every_seconds=never,
                checker=checker,
            )
            start = time.perf_counter()
            loaded = warm.load_snapshot()
            warm.catch_up()
            restarts.append(time.perf_counter() - start)
            if not loaded or warm.state.ledger.size != gen.events:
                raise AssertionError("the restart did not come back from the snapshot")
        restart = median(restarts)
        report.add("restart from snapshot (median)", restart, "s", "< 2 s", restart < 2.0)
        start = time.perf_counter()
        with warm.lock:
            for p in warm.state.ledger.proposals.values():
                _ = (p.proposal.target, p.phase)
        report.add(
            "then first look at every proposal (target, phase)", time.perf_counter() - start, "s"
        )
        snapshots.close()
    store.close()
    checker.close()
    report.add("load average (1 min) at end", os.getloadavg()[0], "")
    report.emit()

    if args.profile:
        small = ledger(20_000 if not args.smoke else 3_000)
        small_store = SQLiteLogStore(small.sqlite_path())
        print_hotspots(
            "cold replay (controller.replay.Replayer.catch_up)",
            hotspots(lambda: Replayer(small_store).catch_up()),
        )
        with tempfile.TemporaryDirectory(prefix="steward-bench-replay-") as tmp:
            snaps = SnapshotStore(Path(tmp) / "s.db")
            r = Replayer(small_store, snapshots=snaps, source="p")
            r.catch_up()
            r.snapshot()

            def restart_once() -> None:
                w = Replayer(small_store, snapshots=snaps, source="p")
                w.load_snapshot()
                w.catch_up()

            print_hotspots("restart from snapshot", hotspots(restart_once))
            snaps.close()
        small_store.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
