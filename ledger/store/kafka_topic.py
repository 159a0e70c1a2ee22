"""The ledger's Kafka topics: create them with the settings Steward needs, refuse wrong ones.

A ledger lives in one topic with one partition (total order), kept forever, with no unclean
leader election (an out-of-sync replica becoming leader would silently drop acknowledged
entries). Checkpoint notes live in a companion topic ``<topic>.checkpoints`` and writer claims
(who holds the ledger, see ledger/store/kafka.py) in ``<topic>.writers``, both with the same
settings. An existing topic is checked setting by setting; Steward refuses to run on one that
could lose or reorder entries, with a ConfigError naming the setting (observed vs expected).

The functions take a kafka-python ``KafkaAdminClient`` so that the caller decides how to
connect (bootstrap servers, TLS, SASL).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from kafka.admin import ConfigResource, ConfigResourceType
from kafka.errors import (
    TopicAlreadyExistsError,
    TopicAuthorizationFailedError,
    UnknownTopicOrPartitionError,
)

from ledger.errors import ConfigError, StoreUnavailableError

CHECKPOINTS_SUFFIX = ".checkpoints"
WRITERS_SUFFIX = ".writers"


# Kafka's TOPIC_AUTHORIZATION_FAILED, in a per-topic error code (kafka-python does not raise it).
TOPIC_AUTHORIZATION_FAILED = 29
SECURITY_DOCS = 'docs/KAFKA.md, "Security"'


class KafkaNotAuthorizedError(StoreUnavailableError):
    """The cluster's authorizer refused an operation: an ACL this client's principal needs is
    missing. The message names the operation and the resource (the ACL to add) and what Steward
    needed it for. Retrying helps only once the ACL is granted, so it is a StoreUnavailableError: a
    ledger server reports it and tries again on the next append, a process starting exits."""

    @classmethod
    def missing(
        cls,
        operation: str,
        resource: str,
        needed_for: str,
        detail: str = "",
    ) -> KafkaNotAuthorizedError:
        return cls(
            f"Kafka refused {needed_for}: not authorized ({detail or 'authorization failed'}"
            f"); this client's principal needs ACL {operation} on {resource} "
            f"({SECURITY_DOCS}; `steward kafka acls` prints them)"
        )


def checkpoints_topic(topic: str) -> str:
    return topic + CHECKPOINTS_SUFFIX


def writers_topic(topic: str) -> str:
    """The claim log: one record per writer claim; the last one names the writer."""
    return topic + WRITERS_SUFFIX


def ledger_topics(topic: str) -> tuple[str, str, str]:
    """Every topic a ledger on `topic` uses: the log, its checkpoints, its writer claims."""
    return topic, checkpoints_topic(topic), writers_topic(topic)


@dataclass(frozen=True)
class TopicSettings:
    """What a ledger topic must look like. Production: replication_factor=3, min ISR 2."""

    replication_factor: int = 1
    min_insync_replicas: int = 1

    def __post_init__(self) -> None:
        if self.replication_factor < 1:
            raise ConfigError(f"replication factor is {self.replication_factor}, expected >= 1")
        if not 1 <= self.min_insync_replicas <= self.replication_factor:
            raise ConfigError(
                f"min.insync.replicas is {self.min_insync_replicas}, expected between 1 and "
                f"the replication factor {self.replication_factor}"
            )

    def topic_configs(self) -> dict[str, str]:
        """Topic-level configs set explicitly at creation (never left to broker defaults)."""
        return {
            "cleanup.policy": "delete",
            "retention.ms": "-1",
            "retention.bytes": "-1",
            "min.insync.replicas": str(self.min_insync_replicas),
            "unclean.leader.election.enable": "false",
        }


def create_topic(admin: Any, topic: str, settings: TopicSettings) -> bool:
    """Create `topic` with one partition and the required configs; False if it existed."""
    try:
        admin.create_topics(
            {
                topic: {
                    "num_partitions": 1,
                    "replication_factor": settings.replication_factor,
                    "configs": settings.topic_configs(),
                }
            }
        )
    except TopicAlreadyExistsError:
        return False
    except TopicAuthorizationFailedError as exc:
        raise KafkaNotAuthorizedError.missing(
            "Create",
            f"topic {topic}",
            f"creating topic {topic} (or create it first, and run without creating topics)",
            "TOPIC_AUTHORIZATION_FAILED",
        ) from exc
    return True


def ensure_ledger_topics(
    admin: Any,
    topic: str,
    settings: TopicSettings,
    *,
    create: bool = True,
    timeout: float = 30.0,
) -> None:
    """Create (when `create`) and then check the ledger topic and its two companions.

    Raises ConfigError naming the topic if one is missing (and `create` is False) or
    configured wrongly.
    """
    for name in ledger_topics(topic):
        # Only a missing topic is created: CreateTopics needs the Create ACL even for a topic
        # that exists, and a writer running on topics made by the operator has none.
        if create and _describe_topic(admin, name) is None:
            create_topic(admin, name, settings)
        check_topic(admin, name, settings, timeout=timeout if create else 0.0)


def check_topic(admin: Any, topic: str, settings: TopicSettings, *, timeout: float = 0.0) -> None:
    """Raise ConfigError naming the first setting of `topic` that differs from `settings`.

    `timeout` allows for a just-created topic that the broker's metadata does not list yet.
    """
    deadline = time.monotonic() + timeout
    while True:
        described = _describe_topic(admin, topic)
        if described is not None or time.monotonic() >= deadline:
            break
        time.sleep(0.2)
    if described is None:
        raise ConfigError(f"topic {topic}: does not exist (create it or let Steward create it)")
    if described.get("error_code") == TOPIC_AUTHORIZATION_FAILED:
        # Every user of a ledger reads the log and its checkpoints (Read implies Describe);
        # only the ledger server reads the claim log, a reader just checks that it exists.
        operation = (
            "Describe (the ledger server: Read and Write)"
            if topic.endswith(WRITERS_SUFFIX)
            else "Read"
        )
        raise KafkaNotAuthorizedError.missing(
            operation, f"topic {topic}", f"describing topic {topic}", "TOPIC_AUTHORIZATION_FAILED"
        )
    partitions = described.get("partitions") or []
    if len(partitions) != 1:
        raise ConfigError(f"topic {topic}: partitions is {len(partitions)}, expected 1")
    replicas = len(partitions[0].get("replica_nodes") or [])
    if replicas < settings.replication_factor:
        raise ConfigError(
            f"topic {topic}: replication factor is {replicas}, "
            f"expected at least {settings.replication_factor}"
        )

    configs = _describe_configs(admin, topic)
    if not configs and _describe_configs_error(admin, topic) == TOPIC_AUTHORIZATION_FAILED:
        raise KafkaNotAuthorizedError.missing(
            "DescribeConfigs",
            f"topic {topic}",
            f"reading the configuration of topic {topic} (retention, cleanup, ISR)",
            "TOPIC_AUTHORIZATION_FAILED",
        )
    while not configs and time.monotonic() < deadline:
        # A just-created topic may be known to the broker that answered describe_topics but
        # not yet to the one answering describe_configs (which then returns no configs).
        time.sleep(0.2)
        configs = _describe_configs(admin, topic)
    expected_exact = {
        "cleanup.policy": "delete",
        "retention.ms": "-1",
        "retention.bytes": "-1",
        "unclean.leader.election.enable": "false",
    }
    for name, expected in expected_exact.items():
        observed = configs.get(name)
        if observed is None:
            raise ConfigError(
                f"topic {topic}: {name} is not reported by the broker, expected {expected}"
            )
        if observed.strip().lower() != expected:
            raise ConfigError(f"topic {topic}: {name} is {observed}, expected {expected}")
    min_isr = configs.get("min.insync.replicas")
    if min_isr is None or int(min_isr) < settings.min_insync_replicas:
        raise ConfigError(
            f"topic {topic}: min.insync.replicas is {min_isr}, "
            f"expected at least {settings.min_insync_replicas}"
        )
    if int(min_isr) > replicas:
        raise ConfigError(
            f"topic {topic}: min.insync.replicas is {min_isr}, expected at most the "
            f"replication factor {replicas} (no write could ever be acknowledged)"
        )


def _describe_topic(admin: Any, topic: str) -> dict[str, Any] | None:
    try:
        described = admin.describe_topics([topic])
    except UnknownTopicOrPartitionError:
        return None
    for entry in described:
        # kafka-python 3.x: {"name", "error_code", "partitions": [{"partition_index",
        # "leader_id", "replica_nodes", "isr_nodes", ...}]}
        if entry.get("name") == topic:
            if entry.get("error_code", 0) == TOPIC_AUTHORIZATION_FAILED:
                # Kafka answers this for a topic that exists and one that does not alike.
                return dict(entry)
            if entry.get("error_code", 0) != 0:
                return None
            return dict(entry)
    return None


def _describe_configs(admin: Any, topic: str) -> dict[str, str]:
    # config_filter='all': the default ('modified') leaves out values inherited from the
    # broker, and an inherited retention.ms of 7 days is exactly what must be caught.
    result = admin.describe_configs(
        [ConfigResource(ConfigResourceType.TOPIC, topic)], config_filter="all"
    )
    # kafka-python 3.x: {"topic": {name: {config: {"value": ..., "config_source": ...}}}};
    # a per-resource error is not raised, it just yields no configs (hence the checks above).
    per_topic = (result.get("topic") or {}).get(topic) or {}
    return {
        name: str(entry.get("value"))
        for name, entry in per_topic.items()
        if entry.get("value") is not None
    }


def _describe_configs_error(admin: Any, topic: str) -> int | None:
    """The error code of a DescribeConfigs of `topic`, or None if it cannot be learned.

    kafka-python's describe_configs drops a per-resource error (an empty dict is all one sees),
    so the request is sent again through the admin client's own request builder to read it.
    Those are kafka-python internals (3.0): if they change, None, and the caller's message about
    the missing settings stands.
    """
    try:
        request = admin._describe_configs_request([ConfigResource(ConfigResourceType.TOPIC, topic)])
        response = admin._manager.run(admin._manager.send, request)
        return int(response.results[0].error_code)
    except Exception:
        return None
