"""The Kafka log store: one ledger = one single-partition topic, written in transactions.

Writing: one idempotent, transactional producer per store (``transactional.id`` per ledger).
Every `append` is one Kafka transaction, committed before it returns (acks=all), so a batch is
all or nothing for read_committed readers.

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

A fencing error during a transaction (ProducerFenced, an invalid epoch, or Kafka 4.2's
UNKNOWN_SERVER_ERROR answer to an EndTxn racing an InitProducerId) is therefore not final by
itself: the producer is dropped and the store re-claims at once through step 2, raising
FencedError if another writer holds the last claim, StoreUnavailable (retry) if we still do.

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

Reading: read_committed consumers with manual assignment (no consumer group), seeking to the
requested position. Positions are partition offsets; they skip the offsets of transaction
markers, and `end_position()` is the last stable offset (one past the last commit marker).

Checkpoint notes go to the companion topic ``<topic>.checkpoints`` (see kafka_topic.py), in
transactions of the same producer, so a fenced writer cannot add checkpoints either.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from kafka import KafkaAdminClient, KafkaConsumer, KafkaProducer, TopicPartition
from kafka import errors as kerrors

from ledger.errors import FencedError, StoreError, StoreUnavailable
from ledger.store.base import LogStore, StoredCheckpoint, StoredRecord
from ledger.store.kafka_topic import (
    TopicSettings,
    checkpoints_topic,
    ensure_ledger_topics,
    writers_topic,
)

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
        self._producer: KafkaProducer | None = None
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
                f"transactional_id={self.config.effective_transactional_id!r}, "
                f"claim={self._token[:12]!r})")

    @property
    def claim_token(self) -> str:
        """This store's token in the claim log ``<topic>.writers``."""
        return self._token

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
        """Become (or stay) the one writer of this ledger, or raise FencedError for good.

        The claim protocol of the module docstring: first claim = write our claim record, then
        InitProducerId (fencing any other producer of the transactional id); re-claim = only if
        the last claim is still ours. Either way the claim holds only if the last claim read
        after InitProducerId is ours. A ledger server calls this before it reads the tail, so
        nobody else can append between its reading the tail and its first append.
        StoreUnavailable when Kafka cannot be reached (nothing is decided; call again).
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
                _close_producer(producer, self.topic)
                raise
            if not self._is_ours(last):
                # A newer claim landed before our InitProducerId, which has just fenced its
                # writer: that one sees its own claim last and re-claims; we stop.
                _close_producer(producer, self.topic)
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
        timeout_ms = int(self.config.operation_timeout_s * 1000)
        producer: KafkaProducer | None = None
        try:
            producer = KafkaProducer(
                **self.config.client_options(),
                acks="all",
                # One record, and a duplicate of it is harmless: no idempotence (no extra
                # InitProducerId, no IdempotentWrite ACL for this producer).
                enable_idempotence=False,
                allow_auto_create_topics=False,
                max_block_ms=timeout_ms,
                delivery_timeout_ms=timeout_ms,
            )
            meta = producer.send(
                self.writers_topic, key=self._token.encode(),
                value=json.dumps(record, sort_keys=True).encode(), partition=0,
            ).get(timeout=self.config.operation_timeout_s)
        except Exception as exc:
            # Maybe written, maybe not: the next claim_writer() writes it again (a second
            # record with our token changes nothing).
            raise self._unavailable(f"writing our claim to {self.writers_topic}", exc) from exc
        finally:
            if producer is not None:
                _close_producer(producer, self.topic)
        self._claim_written = True
        log.info("topic %s: claim %s written to %s at offset %d", self.topic,
                 self._token[:12], self.writers_topic, meta.offset)

    def _init_producer(self) -> KafkaProducer:
        """A new transactional producer, after InitProducerId (which fences every other one)."""
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
                _close_producer(producer, self.topic)
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
            committing = step == "committing the transaction"
            # Our epoch was bumped by another InitProducerId. Kafka 4.2's coordinator may also
            # answer an EndTxn racing one with UNKNOWN_SERVER_ERROR (PREPARE_EPOCH_FENCE,
            # docs/KAFKA.md) instead of PRODUCER_FENCED: same meaning, but the commit is in doubt.
            bumped = _is_fencing(exc, producer) or (
                committing and _is_end_txn_unknown_error(exc, producer))
            if committing:
                # EndTxn may have reached the coordinator: the outcome is unknown until the
                # next InitProducerId, so the producer is dropped rather than aborted.
                if batch is not None and len(metas) == len(batch):
                    self._in_doubt = (batch, [m.offset for m in metas])
                self._drop_producer()
            elif bumped:
                self._drop_producer()
            else:
                self._recover_after_error()
            if bumped:
                # Not final by itself: the claim log decides, now. FencedError (for good) if
                # another writer claimed after us; if the last claim is still ours we hold the
                # ledger again and the caller retries (an in-doubt batch is settled then).
                try:
                    self.claim_writer()
                except StoreError as decided:
                    raise decided from exc
                raise StoreUnavailable(
                    f"Kafka topic {self.topic}: {step} failed because our producer epoch was "
                    f"bumped ({type(exc).__name__}), but the last claim in {self.writers_topic} "
                    f"is still ours: re-claimed, retry") from exc
            raise self._unavailable(step, exc) from exc

    def _recover_after_error(self) -> None:
        """Abort the failed transaction; if the producer is unusable, drop it.

        A dropped producer is re-created by the next append through claim_writer()'s
        re-claim (InitProducerId with the same transactional id, which also aborts whatever
        this one left open), and only if the last claim is still ours.
        """
        producer = self._producer
        if producer is None:
            return
        try:
            _end_transaction(producer, commit=False, timeout=self.config.operation_timeout_s)
        except Exception as exc:
            log.warning("topic %s: abort after a failed append failed too (%s: %s); "
                        "re-claiming on the next append",
                        self.topic, type(exc).__name__, exc)
            self._drop_producer()

    def _drop_producer(self) -> None:
        """Forget the producer (transient loss); the next operation re-claims (claim_writer)."""
        producer, self._producer = self._producer, None
        if producer is not None:
            _close_producer(producer, self.topic)

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


def _close_producer(producer: KafkaProducer, topic: str) -> None:
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
            log.debug("topic %s: closing a broken producer: %s", topic, exc)


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


def _is_end_txn_unknown_error(exc: BaseException, producer: KafkaProducer | None) -> bool:
    """Whether a failed commit is Kafka 4.2's UNKNOWN_SERVER_ERROR answer to EndTxn.

    kafka-python 3.0.12 does not raise UnknownError for it: it records (and re-raises) a plain
    KafkaError("Unhandled error in EndTxnResponse: [Error -1] UnknownError"), so the class
    alone never matches; the message is the only trace.
    """
    if _is_fencing(exc, producer, (kerrors.UnknownError,)):
        return True
    manager = getattr(producer, "_transaction_manager", None) if producer else None
    candidates: list[BaseException] = [exc]
    last = getattr(manager, "last_error", None) if manager is not None else None
    if isinstance(last, BaseException):
        candidates.append(last)
    return any("EndTxnResponse" in str(c) and "UnknownError" in str(c) for c in candidates)


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
