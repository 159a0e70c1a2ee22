"""The ledger server's resident memory after it starts on a large log (issue #19).

A fresh process (so nothing of the bench is counted) imports the server, notes its resident
set, starts ``ledger.writer.LedgerServer`` on a copy of the generated ledger's SQLite store (a
start writes the tree's tiles into it; bench.ledgergen's cache stays as generated), then notes
the resident set again, and its peak; then starts it once more in another fresh process on the
same copy, as every later start is (the tiles are there), which is what the goal is about. Reported: the growth, the growth per entry, and what the
live state holds (keys, policies, proposals, and the proposals still open), so a run at two
sizes shows whether memory grows with history or with live state. Goal (issue #19): under
1.5 GiB at 10,000,000 events.

The server keeps its per-entry indexes in a scratch SQLite file (ledger.spilled_index); the
file's size is reported too. ``--baseline`` also starts it, in a second fresh process on a
fresh copy, with those indexes packed in memory as before, and reports both side by side
(``--smoke`` always does).

A start's time is mostly the replay verifying every entry again; ``--verify-inline`` also
restarts it with the replay's signatures verified one at a time in the fold, as before
ledger.replay_checks sent them to a libsodium worker a chunk ahead, and reports the ratio of
the two restarts (``--smoke`` always does).

Run: python -m bench.memory [--smoke] [--events N] [--baseline] [--verify-inline]
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from bench.common import Report, parser
from bench.ledgergen import GeneratedLedger, ledger

CHILD = r"""
import json, sys, time

def status(field):
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no " + field)

def rss():
    return status("VmRSS")

from ledger.heap import tune_collector
from ledger.scenario import Cast
from ledger.store.sqlite import SQLiteLogStore
from ledger.writer import LedgerServer

key = Cast.create(seed="steward-bench").checkpoint_key
before = rss()
tune_collector()  # as the server's entry point does before its replay
store = SQLiteLogStore(sys.argv[1])
mode = sys.argv[2]  # spill (the server's way), memory (indexes in memory), inline (see --verify-inline)
writer = LedgerServer(
    store, key, checkpoint_every_ms=0, spill_indexes=mode != "memory", verify_ahead=mode != "inline"
)
started = time.perf_counter()
report = writer.start()
seconds = time.perf_counter() - started
after = rss()
state = writer._core.state  # the rules state the start folded (read only here)
open_proposals = sum(1 for p in state.proposals.values() if p.phase not in ("PROMOTED", "ROLLED_BACK"))
print(json.dumps({
    "entries": report.entries,
    "seconds": seconds,
    "rss_before": before,
    "rss_after": after,
    # VmHWM, not getrusage's ru_maxrss: Linux carries ru_maxrss across exec, so a child of a
    # large parent reports the parent's size as its own peak. VmHWM belongs to this image only.
    "rss_peak": status("VmHWM"),
    "keys": len(state.keys),
    "policies": len(state.policies),
    "proposals": len(state.proposals),
    "open_proposals": open_proposals,
    "scratch_bytes": writer._core.scratch.size_bytes() if writer._core.scratch else 0,
}))
writer.stop()
writer.close()
"""


def _start(generated: GeneratedLedger, mode: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """Start a server on a fresh copy of the ledger in a fresh process, then once more in
    another: the first start writes the tree's tiles into the store (as the first start after
    an upgrade does), the second is what every later start is. What each measured."""
    workdir = Path(tempfile.mkdtemp(prefix="steward-bench-memory-"))
    runs = []
    try:
        path = workdir / "ledger.sqlite"
        shutil.copy(generated.sqlite_path(), path)
        for _ in ("first", "restart"):
            out = subprocess.run(
                [sys.executable, "-c", CHILD, str(path), mode],
                check=True,
                capture_output=True,
                text=True,
                cwd=Path(__file__).resolve().parents[1],
            ).stdout
            m: dict[str, Any] = json.loads(out.strip().splitlines()[-1])
            if m["entries"] != generated.events:
                raise AssertionError(
                    f"the server started on {m['entries']} of {generated.events} entries"
                )
            runs.append(m)
    finally:
        shutil.rmtree(workdir)
    return runs[0], runs[1]


def main(argv: list[str] | None = None) -> int:
    p = parser(__doc__ or "")
    p.add_argument("--events", type=int, default=1_000_000)
    p.add_argument(
        "--baseline",
        action="store_true",
        help="also start with the per-entry indexes in memory (the way before), to compare",
    )
    p.add_argument(
        "--verify-inline",
        action="store_true",
        help="also restart with the replay's signatures verified in the fold, one at a time "
        "(the way before ledger.replay_checks), to compare start times",
    )
    args = p.parse_args(argv)
    events = 3_000 if args.smoke else args.events
    generated = ledger(events)
    first, m = _start(generated, "spill")
    growth = m["rss_after"] - m["rss_before"]
    report = Report("memory", params={"events": generated.events})
    report.add("first start (writes the tiles): time", first["seconds"], "s")
    report.add("first start: resident after", first["rss_after"] / 2**20, "MiB")
    report.add("first start: peak resident", first["rss_peak"] / 2**20, "MiB")
    report.add("restart (verified replay): time", m["seconds"], "s")
    report.add("resident after imports", m["rss_before"] / 2**20, "MiB")
    report.add(
        "resident after start",
        m["rss_after"] / 2**20,
        "MiB",
        "< 1,536 MiB at 10M",
        m["rss_after"] < 1.5 * 2**30 if generated.events >= 10_000_000 else None,
    )
    report.add("peak resident", m["rss_peak"] / 2**20, "MiB")
    report.add("growth per entry", growth / generated.events, "B")
    report.add("scratch index file (on disk)", m["scratch_bytes"] / 2**20, "MiB")
    for name in ("keys", "policies", "proposals", "open_proposals"):
        report.add(f"live state: {name.replace('_', ' ')}", m[name], "")
    if args.baseline or args.smoke:  # the smoke run checks the comparison works, too
        _, b = _start(generated, "memory")
        report.add("baseline (indexes in memory): restart time", b["seconds"], "s")
        report.add("baseline: resident after start", b["rss_after"] / 2**20, "MiB")
        report.add("baseline: peak resident", b["rss_peak"] / 2**20, "MiB")
        report.add(
            "baseline: growth per entry", (b["rss_after"] - b["rss_before"]) / generated.events, "B"
        )
        report.add("start time, spilled ÷ in memory", m["seconds"] / b["seconds"], "x")
        report.add(
            "resident after start, spilled ÷ in memory", m["rss_after"] / b["rss_after"], "x"
        )
    if args.verify_inline or args.smoke:
        _, v = _start(generated, "inline")
        report.add("baseline (signatures verified in the fold): restart time", v["seconds"], "s")
        report.add("restart time, checked ahead ÷ in the fold", m["seconds"] / v["seconds"], "x")
    report.emit()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
