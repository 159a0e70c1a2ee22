"""Checkpoint publication under load: how soon a signed checkpoint covers what was appended.

A real ledger server (its own process, as in bench.ingest; SQLite, or Kafka with
``--backend kafka``) takes AppendStream load at full speed from one client thread, with its
default checkpoint policy (every 256 entries or 1 s, and on demand), while the bench measures:

* on demand: ``GetCheckpoint(publish_now=True)`` latency, one request every 100 ms, p50/p99:
  a checkpoint covering the head, signed and stored while the writers hold the append lock;
* coverage lag: ``GetHead`` every 20 ms gives the durable size and the newest checkpoint's
  size; for each observation, the time until a checkpoint covers that size, p50/p99 (what an
  auditor following the log waits before it can verify what was just appended);
* entries per checkpoint: how far apart the automatic checkpoints were under this load;
* the load itself (events/s), to read the others against.

Run: python -m bench.checkpoints [--smoke] [--events N] [--backend sqlite|kafka] [--bootstrap HOST:PORT]
"""

from __future__ import annotations

import tempfile
import threading
import time
from itertools import pairwise
from pathlib import Path
from typing import Any

from bench.common import Report, parser, percentile
from bench.ingest import _events, _setup, kafka, ledger_server

ON_DEMAND_EVERY_S = 0.1
HEAD_EVERY_S = 0.02


def measure(address: str, events: list[bytes]) -> dict[str, Any]:
    """Load `events` through AppendStream while sampling checkpoints; the raw observations."""
    from ledger.client import LedgerClient

    client = LedgerClient(address, timeout=120, retries=0)

    done = threading.Event()
    load: dict[str, float] = {}

    def append_all() -> None:
        start = time.perf_counter()
        client.append_many(events)
        load["seconds"] = time.perf_counter() - start
        done.set()

    on_demand: list[float] = []
    heads: list[tuple[float, int, int]] = []  # (time, durable size, newest checkpoint size)

    def ask() -> None:
        asker = LedgerClient(address, timeout=60, retries=0)
        try:
            while not done.is_set():
                start = time.perf_counter()
                asker.checkpoint(publish_now=True)
                on_demand.append(time.perf_counter() - start)
                done.wait(ON_DEMAND_EVERY_S)
        finally:
            asker.close()

    loader = threading.Thread(target=append_all, name="load")
    asker = threading.Thread(target=ask, name="on-demand")
    loader.start()
    asker.start()
    watcher = LedgerClient(address, timeout=60, retries=0)
    try:
        while not done.is_set():
            head = watcher.head()
            heads.append((time.perf_counter(), head.size, head.checkpoint_size))
            done.wait(HEAD_EVERY_S)
        # Go on until the last appends are covered (or 5 s: then they are reported uncovered).
        deadline = time.perf_counter() + 5
        while time.perf_counter() < deadline:
            head = watcher.head()
            heads.append((time.perf_counter(), head.size, head.checkpoint_size))
            if head.checkpoint_size >= head.size:
                break
            time.sleep(HEAD_EVERY_S)
        checkpoints = watcher.checkpoints()
    finally:
        watcher.close()
    loader.join()
    asker.join()
    client.close()
    return {
        "seconds": load["seconds"],
        "on_demand": on_demand,
        "heads": heads,
        "checkpoint_sizes": [c.size for c in checkpoints],
    }


def coverage_lags(heads: list[tuple[float, int, int]]) -> tuple[list[float], int]:
    """For each head observation, seconds until an observed checkpoint covered its size; and
    how many observations were never covered while watched."""
    lags: list[float] = []
    uncovered = 0
    j = 0
    for at, size, _ in heads:
        while j < len(heads) and heads[j][2] < size:
            j += 1
        if j == len(heads):
            uncovered += 1
            continue
        lags.append(max(0.0, heads[j][0] - at))
    return lags, uncovered


def main(argv: list[str] | None = None) -> int:
    p = parser(__doc__ or "")
    p.add_argument("--events", type=int, default=20_000)
    p.add_argument("--backend", choices=("sqlite", "kafka"), default="sqlite")
    p.add_argument("--bootstrap", help="an existing Kafka (default: start one broker)")
    args = p.parse_args(argv)
    n = 1_500 if args.smoke else args.events

    from ledger.client import LedgerClient
    from ledger.scenario import Cast, Flow

    cast = Cast.create()
    flow = Flow(cast)
    report = Report(
        "checkpoints",
        params={
            "events": n,
            "backend": args.backend,
            "on_demand_every_s": ON_DEMAND_EVERY_S,
            "head_every_s": HEAD_EVERY_S,
        },
    )
    with tempfile.TemporaryDirectory(prefix="steward-bench-cp-") as tmp:
        workdir = Path(tmp)
        key_path = workdir / "checkpoint.pem"
        cast.checkpoint_key.save(key_path)

        def run(store_spec: str) -> dict[str, Any]:
            with ledger_server(store_spec, key_path, workdir) as server:
                client = LedgerClient(server.address, timeout=120, retries=0)
                try:
                    proposals = _setup(client, flow)
                finally:
                    client.close()
                return measure(server.address, _events(flow, proposals, n))

        if args.backend == "kafka":
            with kafka(args.bootstrap) as bootstrap:
                got = run(f"kafka:{bootstrap}/steward-bench-cp-{int(time.time())}")
        else:
            got = run(f"sqlite:{workdir / 'ledger.db'}")

    lags, uncovered = coverage_lags(got["heads"])
    sizes = got["checkpoint_sizes"]
    gaps = [b - a for a, b in pairwise(sizes) if b > a]
    report.add("load: AppendStream", n / got["seconds"], "events/s")
    report.add("on-demand checkpoint p50", percentile(got["on_demand"], 50) * 1000, "ms")
    report.add("on-demand checkpoint p99", percentile(got["on_demand"], 99) * 1000, "ms")
    report.add("on-demand checkpoints asked", len(got["on_demand"]), "")
    report.add("coverage lag p50", percentile(lags, 50) * 1000, "ms")
    report.add("coverage lag p99", percentile(lags, 99) * 1000, "ms")
    report.add("head observations never covered while watched", uncovered, "")
    report.add("checkpoints published", len(sizes), "")
    report.add("entries per checkpoint (median gap)", percentile(gaps, 50) if gaps else 0, "")
    report.emit()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
