"""KafkaLogStore on a real broker: the shared store contract, then Kafka-specific behaviour.

The store writes and asks for end offsets with confluent-kafka (librdkafka) and reads records
with kafka-python; the checks below read with plain kafka-python consumers, and the foreign
writers are both clients.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator

import pytest
from confluent_kafka import Consumer, KafkaError, KafkaException, Producer
from kafka import KafkaConsumer, KafkaProducer, TopicPartition

from infra.kafka_cluster import KafkaCluster
from infra.processes import wait_for
from ledger.errors import ConfigError, FencedError, StoreError, StoreUnavailableError
from ledger.store.base import LogStore
from ledger.store.kafka import KafkaLogStore
from ledger.store.kafka_config import END_OFFSETS_GROUP, KafkaStoreConfig
from ledger.store.kafka_errors import is_end_txn_unknown_error, is_fencing
from ledger.store.librdkafka_log import LibrdkafkaLog
from tests.contract.store_contract import StoreContract
from tests.helpers.kafka_reads import committed_records

pytestmark = pytest.mark.kafka


@pytest.fixture
def store_factory(
    make_config: Callable[..., KafkaStoreConfig],
) -> Iterator[Callable[..., LogStore]]:
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
    assert committed_records(kafka_cluster.bootstrap_servers, store.topic) == [
        (0, b"a", b"1"),
        (1, b"b", b"2"),
        (3, b"c", b"3"),
    ]


def _end_offset(bootstrap: str, topic: str, isolation_level: str) -> int:
    """kafka-python's end offset of partition 0 (read_committed: the last stable offset)."""
    consumer = KafkaConsumer(
        bootstrap_servers=bootstrap,
        group_id=None,
        isolation_level=isolation_level,
        enable_auto_commit=False,
    )
    tp = TopicPartition(topic, 0)
    try:
        return int(consumer.end_offsets([tp])[tp])
    finally:
        consumer.close()


def _wait_for_end(store: KafkaLogStore, end: int) -> None:
    """The markers land a moment after commit/abort_transaction() returns."""
    wait_for(f"the end position to be {end}", lambda: store.end_position() == end, 10, every=0.02)


def test_an_open_transaction_of_another_producer_holds_the_end_back(
    store_factory: Callable[..., LogStore], kafka_cluster: KafkaCluster
) -> None:
    """end_position() (librdkafka's read_committed high watermark) is the last stable offset:
    a foreign transactional producer's records do not count while its transaction is open,
    although they are in the partition; its commit releases them, and so does an abort. At
    every step kafka-python's read_committed end_offsets says the same."""
    bootstrap = kafka_cluster.bootstrap_servers
    store = store_factory()
    assert isinstance(store, KafkaLogStore)
    store.append([(b"a", b"1")])  # offset 0, its commit marker 1
    assert store.end_position() == 2
    other = Producer(
        {"bootstrap.servers": bootstrap, "transactional.id": f"steward-test-foreign-{store.topic}"}
    )
    other.init_transactions(30)
    other.begin_transaction()
    for i in range(3):
        other.produce(store.topic, key=b"f%d" % i, value=b"x", partition=0)
    assert other.flush(30) == 0  # offsets 2..4, acknowledged but not committed
    assert _end_offset(bootstrap, store.topic, "read_uncommitted") == 5
    assert store.end_position() == 2
    assert _end_offset(bootstrap, store.topic, "read_committed") == 2
    assert [r.key for r in store.read(0)] == [b"a"]
    other.commit_transaction(30)  # marker 5
    _wait_for_end(store, 6)
    assert _end_offset(bootstrap, store.topic, "read_committed") == 6
    assert [r.key for r in store.read(0)] == [b"a", b"f0", b"f1", b"f2"]

    other.begin_transaction()
    other.produce(store.topic, key=b"ghost", value=b"x", partition=0)
    assert other.flush(30) == 0  # offset 6
    assert _end_offset(bootstrap, store.topic, "read_uncommitted") == 7
    assert store.end_position() == 6
    other.abort_transaction(30)  # marker 7
    _wait_for_end(store, 8)
    assert _end_offset(bootstrap, store.topic, "read_committed") == 8
    assert [r.key for r in store.read(0)] == [b"a", b"f0", b"f1", b"f2"]
    # The end-offset consumer's group.id is never joined: no such group on the broker.
    admin = kafka_cluster.admin()
    try:
        assert END_OFFSETS_GROUP not in [g["group_id"] for g in admin.list_groups()]
    finally:
        admin.close()


def test_a_failed_end_offset_query_is_unavailable_and_the_next_one_starts_afresh(
    make_config: Callable[..., KafkaStoreConfig],
) -> None:
    """A partition that never shows up: asked again until operation_timeout_s is spent, then
    StoreUnavailableError naming librdkafka's error; the consumer is dropped and the next call makes
    a new one. close() drops it too."""
    store = KafkaLogStore(make_config(operation_timeout_s=1.0))
    try:
        assert store.end_position() == 0
        first = store._end_offsets.consumer
        assert first is not None
        started = time.monotonic()
        with pytest.raises(
            StoreUnavailableError,
            match=r"asking the end offset of .*-missing failed: "
            r"_UNKNOWN_PARTITION",
        ):
            store._end_offset(TopicPartition(store.topic + "-missing", 0))
        assert 0.8 < time.monotonic() - started < 10
        assert store._end_offsets.consumer is None
        assert store.end_position() == 0
        assert store._end_offsets.consumer is not None and store._end_offsets.consumer is not first
    finally:
        store.close()
    assert store._end_offsets.consumer is None


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
            (b"e1", b"by first"),
            (b"e2", b"by second"),
        ]
        assert [r.position for r in first.read(pos[0])] == pos  # reading still works
        keys = [k for _, k, _ in committed_records(kafka_cluster.bootstrap_servers, config.topic)]
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
        assert first._producer is not None
        producer = first._producer.client
        producer.begin_transaction()
        producer.produce(config.topic, key=b"ghost", value=b"never committed", partition=0)
        assert producer.flush(30) == 0
        second.claim_writer()  # aborts the open transaction and fences `first`
        # What librdkafka raises for a real fence, and how the store classifies it.
        with pytest.raises(KafkaException) as caught:
            producer.commit_transaction(30)
        err = caught.value.args[0]
        assert err.code() == KafkaError._FENCED and err.fatal(), err
        assert is_fencing(caught.value)
        with pytest.raises(FencedError, match="fenced"):
            first.append([(b"after", b"x")])
        assert [r.key for r in second.read(0)] == [b"ok"]
        assert [
            k for _, k, _ in committed_records(kafka_cluster.bootstrap_servers, config.topic)
        ] == [b"ok"]
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
    other = Producer({"bootstrap.servers": kafka_cluster.bootstrap_servers})
    other.produce(store.topic, key=b"rogue2", value=b"\x01more", partition=0)
    assert other.flush(30) == 0
    store.append([(b"k3", b"v3")])
    assert [r.key for r in store.read(0)] == [b"k1", b"rogue", b"k2", b"rogue2", b"k3"]


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
    assert committed_records(kafka_cluster.bootstrap_servers, store.checkpoints_topic) == [
        (0, b"7", b"origin\n7\nhash\n")
    ]
    assert list(store.read(0)) == []


def test_secrets_stay_out_of_repr(make_config: Callable[..., KafkaStoreConfig]) -> None:
    config = make_config(
        security_protocol="SASL_SSL",
        sasl_mechanism="PLAIN",
        sasl_plain_username="steward",
        sasl_plain_password="hunter2",
        ssl_password="s3cret",
    )
    assert "hunter2" not in repr(config) and "s3cret" not in repr(config)
    options = config.client_options()
    assert options["sasl_plain_password"] == "hunter2"
    assert options["security_protocol"] == "SASL_SSL"
    store = KafkaLogStore(make_config())
    try:
        assert "hunter2" not in repr(store)
    finally:
        store.close()


def _secured(make_config: Callable[..., KafkaStoreConfig]) -> KafkaStoreConfig:
    """A config with every security option and both timeouts set."""
    return make_config(
        security_protocol="SASL_SSL",
        sasl_mechanism="SCRAM-SHA-512",
        sasl_plain_username="steward",
        sasl_plain_password="hunter2",
        ssl_cafile="ca.pem",
        ssl_certfile="client.pem",
        ssl_keyfile="client.key",
        ssl_password="s3cret",
        ssl_check_hostname=False,
        request_timeout_ms=7000,
        operation_timeout_s=20.0,
    )


def test_producer_options_use_librdkafka_names(
    make_config: Callable[..., KafkaStoreConfig],
) -> None:
    config = _secured(make_config)
    options = config.producer_options()
    assert options == {
        "bootstrap.servers": config.bootstrap_servers,
        "client.id": "steward-ledger",
        "security.protocol": "SASL_SSL",
        "request.timeout.ms": 7000,
        "socket.timeout.ms": 7000,
        "socket.nagle.disable": True,
        "message.timeout.ms": 20000,
        "message.max.bytes": 8 * 1024 * 1024,
        "allow.auto.create.topics": False,
        "sasl.mechanism": "SCRAM-SHA-512",
        "sasl.username": "steward",
        "sasl.password": "hunter2",
        "ssl.ca.location": "ca.pem",
        "ssl.certificate.location": "client.pem",
        "ssl.key.location": "client.key",
        "ssl.key.password": "s3cret",
        "ssl.endpoint.identification.algorithm": "none",
    }
    assert (
        make_config(security_protocol="SSL").producer_options()[
            "ssl.endpoint.identification.algorithm"
        ]
        == "https"
    )
    plain = make_config().producer_options()
    assert "ssl.endpoint.identification.algorithm" not in plain and "sasl.password" not in plain
    # librdkafka itself accepts every name and value (a real client is created, then closed).
    Producer({**config.producer_options(), "security.protocol": "PLAINTEXT"}).close()


def test_end_consumer_options_use_librdkafka_names(
    make_config: Callable[..., KafkaStoreConfig],
) -> None:
    """The producers' connection and security options, read_committed, and no group work."""
    config = _secured(make_config)
    options = config.end_consumer_options()
    assert options == {
        "bootstrap.servers": config.bootstrap_servers,
        "client.id": "steward-ledger",
        "security.protocol": "SASL_SSL",
        "socket.timeout.ms": 7000,
        "socket.nagle.disable": True,
        "group.id": END_OFFSETS_GROUP,
        "enable.auto.commit": False,
        "enable.auto.offset.store": False,
        "isolation.level": "read_committed",
        "allow.auto.create.topics": False,
        "sasl.mechanism": "SCRAM-SHA-512",
        "sasl.username": "steward",
        "sasl.password": "hunter2",
        "ssl.ca.location": "ca.pem",
        "ssl.certificate.location": "client.pem",
        "ssl.key.location": "client.key",
        "ssl.key.password": "s3cret",
        "ssl.endpoint.identification.algorithm": "none",
    }
    producer = config.producer_options()
    shared = {k: v for k, v in producer.items() if k in options}
    assert shared == {k: v for k, v in options.items() if k in producer}
    # librdkafka itself accepts every name and value (a real client is created, then closed).
    Consumer({**options, "security.protocol": "PLAINTEXT"}).close()


def test_a_configuration_librdkafka_refuses_is_a_config_error(
    make_config: Callable[..., KafkaStoreConfig],
) -> None:
    """Decided when the producer is created (here: at the claim, after the claim record), not
    retried as unavailable; the message names the property."""
    store = KafkaLogStore(make_config(transaction_timeout_ms=500))  # librdkafka's minimum: 1000
    try:
        with pytest.raises(
            ConfigError,
            match=r"transactional producer refused its configuration"
            r".*transaction\.timeout\.ms",
        ):
            store.claim_writer()
    finally:
        store.close()


def test_closed_store_refuses_everything(store_factory: Callable[..., LogStore]) -> None:
    store = store_factory()
    store.close()
    for call in (
        lambda: list(store.read(0)),
        store.end_position,
        store.checkpoints,
        lambda: store.save_checkpoint(1, "x"),
    ):
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
    assert [k for _, k, _ in committed_records(kafka_cluster.bootstrap_servers, store.topic)] == [
        b"ev-1",
        b"ev-2",
    ]
    # The in-doubt state is gone: the same records appended again are a new batch.
    assert store.append(batch)[0] > offsets[-1]


def test_a_delivery_failure_inside_a_transaction_aborts_it(
    store_factory: Callable[..., LogStore], kafka_cluster: KafkaCluster
) -> None:
    """The broker refuses the second record of a batch (larger than the topic's
    max.message.bytes, 1 MiB by default, but within the producer's 8 MiB): the first one was
    written, the transaction is aborted, nothing of the batch becomes visible, and the very
    next append succeeds (the producer is replaced: reusing it would fail that append with
    OUT_OF_ORDER_SEQUENCE_NUMBER)."""
    store = store_factory()
    assert isinstance(store, KafkaLogStore)
    store.append([(b"k1", b"v1")])
    with pytest.raises(
        StoreUnavailableError, match="flushing the batch failed: MSG_SIZE_TOO_LARGE"
    ):
        store.append([(b"small", b"fits"), (b"huge", b"x" * (2 * 1024 * 1024))])
    assert store._producer is None  # aborted and dropped: the next append re-claims
    # Aborted at once (k1 0, its marker 1, "small" 2, the abort marker 3): nothing left open
    # holds read_committed readers back until the transaction timeout.
    wait_for(
        "the aborted transaction to stop holding the LSO",
        lambda: store.end_position() >= 4,
        10,
        every=0.05,
    )
    store.append([(b"k2", b"v2")])
    store.append([(b"k3", b"v3")])
    assert [r.key for r in store.read(0)] == [b"k1", b"k2", b"k3"]
    assert [k for _, k, _ in committed_records(kafka_cluster.bootstrap_servers, store.topic)] == [
        b"k1",
        b"k2",
        b"k3",
    ]


def test_fenced_versus_retry_classification_of_librdkafka_errors() -> None:
    """What each error class means for the store (the real fence is raised in
    test_fenced_writer_mid_transaction_leaves_nothing_visible; these are the others)."""

    def raised(code: int, **flags: bool) -> KafkaException:
        return KafkaException(KafkaError(code, "as librdkafka words it", **flags))

    assert is_fencing(raised(KafkaError._FENCED, fatal=True))
    assert is_fencing(raised(KafkaError.PRODUCER_FENCED))
    assert is_fencing(raised(KafkaError.INVALID_PRODUCER_EPOCH))
    # Fatal, but nobody else initialised: an ACL or protocol problem, not a takeover.
    for code in (
        KafkaError.TRANSACTIONAL_ID_AUTHORIZATION_FAILED,
        KafkaError.CLUSTER_AUTHORIZATION_FAILED,
        KafkaError.INVALID_TXN_STATE,
    ):
        assert not is_fencing(raised(code, fatal=True))
    assert not is_fencing(raised(KafkaError._TIMED_OUT, retriable=True))
    assert not is_fencing(TimeoutError("1 of 1 records not acknowledged within 5.0s"))
    # A cause further down the chain counts too.
    try:
        try:
            raise raised(KafkaError._FENCED, fatal=True)
        except KafkaException as inner:
            raise StoreUnavailableError("wrapped") from inner
    except StoreUnavailableError as outer:
        assert is_fencing(outer)
    # Kafka 4.2's EndTxn UNKNOWN_SERVER_ERROR, as librdkafka raises it from commit_transaction.
    unknown = KafkaException(
        KafkaError(
            KafkaError.UNKNOWN,
            "EndTxn commit failed: Unknown broker error",
            txn_requires_abort=True,
        )
    )
    assert is_end_txn_unknown_error(unknown) and not is_fencing(unknown)
    assert is_end_txn_unknown_error(raised(KafkaError._FENCED, fatal=True))
    assert not is_end_txn_unknown_error(raised(KafkaError._TIMED_OUT, retriable=True))
    assert not is_end_txn_unknown_error(raised(KafkaError.UNKNOWN_TOPIC_OR_PART))


def test_librdkafka_lines_are_logged_without_a_flood(caplog: pytest.LogCaptureFixture) -> None:
    """A real producer with nothing listening at its bootstrap address: librdkafka reports the
    refused connection again at every reconnect; one WARNING per distinct line, the rest at
    DEBUG, and the next WARNING of the line counts them."""
    rdlog = LibrdkafkaLog("steward-test-log", window=60.0)
    producer = Producer(
        {
            "bootstrap.servers": "127.0.0.1:1",
            "reconnect.backoff.ms": 10,
            "reconnect.backoff.max.ms": 50,
            "message.timeout.ms": 3000,
            "logger": rdlog,
            "error_cb": rdlog.error,
        }
    )
    caplog.set_level(logging.DEBUG, logger="kafka.librdkafka")
    producer.produce("t", value=b"v")
    assert producer.flush(5) == 0  # the record times out after message.timeout.ms
    producer.close()
    records = [r for r in caplog.records if r.name == "kafka.librdkafka"]
    warnings = [r.getMessage() for r in records if r.levelno == logging.WARNING]
    debug = [r.getMessage() for r in records if r.levelno == logging.DEBUG]
    assert any("127.0.0.1:1" in w for w in warnings), warnings
    assert len(debug) > len(warnings), (warnings, debug)  # repeats went to DEBUG
    assert len(warnings) == len(set(warnings)), warnings
    assert all(r.levelno <= logging.WARNING for r in records)
    # The next WARNING of a repeated line says how many were held back.
    rdlog.window = 0.0
    rdlog.log(logging.ERROR, "%s [%s] %s", "FAIL", "x", "same line 1")
    rdlog.window = 60.0
    rdlog.log(logging.ERROR, "%s [%s] %s", "FAIL", "x", "same line 2")
    rdlog.log(logging.ERROR, "%s [%s] %s", "FAIL", "x", "same line 3")
    rdlog.window = 0.0
    rdlog.log(logging.ERROR, "%s [%s] %s", "FAIL", "x", "same line 4")
    assert caplog.records[-1].getMessage().endswith("(2 more like it in the last 0s, at DEBUG)")


@pytest.mark.slow
def test_broker_killed_then_restarted(make_config: Callable[..., KafkaStoreConfig]) -> None:
    """Own broker (the session one is shared): appends fail with StoreUnavailableError in bounded
    time while it is down (the batch is not acknowledged in time: its transaction is aborted or
    left to the next InitProducerId), nothing of a failed batch ever shows, and the retried
    batch lands exactly once after the restart."""
    with KafkaCluster(brokers=1) as cluster:
        config = make_config(
            bootstrap_servers=cluster.bootstrap_servers,
            operation_timeout_s=5.0,
            request_timeout_ms=3000,
        )
        store = KafkaLogStore(config)
        try:
            store.append([(b"before", b"1")])
            cluster.kill_broker(1)
            started = time.monotonic()
            # Not acknowledged in time: librdkafka's message timeout (= operation_timeout_s) or
            # ours on flush(), whichever fires first.
            with pytest.raises(
                StoreUnavailableError,
                match=r"flushing the batch failed: (_MSG_TIMED_OUT|TimeoutError)",
            ):
                store.append([(b"lost", b"x")])
            # Bounded: flush (5 s) + the abort's floor (1 s) + dropping the producer, which
            # must not wait for anything (Producer.close() would: see OwnedProducer).
            assert time.monotonic() - started < 12
            started = time.monotonic()
            with pytest.raises(StoreUnavailableError):
                store.append([(b"during", b"2")])
            assert time.monotonic() - started < 30  # bounded: no hang in commit/abort
            cluster.restart_broker(1)
            deadline = time.monotonic() + 60
            while True:
                try:
                    store.append([(b"during", b"2")])
                    break
                except StoreUnavailableError:
                    if time.monotonic() > deadline:
                        raise
                    time.sleep(1)
            assert [r.key for r in store.read(0)] == [b"before", b"during"]
        finally:
            store.close()
