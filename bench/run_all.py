"""Run every benchmark in turn; ``--smoke`` runs each at its tiny size (what CI does).

Each bench runs in its own process (a crash or a leaked thread in one cannot skew the next),
prints its table and writes ``bench/results/<name>.json``. The exit status is non-zero when a
bench fails to run; a missed goal is a figure, not a failure.

Run: python -m bench.run_all [--smoke] [--only audit,ingest] [-- extra args for every bench]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

BENCHES = (
    "proofs",
    "audit",
    "replay",
    "startup",
    "memory",
    "ingest",
    "checkpoints",
    "killswitch",
    "analysis",
)
REPO = Path(__file__).resolve().parents[1]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--smoke", action="store_true", help="tiny sizes: checks every bench runs")
    p.add_argument("--only", help="comma-separated subset of " + ", ".join(BENCHES))
    args = p.parse_args(argv)
    names = [n.strip() for n in args.only.split(",")] if args.only else list(BENCHES)
    unknown = set(names) - set(BENCHES)
    if unknown:
        p.error(f"unknown bench(es): {', '.join(sorted(unknown))}")
    failed = []
    for name in names:
        started = time.monotonic()
        cmd = [sys.executable, "-m", f"bench.{name}", *(["--smoke"] if args.smoke else [])]
        print(f"=== {' '.join(cmd[1:])}", flush=True)
        rc = subprocess.call(cmd, cwd=REPO)
        print(f"=== {name}: exit {rc} in {time.monotonic() - started:.0f} s", flush=True)
        if rc != 0:
            failed.append(name)
    if failed:
        print(f"failed: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
