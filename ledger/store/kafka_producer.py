"""The store's confluent-kafka producer: held so it can be destroyed in bounded time, and the
steps of one transaction on it (delivery reports, flush, commit or abort)."""

from __future__ import annotations

import logging

from confluent_kafka import KafkaError, KafkaException, Message, Producer

from ledger.store.kafka_errors import describe

# The store's logger: these lines read as the store's own.
log = logging.getLogger("ledger.store.kafka")


def delivered(
    offsets: list[int], failed: list[KafkaError], index: int, err: KafkaError | None, msg: Message
) -> None:
    """Delivery report of record `index` of a transaction (served inside flush())."""
    if err is not None:
        failed.append(err)
    else:
        offset = msg.offset()
        offsets[index] = offset if offset is not None else -1


def flush_batch(
    producer: OwnedProducer, failed: list[KafkaError], count: int, timeout: float
) -> None:
    """Wait for every record's delivery report; raise unless all `count` were acknowledged."""
    left = producer.client.flush(timeout)
    if left:
        raise TimeoutError(f"{left} of {count} records not acknowledged within {timeout:.1f}s")
    if failed:
        raise KafkaException(failed[0])


def end_transaction(producer: OwnedProducer, *, commit: bool, timeout: float) -> None:
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
            log.debug("topic %s: purging a dropped producer: %s", topic, describe(exc))
        del client  # the last reference: rd_kafka_destroy() now
