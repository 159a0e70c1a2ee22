"""The Kafka store's record readers: kafka-python consumers, read_committed, in no group.

Each `read_records` or `follow_records` call makes its own ``KafkaConsumer`` with manual
assignment (``group_id=None``, assign + seek) and closes it when the iteration ends: nothing is
committed and no group exists on the brokers. Positions are partition offsets; they skip the
offsets of transaction markers. kafka-python still checks the CRC32C of every fetched batch, so
the ``crc32c`` dependency (C checksums) matters here (tests/unit/test_kafka_crc.py).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator

from kafka import KafkaConsumer, TopicPartition
from kafka import errors as kerrors

from ledger.errors import StoreUnavailableError
from ledger.store.base import StoredRecord
from ledger.store.kafka_config import KafkaStoreConfig
from ledger.store.kafka_errors import unavailable
from ledger.store.kafka_topic import KafkaNotAuthorizedError


def read_records(
    config: KafkaStoreConfig, tp: TopicPartition, start: int, end: int, limit: int | None
) -> Iterator[StoredRecord]:
    """The committed records of `tp` from `start` up to `end` (the end offset the caller
    snapshotted), at most `limit` of them; StoreUnavailableError when no progress is made for
    `operation_timeout_s`."""
    consumer = _new_consumer(config)
    try:
        consumer.assign([tp])
        consumer.seek(tp, max(start, 0))
        count = 0
        deadline = time.monotonic() + config.operation_timeout_s
        while True:
            try:
                if consumer.position(tp) >= end:
                    return
                batch = consumer.poll(timeout_ms=200)
            except kerrors.TopicAuthorizationFailedError as exc:
                raise KafkaNotAuthorizedError.missing(
                    "Read",
                    f"topic {tp.topic}",
                    f"reading topic {tp.topic}",
                    "TOPIC_AUTHORIZATION_FAILED",
                ) from exc
            except kerrors.KafkaError as exc:
                raise unavailable(
                    config.topic, config.bootstrap_servers, f"reading {tp.topic}", exc
                ) from exc
            got = batch.get(tp, [])
            if got:
                deadline = time.monotonic() + config.operation_timeout_s
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
                    f"{config.operation_timeout_s:.0f}s"
                )
    finally:
        consumer.close()


def follow_records(
    config: KafkaStoreConfig,
    tp: TopicPartition,
    start: int,
    idle_timeout: float,
    *,
    closed: Callable[[], bool],
) -> Iterator[StoredRecord | None]:
    """Every committed record of `tp` from `start` on, as it comes, and None after each
    `idle_timeout` seconds without one; ends when `closed()` says the store was closed."""
    consumer = _new_consumer(config)
    try:
        consumer.assign([tp])
        consumer.seek(tp, max(start, 0))
        idle_since = time.monotonic()
        while True:
            if closed():
                return
            wait_ms = max(1, int((idle_since + idle_timeout - time.monotonic()) * 1000))
            try:
                batch = consumer.poll(timeout_ms=wait_ms)
            except kerrors.TopicAuthorizationFailedError as exc:
                raise KafkaNotAuthorizedError.missing(
                    "Read",
                    f"topic {tp.topic}",
                    f"following topic {tp.topic}",
                    "TOPIC_AUTHORIZATION_FAILED",
                ) from exc
            except kerrors.KafkaError as exc:
                raise unavailable(
                    config.topic, config.bootstrap_servers, f"following {tp.topic}", exc
                ) from exc
            got = batch.get(tp, [])
            for rec in got:
                yield StoredRecord(rec.offset, rec.key or b"", rec.value or b"")
            if got:
                idle_since = time.monotonic()
            elif time.monotonic() - idle_since >= idle_timeout:
                yield None
                idle_since = time.monotonic()
    finally:
        consumer.close()


def _new_consumer(config: KafkaStoreConfig) -> KafkaConsumer:
    """A read_committed kafka-python consumer in no group (the caller assigns and seeks)."""
    try:
        return KafkaConsumer(
            **config.client_options(),
            group_id=None,
            enable_auto_commit=False,
            isolation_level="read_committed",
            auto_offset_reset="earliest",
            allow_auto_create_topics=False,
            max_poll_records=500,
        )
    except kerrors.KafkaError as exc:
        raise unavailable(
            config.topic, config.bootstrap_servers, "connecting a consumer", exc
        ) from exc
