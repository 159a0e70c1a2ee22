"""Chaos: SIGKILL the ledger server (and a Kafka broker) at random moments during appends.

Each round starts the server process, streams appends from a client (unary and AppendStream
batches, alternating), SIGKILLs the server after a random delay, and carries any append that
got no answer into the next round, where it is retried (appends are idempotent on the event
id). On Kafka some rounds also SIGKILL the broker and restart it while appends are failing.
Afterwards, on a fresh server:

* every acknowledged append is in the log exactly once, at the seq and leaf hash its receipt
  named; no event id appears twice; no rollout step is recorded twice;
* the chain verifies (the client checks it while reading) and so do the checkpoints;
* ``steward-audit`` (``audit.verify``, the independent verifier) verifies the whole ledger.

Rounds: ``STEWARD_CHAOS_ROUNDS`` (default 6 on SQLite, half that on Kafka), so CI stays
within a few minutes. Marked slow; the Kafka case is marked kafka too.
"""

from __future__ import annotations

import os
import random
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from ledger.client import LedgerClient, LedgerRpcError
from ledger.core import Receipt
from ledger.formats import RolloutStep, decode_body, decode_signed_event, encode_signed_event
from ledger.scenario import Cast, Flow
from tests.helpers.keys import write_checkpoint_key
from tests.helpers.ledger_server import LedgerServerProcess

ROUNDS = int(os.environ.get("STEWARD_CHAOS_ROUNDS", "6"))

pytestmark = pytest.mark.slow


def chaos_server(spec: str, key: Path, workdir: Path) -> LedgerServerProcess:
    """The server on ``spec``: sqlite:PATH or kafka:BOOTSTRAP/TOPIC."""
    if spec.startswith("sqlite:"):
        args = [
            "-m",
            "ledger.server",
            "--db",
            spec[len("sqlite:") :],
            "--checkpoint-key",
            str(key),
            "--checkpoint-every-entries",
            "64",
        ]
    else:  # the bench launcher runs ledger.server's serve() on a KafkaLogStore
        args = ["-m", "bench.ingest", "--serve", spec, "--key", str(key)]
    return LedgerServerProcess(args, workdir, start_timeout=180, stop_grace=30)


@dataclass
class Ledger:
    """What the clients know: acknowledged receipts, and events sent without an answer."""

    acked: dict[bytes, Receipt] = field(default_factory=dict)  # event bytes -> receipt
    unanswered: list[bytes] = field(default_factory=list)


def _events(flow: Flow, proposals: list[bytes], n: int) -> Iterator[bytes]:
    for i in range(n):
        h = proposals[i % len(proposals)]
        ev = flow.eval(h, "safety", 0.97) if i % 4 == 3 else flow.health(h, i % 3)
        yield encode_signed_event(ev)


def _appender(
    address: str, todo: list[bytes], ledger: Ledger, stop: threading.Event, rng: random.Random
) -> None:
    """Append until the server dies; keeps what was acknowledged and what was left unanswered."""
    client = LedgerClient(address, retries=0, timeout=20)
    try:
        while todo and not stop.is_set():
            if rng.random() < 0.5:
                batch = todo[: rng.randint(2, 40)]
                try:
                    results = client.append_many(batch, batch_size=16)
                except LedgerRpcError:
                    ledger.unanswered.extend(batch)
                    del todo[: len(batch)]
                    return
                for ev, r in zip(batch, results, strict=True):
                    assert isinstance(r, Receipt), f"refused: {r}"
                    ledger.acked[ev] = r
                del todo[: len(batch)]
            else:
                ev = todo[0]
                try:
                    ledger.acked[ev] = client.append(ev)
                except LedgerRpcError as err:
                    assert err.retryable, f"refused: {err}"
                    ledger.unanswered.append(ev)
                    del todo[0]
                    return
                del todo[0]
    finally:
        client.close()


def _setup(address: str, flow: Flow, ledger: Ledger) -> list[bytes]:
    with LedgerClient(address, timeout=60) as client:
        events = [
            flow.genesis(),
            *flow.grants(),
            flow.policy(),
            *(flow.propose(f"registry.example/m:{i}", deployment=f"m-{i}") for i in range(4)),
        ]
        receipts = [client.append(e) for e in events]
        for e, r in zip(events, receipts, strict=True):
            ledger.acked[encode_signed_event(e)] = r
        return [r.leaf_hash for r in receipts[-4:]]


def run_chaos(
    server: LedgerServerProcess,
    flow: Flow,
    rounds: int,
    seed: int,
    between: Callable[[int, random.Random], None] = lambda _i, _r: None,
) -> Ledger:
    rng = random.Random(seed)
    ledger = Ledger()
    proposals = _setup(server.start(), flow, ledger)
    stream = list(_events(flow, proposals, 400 * rounds))
    for round_ in range(rounds):
        # Retry what got no answer first: each must come back as the original or a new receipt.
        todo = ledger.unanswered + stream[:300]
        del stream[:300]
        ledger.unanswered = []
        stop = threading.Event()
        t = threading.Thread(target=_appender, args=(server.address, todo, ledger, stop, rng))
        t.start()
        time.sleep(rng.uniform(0.2, 1.5))
        server.kill()
        stop.set()
        t.join(60)
        assert not t.is_alive()
        ledger.unanswered.extend(todo)  # never sent: no promise made, retried anyway
        between(round_, rng)
        server.start()
    return ledger


def check_ledger(address: str, ledger: Ledger) -> None:
    from audit.trust import TrustRoot
    from audit.verify import verify

    with LedgerClient(address, timeout=60) as client:
        entries = list(client.read(0))  # the client verifies the hash chain while reading
        checkpoints = client.checkpoints()
        head = client.head()
    assert head.size == len(entries)
    by_event_id: dict[bytes, int] = {}
    # A step is (proposal, attempt, step, phase): a rollout rolled back and approved afresh
    # legitimately records STARTED 0 again, one attempt later.
    steps: set[tuple[bytes, int, int, str]] = set()
    attempts: dict[bytes, int] = {}
    for e in entries:
        assert e.body.event_id not in by_event_id, (
            f"event id twice: seq {by_event_id[e.body.event_id]} and {e.seq}"
        )
        by_event_id[e.body.event_id] = e.seq
        p = e.body.payload
        if isinstance(p, RolloutStep) and p.phase != "DRIFT_CORRECTED":
            key = (p.proposal, attempts.get(p.proposal, 0), p.step, p.phase)
            assert key not in steps, f"rollout step recorded twice at seq {e.seq}"
            steps.add(key)
            if p.phase == "ROLLED_BACK":
                attempts[p.proposal] = attempts.get(p.proposal, 0) + 1
    for raw, receipt in ledger.acked.items():
        event_id = decode_body(decode_signed_event(raw).body).event_id
        seq = by_event_id.get(event_id)
        assert seq == receipt.seq, f"acknowledged event at seq {receipt.seq} is at {seq}"
        assert entries[seq].leaf_hash == receipt.leaf_hash
    genesis = entries[0].body.payload
    trust = TrustRoot.from_json(
        {
            "roots": [
                {"principal": r.principal, "public_key_hex": r.public_key.hex()}
                for r in genesis.roots
            ]
        }
    )  # type: ignore[union-attr]
    report = verify([e.entry_bytes for e in entries], trust, [c.note for c in checkpoints])
    assert report.ok, report.findings[:5]
    assert checkpoints and report.verified_size == checkpoints[-1].size


def drain_and_check(address: str, ledger: Ledger) -> None:
    """Retry the unanswered appends once more on the final server, then check the whole log."""
    with LedgerClient(address, timeout=60) as client:
        for ev in ledger.unanswered:
            ledger.acked[ev] = client.append(ev)
    check_ledger(address, ledger)
    assert len(ledger.acked) > 20


def test_chaos_sqlite_server_sigkill(tmp_path: Path) -> None:
    cast = Cast.create()
    key = write_checkpoint_key(cast, tmp_path)
    server = chaos_server(f"sqlite:{tmp_path / 'ledger.db'}", key, tmp_path)
    try:
        ledger = run_chaos(
            server, Flow(cast, ledger="chaos", origin="steward.dev/ledger/chaos"), ROUNDS, seed=1
        )
        drain_and_check(server.address, ledger)
    finally:
        server.stop()


@pytest.mark.kafka
def test_chaos_kafka_server_and_broker_sigkill(
    tmp_path: Path, kafka_cluster: object, kafka_topic_name: str
) -> None:
    from infra.kafka_cluster import KafkaCluster

    assert isinstance(kafka_cluster, KafkaCluster)
    cast = Cast.create()
    key = write_checkpoint_key(cast, tmp_path)
    server = chaos_server(
        f"kafka:{kafka_cluster.bootstrap_servers}/{kafka_topic_name}", key, tmp_path
    )

    def maybe_kill_broker(round_: int, rng: random.Random) -> None:
        if round_ % 2 == 1:  # every other round the broker dies too, with the server down
            kafka_cluster.kill_broker(1)
            kafka_cluster.restart_broker(1)

    try:
        ledger = run_chaos(
            server,
            Flow(cast, ledger="chaos", origin="steward.dev/ledger/chaos"),
            max(2, ROUNDS // 2),
            seed=2,
            between=maybe_kill_broker,
        )
        drain_and_check(server.address, ledger)
    finally:
        server.stop()
