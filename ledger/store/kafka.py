"""The Kafka log store: one ledger = one single-partition topic, written in transactions.

Two Kafka clients, one per direction:

* Writing goes through confluent-kafka (librdkafka, C): one idempotent, transactional
  ``Producer`` per store (``transactional.id`` per ledger), and a short-lived plain producer for
  each claim record. librdkafka builds, checksums and sends batches in its own threads, outside
  the interpreter lock; kafka-python's pure-Python producer cost the ledger server's single
  interpreter 116-147 µs per record and alone capped ingest below the goal (docs/PERFORMANCE.md).
  Every transactional call takes a timeout, so no kafka-python internals are needed any more to
  bound a commit or an abort.
* The end-offset polls (``end_position``, the snapshot each read starts from, and the wait after
  every commit until read_committed readers see the batch) go through a confluent-kafka
  ``Consumer`` too: ``get_watermark_offsets(..., cached=False)`` with
  ``isolation.level=read_committed`` answers the last stable offset (measured: an open
  transaction holds it back exactly as kafka-python's read_committed ``end_offsets`` does). One
  such consumer per store, never subscribed and never assigned: it joins no group and commits
  nothing (confluent-kafka insists on a ``group.id``, so it has a fixed one that is never joined).
  Each poll waits outside the interpreter lock; kafka-python's polls and its network thread were
  about 6 % of the ledger server's CPU under load.
* Reading records (``read``, ``follow``, the claim log) and the admin client (topic checks) stay
  on kafka-python.

Every `append` is one Kafka transaction, committed before it returns (acks=all), so a batch is
all or nothing for read_committed readers: ``begin_transaction``, ``produce`` per record (offsets
come from the delivery reports), ``flush`` (records not acknowledged in time, or any failed
delivery, abort the transaction), ``commit_transaction``. Each step gets what is left of
``operation_timeout_s`` (at least a second for the commit or abort).

Who writes: the claim log. Every store instance has a fresh claim token (uuid4). The claim log
is the companion topic ``<topic>.writers``: one record per claim, the last one names the writer.
`claim_writer()` (called by the first append if not before, and again whenever the producer was
dropped) runs:

1. First claim (this store never claimed): write a record with our token to ``.writers``
   (acks=all, outside any transaction), then InitProducerId, then read the last claim.
2. Re-claim (the producer was dropped after a transient loss, or its epoch was bumped): read the
   last claim; if it is not ours, another writer claimed after us, so this store is fenced for
   good (FencedError naming the transactional id and the claim log) and never runs
   InitProducerId. If it is ours: InitProducerId, then read the last claim again.
3. In both, the claim holds only if the last claim read *after* our InitProducerId is ours;
   otherwise the producer is dropped and the store is fenced for good.

A fencing error during a transaction (librdkafka's ``_FENCED``, which it reports for
PRODUCER_FENCED and INVALID_PRODUCER_EPOCH, or Kafka 4.2's UNKNOWN_SERVER_ERROR answer to an
EndTxn racing an InitProducerId) is therefore not final by itself: the producer is dropped and
the store re-claims at once through step 2, raising FencedError if another writer holds the last
claim, StoreUnavailableError (retry) if we still do. Any other error (including fatal ones that are
not a bumped epoch, such as TRANSACTIONAL_ID_AUTHORIZATION_FAILED) aborts the transaction, or
drops the producer if that fails, and raises StoreUnavailableError; the next append re-claims. Either
classification is safe: only the claim log decides who writes, the classification only decides
whether it is asked now or at the next append.

Why two writers never take turns and the chain cannot fork. Kafka gives: (a) a transaction
commits only if its producer epoch is still the current one, and InitProducerId returns only
once every earlier transaction of the id is complete (committed or aborted, markers written);
(b) a record acknowledged with acks=all is visible to every later read_committed read. A
claim record is acknowledged *before* its writer's InitProducerId. So for writer W whose
InitProducerId was followed by a check that saw W's claim last: any other claim acknowledged
before that check would have been seen, so it comes later, and its InitProducerId later still,
which fences W: while W's epoch is current nobody else has initialised, and nobody whose claim
came before W's last check can ever hold the ledger again (their pre-check or post-check sees a
later claim). A superseded writer hence never re-initialises, whatever error dropped its
producer, and the newest claim wins. The ledger server claims before every replay (start and
after any store failure), so by (a) its replay sees every commit of earlier epochs and no one
else commits until its epoch is bumped, which fails its next transaction: it always appends to
the tail it replayed.

A commit whose outcome is unknown (timed out, connection lost, any error from
``commit_transaction``) is *in doubt*: the producer is dropped, the next InitProducerId settles
it (the coordinator completes or aborts it first), and a retry of the same batch returns the
first attempt's offsets if it did commit.

Reading: read_committed consumers with manual assignment (no consumer group), seeking to the
requested position. Positions are partition offsets; they skip the offsets of transaction
markers, and `end_position()` is the last stable offset (one past the last commit marker).

Checkpoint notes go to the companion topic ``<topic>.checkpoints`` (see kafka_topic.py), in
transactions of the same producer, so a fenced writer cannot add checkpoints either.

librdkafka's log lines and error callbacks go to the Python logger ``kafka.librdkafka`` (under
kafka-python's ``kafka`` logger, so one level setting covers both clients): its warnings and
errors at WARNING, each distinct line at most once a minute (repeats at DEBUG).
"""

from __future__ import annotations

import functools
import json
import logging
import os
import re
import socket
import threading
import time
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from confluent_kafka import Consumer, KafkaError, KafkaException, Message, Producer
from confluent_kafka import TopicPartition as RdTopicPartition
from kafka import KafkaAdminClient, KafkaConsumer, TopicPartition
from kafka import errors as kerrors

from ledger.errors import ConfigError, FencedError, StoreError, StoreUnavailableError
from ledger.store.base import LogStore, StoredCheckpoint, StoredRecord
from ledger.store.kafka_topic import (
    KafkaNotAuthorizedError,
    TopicSettings,
    checkpoints_topic,
    ensure_ledger_topics,
    writers_topic,
)

log = logging.getLogger(__name__)
# librdkafka's own lines: under kafka-python's "kafka" logger, so that one level (the ledger
# server's --kafka-log-level) governs both clients.
rdkafka_log = logging.getLogger("kafka.librdkafka")

# librdkafka error codes meaning "another InitProducerId bumped our producer epoch". librdkafka
# reports both broker codes as its own _FENCED (a fatal error) once it has seen one; the broker
# codes are listed in case one reaches us unnormalised. Not here: TRANSACTIONAL_ID_AUTHORIZATION_
# FAILED, CLUSTER_AUTHORIZATION_FAILED and INVALID_TXN_STATE, which librdkafka also makes fatal,
# but which say nothing about another writer (a missing ACL, a protocol state error): they drop
# the producer and raise StoreUnavailableError, and the claim log is asked at the next append.
_FENCING_CODES: frozenset[int] = frozenset({
    KafkaError._FENCED,
    KafkaError.PRODUCER_FENCED,
    KafkaError.INVALID_PRODUCER_EPOCH,
})

# Largest produce request (librdkafka message.max.bytes), as kafka-python's max_request_size
# was. The topic's max.message.bytes (1 MiB by default) still bounds one record batch on the
# broker; a larger record fails its delivery, and the transaction is aborted.
_MAX_REQUEST_BYTES = 8 * 1024 * 1024

# The end-offset consumer's group.id. confluent-kafka refuses a Consumer without one; the store's
# consumer never subscribes (so never joins the group) and never commits, and the group never
# exists on the brokers. librdkafka does look up its coordinator when it starts (FindCoordinator).
END_OFFSETS_GROUP = "steward-end-offsets"

# End-offset query errors that may pass by themselves: metadata that does not list a just-created
# topic yet (measured: librdkafka answered _UNKNOWN_PARTITION at once right after a topic was
# created, and the offsets 100 ms later), a leader moving, a lost connection. The query is asked
# again until operation_timeout_s is spent, as kafka-python's end_offsets kept retrying.
_END_OFFSET_PASSING: frozenset[int] = frozenset({
    KafkaError._UNKNOWN_PARTITION,
    KafkaError._UNKNOWN_TOPIC,
    KafkaError.UNKNOWN_TOPIC_OR_PART,
    KafkaError.LEADER_NOT_AVAILABLE,
    KafkaError.NOT_LEADER_FOR_PARTITION,
    KafkaError._TRANSPORT,
    KafkaError._ALL_BROKERS_DOWN,
})
_END_OFFSET_RETRY_S = 0.1


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
            **self._rdkafka_connection_options(),
            "request.timeout.ms": self.request_timeout_ms,
            "message.timeout.ms": max(1, int(self.operation_timeout_s * 1000)),
            "message.max.bytes": _MAX_REQUEST_BYTES,
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
            **self._rdkafka_connection_options(),
            "group.id": END_OFFSETS_GROUP,
            "enable.auto.commit": False,
            "enable.auto.offset.store": False,
            "isolation.level": "read_committed",
            "allow.auto.create.topics": False,
        }

    def _rdkafka_connection_options(self) -> dict[str, Any]:
        """librdkafka options every client of the store shares (includes secrets)."""
        opts: dict[str, Any] = {
            "bootstrap.servers": self.bootstrap_servers,
            "client.id": self.client_id,
            "security.protocol": self.security_protocol,
            "socket.timeout.ms": self.request_timeout_ms,
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
                "https" if self.ssl_check_hostname else "none")
        return opts


def add_security_arguments(group: Any) -> None:
    """The ``--kafka-*`` security flags (as the ledger server's), on an argparse group.

    Secrets are never flags: ``--kafka-sasl-password-env`` and ``--kafka-ssl-password-env``
    name the environment variables that hold them.
    """
    group.add_argument("--kafka-security-protocol", default="PLAINTEXT",
                       choices=("PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"))
    group.add_argument("--kafka-sasl-mechanism", help="e.g. SCRAM-SHA-512")
    group.add_argument("--kafka-sasl-username")
    group.add_argument("--kafka-sasl-password-env", metavar="VAR",
                       help="environment variable holding the SASL password (never a flag)")
    group.add_argument("--kafka-ssl-cafile", help="CA bundle that signs the brokers' certificates")
    group.add_argument("--kafka-ssl-certfile", help="client certificate (PEM), for mutual TLS")
    group.add_argument("--kafka-ssl-keyfile", help="client private key (PEM)")
    group.add_argument("--kafka-ssl-password-env", metavar="VAR",
                       help="environment variable holding the client key's password")


def security_from_args(args: Any) -> dict[str, Any]:
    """`KafkaStoreConfig` security fields from `add_security_arguments` flags (secrets read
    from the named environment variables; ConfigError naming a variable that is not set)."""
    return {
        "security_protocol": args.kafka_security_protocol,
        "sasl_mechanism": args.kafka_sasl_mechanism,
        "sasl_plain_username": args.kafka_sasl_username,
        "sasl_plain_password": secret_from_env(args.kafka_sasl_password_env,
                                               "the Kafka SASL password"),
        "ssl_cafile": args.kafka_ssl_cafile,
        "ssl_certfile": args.kafka_ssl_certfile,
        "ssl_keyfile": args.kafka_ssl_keyfile,
        "ssl_password": secret_from_env(args.kafka_ssl_password_env,
                                        "the Kafka client key password"),
    }


def secret_from_env(var: str | None, what: str) -> str | None:
    if var is None:
        return None
    value = os.environ.get(var)
    if value is None:
        raise ConfigError(f"environment variable {var} ({what}) is not set")
    return value


def _checkpoint_key(size: int) -> bytes:
    return str(size).encode()


@dataclass(frozen=True)
class WriterClaim:
    """One record of the claim log ``<topic>.writers``: who claimed the ledger, when.

    Only `token` decides anything; host, pid and time are for the operator reading a
    FencedError or the topic. A record that is not a claim has an empty token (nobody's).
    """

    position: int
    token: str
    host: str = ""
    pid: int = 0
    claimed_at_ms: int = 0

    @classmethod
    def parse(cls, position: int, value: bytes) -> WriterClaim:
        try:
            data = json.loads(value)
            token = data["token"]
            if not isinstance(token, str) or not token:
                raise ValueError("token is not a non-empty string")
            return cls(position, token, str(data.get("host", "")), int(data.get("pid", 0)),
                       int(data.get("claimed_at_ms", 0)))
        except (ValueError, TypeError, KeyError) as exc:
            log.warning("claim log record at offset %d is not a claim (%s)", position, exc)
            return cls(position, "")

    def describe(self) -> str:
        if not self.token:
            return f"an unreadable record at offset {self.position}"
        return (f"claim {self.token[:12]} by {self.host or '?'} pid {self.pid} at "
                f"{time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime(self.claimed_at_ms / 1000))}"
                f" (offset {self.position})")


class LibrdkafkaLog:
    """librdkafka's log lines and error callback, into Python logging without a flood.

    Given to each producer and to the end-offset consumer as its ``logger`` and ``error_cb``.
    confluent-kafka calls ``log(level, "%s [%s] %s", facility, client name, text)`` with
    librdkafka's syslog level already mapped to a Python level, and ``error(KafkaError)`` for
    errors the client reports on its own (a broker down, all brokers down, ...): both only
    while one of our threads is in ``poll``/``flush`` (the producers' under the store's writer
    lock, the consumer's under its end-offset lock, so two threads may log here at once). With
    a broker gone librdkafka repeats the same connection failure every reconnect backoff, and
    the store raises StoreUnavailableError (logged by the caller) anyway, so: librdkafka's warnings
    and worse are logged at WARNING (it says ALERT for a fence, which the claim log then
    decides), each distinct line (numbers ignored) at most once per `window` seconds, its
    repeats at DEBUG and counted in the next WARNING of the same line; notices and info at
    INFO, debug at DEBUG. Fatal errors are not
    rate-limited (confluent-kafka raises them from ``flush``/``poll`` rather than calling
    `error`, but a fatal one passed here is logged at once).
    """

    _NUMBERS = re.compile(r"\d+")

    def __init__(self, topic: str, *, window: float = 60.0,
                 logger: logging.Logger | None = None) -> None:
        self.topic = topic
        self.window = window
        self.logger = logger or rdkafka_log
        self._lock = threading.Lock()
        self._seen: dict[tuple[str, ...], tuple[float, int]] = {}  # key -> (last logged, repeats)
        # The last authorization failure librdkafka reported, for the store to name: a
        # transaction refused on AddPartitionsToTxn shows only here, its records come back as
        # _PURGE_QUEUE and the abort as INVALID_TXN_STATE.
        self.authorization_failure: str | None = None

    def log(self, level: int, msg: str, *args: Any) -> None:
        text = msg % args if args else msg
        if "authorization failed" in text.lower():
            self.authorization_failure = text
        if level >= logging.WARNING:
            facility = str(args[0]) if args else ""
            level, text = self._limited(("log", facility, self._NUMBERS.sub("#", text)), text)
        elif level > logging.DEBUG:
            level = logging.INFO
        self.logger.log(level, "topic %s: librdkafka: %s", self.topic, text)

    def error(self, err: KafkaError) -> None:
        text = f"{err.name()}: {err.str()}"
        if err.code() == KafkaError.GROUP_AUTHORIZATION_FAILED:
            # The end-offset consumer's FindCoordinator for END_OFFSETS_GROUP, which it never
            # joins: no group ACL is needed (tested), so a refusal is not worth a warning.
            self.logger.debug("topic %s: librdkafka error %s (the end-offset consumer's group "
                              "is never joined; harmless)", self.topic, text)
            return
        if "AUTHORIZATION_FAILED" in err.name():
            self.authorization_failure = text
        if err.fatal():
            level = logging.WARNING
        else:
            level, text = self._limited(("error", str(err.code()),
                                         self._NUMBERS.sub("#", err.str())), text)
        self.logger.log(level, "topic %s: librdkafka error %s", self.topic, text)

    def _limited(self, key: tuple[str, ...], text: str) -> tuple[int, str]:
        now = time.monotonic()
        with self._lock:
            last, repeats = self._seen.get(key, (None, 0))
            if last is not None and now - last < self.window:
                self._seen[key] = (last, repeats + 1)
                return logging.DEBUG, text
            self._seen[key] = (now, 0)
            if len(self._seen) > 1000:  # distinct lines are few; never grow without bound
                self._seen = {k: v for k, v in self._seen.items() if now - v[0] < self.window}
        if repeats:
            text += f" ({repeats} more like it in the last {self.window:.0f}s, at DEBUG)"
        return logging.WARNING, text


class KafkaLogStore(LogStore):
    """LogStore on a Kafka topic; see the module docstring for the mapping."""

    def __init__(self, config: KafkaStoreConfig) -> None:
        self.config = config
        self.topic = config.topic
        self.checkpoints_topic = checkpoints_topic(config.topic)
        self.writers_topic = writers_topic(config.topic)
        self._tp = TopicPartition(self.topic, 0)
        self._cp_tp = TopicPartition(self.checkpoints_topic, 0)
        self._claims_tp = TopicPartition(self.writers_topic, 0)
        self._lock = threading.RLock()  # one writer operation at a time
        self._producer: OwnedProducer | None = None
        self._rdlog = LibrdkafkaLog(self.topic)
        self._fenced: str | None = None  # why, once fenced: permanent
        # Our claim token (fresh per store instance) and whether our claim record was
        # acknowledged by the claim log (from then on we only ever re-claim, never claim anew).
        self._token = uuid.uuid4().hex
        self._claim_written = False
        self._closed = False
        # A batch whose commit was sent but not acknowledged: (records, offsets). Its outcome
        # is learned after the next InitProducerId; a retry of the same batch then returns
        # the first attempt's offsets instead of appending it twice.
        self._in_doubt: tuple[list[tuple[bytes, bytes]], list[int]] | None = None
        # The end-offset consumer (librdkafka), made on first use, dropped after a failure.
        self._end_consumer: Consumer | None = None
        self._end_lock = threading.Lock()
        # kafka-python cannot tell a wrong password, an untrusted CA or a plaintext client on a
        # TLS listener from a broker that is down: each is "socket disconnected" until its 30 s
        # bootstrap deadline. librdkafka names each at once, so ask it first.
        check_connection(config)
        admin = self._admin()
        try:
            ensure_ledger_topics(admin, self.topic, config.topic_settings,
                                 create=config.create_topics)
        finally:
            admin.close()

    def __repr__(self) -> str:
        return (f"KafkaLogStore(topic={self.topic!r}, "
                f"transactional_id={self.config.effective_transactional_id!r}, "
                f"claim={self._token[:12]!r})")

    @property
    def claim_token(self) -> str:
        """This store's token in the claim log ``<topic>.writers``."""
        return self._token

    # ------------------------------------------------------------------ clients

    def _unavailable(self, what: str, exc: BaseException) -> StoreUnavailableError:
        return StoreUnavailableError(
            f"Kafka topic {self.topic} at {self.config.bootstrap_servers}: {what} failed: "
            f"{_describe(exc)}")

    def _new_producer(self, what: str, options: dict[str, Any]) -> OwnedProducer:
        """A confluent-kafka producer with our logging; ConfigError if librdkafka refuses the
        options (an unknown value, an unreadable certificate file: no retry would help)."""
        try:
            return OwnedProducer(Producer({**self.config.producer_options(), **options,
                                           "logger": self._rdlog, "error_cb": self._rdlog.error}))
        except (KafkaException, ValueError, TypeError) as exc:
            raise ConfigError(f"Kafka topic {self.topic}: the {what} producer refused its "
                              f"configuration: {_describe(exc)}") from exc

    def _admin(self) -> Any:
        try:
            return KafkaAdminClient(**self.config.client_options())
        except kerrors.KafkaError as exc:
            raise self._unavailable("connecting an admin client", exc) from exc

    def _new_consumer(self) -> KafkaConsumer:
        try:
            return KafkaConsumer(
                **self.config.client_options(),
                group_id=None,
                enable_auto_commit=False,
                isolation_level="read_committed",
                auto_offset_reset="earliest",
                allow_auto_create_topics=False,
                max_poll_records=500,
            )
        except kerrors.KafkaError as exc:
            raise self._unavailable("connecting a consumer", exc) from exc

    def _new_end_consumer(self) -> Consumer:
        """The confluent-kafka consumer for end offsets; ConfigError if librdkafka refuses the
        options (as for the producers: no retry would help). Creating it connects nothing yet."""
        try:
            return Consumer({**self.config.end_consumer_options(),
                             "logger": self._rdlog, "error_cb": self._rdlog.error})
        except (KafkaException, ValueError, TypeError) as exc:
            raise ConfigError(f"Kafka topic {self.topic}: the end-offset consumer refused its "
                              f"configuration: {_describe(exc)}") from exc

    def _check_open(self) -> None:
        if self._closed:
            raise StoreError(f"the Kafka store for topic {self.topic} is closed")

    # ------------------------------------------------------------------ writing

    def claim_writer(self) -> None:
        """Become (or stay) the one writer of this ledger, or raise FencedError for good.

        The claim protocol of the module docstring: first claim = write our claim record, then
        InitProducerId (fencing any other producer of the transactional id); re-claim = only if
        the last claim is still ours. Either way the claim holds only if the last claim read
        after InitProducerId is ours. A ledger server calls this before it reads the tail, so
        nobody else can append between its reading the tail and its first append.
        StoreUnavailableError when Kafka cannot be reached (nothing is decided; call again).
        """
        with self._lock:
            self._check_open()
            self._raise_if_fenced()
            if self._producer is not None:
                return
            if self._claim_written:
                last = self._last_claim()
                if not self._is_ours(last):
                    raise self._superseded(last, "before re-initialising")
            else:
                self._write_claim()
            producer = self._init_producer()
            try:
                last = self._last_claim()
            except BaseException:
                producer.discard(self.topic)
                raise
            if not self._is_ours(last):
                # A newer claim landed before our InitProducerId, which has just fenced its
                # writer: that one sees its own claim last and re-claims; we stop.
                producer.discard(self.topic)
                raise self._superseded(last, "after initialising")
            self._producer = producer
            log.info("claimed ledger topic %s as transactional id %s (claim %s, offset %d)",
                     self.topic, self.config.effective_transactional_id, self._token[:12],
                     last.position if last is not None else -1)

    def _write_claim(self) -> None:
        """Append our claim record to the claim log (acks=all, no transaction)."""
        record = {
            "token": self._token,
            "transactional_id": self.config.effective_transactional_id,
            "topic": self.topic,
            "host": socket.gethostname(),
            "pid": os.getpid(),
            "claimed_at_ms": int(time.time() * 1000),
        }
        timeout = self.config.operation_timeout_s
        delivered: list[tuple[KafkaError | None, Message]] = []
        producer = self._new_producer("claim", {
            "acks": "all",
            # One record, and a duplicate of it is harmless: no idempotence (no extra
            # InitProducerId, no IdempotentWrite ACL for this producer).
            "enable.idempotence": False,
            "linger.ms": 0,
        })
        try:
            producer.client.produce(
                self.writers_topic, key=self._token.encode(),
                value=json.dumps(record, sort_keys=True).encode(), partition=0,
                on_delivery=lambda err, msg: delivered.append((err, msg)))
            if producer.client.flush(timeout) or not delivered:
                raise TimeoutError(f"the claim record was not acknowledged within {timeout:.0f}s")
            err, msg = delivered[0]
            if err is not None:
                raise KafkaException(err)
            offset = msg.offset()
        except Exception as exc:
            if _has_code(exc, KafkaError.TOPIC_AUTHORIZATION_FAILED):
                raise KafkaNotAuthorizedError.missing(
                    "Write", f"topic {self.writers_topic}",
                    f"writing this writer's claim to {self.writers_topic}",
                    _describe(exc)) from exc
            # Maybe written, maybe not: the next claim_writer() writes it again (a second
            # record with our token changes nothing).
            raise self._unavailable(f"writing our claim to {self.writers_topic}", exc) from exc
        finally:
            producer.discard(self.topic)
        self._claim_written = True
        log.info("topic %s: claim %s written to %s at offset %d", self.topic,
                 self._token[:12], self.writers_topic, offset)

    def _init_producer(self) -> OwnedProducer:
        """A new transactional producer, after InitProducerId (which fences every other one)."""
        tid = self.config.effective_transactional_id
        txn_ms = self.config.transaction_timeout_ms
        op_ms = max(1, int(self.config.operation_timeout_s * 1000))
        producer = self._new_producer("transactional", {
            "transactional.id": tid,
            "enable.idempotence": True,
            "acks": "all",
            "transaction.timeout.ms": txn_ms,
            # librdkafka refuses a record timeout above the transaction timeout, and a request
            # timeout above it + 100 ms.
            "message.timeout.ms": min(op_ms, txn_ms),
            "socket.timeout.ms": min(self.config.request_timeout_ms, txn_ms),
            # Every append ends in flush(), which sends at once whatever linger says; the linger
            # only keeps the broker threads from shipping a transaction's first records in
            # small requests while the rest are still being produced.
            "linger.ms": max(0, min(100, min(op_ms, txn_ms) // 2)),
        })
        try:
            producer.client.init_transactions(self.config.operation_timeout_s)
        except Exception as exc:
            producer.discard(self.topic)
            if _has_code(exc, KafkaError.TRANSACTIONAL_ID_AUTHORIZATION_FAILED):
                raise KafkaNotAuthorizedError.missing(
                    "Write", f"transactional-id {tid}",
                    f"initialising transactional id {tid}", _describe(exc)) from exc
            if _has_code(exc, KafkaError.CLUSTER_AUTHORIZATION_FAILED):
                raise KafkaNotAuthorizedError.missing(
                    "IdempotentWrite", "the cluster",
                    f"initialising transactional id {tid}", _describe(exc)) from exc
            # Even a fencing error here (another InitProducerId racing ours) decides nothing:
            # the claim log does, on the next claim_writer().
            raise self._unavailable(f"initialising transactional id {tid}", exc) from exc
        return producer

    def _last_claim(self) -> WriterClaim | None:
        """The last record of the claim log (read_committed), None if it is empty."""
        end = self._end_offset(self._claims_tp)
        window = 4  # claims are plain records: the last one is at end - 1
        while end > 0:
            start = max(0, end - window)
            found = list(self._read(self._claims_tp, start, None))
            if found:
                return WriterClaim.parse(found[-1].position, found[-1].value)
            if start == 0:
                break
            window *= 16  # only markers and aborted records of a foreign producer back there
        return None

    def _is_ours(self, claim: WriterClaim | None) -> bool:
        return claim is not None and claim.token == self._token

    def _superseded(self, last: WriterClaim | None, when: str) -> FencedError:
        """Fenced for good: the last claim is not ours."""
        tid = self.config.effective_transactional_id
        seen = last.describe() if last is not None else "no claim at all (the claim log is empty)"
        self._fenced = (
            f"this writer was fenced: another writer with transactional id {tid} took over "
            f"ledger topic {self.topic}: the last claim in {self.writers_topic} is {seen}, "
            f"expected ours ({self._token[:12]}), checked {when}; this store never claims again")
        log.warning("%s", self._fenced)
        return FencedError(self._fenced)

    def append(self, records: Sequence[tuple[bytes, bytes]],
               checkpoint: tuple[int, str] | None = None) -> list[int]:
        with self._lock:
            self._check_open()
            self._raise_if_fenced()
            if not records:
                if checkpoint is not None:
                    self.save_checkpoint(*checkpoint)
                return []
            batch = [(bytes(k), bytes(v)) for k, v in records]
            if self._in_doubt is not None:
                self.claim_writer()  # InitProducerId settles the in-doubt transaction
                settled = self._settle_in_doubt(batch)
                if settled is not None:
                    return settled
            sends = [(self.topic, key, value) for key, value in batch]
            if checkpoint is not None:
                # The note rides in the batch's own transaction (one commit, not two).
                size, note = checkpoint
                sends.append((self.checkpoints_topic, _checkpoint_key(size), note.encode()))
            offsets = self._transaction(sends, batch=batch)[:len(batch)]
            self._await_visible(self._tp, offsets[-1])
            return offsets

    def _settle_in_doubt(self, batch: list[tuple[bytes, bytes]]) -> list[int] | None:
        """Offsets of `batch` if it is the in-doubt batch and that one did commit."""
        assert self._in_doubt is not None
        records, offsets = self._in_doubt
        found = list(self._read(self._tp, offsets[0], len(offsets)))
        committed = [r.position for r in found] == offsets and \
            [(r.key, r.value) for r in found] == records
        self._in_doubt = None
        if committed and batch == records:
            log.info("topic %s: the retried batch had been committed at offsets %d..%d",
                     self.topic, offsets[0], offsets[-1])
            return offsets
        if committed:
            log.warning("topic %s: a batch reported as failed had been committed at offsets "
                        "%d..%d; appending a different batch now", self.topic, offsets[0],
                        offsets[-1])
        return None

    def save_checkpoint(self, size: int, note: str) -> None:
        with self._lock:
            self._check_open()
            self._raise_if_fenced()
            offsets = self._transaction(
                [(self.checkpoints_topic, _checkpoint_key(size), note.encode())])
            self._await_visible(self._cp_tp, offsets[-1])

    def _await_visible(self, tp: TopicPartition, offset: int) -> None:
        """Wait until read_committed readers can see `offset`.

        commit_transaction() returns once the coordinator has logged PrepareCommit; the
        commit markers reach the partition a moment later, and until then the last stable
        offset (what read_committed readers see) stays behind. The commit is decided, so a
        timeout here is logged, not raised.

        The markers usually land within a few milliseconds and every append waits here under
        the writer's lock, so the poll starts at 1 ms and backs off gently to at most 20 ms
        (a 2 ms start doubling to 100 ms overslept by up to tens of ms per batch).
        """
        deadline = time.monotonic() + self.config.operation_timeout_s
        delay = 0.001
        while True:
            try:
                if self._end_offset(tp) > offset:
                    return
            except StoreUnavailableError as exc:
                # Never raise after a decided commit: the caller would retry and duplicate.
                log.warning("topic %s: offset %d committed; cannot confirm visibility: %s",
                            tp.topic, offset, exc)
                return
            if time.monotonic() > deadline:
                log.warning("topic %s: offset %d committed but not yet visible to "
                            "read_committed readers after %.0fs", tp.topic, offset,
                            self.config.operation_timeout_s)
                return
            time.sleep(delay)
            delay = min(delay * 1.5, 0.02)

    def _transaction(self, sends: list[tuple[str, bytes, bytes]],
                     batch: list[tuple[bytes, bytes]] | None = None) -> list[int]:
        """One transaction of `sends` (topic, key, value), all to partition 0; their offsets."""
        self.claim_writer()
        producer = self._producer
        assert producer is not None
        deadline = time.monotonic() + self.config.operation_timeout_s
        step = "beginning a transaction"
        self._rdlog.authorization_failure = None
        offsets = [-1] * len(sends)
        failed: list[KafkaError] = []
        try:
            producer.client.begin_transaction()
            step = "sending the batch"
            # Through the holder every time: a local alias of the client (or of its bound
            # method) would outlive a failure in this frame's traceback (see OwnedProducer).
            for i, (topic, key, value) in enumerate(sends):
                producer.client.produce(topic, value=value, key=key, partition=0,
                                        on_delivery=functools.partial(_delivered, offsets,
                                                                      failed, i))
            step = "flushing the batch"
            _flush_batch(producer, failed, len(sends), _left(deadline, 0.1))
            step = "committing the transaction"
            _end_transaction(producer, commit=True, timeout=_left(deadline, 1.0))
            return offsets
        except Exception as exc:
            committing = step == "committing the transaction"
            # Our epoch was bumped by another InitProducerId. Kafka 4.2's coordinator may also
            # answer an EndTxn racing one with UNKNOWN_SERVER_ERROR (PREPARE_EPOCH_FENCE,
            # docs/KAFKA.md) instead of PRODUCER_FENCED: same meaning, but the commit is in doubt.
            bumped = _is_fencing(exc) or (committing and _is_end_txn_unknown_error(exc))
            if committing:
                # EndTxn may have reached the coordinator: the outcome is unknown until the
                # next InitProducerId, so the producer is dropped rather than aborted.
                # (A checkpoint note may follow the batch in `sends`: only the batch counts.)
                mine = offsets[:len(batch)] if batch is not None else []
                if batch is not None and len(mine) == len(batch) and min(mine) >= 0:
                    self._in_doubt = (batch, list(mine))
                self._drop_producer()
            elif bumped:
                self._drop_producer()
            else:
                # A fence first seen by a delivery report (its records purged) shows in the
                # abort: librdkafka then raises the fatal _FENCED.
                abort_error = self._abort_and_drop(deadline)
                bumped = abort_error is not None and _is_fencing(abort_error)
            if bumped:
                # Not final by itself: the claim log decides, now. FencedError (for good) if
                # another writer claimed after us; if the last claim is still ours we hold the
                # ledger again and the caller retries (an in-doubt batch is settled then).
                log.warning("topic %s: %s failed: our producer epoch was bumped (%s)%s; asking "
                            "the claim log", self.topic, step, _describe(exc),
                            ", the commit is in doubt" if committing else "")
                try:
                    self.claim_writer()
                except StoreError as decided:
                    raise decided from exc
                raise StoreUnavailableError(
                    f"Kafka topic {self.topic}: {step} failed because our producer epoch was "
                    f"bumped ({_describe(exc)}), but the last claim in {self.writers_topic} "
                    f"is still ours: re-claimed, retry") from exc
            refused = self._rdlog.authorization_failure
            if refused is not None or _has_code(exc, KafkaError.TOPIC_AUTHORIZATION_FAILED):
                topic = _refused_topic(refused or "", [t for t, _, _ in sends])
                raise KafkaNotAuthorizedError.missing(
                    "Write", f"topic {topic}", f"{step} to {topic}",
                    refused or _describe(exc)) from exc
            raise self._unavailable(step, exc) from exc

    def _abort_and_drop(self, deadline: float) -> BaseException | None:
        """Abort the failed transaction, then drop the producer; the abort's error, if any.

        The abort makes the batch's records aborted at once (an open transaction would hold
        read_committed readers back until the transaction timeout); if it fails, the next
        InitProducerId aborts it. The producer is dropped even after a clean abort: after a
        failed delivery librdkafka's idempotence sequence has a gap, and the next transaction
        of the same producer fails (OUT_OF_ORDER_SEQUENCE_NUMBER, "requires epoch bump"), a
        spurious failure that costs the ledger server a full replay. The next append
        re-claims (InitProducerId with the same transactional id: a fresh epoch and
        sequence), and only if the last claim is still ours.
        """
        producer = self._producer
        if producer is None:
            return None
        failure: BaseException | None = None
        try:
            _end_transaction(producer, commit=False, timeout=_left(deadline, 1.0))
        except Exception as exc:
            log.warning("topic %s: abort after a failed append failed too (%s); the next "
                        "InitProducerId aborts it", self.topic, _describe(exc))
            failure = exc
        self._drop_producer()
        return failure

    def _drop_producer(self) -> None:
        """Forget the producer (transient loss); the next operation re-claims (claim_writer)."""
        producer, self._producer = self._producer, None
        if producer is not None:
            producer.discard(self.topic)

    def _raise_if_fenced(self) -> None:
        if self._fenced is not None:
            raise FencedError(self._fenced)

    # ------------------------------------------------------------------ reading

    def read(self, start: int = 0, limit: int | None = None) -> Iterator[StoredRecord]:
        self._check_open()
        return self._read(self._tp, start, limit)

    def _read(self, tp: TopicPartition, start: int, limit: int | None) -> Iterator[StoredRecord]:
        if limit is not None and limit <= 0:
            return
        # Snapshot the end first: records committed later are for the next read (or follow).
        end = self._end_offset(tp)
        if start >= end:
            return
        consumer = self._new_consumer()
        try:
            consumer.assign([tp])
            consumer.seek(tp, max(start, 0))
            count = 0
            deadline = time.monotonic() + self.config.operation_timeout_s
            while True:
                try:
                    if consumer.position(tp) >= end:
                        return
                    batch = consumer.poll(timeout_ms=200)
                except kerrors.TopicAuthorizationFailedError as exc:
                    raise KafkaNotAuthorizedError.missing(
                        "Read", f"topic {tp.topic}", f"reading topic {tp.topic}",
                        "TOPIC_AUTHORIZATION_FAILED") from exc
                except kerrors.KafkaError as exc:
                    raise self._unavailable(f"reading {tp.topic}", exc) from exc
                got = batch.get(tp, [])
                if got:
                    deadline = time.monotonic() + self.config.operation_timeout_s
                for rec in got:
                    if rec.offset >= end:
                        return
                    yield StoredRecord(rec.offset, rec.key or b"", rec.value or b"")
                    count += 1
                    if limit is not None and count >= limit:
                        return
                if not got and time.monotonic() > deadline:
                    raise StoreUnavailableError(
                        f"Kafka topic {tp.topic}: no progress reading from offset "
                        f"{consumer.position(tp)} towards {end} in "
                        f"{self.config.operation_timeout_s:.0f}s")
        finally:
            consumer.close()

    def follow(self, start: int = 0, *, idle_timeout: float = 0.5) -> Iterator[StoredRecord | None]:
        self._check_open()
        return self._follow(start, idle_timeout)

    def _follow(self, start: int, idle_timeout: float) -> Iterator[StoredRecord | None]:
        consumer = self._new_consumer()
        try:
            consumer.assign([self._tp])
            consumer.seek(self._tp, max(start, 0))
            idle_since = time.monotonic()
            while True:
                if self._closed:
                    return
                wait_ms = max(1, int((idle_since + idle_timeout - time.monotonic()) * 1000))
                try:
                    batch = consumer.poll(timeout_ms=wait_ms)
                except kerrors.TopicAuthorizationFailedError as exc:
                    raise KafkaNotAuthorizedError.missing(
                        "Read", f"topic {self.topic}", f"following topic {self.topic}",
                        "TOPIC_AUTHORIZATION_FAILED") from exc
                except kerrors.KafkaError as exc:
                    raise self._unavailable(f"following {self.topic}", exc) from exc
                got = batch.get(self._tp, [])
                for rec in got:
                    yield StoredRecord(rec.offset, rec.key or b"", rec.value or b"")
                if got:
                    idle_since = time.monotonic()
                elif time.monotonic() - idle_since >= idle_timeout:
                    yield None
                    idle_since = time.monotonic()
        finally:
            consumer.close()

    def end_position(self) -> int:
        self._check_open()
        return self._end_offset(self._tp)

    def _end_offset(self, tp: TopicPartition) -> int:
        """Last stable offset: read_committed end offset (one past the last commit marker).

        librdkafka's ListOffsets for the latest offset with isolation.level=read_committed (the
        consumer's setting), asked of the partition leader every time (``cached=False``);
        the wait is outside the interpreter lock. An error that may pass (`_END_OFFSET_PASSING`)
        is retried until `operation_timeout_s` is spent; then, or after any other error, the
        consumer is dropped (the next call makes a new one) and StoreUnavailableError is raised.
        """
        with self._end_lock:
            if self._end_consumer is None:
                self._end_consumer = self._new_end_consumer()
            consumer = self._end_consumer
            partition = RdTopicPartition(tp.topic, tp.partition)
            deadline = time.monotonic() + self.config.operation_timeout_s
            while True:
                try:
                    _low, high = consumer.get_watermark_offsets(
                        partition, timeout=_left(deadline, 0.01), cached=False)
                except (KafkaException, RuntimeError) as exc:
                    _serve_end_consumer(consumer, self._rdlog)
                    if _has_code(exc, KafkaError.TOPIC_AUTHORIZATION_FAILED):
                        self._end_consumer = None
                        _close_end_consumer(consumer, self.topic)
                        raise KafkaNotAuthorizedError.missing(
                            "Describe (or Read)", f"topic {tp.topic}",
                            f"asking the end offset of {tp.topic}", _describe(exc)) from exc
                    if _may_pass(exc) and time.monotonic() + _END_OFFSET_RETRY_S < deadline:
                        time.sleep(_END_OFFSET_RETRY_S)
                        continue
                    self._end_consumer = None
                    _close_end_consumer(consumer, self.topic)
                    raise self._unavailable(f"asking the end offset of {tp.topic}",
                                            exc) from exc
                _serve_end_consumer(consumer, self._rdlog)
                return int(high)

    def checkpoints(self) -> list[StoredCheckpoint]:
        self._check_open()
        out = []
        for rec in self._read(self._cp_tp, 0, None):
            out.append(StoredCheckpoint(int(rec.key.decode()), rec.value.decode()))
        return out

    # ------------------------------------------------------------------ lifecycle

    def close(self) -> None:
        with self._lock:
            if self._closed:
                return
            self._closed = True
            self._drop_producer()
        with self._end_lock:
            consumer, self._end_consumer = self._end_consumer, None
            if consumer is not None:
                _serve_end_consumer(consumer, self._rdlog)
                _close_end_consumer(consumer, self.topic)


# How a connection that can never succeed shows in librdkafka's errors and log lines, and what
# to tell the operator. Anything else (a refused connection, a broker starting) may pass.
_CONNECTION_VERDICTS: tuple[tuple[str, str], ...] = (
    ("SASL authentication error",
     "SASL authentication failed: wrong user name or password, or a mechanism the listener "
     "does not enable (sasl_mechanism)"),
    ("certificate verify failed",
     "TLS: the broker's certificate is not signed by a CA this client trusts (ssl_cafile)"),
    ("in state APIVERSION_QUERY",
     "the broker closed the connection before answering ApiVersions: the listener expects "
     "TLS (security protocol SSL or SASL_SSL), or this is not a Kafka listener"),
    ("SSL connection closed by peer",
     "the broker closed the TLS connection: it requires SASL on this listener (SASL_SSL) or a "
     "client certificate (ssl_certfile, ssl_keyfile) that it trusts"),
    ("in state AUTH_HANDSHAKE",
     "SASL handshake refused: the listener does not enable this mechanism (sasl_mechanism)"),
)


class _Collected:
    """librdkafka's log lines and errors of one short-lived client, kept for a verdict."""

    def __init__(self) -> None:
        self.lines: list[str] = []

    def log(self, _level: int, msg: str, *args: Any) -> None:
        self.lines.append(msg % args if args else msg)

    def error(self, err: KafkaError) -> None:
        self.lines.append(f"{err.name()}: {err.str()}")


def check_connection(config: KafkaStoreConfig, timeout: float | None = None) -> None:
    """Connect to the cluster once with librdkafka; ConfigError at once if it can never work.

    A wrong SASL password, a broker certificate the CA file does not sign, a plaintext client
    on a TLS listener or a TLS client without the certificate the listener requires are each
    named within about a second (librdkafka reports them on the first attempt); no retry would
    help. A broker that does not answer at all (down, starting) is left to the callers' own
    timeouts: this returns after `timeout` (default: `operation_timeout_s`, at most 10 s).
    The message names the bootstrap servers, the security protocol and the user, never a
    password.
    """
    from confluent_kafka.admin import AdminClient

    seen = _Collected()
    try:
        options: dict[str, Any] = {**config._rdkafka_connection_options(), "logger": seen,
                                   "error_cb": seen.error}
        client = AdminClient(options)
    except (KafkaException, ValueError, TypeError) as exc:
        raise ConfigError(f"Kafka at {config.bootstrap_servers}: librdkafka refused the "
                          f"connection options: {_describe(exc)}") from exc
    limit = timeout if timeout is not None else min(config.operation_timeout_s, 10.0)
    deadline = time.monotonic() + limit
    while True:
        try:
            client.list_topics(timeout=max(0.05, min(0.5, deadline - time.monotonic())))
            return
        except KafkaException:
            pass
        client.poll(0)  # serves the error callback and the log queue
        for line in seen.lines:
            for marker, verdict in _CONNECTION_VERDICTS:
                if marker in line:
                    who = (f", user {config.sasl_plain_username}"
                           if config.sasl_plain_username else "")
                    raise ConfigError(
                        f"Kafka at {config.bootstrap_servers} ({config.security_protocol}"
                        f"{who}): {verdict}. librdkafka: {line}")
        if time.monotonic() >= deadline:
            log.warning("Kafka at %s: no metadata within %.0fs (%s); going on",
                        config.bootstrap_servers, limit, "; ".join(seen.lines[-2:]) or "no error")
            return


def _left(deadline: float, floor: float) -> float:
    """Seconds left until `deadline`, but at least `floor`."""
    return max(floor, deadline - time.monotonic())


def _serve_end_consumer(consumer: Consumer, rdlog: LibrdkafkaLog) -> None:
    """Hand the end-offset consumer's queued log lines and errors to `rdlog`.

    confluent-kafka delivers a consumer's ``logger``/``error_cb`` events only from ``poll()``,
    and this consumer is never polled for records: unserved, its events (a reconnect failure
    every backoff while a broker is down) would pile up in librdkafka's queue. ``poll(0)``
    serves them all without waiting; with nothing assigned it returns no record, at most a
    consumer-level error event, which is logged like the others.
    """
    try:
        event = consumer.poll(0)
    except (KafkaException, RuntimeError) as exc:
        log.debug("serving the end-offset consumer's events: %s", _describe(exc))
        return
    if event is not None:
        err = event.error()
        if err is not None:
            rdlog.error(err)


def _may_pass(exc: BaseException) -> bool:
    """Whether an end-offset query error may pass if asked again (see _END_OFFSET_PASSING)."""
    return any(e.code() in _END_OFFSET_PASSING or e.retriable() for e in _kafka_errors(exc))


def _close_end_consumer(consumer: Consumer, topic: str) -> None:
    """Close the end-offset consumer. It never subscribed, so this leaves no group and
    commits nothing; measured at under a millisecond, with the broker up or gone."""
    try:
        consumer.close()
    except (KafkaException, RuntimeError) as exc:
        log.debug("topic %s: closing the end-offset consumer: %s", topic, _describe(exc))


def _delivered(offsets: list[int], failed: list[KafkaError], index: int,
               err: KafkaError | None, msg: Message) -> None:
    """Delivery report of record `index` of a transaction (served inside flush())."""
    if err is not None:
        failed.append(err)
    else:
        offset = msg.offset()
        offsets[index] = offset if offset is not None else -1


def _flush_batch(producer: OwnedProducer, failed: list[KafkaError], count: int,
                 timeout: float) -> None:
    """Wait for every record's delivery report; raise unless all `count` were acknowledged."""
    left = producer.client.flush(timeout)
    if left:
        raise TimeoutError(f"{left} of {count} records not acknowledged within {timeout:.1f}s")
    if failed:
        raise KafkaException(failed[0])


def _end_transaction(producer: OwnedProducer, *, commit: bool, timeout: float) -> None:
    """commit_transaction()/abort_transaction(), bounded by `timeout` seconds.

    A commit that times out or fails is in doubt (the caller drops the producer); an abort
    that fails leaves the transaction to the next InitProducerId.
    """
    if commit:
        producer.client.commit_transaction(timeout)
    else:
        producer.client.abort_transaction(timeout)


class OwnedProducer:
    """A confluent-kafka Producer that is destroyed when we say so, in bounded time.

    Producer.close() is not usable for a producer we drop: confluent-kafka 2.16's close() first
    calls abort_transaction() and flush() with no time limit, and with the broker gone and a
    transaction open it was still blocked after nine minutes (measured). Destroying the client
    (rd_kafka_destroy, which runs when the last reference goes) takes ~30 ms in the same case.
    So the store's code refers to the client only through this holder (locals, arguments and
    tracebacks keep the holder, not the client), and `discard` drops the one reference: what
    is queued or in flight is purged (their delivery reports fail with _PURGE_*), the client
    is destroyed, and any open transaction is aborted, or a commit settled, by the coordinator
    at the next InitProducerId of the transactional id.
    """

    __slots__ = ("_client",)

    def __init__(self, client: Producer) -> None:
        self._client: Producer | None = client

    @property
    def client(self) -> Producer:
        if self._client is None:
            raise KafkaException(KafkaError(KafkaError._DESTROY, "the producer was discarded"))
        return self._client

    def discard(self, topic: str) -> None:
        client, self._client = self._client, None
        if client is None:
            return
        try:
            client.purge(in_queue=True, in_flight=True, blocking=False)
            client.poll(0)  # its last log lines (a fatal error's, say) and delivery reports
        except Exception as exc:
            log.debug("topic %s: purging a dropped producer: %s", topic, _describe(exc))
        del client  # the last reference: rd_kafka_destroy() now


def _kafka_errors(exc: BaseException) -> list[KafkaError]:
    """The librdkafka errors carried by `exc` and its causes, outermost first."""
    found: list[KafkaError] = []
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, KafkaException):
            found.extend(arg for arg in current.args if isinstance(arg, KafkaError))
        current = current.__cause__ or current.__context__
    return found


def _describe(exc: BaseException) -> str:
    """One line for a log or an error message: the librdkafka error's name, text and flags."""
    errors = _kafka_errors(exc)
    if not errors:
        return f"{type(exc).__name__}: {exc}"
    err = errors[0]
    flags = [name for name, on in (("fatal", err.fatal()), ("retriable", err.retriable()),
                                   ("abortable", err.txn_requires_abort())) if on]
    return f"{err.name()}: {err.str()}" + (f" ({', '.join(flags)})" if flags else "")


def _is_end_txn_unknown_error(exc: BaseException) -> bool:
    """Whether a failed commit is Kafka 4.2's UNKNOWN_SERVER_ERROR answer to EndTxn.

    librdkafka takes an EndTxn error it has no rule for as permanent: commit_transaction()
    raises it with its broker code, UNKNOWN (-1, "Unknown broker error"), as an abortable
    (txn_requires_abort) error. Only asked for errors of commit_transaction().
    """
    return _is_fencing(exc) or any(e.code() == KafkaError.UNKNOWN for e in _kafka_errors(exc))


def _has_code(exc: BaseException, code: int) -> bool:
    """Whether `exc` (or what caused it) carries librdkafka error `code`."""
    return any(e.code() == code for e in _kafka_errors(exc))


def _refused_topic(log_line: str, topics: list[str]) -> str:
    """Which of `topics` librdkafka's authorization failure names (``partition "T" [0]``)."""
    match = re.search(r'partition "([^"]+)"', log_line)
    if match and match.group(1) in topics:
        return match.group(1)
    return " or ".join(dict.fromkeys(topics))


def _is_fencing(exc: BaseException) -> bool:
    """Whether `exc` (or what caused it) says another InitProducerId bumped our epoch.

    librdkafka turns PRODUCER_FENCED and INVALID_PRODUCER_EPOCH into its fatal _FENCED; after
    that every transactional call, produce() and flush() raise it, so the first call after the
    fence tells.
    """
    return any(e.code() in _FENCING_CODES for e in _kafka_errors(exc))
