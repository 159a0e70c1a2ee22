"""Ingest: events/s into a real ledger server through AppendStream, Kafka and SQLite backends.

For each backend a real ``ledger.server`` runs in its own process (so the client does not share
its interpreter) on a ``KafkaLogStore`` (a real broker, started with ``infra.kafka`` unless
``--bootstrap`` names one) or a ``SQLiteLogStore``. The client sets up a ledger (genesis by two
roots, grants, a policy, 32 proposals), pre-signs a mix of health reports and eval results on
those proposals, then measures, in one run:

* stream: events/s through ``LedgerClient.append_many`` (AppendStream, batches of 256, each
  fully verified by the server: decode, idempotency, every signature and rule, then one store
  transaction per batch). Goal on Kafka: >= 5,000 events/s on this 2-core machine;
* raw: a kafka-python producer of the same entry bytes with acks=all (the upper bound the
  broker allows), and the same through a transactional producer committing every 256 records
  (what the store does, without any verification), as ratios;
* unary: p50/p99 latency of ``Append`` offered open-loop at a fixed 500 events/s (latency is
  measured from each request's scheduled time, so a slow server cannot hide queueing).

Run: python -m bench.ingest [--smoke] [--bootstrap HOST:PORT] [--backends kafka,sqlite]
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from bench.common import Report, median, parser, percentile

BATCH = 256
PROPOSALS = 32


# --------------------------------------------------------------------------------------------
# The server process


def _serve(store_spec: str, key_path: str, port_file: str) -> int:
    """Run a ledger server on `kafka:BOOTSTRAP/TOPIC` or `sqlite:PATH` until SIGTERM."""
    from ledger.server import LedgerServerConfig, serve
    from ledger.store.base import LogStore

    kind, _, where = store_spec.partition(":")
    store: LogStore
    if kind == "kafka":
        from ledger.store.kafka import KafkaLogStore, KafkaStoreConfig

        bootstrap, _, topic = where.rpartition("/")
        store = KafkaLogStore(KafkaStoreConfig(bootstrap, topic))
    else:
        from ledger.store.sqlite import SQLiteLogStore

        store = SQLiteLogStore(where)
    running = serve(LedgerServerConfig(store=store, checkpoint_key=key_path, listen="127.0.0.1:0"))
    done = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: done.set())
    tmp = Path(port_file + ".tmp")
    tmp.write_text(f"{running.port}\n")
    tmp.replace(port_file)
    done.wait()
    running.stop()
    store.close()
    return 0


@contextmanager
def ledger_server(store_spec: str, key_path: Path, workdir: Path) -> Iterator[str]:
    """A ledger server subprocess; yields its address."""
    port_file = workdir / f"port-{uuid.uuid4().hex[:8]}"
    log = (workdir / "server.log").open("ab")
    proc = subprocess.Popen(
        [sys.executable, "-m", "bench.ingest", "--serve", store_spec, "--key", str(key_path),
         "--port-file", str(port_file)],
        stdout=log, stderr=subprocess.STDOUT, cwd=Path(__file__).resolve().parents[1])
    try:
        deadline = time.monotonic() + 180
        while not port_file.exists():
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the ledger server did not start; see {workdir / 'server.log'}")
            time.sleep(0.05)
        yield f"127.0.0.1:{int(port_file.read_text())}"
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


# --------------------------------------------------------------------------------------------
# The workload


def _setup(client: Any, flow: Any) -> list[bytes]:
    """Genesis, grants, policy and the proposals the measured events refer to."""
    client.append(flow.genesis())
    for grant in flow.grants():
        client.append(grant)
    client.append(flow.policy())
    return [client.append(flow.propose(f"registry.example/model-{i}:v2", deployment=f"model-{i}")).leaf_hash
            for i in range(PROPOSALS)]


def _events(flow: Any, proposals: list[bytes], n: int) -> list[bytes]:
    """Pre-signed health reports and eval results, round-robin over the proposals."""
    from ledger.formats import encode_signed_event

    out = []
    for i in range(n):
        h = proposals[i % len(proposals)]
        if i % 3 == 2:
            ev = flow.eval(h, "safety" if i % 2 else "quality", 0.97)
        else:
            ev = flow.health(h, i % 3)
        out.append(encode_signed_event(ev))
    return out


def _open_loop(client: Any, events: list[bytes], rate: float) -> list[float]:
    """Latency of each unary Append, sent at `rate`/s, measured from its scheduled time."""
    latencies: list[float] = [0.0] * len(events)
    start = time.perf_counter() + 0.05

    def one(i: int) -> None:
        scheduled = start + i / rate
        delay = scheduled - time.perf_counter()
        if delay > 0:
            time.sleep(delay)
        client.append(events[i])
        latencies[i] = time.perf_counter() - scheduled

    with ThreadPoolExecutor(max_workers=64) as pool:
        for f in [pool.submit(one, i) for i in range(len(events))]:
            f.result()
    return latencies


def run_backend(report: Report, name: str, store_spec: str, workdir: Path, stream_n: int,
                unary_n: int, rate: float) -> float:
    from ledger.client import LedgerClient
    from ledger.core import Receipt
    from ledger.scenario import Cast, Flow

    cast = Cast.create()
    flow = Flow(cast, ledger=f"bench-{name}", origin=f"steward.dev/ledger/bench-{name}")
    key_path = workdir / f"{name}-checkpoint.pem"
    cast.checkpoint_key.save(key_path)
    with ledger_server(store_spec, key_path, workdir) as address, \
            LedgerClient(address, timeout=120) as client:
        proposals = _setup(client, flow)
        base = client.head().size
        stream = _events(flow, proposals, stream_n)
        started = time.perf_counter()
        results = client.append_many(stream, batch_size=BATCH)
        seconds = time.perf_counter() - started
        refused = [r for r in results if not isinstance(r, Receipt)]
        if refused or client.head().size != base + stream_n:
            raise AssertionError(f"{name}: {len(refused)} refused, e.g. {refused[:1]}")
        rate_stream = stream_n / seconds
        report.add(f"{name}: AppendStream (full verification)", rate_stream, "events/s",
                   "≥ 5,000/s" if name == "kafka" else "", rate_stream >= 5000 if name == "kafka" else None)
        unary = _events(flow, proposals, unary_n)
        lat = _open_loop(client, unary, rate)
        if client.head().size != base + stream_n + unary_n:
            raise AssertionError(f"{name}: unary appends missing")
        report.add(f"{name}: unary Append p50 @ {rate:.0f}/s", median(lat) * 1000, "ms")
        report.add(f"{name}: unary Append p99 @ {rate:.0f}/s", percentile(lat, 99) * 1000, "ms")
        report.params[f"{name}_entries"] = client.head().size
    return rate_stream


def _entries(n: int) -> list[bytes]:
    """Entry-sized records for the raw producers (real entries from the generated ledger)."""
    from bench.ledgergen import ledger

    records = ledger(3_000).load()
    return [records[i % len(records)] for i in range(n)]


def raw_kafka(bootstrap: str, records: list[bytes], transactional: bool) -> float:
    from kafka import KafkaAdminClient, KafkaProducer
    from kafka.admin import NewTopic

    topic = f"steward-bench-raw-{uuid.uuid4().hex[:10]}"
    admin = KafkaAdminClient(bootstrap_servers=bootstrap.split(","))
    try:
        admin.create_topics([NewTopic(topic, 1, 1)])
    finally:
        admin.close()
    opts: dict[str, Any] = {"bootstrap_servers": bootstrap.split(","), "acks": "all", "linger_ms": 5}
    if transactional:
        opts["transactional_id"] = f"bench-{topic}"
    producer = KafkaProducer(**opts)
    try:
        if transactional:
            producer.init_transactions()
        started = time.perf_counter()
        if transactional:
            for i in range(0, len(records), BATCH):
                producer.begin_transaction()
                for r in records[i:i + BATCH]:
                    producer.send(topic, key=r[:16], value=r)
                producer.commit_transaction()
        else:
            for r in records:
                producer.send(topic, key=r[:16], value=r)
            producer.flush()
        return len(records) / (time.perf_counter() - started)
    finally:
        producer.close()


def main(argv: list[str] | None = None) -> int:
    p = parser(__doc__ or "")
    p.add_argument("--bootstrap", help="an existing Kafka (default: start one broker with infra.kafka)")
    p.add_argument("--backends", default="kafka,sqlite")
    p.add_argument("--events", type=int, default=20_000, help="events through AppendStream")
    p.add_argument("--unary", type=int, default=2_000, help="unary appends at --rate")
    p.add_argument("--rate", type=float, default=500.0)
    # Internal: the server process.
    p.add_argument("--serve", help=argparse_hidden())
    p.add_argument("--key", help=argparse_hidden())
    p.add_argument("--port-file", help=argparse_hidden())
    args = p.parse_args(argv)
    if args.serve:
        return _serve(args.serve, args.key, args.port_file)
    stream_n = 600 if args.smoke else args.events
    unary_n = 50 if args.smoke else args.unary
    backends = [b.strip() for b in args.backends.split(",") if b.strip()]
    report = Report("ingest", params={"stream_events": stream_n, "batch": BATCH, "unary": unary_n,
                                      "rate": args.rate, "cpus": os.cpu_count()})
    with tempfile.TemporaryDirectory(prefix="steward-bench-ingest-") as tmp:
        workdir = Path(tmp)
        if "kafka" in backends:
            with kafka(args.bootstrap) as bootstrap:
                topic = f"steward-bench-{uuid.uuid4().hex[:10]}"
                rate = run_backend(report, "kafka", f"kafka:{bootstrap}/{topic}", workdir, stream_n,
                                   unary_n, args.rate)
                records = _entries(stream_n)
                raw = raw_kafka(bootstrap, records, transactional=False)
                txn = raw_kafka(bootstrap, records, transactional=True)
                report.add("kafka: raw producer acks=all, same bytes", raw, "records/s")
                report.add("kafka: AppendStream / raw producer", rate / raw, "x")
                report.add(f"kafka: raw transactional producer, {BATCH}/txn", txn, "records/s")
                report.add("kafka: AppendStream / raw transactional", rate / txn, "x")
        if "sqlite" in backends:
            run_backend(report, "sqlite", f"sqlite:{workdir / 'ledger.db'}", workdir, stream_n,
                        unary_n, args.rate)
    report.emit()
    return 0


def argparse_hidden() -> str:
    import argparse

    return argparse.SUPPRESS


@contextmanager
def kafka(bootstrap: str | None) -> Iterator[str]:
    if bootstrap:
        yield bootstrap
        return
    from infra.kafka import KafkaCluster

    with KafkaCluster(brokers=1) as cluster:
        yield cluster.bootstrap_servers


if __name__ == "__main__":
    raise SystemExit(main())
