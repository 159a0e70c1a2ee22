"""Ingest: events/s into a real ledger server through AppendStream, Kafka and SQLite backends.

For each backend a real ``ledger.server`` runs in its own process (so the client does not share
its interpreter) on a ``KafkaLogStore`` (a real broker, started with ``infra.kafka_cluster`` unless
``--bootstrap`` names one) or a ``SQLiteLogStore``. The client sets up a ledger (genesis by two
roots, grants, a policy, 32 proposals), pre-signs a mix of health reports and eval results on
those proposals, then measures, in one run:

* warm-up: ``--warmup`` events (10,000) through AppendStream first, reported on their own: a
  broker started by the bench spends its first seconds in the JVM's JIT compiler threads,
  which on two cores take CPU from the server being measured;
* stream: events/s through ``LedgerClient.append_many`` (AppendStream, batches of 256, each
  fully verified by the server: decode, idempotency, every signature and rule; the server
  checks the next batches while earlier ones are stored, several per store transaction).
  Goal on Kafka: >= 5,000 events/s on this 2-core machine;
* raw: a kafka-python producer of the same entry bytes with acks=all (the upper bound the
  broker allows), and the same through a transactional producer committing every 256 records
  (what the store did before, without any verification), as ratios; and a confluent-kafka
  (librdkafka) transactional producer of the same bytes, 256 per transaction, acks=all: what
  the store's writer does now, without verification, i.e. the ceiling of AppendStream on Kafka;
* unary: p50/p99 latency of ``Append`` offered open-loop at a fixed 500 events/s (latency is
  measured from each request's scheduled time, so a slow server cannot hide queueing);
* the server process's CPU time per event in each of the two phases (from /proc), which a busy
  machine moves much less than rates and latencies. The server is one Python process: above
  about 1,000,000 µs of CPU per second (one core, the GIL) it cannot keep up;
* the server's resident set grown over the stream, per event (from /proc): what a stream
  leaves behind. Caches filling count too, so a short stream (the smoke size) shows kilobytes;
  a stream that kept what it sent shows about 2.9 KB an event at any length.

kafka-python computes record-batch CRC32C in pure Python unless the ``crc32c`` package is
installed; the parameters say which one this run used (it roughly halves a kafka-python
producer's CPU; the store's readers still use kafka-python, its writer does not).

With ``--profile DIR`` the server process also counts calls, wall and CPU time of the steps of
an append (decode, verify, rules, group commit, producer send/flush/commit, visibility polls)
and samples every thread's stack; it writes DIR/<backend>-<phase>.json per measured phase and
the bench prints a per-event breakdown. Profiling slows the server: compare its figures with
each other, not with an unprofiled run.

With ``--history N`` each backend's run is made again on ``bench.ledgergen``'s ledgers of 3,000
and of N events (copies of the SQLite file, or fresh topics the Kafka store writes them to; the
events signed by their cast, on proposals submitted after them), and the bench reports N's rate
and CPU per event against 3,000's: what a long history costs an append, the workload the
same. The server's start verifies the whole history first (about 67 s a million events on
SQLite, see ``bench.memory``; 878 s for ten million Kafka records), and that start is reported
on its own row, not in the stream's figures.

Run: python -m bench.ingest [--smoke] [--bootstrap HOST:PORT] [--backends kafka,sqlite] [--profile DIR]
     [--history N]

Its length is one idea read top to bottom: one benchmark, its set-up, its measured phases and
its report (the profile's probes included).
"""

from __future__ import annotations

import json
import os
import signal
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bench.common import Probes, Report, StackSampler, median, parser, percentile, top_functions
from infra.processes import Child, start_python, wait_for, wait_for_port_file

if TYPE_CHECKING:
    from bench.ledgergen import GeneratedLedger

BATCH = 256
PROPOSALS = 32
# The baseline of --history: a generated ledger as short as the generator makes sense for, so
# that only the history's length differs (the same cast, policy and workload), each in a
# server and store of its own in the same run.
SHORT_HISTORY = 3_000


# --------------------------------------------------------------------------------------------
# The server process


# What --profile times in the server process; the counted items make per-event figures.
PROBES: list[tuple[str, Any]] = [
    ("ledger.servicer.LedgerServicer.Append", None),
    ("ledger.writer.LedgerServer.stage", lambda self, events: len(events)),
    ("ledger.writer.LedgerServer.decode", lambda self, events: len(events)),
    ("ledger.writer.LedgerServer.check_signatures", lambda self, batch: len(batch.events)),
    (
        "ledger.writer.LedgerServer._fold_group",
        lambda self, group: sum(len(r.staged.events) for r in group),
    ),
    (
        "ledger.writer.LedgerServer._fold_locked",
        lambda self, group: sum(len(r.staged.events) for r in group),
    ),
    ("ledger.writer.LedgerServer._write", lambda self, entries: len(entries)),
    ("ledger.writer.LedgerServer._store_batch", lambda self, staged, *_: len(staged)),
    ("ledger.writer.LedgerServer._publish_checkpoint", None),
    ("ledger.formats.decode_received_event", None),
    ("ledger.formats.decode_body", None),
    ("ledger.formats.encode_entry", None),
    ("ledger.keys.PublicKey.verify", None),
    ("ledger.core.LedgerCore.existing_receipt", None),
    ("ledger.core.LedgerCore.prepare", None),
    ("ledger.core.LedgerCore.commit", None),
    ("ledger.rules.check", None),
    ("ledger.store.kafka.KafkaLogStore.append", lambda self, records, *_: len(records)),
    ("ledger.store.kafka.KafkaLogStore.save_checkpoint", None),
    ("ledger.store.kafka.KafkaLogStore._transaction", lambda self, sends, batch=None: len(sends)),
    ("ledger.store.kafka.KafkaLogStore._await_visible", None),
    ("ledger.store.kafka.KafkaLogStore._end_offset", None),
    ("ledger.store.kafka.flush_batch", None),
    ("ledger.store.kafka.end_transaction", None),
    ("ledger.store.sqlite.SQLiteLogStore.append", lambda self, records, *_: len(records)),
]


def _install_profiler(out_dir: str) -> None:
    """Probes and a stack sampler; SIGUSR1 writes what was seen since the last one to
    OUT_DIR/<label>.json, the label being the content of OUT_DIR/label."""
    probes = Probes()
    for dotted, items in PROBES:
        probes.wrap(dotted, items)
    sampler = StackSampler(interval=0.01).start()
    import gc

    gc_seconds = [0.0, 0.0]  # [total, start of the current collection]
    gc_counts = [0, 0, 0]  # collections by generation

    def on_gc(phase: str, info: dict[str, Any]) -> None:  # the cyclic collector's pauses
        if phase == "start":
            gc_seconds[1] = time.perf_counter()
        else:
            gc_seconds[0] += time.perf_counter() - gc_seconds[1]
            gc_counts[info["generation"]] += 1

    gc.callbacks.append(on_gc)
    out = Path(out_dir)
    mark = [time.perf_counter(), time.process_time()]
    threads_before = _thread_cpu()

    def dump(*_: Any) -> None:
        label = (out / "label").read_text().strip()
        wall, cpu = time.perf_counter(), time.process_time()
        threads = _thread_cpu()
        by_kind: dict[str, float] = {}
        for tid, (kind, seconds) in threads.items():
            by_kind[kind] = (
                by_kind.get(kind, 0.0) + seconds - threads_before.get(tid, (kind, 0.0))[1]
            )
        threads_before.clear()
        threads_before.update(threads)
        by_kind["exited threads"] = (cpu - mark[1]) - sum(by_kind.values())
        doc = {
            "label": label,
            "wall_s": wall - mark[0],
            "process_cpu_s": cpu - mark[1],
            "probes": probes.take(),
            "stacks": sampler.take(),
            "thread_cpu_s": by_kind,
            "gc_s": gc_seconds[0],
            "gc_collections": list(gc_counts),
        }
        gc_seconds[0], gc_counts[:] = 0.0, [0, 0, 0]
        mark[:] = [wall, cpu]
        tmp = out / f"{label}.json.tmp"
        tmp.write_text(json.dumps(doc))
        tmp.replace(out / f"{label}.json")

    signal.signal(signal.SIGUSR1, dump)


def _thread_cpu() -> dict[int, tuple[str, float]]:
    """CPU seconds of every thread of this process by native id, with a kind: the Python
    thread's name without its number, or the OS thread name (gRPC's C threads)."""
    import re

    names = {
        t.native_id: re.sub(r"[-_ ]?\(?\d+\)?.*$", "", t.name) or t.name
        for t in threading.enumerate()
    }
    out = {}
    for task in Path("/proc/self/task").iterdir():
        try:
            stat = (task / "stat").read_text()
        except OSError:
            continue
        comm, rest = stat[stat.index("(") + 1 : stat.rindex(")")], stat.rsplit(")", 1)[1].split()
        tid = int(task.name)
        kind = names.get(tid, f"os:{re.sub(r'[-_]?[0-9]+$', '', comm)}")
        out[tid] = (kind, (int(rest[11]) + int(rest[12])) / os.sysconf("SC_CLK_TCK"))
    return out


def _serve(store_spec: str, key_path: str, port_file: str, profile: str | None = None) -> int:
    """Run a ledger server on `kafka:BOOTSTRAP/TOPIC` or `sqlite:PATH` until SIGTERM."""
    from ledger.heap import settle_heap, tune_collector
    from ledger.server import LedgerServerConfig, serve
    from ledger.store.base import LogStore

    if profile:
        _install_profiler(profile)

    kind, _, where = store_spec.partition(":")
    store: LogStore
    if kind == "kafka":
        from ledger.store.kafka import KafkaLogStore
        from ledger.store.kafka_config import KafkaStoreConfig

        bootstrap, _, topic = where.rpartition("/")
        store = KafkaLogStore(KafkaStoreConfig(bootstrap, topic))
    else:
        from ledger.store.sqlite import SQLiteLogStore

        store = SQLiteLogStore(where)
    tune_collector()  # as ledger.server's main does
    running = serve(LedgerServerConfig(store=store, checkpoint_key=key_path, listen="127.0.0.1:0"))
    settle_heap()
    _announce_and_wait(running.port, port_file)
    running.stop()
    store.close()
    return 0


def _announce_and_wait(port: int, port_file: str) -> None:
    """Write `port` to `port_file` (whole or not at all: readers poll it), then wait for
    SIGTERM: how each server mode of this bench runs."""
    done = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: done.set())
    tmp = Path(port_file + ".tmp")
    tmp.write_text(f"{port}\n")
    tmp.replace(port_file)
    done.wait()


def _serve_bare(port_file: str) -> int:
    """The baseline of a unary Append: a gRPC server built as ledger.server builds its own (the
    same thread pool, the same options), whose Append method does nothing (no interceptor, no
    decoding), until SIGTERM. What is left of a unary call's server CPU is gRPC's own."""
    import grpc

    from ledger.server import LedgerServerConfig

    config = LedgerServerConfig(store=":memory:", checkpoint_key="unused")
    server = grpc.server(
        ThreadPoolExecutor(max_workers=config.max_streams + config.unary_workers),
        options=[
            ("grpc.max_receive_message_length", config.max_message_bytes),
            ("grpc.max_send_message_length", config.max_message_bytes),
            ("grpc.so_reuseport", 0),
            ("grpc.http2.bdp_probe", 0),
        ],
    )
    receipt = b"\x08" + b"\x01" * 120  # about a Receipt's size; never parsed

    def append(_request: bytes, _context: Any) -> bytes:
        return receipt

    server.add_generic_rpc_handlers(
        (
            grpc.method_handlers_generic_handler(
                "steward.v1.LedgerService",
                {"Append": grpc.unary_unary_rpc_method_handler(append)},
            ),
        )
    )
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    _announce_and_wait(port, port_file)
    server.stop(1).wait()
    return 0


class _BareClient:
    """Sends each event as the AppendRequest a LedgerClient sends, to the bare server."""

    def __init__(self, address: str) -> None:
        import grpc

        self.channel = grpc.insecure_channel(address)
        self._append = self.channel.unary_unary("/steward.v1.LedgerService/Append")

    def append(self, event: bytes) -> None:
        from steward.v1 import ledger_pb2

        self._append(ledger_pb2.AppendRequest(signed_event=event).SerializeToString(), timeout=120)


def bare_grpc_unary(workdir: Path, events: list[bytes], rate: float) -> float | None:
    """Server CPU seconds per unary call of the bare server, offered as the unary phase is."""
    port_file = workdir / f"port-bare-{uuid.uuid4().hex[:8]}"
    args = ["-m", "bench.ingest", "--serve-bare", "--port-file", str(port_file)]
    with _server_child(args, workdir / "bare-server.log", "the bare gRPC server", 60) as (
        child,
        port,
    ):
        server = ServerProcess(child, f"127.0.0.1:{port}", None)
        client = _BareClient(server.address)
        try:
            _open_loop(client, events[: max(1, len(events) // 4)], rate)  # warm the channel
            cpu = server.cpu_seconds()
            _open_loop(client, events, rate)
            used = _used(cpu, server.cpu_seconds())
        finally:
            client.channel.close()
        return None if used is None else used / len(events)


@contextmanager
def _server_child(
    args: list[str], log: Path, name: str, timeout: float
) -> Iterator[tuple[Child, int]]:
    """`python ARGS` (a server mode of this module) in its own process, with the port it
    wrote to the file named after --port-file in `args`; stopped on the way out."""
    port_file = Path(args[args.index("--port-file") + 1])
    child = start_python(args, log, name=name, append=True, cwd=Path(__file__).resolve().parents[1])
    try:
        yield child, wait_for_port_file(port_file, timeout, child=child)
    finally:
        child.stop(grace=30)


class ServerProcess:
    """A started ledger server subprocess: its address, and its profile if it keeps one."""

    def __init__(self, child: Child, address: str, profile: Path | None) -> None:
        self.child = child
        self.address = address
        self.profile = profile

    def cpu_seconds(self) -> float | None:
        """User + system CPU the server process has used so far (None where /proc is absent)."""
        try:
            fields = Path(f"/proc/{self.child.pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            return None
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def resident_bytes(self) -> int | None:
        """The server process's resident set now (None where /proc is absent)."""
        try:
            status = Path(f"/proc/{self.child.pid}/status").read_text()
        except OSError:
            return None
        for line in status.splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
        return None

    def snapshot(self, label: str) -> dict[str, Any] | None:
        """What the profiler saw since the previous snapshot (None when not profiling)."""
        if self.profile is None:
            return None
        done = self.profile / f"{label}.json"
        done.unlink(missing_ok=True)
        (self.profile / "label").write_text(label)
        self.child.send_signal(signal.SIGUSR1)
        wait_for(f"the server's profile {done}", done.exists, 30, every=0.05, child=self.child)
        doc: dict[str, Any] = json.loads(done.read_text())
        return doc


@contextmanager
def ledger_server(
    store_spec: str,
    key_path: Path,
    workdir: Path,
    profile: Path | None = None,
    start_timeout: float = 180,
) -> Iterator[ServerProcess]:
    """A ledger server subprocess (profiled into `profile` when given)."""
    port_file = workdir / f"port-{uuid.uuid4().hex[:8]}"
    args = [
        "-m",
        "bench.ingest",
        "--serve",
        store_spec,
        "--key",
        str(key_path),
        "--port-file",
        str(port_file),
    ]
    if profile is not None:
        profile.mkdir(parents=True, exist_ok=True)
        args += ["--profile-out", str(profile)]
    with _server_child(args, workdir / "server.log", "the ledger server", start_timeout) as (
        child,
        port,
    ):
        yield ServerProcess(child, f"127.0.0.1:{port}", profile)


# --------------------------------------------------------------------------------------------
# The workload


def _setup(client: Any, flow: Any, *, history: bool = False) -> list[bytes]:
    """Genesis, grants, policy and the proposals the measured events refer to (only the
    proposals on a generated ledger's history: it has the rest)."""
    if not history:
        client.append(flow.genesis())
        for grant in flow.grants():
            client.append(grant)
        client.append(flow.policy())
    return [
        client.append(
            flow.propose(f"registry.example/model-{i}:v2", deployment=f"model-{i}")
        ).leaf_hash
        for i in range(PROPOSALS)
    ]


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


def print_profile(doc: dict[str, Any], events: int) -> None:
    """Per-event wall and CPU of each probed step, and where the busy samples went."""
    print(
        f"\n  profile {doc['label']}: {events} events in {doc['wall_s']:.2f} s, server CPU "
        f"{doc['process_cpu_s']:.2f} s = {doc['process_cpu_s'] / max(events, 1) * 1e6:,.0f} µs/event"
    )
    print(
        f"    {'step':<44} {'calls':>7} {'items':>7} {'wall µs/ev':>10} {'cpu µs/ev':>10} "
        f"{'wall ms/call':>12}"
    )
    for name, (calls, wall, cpu, items) in sorted(doc["probes"].items(), key=lambda kv: -kv[1][1]):
        print(
            f"    {name:<44} {calls:>7.0f} {items:>7.0f} {wall / max(events, 1) * 1e6:>10,.1f} "
            f"{cpu / max(events, 1) * 1e6:>10,.1f} {wall / max(calls, 1) * 1e3:>12,.3f}"
        )
    if "gc_s" in doc:
        print(
            f"    cyclic GC: {doc['gc_s'] / max(events, 1) * 1e6:,.1f} µs/event in "
            f"{sum(doc['gc_collections'])} collections (by generation {doc['gc_collections']})"
        )
    threads = sorted(doc.get("thread_cpu_s", {}).items(), key=lambda kv: -kv[1])
    print(
        "    CPU by thread kind, µs/event: "
        + ", ".join(
            f"{kind} {seconds / max(events, 1) * 1e6:,.0f}"
            for kind, seconds in threads
            if seconds > 0
        )
    )
    stacks = doc["stacks"]
    busy = sum(stacks["busy"].values())
    print(
        f"    stack samples: {stacks['samples']} ticks, busy thread-samples {busy}, idle "
        f"{sum(stacks['idle'].values())}; busy by function (inclusive%, self%):"
        + (f" (sampler errors: {stacks['errors']})" if stacks.get("errors") else "")
    )
    for fn, inclusive, own in top_functions(stacks["busy"], 22):
        print(f"      {fn:<60} {inclusive / max(busy, 1):>6.1%} {own / max(busy, 1):>6.1%}")


def run_backend(
    report: Report,
    name: str,
    store_spec: str,
    workdir: Path,
    stream_n: int,
    unary_n: int,
    rate: float,
    profile: Path | None = None,
    warmup_n: int = 0,
    history: int = 0,
) -> tuple[float, float | None, float | None]:
    """Events/s through AppendStream, and the server's CPU seconds per event, streamed and
    unary. With `history`, `store_spec` is a store holding bench.ledgergen's ledger of that many
    events: the events are signed by its cast, on proposals submitted after it."""
    from ledger.client import LedgerClient
    from ledger.core import Receipt
    from ledger.scenario import Cast, Flow

    if history:
        from bench.ledgergen import LEDGER, ORIGIN

        cast = Cast.create(seed="steward-bench")  # bench.ledgergen's cast, its default seed
        flow = Flow(cast, ledger=LEDGER, origin=ORIGIN)
    else:
        cast = Cast.create()
        flow = Flow(cast, ledger=f"bench-{name}", origin=f"steward.dev/ledger/bench-{name}")
    key_path = workdir / f"{name}-checkpoint.pem"
    cast.checkpoint_key.save(key_path)
    # A start verifies the whole history: about 67 s a million events on SQLite (bench.memory),
    # 88 s on Kafka (ten million in 878 s, 2026-12-07); the bound leaves room for a slow machine.
    start_timeout = 180 + history * 0.0008
    if history:
        print(f"  {name}: starting a server, which verifies all {history:,} entries", flush=True)
    launched = time.perf_counter()
    with (
        ledger_server(store_spec, key_path, workdir, profile, start_timeout) as server,
        LedgerClient(server.address, timeout=120) as client,
    ):
        if history:
            took = time.perf_counter() - launched
            print(
                f"  {name}: the server started on {client.head().size:,} entries in {took:.0f} s",
                flush=True,
            )
            # Not a figure of the stream, but of the history: its whole verification.
            report.add(f"{name}: the server's start (process launched to serving)", took, "s")
        proposals = _setup(client, flow, history=bool(history))
        if warmup_n:
            # A fresh broker spends its first seconds compiling (the JVM's JIT threads took
            # ~0.3 of a core during a 6 s run right after start): measured apart, reported.
            warm = _events(flow, proposals, warmup_n)
            started = time.perf_counter()
            client.append_many(warm, batch_size=BATCH)
            report.add(
                f"{name}: AppendStream, warm-up (first {warmup_n:,} events, fresh "
                "server and store)",
                warmup_n / (time.perf_counter() - started),
                "events/s",
            )
        base = client.head().size
        stream = _events(flow, proposals, stream_n)
        server.snapshot(f"{name}-setup")
        cpu, resident = server.cpu_seconds(), server.resident_bytes()
        started = time.perf_counter()
        results = client.append_many(stream, batch_size=BATCH)
        seconds = time.perf_counter() - started
        stream_cpu = _used(cpu, server.cpu_seconds())
        grown = _used(resident, server.resident_bytes())
        doc = server.snapshot(f"{name}-stream")
        if doc is not None:
            print_profile(doc, stream_n)
        refused = [r for r in results if not isinstance(r, Receipt)]
        if refused or client.head().size != base + stream_n:
            raise AssertionError(f"{name}: {len(refused)} refused, e.g. {refused[:1]}")
        rate_stream = stream_n / seconds
        report.add(
            f"{name}: AppendStream (full verification)",
            rate_stream,
            "events/s",
            "≥ 5,000/s" if name == "kafka" else "",
            rate_stream >= 5000 if name == "kafka" else None,
        )
        if grown is not None:
            # What one stream leaves in the server: each of its requests once held the one
            # before, so the server kept every event a stream sent (2.9 KB an event) until the
            # stream ended. What the pipeline holds is bounded, so on a long stream this is
            # the caches filling, spread thin.
            report.add(
                f"{name}: server resident growth over the stream", grown / stream_n, "B/event"
            )
        unary = _events(flow, proposals, unary_n)
        cpu = server.cpu_seconds()
        lat = _open_loop(client, unary, rate)
        unary_cpu = _used(cpu, server.cpu_seconds())
        doc = server.snapshot(f"{name}-unary")
        if doc is not None:
            print_profile(doc, unary_n)
        if client.head().size != base + stream_n + unary_n:
            raise AssertionError(f"{name}: unary appends missing")
        report.add(f"{name}: unary Append p50 @ {rate:.0f}/s", median(lat) * 1000, "ms")
        report.add(f"{name}: unary Append p99 @ {rate:.0f}/s", percentile(lat, 99) * 1000, "ms")
        if stream_cpu is not None and unary_cpu is not None:
            # CPU per event moves less with a busy machine than rates and latencies do.
            report.add(
                f"{name}: server CPU per event, AppendStream", stream_cpu / stream_n * 1e6, "µs"
            )
            report.add(
                f"{name}: server CPU per event, unary Append", unary_cpu / unary_n * 1e6, "µs"
            )
        report.params[f"{name}_entries"] = client.head().size
    unary_per_event = None if unary_cpu is None else unary_cpu / unary_n
    stream_per_event = None if stream_cpu is None else stream_cpu / stream_n
    return rate_stream, stream_per_event, unary_per_event


def _used(before: float | None, after: float | None) -> float | None:
    return None if before is None or after is None else after - before


def _entries(n: int) -> list[bytes]:
    """Entry-sized records for the raw producers (real entries from the generated ledger)."""
    from bench.ledgergen import ledger

    records = ledger(3_000).load()
    return [records[i % len(records)] for i in range(n)]


def _raw_topic(bootstrap: str) -> str:
    """A fresh one-partition topic for a raw producer run."""
    from kafka import KafkaAdminClient
    from kafka.admin import NewTopic

    topic = f"steward-bench-raw-{uuid.uuid4().hex[:10]}"
    admin = KafkaAdminClient(bootstrap_servers=bootstrap.split(","))
    try:
        admin.create_topics([NewTopic(topic, 1, 1)])
    finally:
        admin.close()
    return topic


def raw_kafka(bootstrap: str, records: list[bytes], transactional: bool) -> float:
    from kafka import KafkaProducer

    topic = _raw_topic(bootstrap)
    opts: dict[str, Any] = {
        "bootstrap_servers": bootstrap.split(","),
        "acks": "all",
        "linger_ms": 5,
    }
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
                for r in records[i : i + BATCH]:
                    producer.send(topic, key=r[:16], value=r)
                producer.commit_transaction()
        else:
            for r in records:
                producer.send(topic, key=r[:16], value=r)
            producer.flush()
        return len(records) / (time.perf_counter() - started)
    finally:
        producer.close()


def raw_confluent_transactional(bootstrap: str, records: list[bytes]) -> float:
    """librdkafka's transactional producer, BATCH records per transaction, acks=all: the
    calls the store makes per append (produce each, flush, commit), without verification."""
    from confluent_kafka import Producer

    topic = _raw_topic(bootstrap)
    producer = Producer(
        {
            "bootstrap.servers": bootstrap,
            "transactional.id": f"bench-{topic}",
            "enable.idempotence": True,
            "acks": "all",
            "linger.ms": 100,
        }
    )
    failed: list[Any] = []

    def delivered(err: Any, _msg: Any) -> None:
        if err is not None:
            failed.append(err)

    producer.init_transactions(60)
    started = time.perf_counter()
    for i in range(0, len(records), BATCH):
        producer.begin_transaction()
        for r in records[i : i + BATCH]:
            producer.produce(topic, value=r, key=r[:16], partition=0, on_delivery=delivered)
        if producer.flush(60) or failed:
            raise RuntimeError(f"raw confluent-kafka producer: not delivered: {failed[:1]}")
        producer.commit_transaction(60)
    rate = len(records) / (time.perf_counter() - started)
    producer.close()  # no transaction open: returns at once
    return rate


def main(argv: list[str] | None = None) -> int:
    p = parser(__doc__ or "")
    p.add_argument(
        "--bootstrap", help="an existing Kafka (default: start one broker with infra.kafka_cluster)"
    )
    p.add_argument("--backends", default="kafka,sqlite")
    p.add_argument("--events", type=int, default=20_000, help="events through AppendStream")
    p.add_argument(
        "--warmup",
        type=int,
        default=10_000,
        help="events streamed (and reported) before the measured AppendStream phase, "
        "so a freshly started broker's JIT compilation is not in the figure",
    )
    p.add_argument("--unary", type=int, default=2_000, help="unary appends at --rate")
    p.add_argument(
        "--history",
        type=int,
        default=0,
        metavar="N",
        help="also stream, on each backend, into ledgers that hold bench.ledgergen's 3,000 and "
        "N events (generated once and cached; a server's start verifies them all, about 70-90 "
        "s a million), and report N's figures against 3,000's",
    )
    p.add_argument("--rate", type=float, default=500.0)
    p.add_argument(
        "--profile",
        metavar="DIR",
        type=Path,
        help="profile the server process per phase into DIR and print a breakdown",
    )
    # Internal: the server process.
    p.add_argument("--serve", help=argparse_hidden())
    p.add_argument("--key", help=argparse_hidden())
    p.add_argument("--port-file", help=argparse_hidden())
    p.add_argument("--profile-out", help=argparse_hidden())
    p.add_argument("--serve-bare", action="store_true", help=argparse_hidden())
    args = p.parse_args(argv)
    if args.history and args.history <= SHORT_HISTORY:
        p.error(
            f"--history {args.history}: give more than {SHORT_HISTORY:,} events, the length of "
            "the history it is compared with (or 0 for none)"
        )
    if args.serve:
        return _serve(args.serve, args.key, args.port_file, args.profile_out)
    if args.serve_bare:
        return _serve_bare(args.port_file)
    stream_n = 600 if args.smoke else args.events
    warmup_n = 100 if args.smoke else max(0, args.warmup)
    unary_n = 50 if args.smoke else args.unary
    backends = [b.strip() for b in args.backends.split(",") if b.strip()]
    report = Report(
        "ingest",
        params={
            "stream_events": stream_n,
            "warmup_events": warmup_n,
            "batch": BATCH,
            "unary": unary_n,
            "rate": args.rate,
            "history": args.history,
            "cpus": os.cpu_count(),
        },
    )
    if "kafka" in backends:
        from kafka.record import util as kafka_record_util

        report.params["kafka_crc32c"] = "C" if kafka_record_util.crc32c_c is not None else "Python"
    unary_cpu: dict[str, float | None] = {}
    with tempfile.TemporaryDirectory(prefix="steward-bench-ingest-") as tmp:
        workdir = Path(tmp)

        def measure(
            name: str, spec: str, history: int = 0
        ) -> tuple[float, float | None, float | None]:
            """run_backend with this run's sizes, rate and profile."""
            return run_backend(
                report,
                name,
                spec,
                workdir,
                stream_n,
                unary_n,
                args.rate,
                args.profile,
                warmup_n,
                history=history,
            )

        if "kafka" in backends:
            with kafka(args.bootstrap) as bootstrap:
                topic = f"steward-bench-{uuid.uuid4().hex[:10]}"
                rate, _, unary_cpu["kafka"] = measure("kafka", f"kafka:{bootstrap}/{topic}")
                records = _entries(stream_n)
                raw = raw_kafka(bootstrap, records, transactional=False)
                txn = raw_kafka(bootstrap, records, transactional=True)
                rd_txn = raw_confluent_transactional(bootstrap, records)
                report.add("kafka: raw producer acks=all, same bytes", raw, "records/s")
                report.add("kafka: AppendStream / raw producer", rate / raw, "x")
                report.add(f"kafka: raw transactional producer, {BATCH}/txn", txn, "records/s")
                report.add("kafka: AppendStream / raw transactional", rate / txn, "x")
                report.add(
                    f"kafka: raw confluent-kafka transactional producer, {BATCH}/txn "
                    "(the store's writer)",
                    rd_txn,
                    "records/s",
                )
                report.add(
                    "kafka: AppendStream / raw confluent-kafka transactional", rate / rd_txn, "x"
                )
                if args.history:
                    _history(report, measure, workdir, args.history, bootstrap)
        if "sqlite" in backends:
            _rate, _cpu, unary_cpu["sqlite"] = measure("sqlite", f"sqlite:{workdir / 'ledger.db'}")
            if args.history:
                _history(report, measure, workdir, args.history)
        # The baseline of a unary Append's CPU: the same calls, same rate, to a gRPC server
        # whose Append does nothing. Issue #19 asks <= 300 µs a call of the whole path.
        from ledger.scenario import Cast, Flow

        flow = Flow(Cast.create(), ledger="bench-bare", origin="steward.dev/ledger/bench-bare")
        bare = bare_grpc_unary(workdir, _events(flow, [b"\x00" * 32] * 4, unary_n), args.rate)
        if bare is not None:
            report.add(
                f"bare gRPC unary call (no-op handler) @ {args.rate:.0f}/s: server CPU",
                bare * 1e6,
                "µs",
            )
            for name, per_event in unary_cpu.items():
                if per_event is not None:
                    report.add(
                        f"{name}: unary Append CPU / bare gRPC unary call", per_event / bare, "x"
                    )
    report.emit()
    return 0


def _history(
    report: Report,
    measure: Callable[..., tuple[float, float | None, float | None]],
    workdir: Path,
    history: int,
    bootstrap: str | None = None,
) -> None:
    """`measure` (run_backend) on bench.ledgergen's ledgers of SHORT_HISTORY and of `history`
    events, each in a fresh server and store (a copy of the SQLite file, or a topic the store
    has written them to, given `bootstrap`): what a long history costs an append (the
    per-entry maps are in the server's scratch file, the tiles in the SQLite store or the
    scratch file)."""
    import shutil

    from bench.ledgergen import ledger

    backend = "kafka" if bootstrap else "sqlite"
    measured: list[tuple[str, float, float | None]] = []
    for n in (SHORT_HISTORY, history):
        generated = ledger(n)
        if bootstrap:
            spec = f"kafka:{bootstrap}/{_history_topic(bootstrap, generated)}"
        else:
            path = workdir / f"history-{n}.db"
            shutil.copy(generated.sqlite_path(), path)
            spec = f"sqlite:{path}"
        name = f"{backend} after {n:,}"
        rate, cpu, _ = measure(name, spec, history=n)
        measured.append((name, rate, cpu))
        if not bootstrap:
            path.unlink()
    (short, short_rate, short_cpu), (name, rate, cpu) = measured
    report.add(f"{name}: AppendStream / {short}", rate / short_rate, "x")
    if cpu is not None and short_cpu is not None:
        report.add(f"{name}: server CPU per event, AppendStream / {short}", cpu / short_cpu, "x")


def _history_topic(bootstrap: str, generated: GeneratedLedger) -> str:
    """A fresh topic holding `generated`'s records, written by the Kafka store itself in
    transactions of 5,000, as a server would have written them over time."""
    from bench.ledgergen import _event_id
    from ledger.store.kafka import KafkaLogStore
    from ledger.store.kafka_config import KafkaStoreConfig

    topic = f"steward-bench-history-{uuid.uuid4().hex[:10]}"
    store = KafkaLogStore(KafkaStoreConfig(bootstrap, topic))
    started, chunk, done = time.monotonic(), [], 0
    try:
        n = generated.events
        for record in generated.records():
            chunk.append((_event_id(record), record))
            if len(chunk) == 5_000:
                store.append(chunk)
                done, chunk = done + len(chunk), []
                if done % 500_000 == 0:
                    print(f"  loading the history into {topic}: {done:,} of {n:,}", flush=True)
        if chunk:
            store.append(chunk)
    finally:
        store.close()
    print(f"  {n:,} records in {topic} in {time.monotonic() - started:.0f} s", flush=True)
    return topic


def argparse_hidden() -> str:
    import argparse

    return argparse.SUPPRESS


@contextmanager
def kafka(bootstrap: str | None) -> Iterator[str]:
    if bootstrap:
        yield bootstrap
        return
    from infra.kafka_cluster import KafkaCluster

    with KafkaCluster(brokers=1) as cluster:
        yield cluster.bootstrap_servers


if __name__ == "__main__":
    raise SystemExit(main())
