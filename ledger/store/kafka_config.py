"""How the Kafka store reaches its cluster: `KafkaStoreConfig` and the options it gives each client.

One config serves both Kafka clients of the store: `client_options()` in kafka-python's names
(record readers, the admin client), `producer_options()` and `end_consumer_options()` in
librdkafka's names (the confluent-kafka producers and the end-offset consumer). docs/KAFKA.md
("Running Steward on an existing Kafka cluster") has the field-by-field mapping.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ledger.store.kafka_topic import TopicSettings

# Largest produce request (librdkafka message.max.bytes), as kafka-python's max_request_size
# was. The topic's max.message.bytes (1 MiB by default) still bounds one record batch on the
# broker; a larger record fails its delivery, and the transaction is aborted.
MAX_REQUEST_BYTES = 8 * 1024 * 1024

# The end-offset consumer's group.id. confluent-kafka refuses a Consumer without one; the store's
# consumer never subscribes (so never joins the group) and never commits, and the group never
# exists on the brokers. librdkafka does look up its coordinator when it starts (FindCoordinator).
END_OFFSETS_GROUP = "steward-end-offsets"


@dataclass(frozen=True)
class KafkaStoreConfig:
    """How to reach the cluster and which topic holds the ledger.

    The same options serve both clients: `client_options()` for kafka-python (readers, admin),
    `producer_options()` and `end_consumer_options()` with librdkafka's names for the
    confluent-kafka producers and the end-offset consumer (see docs/KAFKA.md for the mapping).
    Secrets are kept out of repr() so they never reach a log line.
    """

    bootstrap_servers: str
    topic: str
    ledger: str = ""  # transactional id is f"steward-ledger-{ledger or topic}"
    transactional_id: str = ""  # overrides the derived one
    replication_factor: int = 1
    min_insync_replicas: int = 1
    create_topics: bool = True  # False: the topics must exist (and are still checked)
    client_id: str = "steward-ledger"
    # Timeouts. request_timeout_ms bounds one broker request, operation_timeout_s one
    # append/read as a whole before StoreUnavailableError, transaction_timeout_ms how long the
    # coordinator keeps an open transaction of a vanished writer.
    request_timeout_ms: int = 15000
    operation_timeout_s: float = 60.0
    transaction_timeout_ms: int = 60000
    # Security pass-through.
    security_protocol: str = "PLAINTEXT"
    sasl_mechanism: str | None = None
    sasl_plain_username: str | None = None
    sasl_plain_password: str | None = field(default=None, repr=False)
    ssl_cafile: str | None = None
    ssl_certfile: str | None = None
    ssl_keyfile: str | None = None
    ssl_password: str | None = field(default=None, repr=False)
    ssl_check_hostname: bool = True

    @property
    def effective_transactional_id(self) -> str:
        return self.transactional_id or f"steward-ledger-{self.ledger or self.topic}"

    @property
    def topic_settings(self) -> TopicSettings:
        return TopicSettings(self.replication_factor, self.min_insync_replicas)

    def client_options(self) -> dict[str, Any]:
        """Options common to producer, consumer and admin client (includes secrets)."""
        opts: dict[str, Any] = {
            "bootstrap_servers": self.bootstrap_servers.split(","),
            "client_id": self.client_id,
            "request_timeout_ms": self.request_timeout_ms,
            # kafka-python's bootstrap picks a bootstrap server at random and, when it picks
            # one in backoff, waits out that backoff instead of trying another: with one broker
            # of three down and the default 30 s cap, a new client once picked the dead one five
            # times and gave up at its 30 s deadline. A 1 s cap bounds each such wait.
            "reconnect_backoff_max_ms": 1000,
            "security_protocol": self.security_protocol,
        }
        optional = {
            "sasl_mechanism": self.sasl_mechanism,
            "sasl_plain_username": self.sasl_plain_username,
            "sasl_plain_password": self.sasl_plain_password,
            "ssl_cafile": self.ssl_cafile,
            "ssl_certfile": self.ssl_certfile,
            "ssl_keyfile": self.ssl_keyfile,
            "ssl_password": self.ssl_password,
        }
        opts.update({k: v for k, v in optional.items() if v is not None})
        if self.security_protocol.upper() in ("SSL", "SASL_SSL"):
            opts["ssl_check_hostname"] = self.ssl_check_hostname
        return opts

    def producer_options(self) -> dict[str, Any]:
        """librdkafka options common to the ledger's producers (includes secrets; never log it).

        ``request.timeout.ms`` (how long the broker may wait for acks=all) and
        ``socket.timeout.ms`` (any request, e.g. to the transaction coordinator) both take
        `request_timeout_ms`, like kafka-python's one request timeout; ``message.timeout.ms``
        (a record's delivery, retries included) takes `operation_timeout_s`.
        """
        return {
            **self.rdkafka_connection_options(),
            "request.timeout.ms": self.request_timeout_ms,
            "message.timeout.ms": max(1, int(self.operation_timeout_s * 1000)),
            "message.max.bytes": MAX_REQUEST_BYTES,
            # The topics exist (checked at start); never create one by producing to it.
            "allow.auto.create.topics": False,
        }

    def end_consumer_options(self) -> dict[str, Any]:
        """librdkafka options of the end-offset consumer (includes secrets; never log it).

        The producers' connection and security options, read_committed (so the high watermark
        it reports is the last stable offset), and no group work: a fixed `END_OFFSETS_GROUP`
        that is never joined (the consumer never subscribes) and no offset commits. Each query
        is bounded by `operation_timeout_s` (the call's timeout), each request by
        ``socket.timeout.ms`` = `request_timeout_ms`.
        """
        return {
            **self.rdkafka_connection_options(),
            "group.id": END_OFFSETS_GROUP,
            "enable.auto.commit": False,
            "enable.auto.offset.store": False,
            "isolation.level": "read_committed",
            "allow.auto.create.topics": False,
        }

    def rdkafka_connection_options(self) -> dict[str, Any]:
        """librdkafka options every client of the store shares (includes secrets)."""
        opts: dict[str, Any] = {
            "bootstrap.servers": self.bootstrap_servers,
            "client.id": self.client_id,
            "security.protocol": self.security_protocol,
            "socket.timeout.ms": self.request_timeout_ms,
            # TCP_NODELAY, as the broker sets on its side. With Nagle's algorithm on, a small
            # request written after one not yet acknowledged waits for the broker's delayed ACK:
            # a transaction of 5 records flushed in 23.9 ms (p50) with linger.ms 0, and the
            # store's appends (linger.ms 100) had a p90 of 9-23.5 ms; with it off, 2.1 / 2.5 ms
            # p50 / p90 (a raw confluent-kafka transactional producer on this machine's broker,
            # 300 transactions each, 2026-12-07).
            "socket.nagle.disable": True,
        }
        optional = {
            "sasl.mechanism": self.sasl_mechanism,
            "sasl.username": self.sasl_plain_username,
            "sasl.password": self.sasl_plain_password,
            "ssl.ca.location": self.ssl_cafile,
            "ssl.certificate.location": self.ssl_certfile,
            "ssl.key.location": self.ssl_keyfile,
            "ssl.key.password": self.ssl_password,
        }
        opts.update({k: v for k, v in optional.items() if v is not None})
        if self.security_protocol.upper() in ("SSL", "SASL_SSL"):
            opts["ssl.endpoint.identification.algorithm"] = (
                "https" if self.ssl_check_hostname else "none"
            )
        return opts
