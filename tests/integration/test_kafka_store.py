"""KafkaLogStore on a real broker: the shared store contract, then Kafka-specific behaviour."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator

import pytest
from kafka import KafkaConsumer, KafkaProducer, TopicPartition

from infra.kafka import KafkaCluster
from ledger.errors import FencedError, StoreError, StoreUnavailable
from ledger.store.base import LogStore
from ledger.store.kafka import KafkaLogStore, KafkaStoreConfig
from tests.contract.store_contract import StoreContract

pytestmark = pytest.mark.kafka




@pytest.fixture
def store_factory(make_config: Callable[..., KafkaStoreConfig]) -> Iterator[Callable[..., LogStore]]:
    opened: list[KafkaLogStore] = []

    def make(reopen: KafkaLogStore | None = None) -> LogStore:
        if reopen is not None:
            reopen.close()
            store = KafkaLogStore(reopen.config)
        else:
            store = KafkaLogStore(make_config())
        opened.append(store)
        return store

    yield make
    for store in opened:
        store.close()


class TestKafkaStoreContract(StoreContract):
    pass


# ---------------------------------------------------------------------------- Kafka specifics


def _committed(bootstrap: str, topic: str) -> list[tuple[int, bytes, bytes]]:
    """Every read_committed record of partition 0, read by a plain consumer."""
    consumer = KafkaConsumer(bootstrap_servers=bootstrap, group_id=None,
                             isolation_level="read_committed", enable_auto_commit=False)
    tp = TopicPartition(topic, 0)
    try:
        consumer.assign([tp])
        consumer.seek_to_beginning(tp)
        end = consumer.end_offsets([tp])[tp]
        out: list[tuple[int, bytes, bytes]] = []
        while consumer.position(tp) < end:
            for rec in consumer.poll(timeout_ms=500).get(tp, []):
                out.append((rec.offset, rec.key, rec.value))
        return out
    finally:
        consumer.close()


def test_positions_are_offsets_and_end_is_the_last_stable_offset(
    store_factory: Callable[..., LogStore], kafka_cluster: KafkaCluster
) -> None:
    store = store_factory()
    assert isinstance(store, KafkaLogStore)
    assert store.end_position() == 0
    first = store.append([(b"a", b"1"), (b"b", b"2")])
    assert first == [0, 1]
    # The commit marker takes offset 2: the next batch starts at 3, the end is one past it.
    assert store.end_position() == 3
    second = store.append([(b"c", b"3")])
    assert second == [3]
    assert store.end_position() == 5
    assert _committed(kafka_cluster.bootstrap_servers, store.topic) == [
        (0, b"a", b"1"), (1, b"b", b"2"), (3, b"c", b"3")]


def test_a_second_writer_fences_the_first(
    make_config: Callable[..., KafkaStoreConfig], kafka_cluster: KafkaCluster
) -> None:
    config = make_config(ledger="fence-me")
    first = KafkaLogStore(config)
    second = KafkaLogStore(config)
    try:
        assert first.append([(b"e1", b"by first")]) == [0]
        second.claim_writer()  # InitProducerId with the same transactional id
        with pytest.raises(FencedError, match="fenced"):
            first.append([(b"e2", b"by first, after being fenced")])
        # Stays fenced: no re-claim behind the new writer's back.
        with pytest.raises(FencedError, match="fenced"):
            first.append([(b"e3", b"again")])
        with pytest.raises(FencedError):
            first.save_checkpoint(1, "late note\n")
        pos = second.append([(b"e2", b"by second")])
        assert [(r.key, r.value) for r in second.read(0)] == [
            (b"e1", b"by first"), (b"e2", b"by second")]
        assert [r.position for r in first.read(pos[0])] == pos  # reading still works
        keys = [k for _, k, _ in _committed(kafka_cluster.bootstrap_servers, config.topic)]
        assert keys == [b"e1", b"e2"]
    finally:
        first.close()
        second.close()


def test_fenced_writer_mid_transaction_leaves_nothing_visible(
    make_config: Callable[..., KafkaStoreConfig], kafka_cluster: KafkaCluster
) -> None:
    """The first writer has records in an open transaction when the second one claims."""
    config = make_config(ledger="fence-open-txn")
    first = KafkaLogStore(config)
    second = KafkaLogStore(config)
    try:
        first.append([(b"ok", b"1")])
        producer = first._producer
        assert producer is not None
        producer.begin_transaction()
        producer.send(config.topic, key=b"ghost", value=b"never committed", partition=0)
        producer.flush()
        second.claim_writer()  # aborts the open transaction and fences `first`
        with pytest.raises(Exception):  # noqa: B017 - kafka-python's own error type varies
            producer.commit_transaction()
        with pytest.raises(FencedError, match="fenced"):
            first.append([(b"after", b"x")])
        assert [r.key for r in second.read(0)] == [b"ok"]
        assert [k for _, k, _ in _committed(kafka_cluster.bootstrap_servers, config.topic)] \
            == [b"ok"]
    finally:
        first.close()
        second.close()


def test_records_written_around_the_store_are_returned_as_they_are(
    store_factory: Callable[..., LogStore], kafka_cluster: KafkaCluster
) -> None:
    """Storage is untrusted: a record a foreign producer wrote is read like any other."""
    store = store_factory()
    assert isinstance(store, KafkaLogStore)
    store.append([(b"k1", b"v1")])
    foreign = KafkaProducer(bootstrap_servers=kafka_cluster.bootstrap_servers)
    foreign.send(store.topic, key=b"rogue", value=b"\x00garbage", partition=0).get(timeout=30)
    foreign.close()
    store.append([(b"k2", b"v2")])
    assert [r.key for r in store.read(0)] == [b"k1", b"rogue", b"k2"]


def test_follow_from_the_end_sees_only_new_records(store_factory: Callable[..., LogStore]) -> None:
    store = store_factory()
    store.append([(b"old", b"x")])
    it = store.follow(store.end_position(), idle_timeout=0.2)
    assert next(it) is None
    store.append([(b"new", b"y")])
    got = next(r for r in it if r is not None)
    assert got.key == b"new"


def test_checkpoints_live_in_the_companion_topic(
    store_factory: Callable[..., LogStore], kafka_cluster: KafkaCluster
) -> None:
    store = store_factory()
    assert isinstance(store, KafkaLogStore)
    store.save_checkpoint(7, "origin\n7\nhash\n")
    assert store.checkpoints_topic == store.topic + ".checkpoints"
    assert _committed(kafka_cluster.bootstrap_servers, store.checkpoints_topic) == [
        (0, b"7", b"origin\n7\nhash\n")]
    assert list(store.read(0)) == []


def test_secrets_stay_out_of_repr(make_config: Callable[..., KafkaStoreConfig]) -> None:
    config = make_config(security_protocol="SASL_SSL", sasl_mechanism="PLAIN",
                         sasl_plain_username="steward", sasl_plain_password="hunter2",
                         ssl_password="s3cret")
    assert "hunter2" not in repr(config) and "s3cret" not in repr(config)
    options = config.client_options()
    assert options["sasl_plain_password"] == "hunter2"
    assert options["security_protocol"] == "SASL_SSL"


def test_closed_store_refuses_everything(store_factory: Callable[..., LogStore]) -> None:
    store = store_factory()
    store.close()
    for call in (lambda: list(store.read(0)), store.end_position, store.checkpoints,
                 lambda: store.save_checkpoint(1, "x")):
        with pytest.raises(StoreError):
            call()


def test_a_retried_in_doubt_batch_is_not_written_twice(
    store_factory: Callable[..., LogStore], kafka_cluster: KafkaCluster
) -> None:
    """White-box: the commit of a batch went through but its answer was lost."""
    store = store_factory()
    assert isinstance(store, KafkaLogStore)
    batch = [(b"ev-1", b"a"), (b"ev-2", b"b")]
    offsets = store.append(batch)
    store._in_doubt = (batch, offsets)  # what a lost commit acknowledgement leaves behind
    store._drop_producer()
    assert store.append(batch) == offsets
    assert [k for _, k, _ in _committed(kafka_cluster.bootstrap_servers, store.topic)] == [
        b"ev-1", b"ev-2"]
    # The in-doubt state is gone: the same records appended again are a new batch.
    assert store.append(batch)[0] > offsets[-1]


@pytest.mark.slow
def test_broker_killed_then_restarted(make_config: Callable[..., KafkaStoreConfig]) -> None:
    """Own broker (the session one is shared): appends fail with StoreUnavailable in bounded
    time while it is down, and the retried batch lands exactly once after the restart."""
    with KafkaCluster(brokers=1) as cluster:
        config = make_config(bootstrap_servers=cluster.bootstrap_servers,
                             operation_timeout_s=5.0, request_timeout_ms=3000)
        store = KafkaLogStore(config)
        try:
            store.append([(b"before", b"1")])
            cluster.kill_broker(1)
            started = time.monotonic()
            with pytest.raises(StoreUnavailable):
                store.append([(b"during", b"2")])
            assert time.monotonic() - started < 30  # bounded: no hang in commit/abort
            cluster.restart_broker(1)
            deadline = time.monotonic() + 60
            while True:
                try:
                    store.append([(b"during", b"2")])
                    break
                except StoreUnavailable:
                    if time.monotonic() > deadline:
                        raise
                    time.sleep(1)
            assert [r.key for r in store.read(0)] == [b"before", b"during"]
        finally:
            store.close()
