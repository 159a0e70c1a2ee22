"""The local Kafka (infra/kafka_install.py, infra/kafka_cluster.py) and the ledger topic checks (ledger/store/kafka_topic.py)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import pytest

from infra.kafka_cluster import KafkaCluster, random_cluster_id
from ledger.errors import ConfigError, StoreUnavailableError
from ledger.store.kafka import KafkaLogStore
from ledger.store.kafka_config import KafkaStoreConfig
from ledger.store.kafka_topic import (
    TopicSettings,
    check_topic,
    checkpoints_topic,
    create_topic,
    ensure_ledger_topics,
)

pytestmark = pytest.mark.kafka


@pytest.fixture
def admin(kafka_cluster: KafkaCluster) -> Iterator[Any]:
    client = kafka_cluster.admin()
    yield client
    client.close()


def test_the_broker_runs_on_loopback_and_answers(kafka_cluster: KafkaCluster, admin: Any) -> None:
    assert kafka_cluster.node_ids == [1]
    assert kafka_cluster.bootstrap_servers.startswith("127.0.0.1:")
    info = admin.describe_cluster()
    assert [b["broker_id"] for b in info["brokers"]] == [1]
    log = kafka_cluster.nodes[1].log_file.read_text()
    assert "Kafka Server started" in log
    assert "Kafka version: 4." in log


def test_cluster_ids_look_like_kafka_uuids() -> None:
    ids = {random_cluster_id() for _ in range(50)}
    assert len(ids) == 50
    assert all(len(i) == 22 and not i.startswith("-") for i in ids)


def test_ensure_creates_both_topics_with_the_required_settings(
    admin: Any, kafka_topic_name: str
) -> None:
    settings = TopicSettings()
    ensure_ledger_topics(admin, kafka_topic_name, settings)
    for name in (kafka_topic_name, checkpoints_topic(kafka_topic_name)):
        check_topic(admin, name, settings)
    # Idempotent: a second run finds the topics and checks them.
    ensure_ledger_topics(admin, kafka_topic_name, settings)


def _create_raw(admin: Any, name: str, partitions: int = 1, **configs: str) -> None:
    admin.create_topics(
        {name: {"num_partitions": partitions, "replication_factor": 1, "configs": configs}}
    )


_GOOD = {"retention.ms": "-1", "retention.bytes": "-1"}


@pytest.mark.parametrize(
    ("partitions", "configs", "message"),
    [
        (3, _GOOD, "partitions is 3, expected 1"),
        # Not set at all: inherited from the broker default of 7 days (needs config_filter=all).
        (1, {"retention.bytes": "-1"}, "retention.ms is 604800000, expected -1"),
        (1, {**_GOOD, "retention.ms": "86400000"}, "retention.ms is 86400000, expected -1"),
        (
            1,
            {**_GOOD, "retention.bytes": "1073741824"},
            "retention.bytes is 1073741824, expected -1",
        ),
        (1, {**_GOOD, "cleanup.policy": "compact"}, "cleanup.policy is compact, expected delete"),
        (
            1,
            {**_GOOD, "unclean.leader.election.enable": "true"},
            "unclean.leader.election.enable is true, expected false",
        ),
    ],
)
def test_a_wrongly_configured_topic_is_refused_naming_the_setting(
    admin: Any,
    kafka_topic_name: str,
    partitions: int,
    configs: dict[str, str],
    message: str,
) -> None:
    _create_raw(admin, kafka_topic_name, partitions, **configs)
    time.sleep(0.5)
    with pytest.raises(ConfigError) as err:
        ensure_ledger_topics(admin, kafka_topic_name, TopicSettings())
    assert str(err.value) == f"topic {kafka_topic_name}: {message}"


def test_replication_and_min_isr_below_what_is_required_are_refused(
    admin: Any, kafka_topic_name: str
) -> None:
    assert create_topic(admin, kafka_topic_name, TopicSettings())
    # This single broker cannot host replication factor 3: asking for it is refused by name.
    with pytest.raises(ConfigError, match="replication factor is 1, expected at least 3"):
        check_topic(admin, kafka_topic_name, TopicSettings(3, 2))


def test_settings_themselves_are_checked() -> None:
    with pytest.raises(ConfigError, match=r"min.insync.replicas is 3, expected between 1 and"):
        TopicSettings(replication_factor=2, min_insync_replicas=3)


def test_a_missing_topic_is_refused_when_creation_is_off(
    kafka_cluster: KafkaCluster, kafka_topic_name: str
) -> None:
    config = KafkaStoreConfig(
        bootstrap_servers=kafka_cluster.bootstrap_servers,
        topic=kafka_topic_name,
        create_topics=False,
    )
    with pytest.raises(ConfigError, match=f"topic {kafka_topic_name}: does not exist"):
        KafkaLogStore(config)


def test_the_store_refuses_a_wrong_topic(
    kafka_cluster: KafkaCluster, admin: Any, kafka_topic_name: str
) -> None:
    _create_raw(admin, kafka_topic_name, 2, **_GOOD)
    config = KafkaStoreConfig(
        bootstrap_servers=kafka_cluster.bootstrap_servers, topic=kafka_topic_name
    )
    with pytest.raises(ConfigError, match="partitions is 2, expected 1"):
        KafkaLogStore(config)


@pytest.mark.slow
def test_three_brokers_survive_the_loss_of_the_leader(
    kafka_cluster3: KafkaCluster, kafka_topic_name: str
) -> None:
    """RF 3 / min ISR 2: kill the partition leader, appends go on, restart it, nothing lost."""
    cluster = kafka_cluster3
    assert cluster.node_ids == [1, 2, 3]
    config = KafkaStoreConfig(
        bootstrap_servers=cluster.bootstrap_servers,
        topic=kafka_topic_name,
        replication_factor=3,
        min_insync_replicas=2,
        operation_timeout_s=30.0,
    )
    store = KafkaLogStore(config)
    try:
        admin = cluster.admin()
        try:
            check_topic(admin, kafka_topic_name, TopicSettings(3, 2))
        finally:
            admin.close()
        before = store.append([(b"k%d" % i, b"v") for i in range(10)])
        leader = cluster.leader_of(kafka_topic_name, 0)
        assert leader in (1, 2, 3)
        cluster.kill_broker(leader)
        assert not cluster.is_running(leader)
        after: list[int] = []
        # When the killed node also hosted the transaction coordinator, kafka-python kept
        # asking the dead coordinator and the first attempt(s) expired (docs/KAFKA.md).
        deadline = time.monotonic() + 240
        while not after:
            try:
                after = store.append([(b"after-kill", b"v")])
            except StoreUnavailableError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(1)
        new_leader = cluster.leader_of(kafka_topic_name, 0)
        assert new_leader not in (None, leader)
        cluster.restart_broker(leader)
        assert cluster.is_running(leader)
        keys = [r.key for r in store.read(0)]
        assert keys == [b"k%d" % i for i in range(10)] + [b"after-kill"]
        assert after[0] > before[-1]
    finally:
        store.close()
