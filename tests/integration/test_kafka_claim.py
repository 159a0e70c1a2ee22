"""The writer claim log ``<topic>.writers`` on a real broker (ledger/store/kafka.py, issue #4).

A store whose producer was dropped re-claims the ledger only while the last claim is its own:
otherwise it is fenced for good, and the writer that claimed after it keeps appending. A bumped
epoch alone (no newer claim) is a transient loss. The claim topic is created and checked like
the other two. A ledger server sees a fence first noticed by its checkpoint publisher at once.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from typing import Any

import grpc
import pytest
from confluent_kafka import Producer
from grpc_health.v1 import health_pb2, health_pb2_grpc
from kafka import KafkaProducer

from infra.kafka_cluster import KafkaCluster
from ledger.client import LedgerClient, LedgerRpcError
from ledger.errors import ConfigError, FencedError, StoreUnavailableError
from ledger.formats import encode_signed_event
from ledger.grpc_errors import FENCED_CODE
from ledger.scenario import Cast, Flow
from ledger.server import LedgerServerConfig, serve
from ledger.store.kafka import KafkaLogStore
from ledger.store.kafka_config import KafkaStoreConfig
from ledger.store.kafka_topic import TopicSettings, checkpoints_topic, create_topic, writers_topic
from tests.helpers.kafka_reads import committed_records

pytestmark = pytest.mark.kafka


@pytest.fixture
def stores() -> Iterator[list[KafkaLogStore]]:
    opened: list[KafkaLogStore] = []
    yield opened
    for store in opened:
        store.close()


@pytest.fixture
def admin(kafka_cluster: KafkaCluster) -> Iterator[Any]:
    client = kafka_cluster.admin()
    try:
        yield client
    finally:
        client.close()


def _claim_tokens(bootstrap: str, topic: str) -> list[str]:
    return [
        json.loads(v)["token"] for _, _, v in committed_records(bootstrap, writers_topic(topic))
    ]


class InterleavedStore(KafkaLogStore):
    """A real KafkaLogStore that runs `before_init` right before its next InitProducerId:
    the test's way to land another writer's claim between this store's check and its init."""

    before_init: Callable[[], None] | None = None

    def _init_producer(self) -> Any:
        hook, self.before_init = self.before_init, None
        if hook is not None:
            hook()
        return super()._init_producer()


# --------------------------------------------------------------------------------------------
# (a) someone else claimed last: fenced for good, the newcomer is not disturbed


def test_a_dropped_store_whose_claim_is_not_the_last_is_fenced_without_fencing_the_newcomer(
    make_config: Callable[..., KafkaStoreConfig],
    kafka_cluster: KafkaCluster,
    stores: list[KafkaLogStore],
) -> None:
    config = make_config(ledger="claim-a")
    old = KafkaLogStore(config)
    new = KafkaLogStore(config)
    stores.extend([old, new])
    assert old.append([(b"e1", b"by old")]) == [0]
    old._drop_producer()  # a transient loss (what a failed commit or abort leaves behind)
    new.claim_writer()
    assert new.append([(b"e2", b"by new")])

    with pytest.raises(FencedError) as caught:
        old.append([(b"e3", b"by old, after the takeover")])
    message = str(caught.value)
    assert f"transactional id {config.effective_transactional_id}" in message
    assert (
        f"the last claim in {writers_topic(config.topic)} is claim {new.claim_token[:12]}"
        in message
    ), message
    assert "checked before re-initialising" in message, message
    # For good: no re-claim later either, for appends or checkpoints.
    with pytest.raises(FencedError):
        old.append([(b"e3", b"again")])
    with pytest.raises(FencedError):
        old.save_checkpoint(1, "late note\n")

    # The old store never ran InitProducerId: the newcomer's producer is still current.
    assert new._producer is not None
    new.append([(b"e4", b"by new, still the writer")])
    new.save_checkpoint(2, "note\n")
    keys = [k for _, k, _ in committed_records(kafka_cluster.bootstrap_servers, config.topic)]
    assert keys == [b"e1", b"e2", b"e4"]
    assert _claim_tokens(kafka_cluster.bootstrap_servers, config.topic) == [
        old.claim_token,
        new.claim_token,
    ]


def test_a_fence_seen_inside_a_transaction_is_decided_at_once_by_the_claim_log(
    make_config: Callable[..., KafkaStoreConfig],
    kafka_cluster: KafkaCluster,
    stores: list[KafkaLogStore],
) -> None:
    """The old writer still holds its producer when the newcomer claims: its next transaction
    is fenced, it re-reads the claim log right away and raises FencedError, not a retryable
    error; the newcomer is not fenced by it."""
    config = make_config(ledger="claim-a2")
    old = KafkaLogStore(config)
    new = KafkaLogStore(config)
    stores.extend([old, new])
    old.append([(b"e1", b"by old")])
    new.claim_writer()
    with pytest.raises(FencedError, match=f"the last claim in {writers_topic(config.topic)}"):
        old.append([(b"e2", b"by old, fenced")])
    new.append([(b"e2", b"by new")])
    assert [k for _, k, _ in committed_records(kafka_cluster.bootstrap_servers, config.topic)] == [
        b"e1",
        b"e2",
    ]


def test_a_claim_landing_between_the_check_and_the_init_fences_the_old_writer_not_the_new(
    make_config: Callable[..., KafkaStoreConfig],
    kafka_cluster: KafkaCluster,
    stores: list[KafkaLogStore],
) -> None:
    """The narrowest window: the old writer saw its own claim last, then the newcomer claimed
    completely, then the old writer's InitProducerId fenced the newcomer's producer. The old
    writer's check after its init sees the newer claim: it stops for good; the newcomer's next
    transaction fails once (retryable), it re-claims and goes on."""
    config = make_config(ledger="claim-window")
    old = InterleavedStore(config)
    new = KafkaLogStore(config)
    stores.extend([old, new])
    old.append([(b"e1", b"by old")])
    old._drop_producer()
    old.before_init = new.claim_writer

    with pytest.raises(FencedError, match="checked after initialising"):
        old.append([(b"e2", b"by old")])
    with pytest.raises(StoreUnavailableError, match="still ours: re-claimed, retry"):
        new.append([(b"e2", b"by new")])  # its epoch was bumped by the old writer's init
    assert new.append([(b"e2", b"by new")])
    with pytest.raises(FencedError):
        old.append([(b"e3", b"by old")])
    assert [k for _, k, _ in committed_records(kafka_cluster.bootstrap_servers, config.topic)] == [
        b"e1",
        b"e2",
    ]
    assert _claim_tokens(kafka_cluster.bootstrap_servers, config.topic) == [
        old.claim_token,
        new.claim_token,
    ]


# --------------------------------------------------------------------------------------------
# (b) still the last claim: a transient loss, the store re-claims and appends


def test_a_dropped_store_whose_claim_is_still_the_last_re_claims_and_appends(
    make_config: Callable[..., KafkaStoreConfig],
    kafka_cluster: KafkaCluster,
    stores: list[KafkaLogStore],
) -> None:
    config = make_config(ledger="claim-b")
    store = KafkaLogStore(config)
    stores.append(store)
    first = store.append([(b"e1", b"1")])
    store._drop_producer()
    second = store.append([(b"e2", b"2")])
    store.save_checkpoint(2, "note\n")
    assert second[0] > first[0]
    assert [k for _, k, _ in committed_records(kafka_cluster.bootstrap_servers, config.topic)] == [
        b"e1",
        b"e2",
    ]
    # A re-claim writes no new claim record: it only checks that the last one is ours.
    assert _claim_tokens(kafka_cluster.bootstrap_servers, config.topic) == [store.claim_token]


def _stray_init(client: str, bootstrap: str, transactional_id: str) -> None:
    """InitProducerId for `transactional_id` by a producer that writes no claim."""
    if client == "kafka-python":
        stray = KafkaProducer(bootstrap_servers=bootstrap, transactional_id=transactional_id)
        try:
            stray.init_transactions()
        finally:
            stray.close(timeout=5)
    else:
        other = Producer({"bootstrap.servers": bootstrap, "transactional.id": transactional_id})
        other.init_transactions(30)
        other.close()  # no transaction open: close() returns at once


@pytest.mark.parametrize("client", ["kafka-python", "confluent-kafka"])
def test_an_epoch_bump_without_a_newer_claim_is_a_transient_loss(
    make_config: Callable[..., KafkaStoreConfig],
    kafka_cluster: KafkaCluster,
    stores: list[KafkaLogStore],
    client: str,
) -> None:
    """A producer that runs InitProducerId without claiming (an older Steward, a stray tool)
    fences our epoch but not our claim: the append in flight fails with a retryable error
    (librdkafka's fatal _FENCED, classified as a bumped epoch), the store re-claims, and the
    retry lands."""
    config = make_config(ledger=f"claim-bump-{client}")
    store = KafkaLogStore(config)
    stores.append(store)
    store.append([(b"e1", b"1")])
    _stray_init(client, kafka_cluster.bootstrap_servers, config.effective_transactional_id)
    with pytest.raises(
        StoreUnavailableError,
        match=r"epoch was bumped .*_FENCED.*still ours: "
        r"re-claimed, retry",
    ):
        store.append([(b"e2", b"2")])
    store.append([(b"e2", b"2")])
    assert [k for _, k, _ in committed_records(kafka_cluster.bootstrap_servers, config.topic)] == [
        b"e1",
        b"e2",
    ]


def test_claim_records_name_the_claimant_and_carry_no_secrets(
    make_config: Callable[..., KafkaStoreConfig],
    kafka_cluster: KafkaCluster,
    stores: list[KafkaLogStore],
) -> None:
    config = make_config(ledger="claim-record")
    store = KafkaLogStore(config)
    stores.append(store)
    store.claim_writer()
    [(_, key, value)] = committed_records(
        kafka_cluster.bootstrap_servers, writers_topic(config.topic)
    )
    record = json.loads(value)
    assert key == store.claim_token.encode()
    assert set(record) == {"token", "transactional_id", "topic", "host", "pid", "claimed_at_ms"}
    assert record["token"] == store.claim_token
    assert record["transactional_id"] == config.effective_transactional_id
    assert record["topic"] == config.topic
    assert abs(record["claimed_at_ms"] - time.time() * 1000) < 600_000


# --------------------------------------------------------------------------------------------
# (c) the claim topic is required and checked like the others


def test_a_missing_writers_topic_is_refused_naming_it_when_creation_is_off(
    make_config: Callable[..., KafkaStoreConfig],
    admin: Any,
) -> None:
    config = make_config(create_topics=False)
    for name in (config.topic, checkpoints_topic(config.topic)):
        assert create_topic(admin, name, TopicSettings())
    with pytest.raises(ConfigError) as caught:
        KafkaLogStore(config)
    assert str(caught.value) == (
        f"topic {writers_topic(config.topic)}: does not exist (create it or let Steward create it)"
    )


def test_a_misconfigured_writers_topic_is_refused_naming_it_and_the_setting(
    make_config: Callable[..., KafkaStoreConfig],
    admin: Any,
) -> None:
    config = make_config()
    for name in (config.topic, checkpoints_topic(config.topic)):
        assert create_topic(admin, name, TopicSettings())
    # Created by hand without retention settings: it inherits the broker's 7 days.
    admin.create_topics(
        {
            writers_topic(config.topic): {
                "num_partitions": 1,
                "replication_factor": 1,
                "configs": {"retention.bytes": "-1"},
            }
        }
    )
    time.sleep(0.5)
    with pytest.raises(ConfigError) as caught:
        KafkaLogStore(config)
    assert str(caught.value) == (
        f"topic {writers_topic(config.topic)}: retention.ms is 604800000, expected -1"
    )


def test_the_store_creates_the_writers_topic_with_the_ledger_settings(
    make_config: Callable[..., KafkaStoreConfig],
    admin: Any,
    stores: list[KafkaLogStore],
) -> None:
    from ledger.store.kafka_topic import check_topic

    config = make_config()
    stores.append(KafkaLogStore(config))
    check_topic(admin, writers_topic(config.topic), TopicSettings(), timeout=10.0)


# --------------------------------------------------------------------------------------------
# The ledger server: a fence first seen by the checkpoint publisher


def test_a_fence_seen_first_by_the_checkpoint_publisher_turns_health_not_serving(
    make_config: Callable[..., KafkaStoreConfig],
    stores: list[KafkaLogStore],
) -> None:
    config = make_config(ledger="claim-server")
    cast = Cast.create()
    flow = Flow(cast)
    store = KafkaLogStore(config)
    stores.append(store)
    every_ms = 6000
    running = serve(
        LedgerServerConfig(
            store=store,
            checkpoint_key=cast.checkpoint_key,
            checkpoint_every_entries=10_000,
            checkpoint_every_ms=every_ms,
        )
    )
    try:
        with LedgerClient(running.address, retries=0, timeout=60) as client:
            for event in (flow.genesis(), *flow.grants(), flow.policy()):
                client.append(encode_signed_event(event))
            size = client.head().size
            # Wait for a tick of the publisher; the next one is `every_ms` away.
            deadline = time.monotonic() + 3 * every_ms / 1000
            while not (
                running.ledger.checkpoints() and running.ledger.checkpoints()[-1].size == size
            ):
                assert time.monotonic() < deadline, "the publisher never published"
                time.sleep(0.05)
            ticked = time.monotonic()
            client.append(encode_signed_event(flow.propose()))  # unpublished until next tick
            newcomer = KafkaLogStore(config)
            stores.append(newcomer)
            newcomer.claim_writer()
            # The interleaving the test needs: the takeover came before the publisher's next
            # tick (otherwise that tick published with the old epoch, and nothing is tested).
            assert time.monotonic() - ticked < every_ms / 1000 - 1, "too slow to interleave"

            with grpc.insecure_channel(running.address) as channel:
                health = health_pb2_grpc.HealthStub(channel)
                deadline = time.monotonic() + 3 * every_ms / 1000
                while (
                    health.Check(health_pb2.HealthCheckRequest(service=""), timeout=10).status
                    != health_pb2.HealthCheckResponse.NOT_SERVING
                ):
                    assert time.monotonic() < deadline, "health stayed SERVING after the fence"
                    time.sleep(0.1)
            assert running.ledger.fenced  # without any append after the takeover
            with pytest.raises(LedgerRpcError) as caught:
                client.append(encode_signed_event(flow.propose("registry.example/late:1")))
            assert caught.value.code == grpc.StatusCode.UNAVAILABLE
            assert caught.value.violation_code == FENCED_CODE
        newcomer.append([(b"after", b"the takeover")])  # the newcomer was not fenced back
    finally:
        running.stop(None)


def test_the_end_txn_unknown_server_error_is_recognised_as_it_is_raised() -> None:
    """librdkafka has no rule for Kafka 4.2's UNKNOWN_SERVER_ERROR answer to an EndTxn racing
    an InitProducerId: it takes it as permanent and commit_transaction() raises the broker code
    UNKNOWN as an abortable error (rd_kafka_txn_handle_EndTxn). The store must take it as a
    bumped epoch (with the commit in doubt), and only it."""
    from confluent_kafka import KafkaError, KafkaException

    from ledger.store.kafka_errors import is_end_txn_unknown_error

    # What rd_kafka_txn_handle_EndTxn builds for it.
    raised = KafkaException(
        KafkaError(
            KafkaError.UNKNOWN,
            "EndTxn commit failed: Unknown broker error",
            txn_requires_abort=True,
        )
    )
    assert is_end_txn_unknown_error(raised)
    try:
        raise StoreUnavailableError("wrapped") from raised
    except StoreUnavailableError as wrapped:
        assert is_end_txn_unknown_error(wrapped)
    assert not is_end_txn_unknown_error(
        KafkaException(
            KafkaError(
                KafkaError._TIMED_OUT,
                "Timed out waiting for operation to finish, retry call to resume",
                retriable=True,
            )
        )
    )
    assert not is_end_txn_unknown_error(
        KafkaException(KafkaError(KafkaError.UNKNOWN_TOPIC_OR_PART))
    )
    assert not is_end_txn_unknown_error(TimeoutError("1 of 1 records not acknowledged"))
