"""The Kafka store's end-offset poller: the last stable offset of a partition, through librdkafka.

`end_position()`, the snapshot every read starts from and the wait after every commit until
read_committed readers see the batch all ask `EndOffsetPoller.end_offset`. It holds one
confluent-kafka ``Consumer`` per store: ``get_watermark_offsets(..., cached=False)`` with
``isolation.level=read_committed`` answers the last stable offset (an open transaction holds it
back exactly as kafka-python's read_committed ``end_offsets`` does). The consumer is never
subscribed and never assigned: it joins no group and commits nothing (confluent-kafka insists on
a ``group.id``, so it has a fixed one that is never joined, `END_OFFSETS_GROUP`). Each poll waits
outside the interpreter lock; kafka-python's polls and its network thread were about 6 % of the
ledger server's CPU under load.
"""

from __future__ import annotations

import logging
import threading
import time

from confluent_kafka import Consumer, KafkaError, KafkaException
from confluent_kafka import TopicPartition as RdTopicPartition
from kafka import TopicPartition

from ledger.errors import ConfigError
from ledger.store.kafka_config import KafkaStoreConfig
from ledger.store.kafka_errors import describe, has_code, kafka_errors, unavailable
from ledger.store.kafka_topic import KafkaNotAuthorizedError
from ledger.store.librdkafka_log import LibrdkafkaLog

# The store's logger: these lines read as the store's own.
log = logging.getLogger("ledger.store.kafka")

# End-offset query errors that may pass by themselves: metadata that does not list a just-created
# topic yet (measured: librdkafka answered _UNKNOWN_PARTITION at once right after a topic was
# created, and the offsets 100 ms later), a leader moving, a lost connection. The query is asked
# again until operation_timeout_s is spent, as kafka-python's end_offsets kept retrying.
_END_OFFSET_PASSING: frozenset[int] = frozenset(
    {
        KafkaError._UNKNOWN_PARTITION,
        KafkaError._UNKNOWN_TOPIC,
        KafkaError.UNKNOWN_TOPIC_OR_PART,
        KafkaError.LEADER_NOT_AVAILABLE,
        KafkaError.NOT_LEADER_FOR_PARTITION,
        KafkaError._TRANSPORT,
        KafkaError._ALL_BROKERS_DOWN,
    }
)
_END_OFFSET_RETRY_S = 0.1


class EndOffsetPoller:
    """The last stable offsets of one store's partitions; the consumer is made on first use and
    dropped after a failure (the next query makes a new one)."""

    def __init__(self, config: KafkaStoreConfig, rdlog: LibrdkafkaLog) -> None:
        self.config = config
        self.topic = config.topic
        self._rdlog = rdlog
        self.consumer: Consumer | None = None
        self._lock = threading.Lock()

    def _new_consumer(self) -> Consumer:
        """The confluent-kafka consumer for end offsets; ConfigError if librdkafka refuses the
        options (as for the producers: no retry would help). Creating it connects nothing yet."""
        try:
            return Consumer(
                {
                    **self.config.end_consumer_options(),
                    "logger": self._rdlog,
                    "error_cb": self._rdlog.error,
                }
            )
        except (KafkaException, ValueError, TypeError) as exc:
            raise ConfigError(
                f"Kafka topic {self.topic}: the end-offset consumer refused its "
                f"configuration: {describe(exc)}"
            ) from exc

    def end_offset(self, tp: TopicPartition) -> int:
        """Last stable offset: read_committed end offset (one past the last commit marker).

        librdkafka's ListOffsets for the latest offset with isolation.level=read_committed (the
        consumer's setting), asked of the partition leader every time (``cached=False``);
        the wait is outside the interpreter lock. An error that may pass (`_END_OFFSET_PASSING`)
        is retried until `operation_timeout_s` is spent; then, or after any other error, the
        consumer is dropped (the next call makes a new one) and StoreUnavailableError is raised.
        """
        with self._lock:
            if self.consumer is None:
                self.consumer = self._new_consumer()
            consumer = self.consumer
            partition = RdTopicPartition(tp.topic, tp.partition)
            deadline = time.monotonic() + self.config.operation_timeout_s
            while True:
                try:
                    _low, high = consumer.get_watermark_offsets(
                        partition, timeout=_left(deadline, 0.01), cached=False
                    )
                except (KafkaException, RuntimeError) as exc:
                    _serve_end_consumer(consumer, self._rdlog)
                    if has_code(exc, KafkaError.TOPIC_AUTHORIZATION_FAILED):
                        self.consumer = None
                        _close_end_consumer(consumer, self.topic)
                        raise KafkaNotAuthorizedError.missing(
                            "Describe (or Read)",
                            f"topic {tp.topic}",
                            f"asking the end offset of {tp.topic}",
                            describe(exc),
                        ) from exc
                    if _may_pass(exc) and time.monotonic() + _END_OFFSET_RETRY_S < deadline:
                        time.sleep(_END_OFFSET_RETRY_S)
                        continue
                    self.consumer = None
                    _close_end_consumer(consumer, self.topic)
                    raise unavailable(
                        self.topic,
                        self.config.bootstrap_servers,
                        f"asking the end offset of {tp.topic}",
                        exc,
                    ) from exc
                _serve_end_consumer(consumer, self._rdlog)
                return int(high)

    def close(self) -> None:
        """Close the consumer, if there is one (queries after this make a new one)."""
        with self._lock:
            consumer, self.consumer = self.consumer, None
            if consumer is not None:
                _serve_end_consumer(consumer, self._rdlog)
                _close_end_consumer(consumer, self.topic)


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
        log.debug("serving the end-offset consumer's events: %s", describe(exc))
        return
    if event is not None:
        err = event.error()
        if err is not None:
            rdlog.error(err)


def _may_pass(exc: BaseException) -> bool:
    """Whether an end-offset query error may pass if asked again (see _END_OFFSET_PASSING)."""
    return any(e.code() in _END_OFFSET_PASSING or e.retriable() for e in kafka_errors(exc))


def _close_end_consumer(consumer: Consumer, topic: str) -> None:
    """Close the end-offset consumer. It never subscribed, so this leaves no group and
    commits nothing; measured at under a millisecond, with the broker up or gone."""
    try:
        consumer.close()
    except (KafkaException, RuntimeError) as exc:
        log.debug("topic %s: closing the end-offset consumer: %s", topic, describe(exc))
