"""The ledger server on a real Kafka: one writer, nothing acknowledged lost, nothing doubled.

Every server here is a real ``python -m ledger.server --kafka-bootstrap ...`` process:

* two servers race for one ledger: the second fences the first, which then answers appends
  with UNAVAILABLE/FENCED and reports NOT_SERVING; clients appending to both during the
  takeover lose nothing and the chain never forks;
* the (session) broker is SIGKILLed during a stream of appends and restarted: clients retry
  the same signed events, each lands exactly once;
* a 3-broker cluster (RF 3, min ISR 2) loses its partition leader during 5,000 appends;
* records written straight into the topic around the server are skipped and counted by the
  server's replay, the projections and the controller's replayer.
"""

from __future__ import annotations

import itertools
import json
import re
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from kafka import KafkaConsumer, KafkaProducer, TopicPartition

from infra.kafka_cluster import KafkaCluster
from ledger import checkpoint as notes
from ledger.client import LedgerClient, LedgerRpcError
from ledger.core import Receipt
from ledger.formats import (
    LogEntry,
    Signature,
    SignedEvent,
    decode_body,
    decode_signed_event,
    encode_signed_event,
    make_entry,
)
from ledger.grpc_errors import FENCED_CODE
from ledger.keys import PrivateKey
from ledger.merkle import MerkleTree
from ledger.scenario import Cast, Flow
from ledger.store.kafka_topic import writers_topic
from tests.helpers.keys import write_checkpoint_key
from tests.helpers.ledger_server import LedgerServerProcess

pytestmark = pytest.mark.kafka

START_TIMEOUT = 180.0  # a busy 2-core machine: interpreter + Kafka clients + replay


# --------------------------------------------------------------------------------------------
# A ledger server process on Kafka


class KafkaServer(LedgerServerProcess):
    """``python -m ledger.server`` on the topic; ``health`` asks its gRPC health service."""

    def __init__(
        self,
        name: str,
        workdir: Path,
        key: Path,
        bootstrap: str,
        topic: str,
        extra: list[str] | None = None,
    ) -> None:
        super().__init__(
            [
                "-m",
                "ledger.server",
                "--kafka-bootstrap",
                bootstrap,
                "--topic",
                topic,
                "--checkpoint-key",
                str(key),
                "--checkpoint-every-entries",
                "64",
                *(extra or []),
            ],
            workdir,
            name=name,
            start_timeout=START_TIMEOUT,
            stop_grace=60,
        )

    def health(self) -> int:
        with grpc.insecure_channel(self.address) as channel:
            reply = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(service=""), timeout=10
            )
            return int(reply.status)


@pytest.fixture
def key_and_flow(tmp_path: Path) -> tuple[Path, Flow]:
    cast = Cast.create()
    key = write_checkpoint_key(cast, tmp_path)
    return key, Flow(cast, ledger="kafka-ledger", origin="steward.dev/ledger/kafka-ledger")


@pytest.fixture
def servers() -> Iterator[list[KafkaServer]]:
    """Every server a test starts; stopped (and their logs shown on failure) afterwards."""
    started: list[KafkaServer] = []
    yield started
    for s in started:
        s.stop()


# --------------------------------------------------------------------------------------------
# Workload and checks


def setup_ledger(address: str, flow: Flow, acked: dict[bytes, Receipt]) -> list[bytes]:
    """Genesis, grants, policy and 8 proposals; returns the proposals' leaf hashes."""
    with LedgerClient(address, timeout=60) as client:
        events = [
            flow.genesis(),
            *flow.grants(),
            flow.policy(),
            *(flow.propose(f"registry.example/m:{i}", deployment=f"m-{i}") for i in range(8)),
        ]
        for ev in events:
            data = encode_signed_event(ev)
            acked[data] = client.append(data)
    return [r.leaf_hash for r in list(acked.values())[-8:]]


def event_source(flow: Flow, proposals: list[bytes]) -> Callable[[], bytes]:
    """A thread-safe, endless supply of fresh signed events (health reports and evals)."""
    counter = itertools.count()
    lock = threading.Lock()

    def next_event() -> bytes:
        with lock:
            i = next(counter)
        h = proposals[i % len(proposals)]
        ev = flow.eval(h, "safety", 0.97) if i % 4 == 3 else flow.health(h, i % 3)
        return encode_signed_event(ev)

    return next_event


def event_id(data: bytes) -> bytes:
    return decode_body(decode_signed_event(data).body).event_id


def check_log(address: str, acked: dict[bytes, Receipt]) -> list[LogEntry]:
    """Every acknowledged event exactly once where its receipt says; chain, root, checkpoint."""
    with LedgerClient(address, timeout=120) as client:
        entries = list(client.read(0))  # the client checks seq and every prev link
        head = client.head()
        cp = client.checkpoint(publish_now=True)
        vkey = client.vkey()
    assert head.size == len(entries)
    seq_of: dict[bytes, int] = {}
    for e in entries:
        assert e.body.event_id not in seq_of, (
            f"event id at seq {seq_of[e.body.event_id]} and again at {e.seq}"
        )
        seq_of[e.body.event_id] = e.seq
    for data, receipt in acked.items():
        seq = seq_of.get(event_id(data))
        assert seq == receipt.seq, f"acknowledged at seq {receipt.seq}, found at {seq}"
        assert entries[seq].leaf_hash == receipt.leaf_hash
    # The Merkle root over the leaves we read is the server's, and the signed checkpoint's.
    tree = MerkleTree.from_leaves([e.leaf_hash for e in entries])
    assert tree.root() == head.root
    verified = notes.verify_checkpoint(cp.note, vkey, head.origin)
    assert verified.size == head.size and verified.root == tree.root()
    return entries


def replay_counts(server: KafkaServer) -> tuple[int, int]:
    """(entries, skipped) of the server's last replay, from its log."""
    found = re.findall(r"replay_done entries=(\d+) skipped=(\d+)", server.log())
    assert found, f"no replay report in {server.log_path}"
    entries, skipped = found[-1]
    return int(entries), int(skipped)


def claim_tokens(bootstrap: str, topic: str) -> list[str]:
    """The tokens of the ledger's claim log ``<topic>.writers``, oldest first."""
    consumer = KafkaConsumer(
        bootstrap_servers=bootstrap,
        group_id=None,
        isolation_level="read_committed",
        enable_auto_commit=False,
    )
    tp = TopicPartition(writers_topic(topic), 0)
    try:
        consumer.assign([tp])
        consumer.seek_to_beginning(tp)
        end = consumer.end_offsets([tp])[tp]
        tokens: list[str] = []
        while consumer.position(tp) < end:
            for rec in consumer.poll(timeout_ms=500).get(tp, []):
                tokens.append(json.loads(rec.value)["token"])
        return tokens
    finally:
        consumer.close()


def append_until_acked(
    client: LedgerClient, data: bytes, deadline: float, errors: list[LedgerRpcError]
) -> Receipt:
    """Retry the same signed event on UNAVAILABLE/DEADLINE_EXCEEDED until it is acknowledged."""
    while True:
        try:
            return client.append(data)
        except LedgerRpcError as err:
            assert err.retryable, f"refused: {err}"
            # Only a newer server may fence this one; none is started behind its back here.
            assert err.violation_code != FENCED_CODE, f"{client.target} was fenced: {err.message}"
            errors.append(err)
            if time.monotonic() > deadline:
                raise
            time.sleep(0.5)


# --------------------------------------------------------------------------------------------
# (a) two servers race for one ledger


def test_second_server_fences_the_first_and_nothing_forks(
    tmp_path: Path,
    kafka_cluster: KafkaCluster,
    kafka_topic_name: str,
    key_and_flow: tuple[Path, Flow],
    servers: list[KafkaServer],
) -> None:
    """The newcomer wins for good: the first server's appends may fail in any way while the
    second claims (issue #4: a failure that dropped its producer used to make it re-claim and
    fence the second), its clients then see FENCED and fail over; the second server's clients
    never see FENCED; the claim log holds the two claims and nothing else."""
    key, flow = key_and_flow
    first = KafkaServer("first", tmp_path, key, kafka_cluster.bootstrap_servers, kafka_topic_name)
    second = KafkaServer("second", tmp_path, key, kafka_cluster.bootstrap_servers, kafka_topic_name)
    servers.extend([first, second])
    first.start()
    acked: dict[bytes, Receipt] = {}
    next_event = event_source(flow, setup_ledger(first.address, flow, acked))
    lock = threading.Lock()
    second_up = threading.Event()
    fenced: list[LedgerRpcError] = []
    failures: list[BaseException] = []
    deadline = time.monotonic() + 240

    acked_by = {"first": 0, "second": 0}

    def ack(data: bytes, receipt: Receipt, by: str) -> None:
        with lock:
            acked[data] = receipt
            acked_by[by] += 1

    def on_first() -> None:
        """Appends to the first server until it says it was fenced, then fails over."""
        try:
            with LedgerClient(first.address, retries=0, timeout=30) as client:
                data = next_event()
                while time.monotonic() < deadline and not failures:
                    try:
                        ack(data, client.append(data), by="first")
                        data = next_event()
                        continue
                    except LedgerRpcError as err:
                        assert err.retryable, f"refused: {err}"
                        if err.violation_code != FENCED_CODE:
                            time.sleep(0.2)  # not decided (store busy): the same event again
                            continue
                        with lock:
                            fenced.append(err)
                    second_up.wait(START_TIMEOUT)
                    on_second(pending=[data], extra=20)
                    return
            if not failures:
                raise AssertionError("the first server was never fenced")
        except BaseException as exc:
            failures.append(exc)

    def on_second(pending: list[bytes], extra: int) -> None:
        errors: list[LedgerRpcError] = []
        with LedgerClient(second.address, retries=0, timeout=30) as client:
            for data in [*pending, *(next_event() for _ in range(extra))]:
                ack(data, append_until_acked(client, data, deadline, errors), by="second")

    def second_worker() -> None:
        try:
            second_up.wait(START_TIMEOUT)
            on_second(pending=[], extra=100)
        except BaseException as exc:
            failures.append(exc)

    threads = [threading.Thread(target=on_first, daemon=True) for _ in range(2)]
    threads += [threading.Thread(target=second_worker, daemon=True) for _ in range(2)]
    for t in threads:
        t.start()
    # Let appends flow to the first server, then start the second one against the same ledger.
    time.sleep(1.0)
    second.wait_ready(second.launch())
    second_up.set()
    for t in threads:
        t.join(300)
        assert not t.is_alive()
    # If the second server was fenced, the first one claimed the ledger back: its store lines say how.
    assert not failures, (
        failures,
        [
            line
            for line in first.log().splitlines()
            if "ledger." in line and "checkpoint_published" not in line
        ],
    )

    # The loser: UNAVAILABLE with the FENCED code and a message that says so; NOT_SERVING.
    assert fenced, "no client saw the first server fenced"
    with (
        LedgerClient(first.address, retries=0, timeout=30) as client,
        pytest.raises(LedgerRpcError) as caught,
    ):
        client.append(next_event())
    err = caught.value
    assert err.code == grpc.StatusCode.UNAVAILABLE and err.violation_code == FENCED_CODE
    assert err.message.startswith("fenced: another ledger server took over"), err.message
    assert all(e.message.startswith("fenced:") for e in fenced)
    assert first.health() == health_pb2.HealthCheckResponse.NOT_SERVING
    assert second.health() == health_pb2.HealthCheckResponse.SERVING
    assert "fenced" in first.log()

    # Every acknowledged append (by either server) once, the chain and root verify: no fork.
    entries = check_log(second.address, acked)
    assert len(entries) == len(acked)  # every event was acknowledged by someone, none twice
    assert acked_by["first"] > 0 and acked_by["second"] > 0, acked_by
    # One claim per server, the second's last: the fenced first server never claimed again
    # (re-claims after a transient loss write no record; they only check the last one).
    claims = claim_tokens(kafka_cluster.bootstrap_servers, kafka_topic_name)
    assert len(claims) == 2, claims
    assert f"(claim {claims[0][:12]}," in first.log()
    assert f"(claim {claims[1][:12]}," in second.log()
    assert f"(claim {claims[0][:12]}," not in second.log()
    # A fresh replay of the topic agrees: nothing in it was skipped (no second chain).
    second.stop()
    second.start()
    assert replay_counts(second) == (len(entries), 0)


# --------------------------------------------------------------------------------------------
# (b) the broker SIGKILLed during a stream of appends


def test_broker_sigkill_during_appends_loses_and_doubles_nothing(
    tmp_path: Path,
    kafka_cluster: KafkaCluster,
    kafka_topic_name: str,
    key_and_flow: tuple[Path, Flow],
    servers: list[KafkaServer],
) -> None:
    key, flow = key_and_flow
    # Short store timeouts: appends fail fast (UNAVAILABLE) while the broker is down.
    server = KafkaServer(
        "server",
        tmp_path,
        key,
        kafka_cluster.bootstrap_servers,
        kafka_topic_name,
        extra=["--kafka-timeout", "10"],
    )
    servers.append(server)
    server.start()
    acked: dict[bytes, Receipt] = {}
    next_event = event_source(flow, setup_ledger(server.address, flow, acked))
    lock = threading.Lock()
    errors: list[LedgerRpcError] = []
    failures: list[BaseException] = []
    deadline = time.monotonic() + 300
    per_worker = 80

    def worker() -> None:
        try:
            with LedgerClient(server.address, retries=0, timeout=20) as client:
                for _ in range(per_worker):
                    data = next_event()
                    receipt = append_until_acked(client, data, deadline, errors)
                    with lock:
                        acked[data] = receipt
        except BaseException as exc:
            failures.append(exc)

    base = len(acked)
    threads = [threading.Thread(target=worker, daemon=True) for _ in range(3)]
    for t in threads:
        t.start()
    while len(acked) < base + 40 and not failures:
        time.sleep(0.05)
    kafka_cluster.kill_broker(1)
    killed_at = len(acked)
    # Appends pile up against the dead broker for longer than the store's 10 s timeout, so some
    # surely fail: a 3 s outage could be ridden out by librdkafka's retries (it once was, in a
    # CI run), and then nothing here tests what a failed append leaves behind.
    time.sleep(12)
    kafka_cluster.restart_broker(1)
    for t in threads:
        t.join(360)
        assert not t.is_alive()
    assert not failures, failures
    assert killed_at < base + 3 * per_worker, "every append finished before the kill"
    assert errors, "no append failed while the broker was down"
    entries = check_log(server.address, acked)
    assert len(entries) == len(acked)
    # The topic itself holds each event once: a fresh replay skips nothing.
    server.stop()
    server.start()
    assert replay_counts(server) == (len(entries), 0)
    check_log(server.address, acked)


# --------------------------------------------------------------------------------------------
# (d) records written around the server


FOREIGN_KINDS = (
    "garbage",
    "bad signature",
    "wrong seq and prev",
    "unknown key",
    "a stored entry again",
)


def foreign_record(
    kind: str, flow: Flow, stranger: PrivateKey, last: LogEntry, proposal: bytes
) -> tuple[bytes, bytes]:
    """(key, value) of a record a producer that bypasses the server might write next.

    The signed ones carry the seq and prev the next entry really needs, so only their
    signature (or key) gives them away.
    """
    seq, prev, now = last.seq + 1, last.leaf_hash, last.entry.received_at + 1
    good = decode_signed_event(encode_signed_event(flow.health(proposal, 1)))
    event_id = decode_body(good.body).event_id
    if kind == "garbage":
        return b"junk", b"\x00\x01 not an entry at all"
    if kind == "bad signature":
        flipped = SignedEvent(
            good.body,
            tuple(Signature(s.key_id, bytes(b ^ 0xFF for b in s.sig)) for s in good.signatures),
        )
        return event_id, make_entry(seq, prev, flipped, now).entry_bytes
    if kind == "wrong seq and prev":
        return event_id, make_entry(seq + 7, bytes(32), good, now).entry_bytes
    if kind == "unknown key":
        forged = flow.signed_by_keys(decode_body(good.body).payload, stranger)
        return event_id, make_entry(seq, prev, forged, now).entry_bytes
    assert kind == "a stored entry again"
    return last.body.event_id, last.entry_bytes


def test_records_written_around_the_server_are_skipped_and_counted(
    tmp_path: Path,
    kafka_cluster: KafkaCluster,
    kafka_topic_name: str,
    key_and_flow: tuple[Path, Flow],
    servers: list[KafkaServer],
) -> None:
    from controller.replay import Replayer
    from ledger.projection_schema import invalid_records_table
    from ledger.projections import Projector, dump, fresh_dump
    from ledger.store.kafka import KafkaLogStore
    from ledger.store.kafka_config import KafkaStoreConfig
    from ledger.store.sqlite import SQLiteLogStore, sqlite_engine

    key, flow = key_and_flow
    server = KafkaServer("server", tmp_path, key, kafka_cluster.bootstrap_servers, kafka_topic_name)
    servers.append(server)
    server.start()
    acked: dict[bytes, Receipt] = {}
    proposals = setup_ledger(server.address, flow, acked)
    next_event = event_source(flow, proposals)
    stranger = flow.cast.extra_key("mallory")
    foreign = FOREIGN_KINDS
    producer = KafkaProducer(bootstrap_servers=kafka_cluster.bootstrap_servers.split(","))
    try:
        with LedgerClient(server.address, retries=0, timeout=30) as client:
            for kind in foreign:
                last = client.get(client.head().size - 1)
                k, v = foreign_record(kind, flow, stranger, last, proposals[0])
                producer.send(kafka_topic_name, key=k, value=v, partition=0).get(timeout=30)
                for _ in range(3):  # the server keeps appending between the intruder's writes
                    data = next_event()
                    acked[data] = client.append(data)
    finally:
        producer.close()
    check_log(server.address, acked)

    # A restart replays the topic: the foreign records are skipped and counted, nothing else.
    server.stop()
    server.start()
    assert replay_counts(server) == (len(acked), len(foreign))
    # Each for its own reason: the signed ones with the right seq are caught by verification.
    reasons = re.findall(r"replay_skip position=\d+ (?:seq=\d+ )?reason=(\w+)", server.log())
    assert reasons[-len(foreign) :] == [
        "malformed",
        "BAD_SIGNATURE",
        "SEQ_MISMATCH",
        "UNKNOWN_KEY",
        "SEQ_MISMATCH",
    ]
    with LedgerClient(server.address, retries=0, timeout=30) as client:
        for _ in range(5):
            data = next_event()
            acked[data] = client.append(data)
    entries = check_log(server.address, acked)
    assert len(entries) == len(acked)

    # The fold of the valid entries alone, to compare every reader with.
    valid = SQLiteLogStore(tmp_path / "valid.db")
    valid.append([(e.body.event_id, e.entry_bytes) for e in entries])
    expected = fresh_dump(valid)
    valid.close()

    reader = KafkaLogStore(
        KafkaStoreConfig(kafka_cluster.bootstrap_servers, kafka_topic_name, operation_timeout_s=30)
    )
    try:
        # A Projector of our own over the topic: invalid_records rows, rows = the valid fold.
        engine = sqlite_engine(tmp_path / "reader-projections.db")
        projector = Projector(reader, engine)
        projector.catch_up()
        assert projector.state.size == len(entries)
        with engine.connect() as conn:
            rows = conn.execute(invalid_records_table.select()).all()
        assert len(rows) == len(foreign), rows
        assert dump(engine) == expected
        engine.dispose()
        # The controller's replayer counts them as invalid and folds the rest.
        replayer = Replayer(reader)
        replayer.catch_up()
        assert replayer.state.invalid == len(foreign)
        assert replayer.state.ledger.size == len(entries)
        assert replayer.state.ledger.last_hash == entries[-1].leaf_hash
    finally:
        reader.close()


def test_server_projections_follow_a_kafka_log(
    tmp_path: Path,
    kafka_cluster: KafkaCluster,
    kafka_topic_name: str,
    key_and_flow: tuple[Path, Flow],
    servers: list[KafkaServer],
) -> None:
    from steward.v1 import query_pb2, query_pb2_grpc

    key, flow = key_and_flow
    server = KafkaServer(
        "server",
        tmp_path,
        key,
        kafka_cluster.bootstrap_servers,
        kafka_topic_name,
        extra=["--projections", str(tmp_path / "projections.db")],
    )
    servers.append(server)
    server.start()
    acked: dict[bytes, Receipt] = {}
    next_event = event_source(flow, setup_ledger(server.address, flow, acked))
    time.sleep(1.0)  # the projector commits what it has, so later entries come in a new batch
    with LedgerClient(server.address, retries=0, timeout=30) as client:
        for _ in range(5):
            data = next_event()
            acked[data] = client.append(data)
    stub = query_pb2_grpc.QueryServiceStub(grpc.insecure_channel(server.address))
    wait_until = time.monotonic() + 20
    while (
        status := stub.GetProjectionStatus(query_pb2.GetProjectionStatusRequest(), timeout=10)
    ).size < len(acked):
        assert time.monotonic() < wait_until, (
            f"projections stuck at {status.size} of {len(acked)} entries"
        )
        time.sleep(0.2)


# --------------------------------------------------------------------------------------------
# (c) 3 brokers, RF 3, min ISR 2: the partition leader dies during 5,000 appends


TOTAL_C = 5_000
CHUNK_C = 250


def test_leader_loss_during_5000_appends_on_three_brokers(
    tmp_path: Path,
    kafka_cluster3: KafkaCluster,
    kafka_topic_name: str,
    key_and_flow: tuple[Path, Flow],
    servers: list[KafkaServer],
) -> None:
    key, flow = key_and_flow
    cluster = kafka_cluster3
    server = KafkaServer(
        "server",
        tmp_path,
        key,
        cluster.bootstrap_servers,
        kafka_topic_name,
        # 5,000 appends by one monitor as fast as the brokers take them: a failover test, not a
        # rate-limit test (tests/security/test_access.py holds the limits), so that limit is off.
        extra=[
            "--replication-factor",
            "3",
            "--min-insync-replicas",
            "2",
            "--kafka-timeout",
            "20",
            "--append-rate-per-principal",
            "off",
        ],
    )
    servers.append(server)
    server.start()
    acked: dict[bytes, Receipt] = {}
    next_event = event_source(flow, setup_ledger(server.address, flow, acked))
    events = [next_event() for _ in range(TOTAL_C)]
    killed: list[int] = []
    coordinator: list[int | None] = []
    retried_chunks = 0
    deadline = time.monotonic() + 300

    def kill_leader() -> None:
        leader = cluster.leader_of(kafka_topic_name, 0)
        assert leader is not None
        # Worth knowing: losing the transaction coordinator too is the slow case (docs/KAFKA.md).
        coordinator.append(cluster.leader_of("__transaction_state", 0))
        cluster.kill_broker(leader)
        killed.append(leader)

    killer: threading.Thread | None = None
    started = time.monotonic()
    with LedgerClient(server.address, retries=0, timeout=30) as client:
        for i in range(0, TOTAL_C, CHUNK_C):
            chunk = events[i : i + CHUNK_C]
            if i >= TOTAL_C * 3 // 10 and killer is None:
                # Killed from another thread so that the kill lands while batches are in flight.
                killer = threading.Thread(target=kill_leader)
                killer.start()
            while True:
                try:
                    results = client.append_many(chunk, batch_size=125)
                    break
                except LedgerRpcError as err:
                    # Whole-stream failure: nothing may be assumed stored, so the same chunk
                    # goes again; events that did land come back as duplicates.
                    assert err.retryable, f"refused: {err}"
                    assert time.monotonic() < deadline, f"no progress after the kill: {err}"
                    retried_chunks += 1
                    time.sleep(1.0)
            for data, r in zip(chunk, results, strict=True):
                assert isinstance(r, Receipt), f"refused: {r}"
                acked[data] = r
    assert killer is not None
    killer.join(60)
    assert killed, "the leader was not killed"
    entries = check_log(server.address, acked)
    assert len(entries) == len(acked) and len(acked) >= TOTAL_C
    new_leader = cluster.leader_of(kafka_topic_name, 0)
    assert new_leader is not None and new_leader != killed[0]
    server.stop()
    server.start()
    assert replay_counts(server) == (len(entries), 0)
    print(
        f"leader {killed[0]} killed (transaction coordinator: {coordinator[0]}); "
        f"{retried_chunks} chunk(s) retried; new leader {new_leader}; "
        f"{time.monotonic() - started:.0f}s for {TOTAL_C} appends"
    )


# --------------------------------------------------------------------------------------------
# Command line (no broker needed)


def test_command_line_refuses_bad_kafka_options(
    tmp_path: Path,
    key_and_flow: tuple[Path, Flow],
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from ledger.server import _projections_url, build_parser, main

    key, _ = key_and_flow
    base = ["--kafka-bootstrap", "127.0.0.1:9", "--checkpoint-key", str(key)]
    assert main(base) == 2
    assert "--kafka-bootstrap needs --topic" in capsys.readouterr().err
    # A secret is named by its variable, and a missing variable is reported by name only.
    monkeypatch.delenv("STEWARD_TEST_KAFKA_PW", raising=False)
    assert main([*base, "--topic", "t", "--kafka-sasl-password-env", "STEWARD_TEST_KAFKA_PW"]) == 2
    assert "STEWARD_TEST_KAFKA_PW" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main([*base, "--db", str(tmp_path / "x.db")])  # exactly one store
    parse = build_parser().parse_args
    assert _projections_url(parse([*base, "--topic", "t"])) is None  # 'same' on Kafka: none
    assert (
        _projections_url(parse([*base, "--topic", "t", "--projections", "p.db"]))
        == "sqlite:///p.db"
    )
    assert (
        _projections_url(parse([*base, "--topic", "t", "--projections", "postgresql://h/db"]))
        == "postgresql://h/db"
    )
    sqlite = ["--db", "l.db", "--checkpoint-key", str(key)]
    assert _projections_url(parse(sqlite)) == "sqlite:///l.db"
    assert _projections_url(parse([*sqlite, "--projections", "off"])) is None
