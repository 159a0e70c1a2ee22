"""steward-audit against real infrastructure: a Kafka topic and a ledger gRPC server."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from kafka import KafkaProducer

from audit.cli import main
from audit.note import parse_checkpoint, parse_note
from audit.sources import GrpcSource, KafkaSource
from audit.trust import TrustRoot
from audit.verify import verify
from ledger.client import LedgerClient
from ledger.formats import make_entry
from ledger.keys import PrivateKey
from ledger.scenario import Cast, Flow
from ledger.server import LedgerServerConfig, RunningServer, serve
from ledger.store.kafka import KafkaLogStore
from ledger.store.kafka_config import KafkaStoreConfig
from tests.audit_tamper import Builder, Log, checkpoint_note
from tests.helpers.stories import canary_started


def _size(note: str) -> int:
    return parse_checkpoint(parse_note(note).text).size


def _write_clean(bootstrap: str, topic: str) -> tuple[Builder, Log]:
    b = Builder().clean()
    log = b.log()
    store = KafkaLogStore(KafkaStoreConfig(bootstrap_servers=bootstrap, topic=topic))
    try:
        store.append([(e.body.event_id, e.entry_bytes) for e in b.entries])
        for note in log.checkpoints:
            store.save_checkpoint(_size(note), note)
    finally:
        store.close()
    return b, log


def _audit_kafka(bootstrap: str, topic: str, log: Log) -> list[str]:
    source = KafkaSource(bootstrap, topic)
    report = verify(source.records(), TrustRoot.from_json(log.trust), source.checkpoints())
    return [f.code for f in report.findings]


@pytest.mark.kafka
def test_kafka_clean_then_injected_records(
    kafka_cluster, kafka_topic_name: str, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    bootstrap = kafka_cluster.bootstrap_servers
    b, log = _write_clean(bootstrap, kafka_topic_name)
    assert _audit_kafka(bootstrap, kafka_topic_name, log) == []

    trust = tmp_path / "trust.json"
    trust.write_text(json.dumps(log.trust))
    assert (
        main(
            [
                "verify",
                "--kafka",
                bootstrap,
                "--topic",
                kafka_topic_name,
                "--trust-root",
                str(trust),
            ]
        )
        == 0
    )

    # Someone bypasses the ledger server and writes straight into the topic: a chained entry
    # signed by a key the ledger never granted, then a copy of an old record.
    last = b.entries[-1]
    stranger = PrivateKey.from_seed(bytes(range(32)))
    forged = make_entry(
        len(b.entries),
        last.leaf_hash,
        b.flow.signed_by_keys(_payload(b), stranger),
        last.entry.received_at + 1,
    )
    producer = KafkaProducer(bootstrap_servers=bootstrap)
    try:
        producer.send(
            kafka_topic_name, key=forged.body.event_id, value=forged.entry_bytes, partition=0
        )
        producer.send(kafka_topic_name, key=b"replay", value=b.entries[5].entry_bytes, partition=0)
        producer.flush()
    finally:
        producer.close()
    codes = _audit_kafka(bootstrap, kafka_topic_name, log)
    assert "UNKNOWN_KEY" in codes and "ENTRY_DUPLICATED" in codes, codes
    assert (
        main(
            [
                "verify",
                "--kafka",
                bootstrap,
                "--topic",
                kafka_topic_name,
                "--trust-root",
                str(trust),
            ]
        )
        == 1
    )

    # A checkpoint for the forged history, signed by someone else, is flagged too.
    other = PrivateKey.from_seed(bytes(32))
    producer = KafkaProducer(bootstrap_servers=bootstrap)
    try:
        note = checkpoint_note(b.flow.origin, len(b.entries) + 1, bytes(32), other)
        producer.send(
            kafka_topic_name + ".checkpoints",
            key=str(len(b.entries) + 1).encode(),
            value=note.encode(),
            partition=0,
        )
        producer.flush()
    finally:
        producer.close()
    assert "CHECKPOINT_BAD_SIGNATURE" in _audit_kafka(bootstrap, kafka_topic_name, log)


def _payload(b: Builder) -> object:
    from ledger.formats import decode_body

    return decode_body(b.flow.health(b.p1, 2, True).body).payload


@pytest.mark.kafka
def test_kafka_unreachable_topic_is_exit_2(kafka_cluster, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    trust = tmp_path / "trust.json"
    trust.write_text(json.dumps(Builder().trust()))
    assert (
        main(
            [
                "verify",
                "--kafka",
                kafka_cluster.bootstrap_servers,
                "--topic",
                "no-such-topic-here",
                "--trust-root",
                str(trust),
            ]
        )
        == 2
    )


@pytest.fixture
def server(tmp_path: Path) -> Iterator[tuple[RunningServer, Cast]]:
    cast = Cast.create(seed="audit-online")
    running = serve(
        LedgerServerConfig(
            store=tmp_path / "ledger.db",
            checkpoint_key=cast.checkpoint_key,
            checkpoint_every_ms=0,
            checkpoint_every_entries=4,
        )
    )
    try:
        yield running, cast
    finally:
        running.stop(None)


def test_grpc_source_against_a_real_ledger_server(
    server: tuple[RunningServer, Cast], tmp_path: Path
) -> None:
    running, cast = server
    flow = Flow(cast)
    client = LedgerClient(running.address, timeout=10, retries=0)
    try:
        canary_started(lambda event: client.append(event).leaf_hash, flow)
    finally:
        client.close()
    b = Builder(seed="audit-online")
    trust_doc = b.trust()
    source = GrpcSource(running.address)
    try:
        report = verify(source.records(), TrustRoot.from_json(trust_doc), source.checkpoints())
    finally:
        source.close()
    assert [str(f) for f in report.findings] == []
    assert report.entries == 16 and report.checkpoints >= 3
    trust = tmp_path / "trust.json"
    trust.write_text(json.dumps(trust_doc))
    saved = tmp_path / "seen.note"
    assert (
        main(
            [
                "verify",
                "--grpc",
                running.address,
                "--trust-root",
                str(trust),
                "--save-checkpoint",
                str(saved),
            ]
        )
        == 0
    )
    assert (
        main(
            [
                "watch",
                "--grpc",
                running.address,
                "--trust-root",
                str(trust),
                "--state-dir",
                str(tmp_path / "st"),
                "--rounds",
                "1",
            ]
        )
        == 0
    )
    assert (tmp_path / "st" / "last-verified.note").exists()
