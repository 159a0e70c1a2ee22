"""The Kafka log store: one ledger = one single-partition topic, written in transactions.

Writing: one idempotent, transactional producer per store (``transactional.id`` per ledger).
Every `append` is one Kafka transaction, committed before it returns (acks=all), so a batch is
all or nothing for read_committed readers. `claim_writer()` (called by the first append if not
before) runs InitProducerId, which fences any other producer with the same transactional id:
its next append raises FencedError, and this store never re-claims by itself after being
fenced, so two writers never take turns and the chain cannot fork.

Reading: read_committed consumers with manual assignment (no consumer group), seeking to the
requested position. Positions are partition offsets; they skip the offsets of transaction
markers, and `end_position()` is the last stable offset (one past the last commit marker).

Checkpoint notes go to the companion topic ``<topic>.checkpoints`` (see kafka_topic.py), in
transactions of the same producer, so a fenced writer cannot add checkpoints either.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from kafka import KafkaAdminClient, KafkaConsumer, KafkaProducer, TopicPartition
from kafka import errors as kerrors

from ledger.errors import FencedError, StoreError, StoreUnavailable
from ledger.store.base import LogStore, StoredCheckpoint, StoredRecord
from ledger.store.kafka_topic import TopicSettings, checkpoints_topic, ensure_ledger_topics

log = logging.getLogger(__name__)

# Errors meaning "another producer with our transactional id took over".
_FENCING_ERRORS: tuple[type[BaseException], ...] = (
    kerrors.ProducerFencedError,
    kerrors.InvalidProducerEpochError,
    kerrors.TransactionCoordinatorFencedError,
)


@dataclass(frozen=True)
class KafkaStoreConfig:
    """How to reach the cluster and which topic holds the ledger.

    Security options are passed to kafka-python unchanged (see docs/KAFKA.md). Secrets are
    kept out of repr() so they never reach a log line.
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
    # append/read as a whole before StoreUnavailable.
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


def _checkpoint_key(size: int) -> bytes:
    return str(size).encode()


class KafkaLogStore(LogStore):
    """LogStore on a Kafka topic; see the module docstring for the mapping."""

    def __init__(self, config: KafkaStoreConfig) -> None:
        self.config = config
        self.topic = config.topic
        self.checkpoints_topic = checkpoints_topic(config.topic)
        self._tp = TopicPartition(self.topic, 0)
        self._cp_tp = TopicPartition(self.checkpoints_topic, 0)
        self._lock = threading.RLock()  # one writer operation at a time
        self._producer: KafkaProducer | None = None
        self._fenced: str | None = None  # why, once fenced: permanent
        self._closed = False
        # A batch whose commit was sent but not acknowledged: (records, offsets). Its outcome
        # is learned after the next InitProducerId; a retry of the same batch then returns
        # the first attempt's offsets instead of appending it twice.
        self._in_doubt: tuple[list[tuple[bytes, bytes]], list[int]] | None = None
        self._end_consumer: KafkaConsumer | None = None
        self._end_lock = threading.Lock()
        admin = self._admin()
        try:
            ensure_ledger_topics(admin, self.topic, config.topic_settings,
                                 create=config.create_topics)
        finally:
            admin.close()

    def __repr__(self) -> str:
        return (f"KafkaLogStore(topic={self.topic!r}, "
                f"transactional_id={self.config.effective_transactional_id!r})")

    # ------------------------------------------------------------------ clients

    def _unavailable(self, what: str, exc: BaseException) -> StoreUnavailable:
        return StoreUnavailable(
            f"Kafka topic {self.topic} at {self.config.bootstrap_servers}: {what} failed: "
            f"{type(exc).__name__}: {exc}")

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

    def _check_open(self) -> None:
        if self._closed:
            raise StoreError(f"the Kafka store for topic {self.topic} is closed")

    # ------------------------------------------------------------------ writing

    def claim_writer(self) -> None:
        """Become the one writer of this ledger (InitProducerId), fencing any previous one.

        A ledger server calls this at start, before reading the tail, so nobody else can
        append between its reading the tail and its first append.
        """
        with self._lock:
            self._check_open()
            self._raise_if_fenced()
            if self._producer is not None:
                return
            tid = self.config.effective_transactional_id
            producer: KafkaProducer | None = None
            try:
                producer = KafkaProducer(
                    **self.config.client_options(),
                    transactional_id=tid,
                    enable_idempotence=True,
                    acks="all",
                    # Every send is followed by flush() (see _transaction), so linger never
                    # delays a write; it keeps the sender thread from shipping a transaction's
                    # records one small request at a time (-30% CPU per record, same run).
                    # kafka-python wants delivery_timeout_ms >= linger_ms + request_timeout_ms.
                    linger_ms=max(0, min(1000, int(self.config.operation_timeout_s * 1000)
                                         - self.config.request_timeout_ms)),
                    batch_size=1024 * 1024,
                    allow_auto_create_topics=False,
                    max_block_ms=int(self.config.operation_timeout_s * 1000),
                    transaction_timeout_ms=self.config.transaction_timeout_ms,
                    delivery_timeout_ms=int(self.config.operation_timeout_s * 1000),
                    max_request_size=8 * 1024 * 1024,
                )
                producer.init_transactions()
            except Exception as exc:
                if producer is not None:
                    producer.close(timeout=0)
                if _is_fencing(exc, producer):
                    raise self._mark_fenced(exc) from exc
                raise self._unavailable(f"initialising transactional id {tid}", exc) from exc
            self._producer = producer
            log.info("claimed ledger topic %s as transactional id %s", self.topic, tid)

    def append(self, records: Sequence[tuple[bytes, bytes]]) -> list[int]:
        with self._lock:
            self._check_open()
            self._raise_if_fenced()
            if not records:
                return []
            batch = [(bytes(k), bytes(v)) for k, v in records]
            if self._in_doubt is not None:
                self.claim_writer()  # InitProducerId settles the in-doubt transaction
                settled = self._settle_in_doubt(batch)
                if settled is not None:
                    return settled
            metas = self._transaction([(self.topic, key, value) for key, value in batch],
                                      batch=batch)
            offsets = [m.offset for m in metas]
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
            metas = self._transaction(
                [(self.checkpoints_topic, _checkpoint_key(size), note.encode())])
            self._await_visible(self._cp_tp, metas[-1].offset)

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
            except StoreUnavailable as exc:
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
                     batch: list[tuple[bytes, bytes]] | None = None) -> list[Any]:
        self.claim_writer()
        producer = self._producer
        assert producer is not None
        timeout = self.config.operation_timeout_s
        step = "beginning a transaction"
        metas: list[Any] = []
        try:
            producer.begin_transaction()
            step = "sending the batch"
            futures = [producer.send(topic, value=value, key=key, partition=0)
                       for topic, key, value in sends]
            step = "flushing the batch"
            producer.flush(timeout=timeout)
            metas = [f.get(timeout=timeout) for f in futures]
            step = "committing the transaction"
            _end_transaction(producer, commit=True, timeout=timeout)
            return metas
        except Exception as exc:
            if _is_fencing(exc, producer):
                self._drop_producer()
                raise self._mark_fenced(exc) from exc
            if step == "committing the transaction" and _is_fencing(exc, producer, (kerrors.UnknownError,)):
                # Kafka 4.2's coordinator answers EndTxn with UNKNOWN_SERVER_ERROR when a new
                # writer's InitProducerId races this commit (PREPARE_EPOCH_FENCE, docs/KAFKA.md):
                # our epoch is being fenced. Re-claiming would fence the new writer and let
                # two servers take turns, so stop here, failing closed. If the commit did
                # land, the client's retry on the new writer returns the original receipt.
                self._drop_producer()
                raise self._mark_fenced(exc) from exc
            if step == "committing the transaction":
                # EndTxn may have reached the coordinator: the outcome is unknown until the
                # next InitProducerId, so the producer is dropped rather than aborted.
                if batch is not None and len(metas) == len(batch):
                    self._in_doubt = (batch, [m.offset for m in metas])
                self._drop_producer()
            else:
                self._recover_after_error()
            raise self._unavailable(step, exc) from exc

    def _recover_after_error(self) -> None:
        """Abort the failed transaction; if the producer is unusable, drop it.

        A dropped producer is re-created by the next append (InitProducerId with the same
        transactional id, which also aborts whatever this one left open).
        """
        producer = self._producer
        if producer is None:
            return
        try:
            _end_transaction(producer, commit=False, timeout=self.config.operation_timeout_s)
        except Exception as exc:
            log.warning("topic %s: abort after a failed append failed too (%s: %s); "
                        "re-initialising the producer on the next append",
                        self.topic, type(exc).__name__, exc)
            self._drop_producer()

    def _drop_producer(self) -> None:
        producer, self._producer = self._producer, None
        if producer is None:
            return
        try:
            producer.close(timeout=0)
        except Exception:
            # kafka-python's close() flushes first and raises KafkaTimeoutError when records
            # are pending (broker down) before it force-closes the sender thread, which then
            # keeps retrying (docs/KAFKA.md). Force-close it ourselves, then close again.
            sender = getattr(producer, "_sender", None)
            if sender is not None and hasattr(sender, "force_close"):
                sender.force_close()
            try:
                producer.close(timeout=0)
            except Exception as exc:
                log.debug("topic %s: closing a broken producer: %s", self.topic, exc)

    def _mark_fenced(self, exc: BaseException) -> FencedError:
        self._fenced = (
            f"this writer was fenced: another writer with transactional id "
            f"{self.config.effective_transactional_id} took over ledger topic {self.topic} "
            f"({type(exc).__name__})")
        log.warning("%s", self._fenced)
        return FencedError(self._fenced)

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
                    raise StoreUnavailable(
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
        """Last stable offset: read_committed end offset (one past the last commit marker)."""
        with self._end_lock:
            if self._end_consumer is None:
                self._end_consumer = self._new_consumer()
            try:
                offsets = self._end_consumer.end_offsets(
                    [tp], timeout_ms=int(self.config.operation_timeout_s * 1000))
            except kerrors.KafkaError as exc:
                self._end_consumer.close()
                self._end_consumer = None
                raise self._unavailable(f"asking the end offset of {tp.topic}", exc) from exc
            return int(offsets[tp])

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
            if self._end_consumer is not None:
                self._end_consumer.close()
                self._end_consumer = None


def _end_transaction(producer: KafkaProducer, *, commit: bool, timeout: float) -> None:
    """commit_transaction()/abort_transaction() with a time limit.

    kafka-python 3.0.12's commit_transaction() and abort_transaction() wait on the EndTxn
    result with no timeout: with the broker gone they block forever (docs/KAFKA.md has the
    reproduction). The result object they wait on does take a timeout, so wait on it here.
    """
    manager = getattr(producer, "_transaction_manager", None)
    sender = getattr(producer, "_sender", None)
    if manager is None or sender is None or not hasattr(manager, "begin_commit"):
        # Internals changed: fall back to the public (unbounded) calls.
        (producer.commit_transaction if commit else producer.abort_transaction)()
        return
    result = manager.begin_commit() if commit else manager.begin_abort()
    sender.wakeup()
    if not result.wait(timeout_ms=int(timeout * 1000)):
        what = "commit" if commit else "abort"
        raise kerrors.KafkaTimeoutError(
            f"the transaction {what} was not acknowledged within {timeout:.0f}s")


def _is_fencing(exc: BaseException, producer: KafkaProducer | None,
                errors: tuple[type[BaseException], ...] | None = None) -> bool:
    """Whether `exc` (or the producer's recorded fatal error) means we were fenced.

    kafka-python reports a fencing seen by its background sender as a generic KafkaError
    ("Cannot execute transactional method because we are in an error state: ...") on the
    next call; the original ProducerFencedError is only in the transaction manager.
    `errors` replaces the fencing error classes looked for.
    """
    wanted = errors if errors is not None else _FENCING_ERRORS
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, wanted):
            return True
        for arg in getattr(current, "args", ()):
            if isinstance(arg, wanted):
                return True
        current = current.__cause__ or current.__context__
    manager = getattr(producer, "_transaction_manager", None) if producer else None
    last = getattr(manager, "last_error", None) if manager is not None else None
    return isinstance(last, wanted)
