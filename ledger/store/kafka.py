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

This module is the store and its protocol (claim, transactions, in-doubt batches); its parts
live beside it: kafka_config.py (`KafkaStoreConfig`, each client's options), kafka_claim.py (the
claim record), kafka_producer.py (the producer holder and a transaction's steps),
kafka_end_offsets.py (the librdkafka end-offset poller), kafka_reader.py (the kafka-python
readers), kafka_connection.py (the connection check), kafka_errors.py (what a client error
means), librdkafka_log.py (librdkafka's log lines), kafka_flags.py (the ``--kafka-*`` security
flags), kafka_topic.py and kafka_acls.py (topics and ACLs).

Its length is one idea read top to bottom: `KafkaLogStore`, the store as the writer and the
readers see it (claim, append in transactions, in-doubt batches, read, follow); the mechanics it
uses sit in the `kafka_*.py` modules beside it.
"""

from __future__ import annotations

import functools
import logging
import threading
import time
import uuid
from collections.abc import Iterator, Sequence
from typing import Any

from confluent_kafka import KafkaError, KafkaException, Message, Producer
from kafka import KafkaAdminClient, TopicPartition
from kafka import errors as kerrors

from ledger.errors import (
    ConfigError,
    FencedError,
    StoreDamagedError,
    StoreError,
    StoreUnavailableError,
)
from ledger.store.base import LogStore, StoredCheckpoint, StoredRecord
from ledger.store.kafka_claim import WriterClaim, claim_record
from ledger.store.kafka_config import KafkaStoreConfig
from ledger.store.kafka_connection import check_connection
from ledger.store.kafka_end_offsets import EndOffsetPoller
from ledger.store.kafka_errors import (
    describe,
    has_code,
    is_end_txn_unknown_error,
    is_fencing,
    refused_topic,
    unavailable,
)
from ledger.store.kafka_producer import OwnedProducer, delivered, end_transaction, flush_batch
from ledger.store.kafka_reader import follow_records, read_records
from ledger.store.kafka_topic import (
    KafkaNotAuthorizedError,
    checkpoints_topic,
    ensure_ledger_topics,
    writers_topic,
)
from ledger.store.librdkafka_log import LibrdkafkaLog

log = logging.getLogger(__name__)


def _checkpoint_key(size: int) -> bytes:
    return str(size).encode()


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
        # The end-offset poller (librdkafka), for end_position, reads and the commit wait.
        self._end_offsets = EndOffsetPoller(config, self._rdlog)
        # kafka-python cannot tell a wrong password, an untrusted CA or a plaintext client on a
        # TLS listener from a broker that is down: each is "socket disconnected" until its 30 s
        # bootstrap deadline. librdkafka names each at once, so ask it first.
        check_connection(config)
        admin = self._admin()
        try:
            ensure_ledger_topics(
                admin, self.topic, config.topic_settings, create=config.create_topics
            )
        finally:
            admin.close()

    def __repr__(self) -> str:
        return (
            f"KafkaLogStore(topic={self.topic!r}, "
            f"transactional_id={self.config.effective_transactional_id!r}, "
            f"claim={self._token[:12]!r})"
        )

    @property
    def claim_token(self) -> str:
        """This store's token in the claim log ``<topic>.writers``."""
        return self._token

    # ------------------------------------------------------------------ clients

    def _unavailable(self, what: str, exc: BaseException) -> StoreUnavailableError:
        return unavailable(self.topic, self.config.bootstrap_servers, what, exc)

    def _new_producer(self, what: str, options: dict[str, Any]) -> OwnedProducer:
        """A confluent-kafka producer with our logging; ConfigError if librdkafka refuses the
        options (an unknown value, an unreadable certificate file: no retry would help)."""
        try:
            return OwnedProducer(
                Producer(
                    {
                        **self.config.producer_options(),
                        **options,
                        "logger": self._rdlog,
                        "error_cb": self._rdlog.error,
                    }
                )
            )
        except (KafkaException, ValueError, TypeError) as exc:
            raise ConfigError(
                f"Kafka topic {self.topic}: the {what} producer refused its "
                f"configuration: {describe(exc)}"
            ) from exc

    def _admin(self) -> Any:
        try:
            return KafkaAdminClient(**self.config.client_options())
        except kerrors.KafkaError as exc:
            raise self._unavailable("connecting an admin client", exc) from exc

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
            log.info(
                "claimed ledger topic %s as transactional id %s (claim %s, offset %d)",
                self.topic,
                self.config.effective_transactional_id,
                self._token[:12],
                last.position if last is not None else -1,
            )

    def _write_claim(self) -> None:
        """Append our claim record to the claim log (acks=all, no transaction)."""
        timeout = self.config.operation_timeout_s
        delivered: list[tuple[KafkaError | None, Message]] = []
        producer = self._new_producer(
            "claim",
            {
                "acks": "all",
                # One record, and a duplicate of it is harmless: no idempotence (no extra
                # InitProducerId, no IdempotentWrite ACL for this producer).
                "enable.idempotence": False,
                "linger.ms": 0,
            },
        )
        try:
            producer.client.produce(
                self.writers_topic,
                key=self._token.encode(),
                value=claim_record(self._token, self.config.effective_transactional_id, self.topic),
                partition=0,
                on_delivery=lambda err, msg: delivered.append((err, msg)),
            )
            if producer.client.flush(timeout) or not delivered:
                raise TimeoutError(f"the claim record was not acknowledged within {timeout:.0f}s")
            err, msg = delivered[0]
            if err is not None:
                raise KafkaException(err)
            offset = msg.offset()
        except Exception as exc:
            if has_code(exc, KafkaError.TOPIC_AUTHORIZATION_FAILED):
                raise KafkaNotAuthorizedError.missing(
                    "Write",
                    f"topic {self.writers_topic}",
                    f"writing this writer's claim to {self.writers_topic}",
                    describe(exc),
                ) from exc
            # Maybe written, maybe not: the next claim_writer() writes it again (a second
            # record with our token changes nothing).
            raise self._unavailable(f"writing our claim to {self.writers_topic}", exc) from exc
        finally:
            producer.discard(self.topic)
        self._claim_written = True
        log.info(
            "topic %s: claim %s written to %s at offset %d",
            self.topic,
            self._token[:12],
            self.writers_topic,
            offset,
        )

    def _init_producer(self) -> OwnedProducer:
        """A new transactional producer, after InitProducerId (which fences every other one)."""
        tid = self.config.effective_transactional_id
        txn_ms = self.config.transaction_timeout_ms
        op_ms = max(1, int(self.config.operation_timeout_s * 1000))
        producer = self._new_producer(
            "transactional",
            {
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
            },
        )
        try:
            producer.client.init_transactions(self.config.operation_timeout_s)
        except Exception as exc:
            producer.discard(self.topic)
            if has_code(exc, KafkaError.TRANSACTIONAL_ID_AUTHORIZATION_FAILED):
                raise KafkaNotAuthorizedError.missing(
                    "Write",
                    f"transactional-id {tid}",
                    f"initialising transactional id {tid}",
                    describe(exc),
                ) from exc
            if has_code(exc, KafkaError.CLUSTER_AUTHORIZATION_FAILED):
                raise KafkaNotAuthorizedError.missing(
                    "IdempotentWrite",
                    "the cluster",
                    f"initialising transactional id {tid}",
                    describe(exc),
                ) from exc
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
            f"expected ours ({self._token[:12]}), checked {when}; this store never claims again"
        )
        log.warning("%s", self._fenced)
        return FencedError(self._fenced)

    def append(
        self, records: Sequence[tuple[bytes, bytes]], checkpoint: tuple[int, str] | None = None
    ) -> list[int]:
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
            offsets = self._transaction(sends, batch=batch)[: len(batch)]
            self._await_visible(self._tp, offsets[-1])
            return offsets

    def _settle_in_doubt(self, batch: list[tuple[bytes, bytes]]) -> list[int] | None:
        """Offsets of `batch` if it is the in-doubt batch and that one did commit."""
        assert self._in_doubt is not None
        records, offsets = self._in_doubt
        found = list(self._read(self._tp, offsets[0], len(offsets)))
        committed = [r.position for r in found] == offsets and [
            (r.key, r.value) for r in found
        ] == records
        self._in_doubt = None
        if committed and batch == records:
            log.info(
                "topic %s: the retried batch had been committed at offsets %d..%d",
                self.topic,
                offsets[0],
                offsets[-1],
            )
            return offsets
        if committed:
            log.warning(
                "topic %s: a batch reported as failed had been committed at offsets "
                "%d..%d; appending a different batch now",
                self.topic,
                offsets[0],
                offsets[-1],
            )
        return None

    def save_checkpoint(self, size: int, note: str) -> None:
        with self._lock:
            self._check_open()
            self._raise_if_fenced()
            offsets = self._transaction(
                [(self.checkpoints_topic, _checkpoint_key(size), note.encode())]
            )
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
                log.warning(
                    "topic %s: offset %d committed; cannot confirm visibility: %s",
                    tp.topic,
                    offset,
                    exc,
                )
                return
            if time.monotonic() > deadline:
                log.warning(
                    "topic %s: offset %d committed but not yet visible to "
                    "read_committed readers after %.0fs",
                    tp.topic,
                    offset,
                    self.config.operation_timeout_s,
                )
                return
            time.sleep(delay)
            delay = min(delay * 1.5, 0.02)

    def _transaction(
        self, sends: list[tuple[str, bytes, bytes]], batch: list[tuple[bytes, bytes]] | None = None
    ) -> list[int]:
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
                producer.client.produce(
                    topic,
                    value=value,
                    key=key,
                    partition=0,
                    on_delivery=functools.partial(delivered, offsets, failed, i),
                )
            step = "flushing the batch"
            flush_batch(producer, failed, len(sends), _left(deadline, 0.1))
            step = "committing the transaction"
            end_transaction(producer, commit=True, timeout=_left(deadline, 1.0))
            return offsets
        except Exception as exc:
            committing = step == "committing the transaction"
            # Our epoch was bumped by another InitProducerId. Kafka 4.2's coordinator may also
            # answer an EndTxn racing one with UNKNOWN_SERVER_ERROR (PREPARE_EPOCH_FENCE,
            # docs/KAFKA.md) instead of PRODUCER_FENCED: same meaning, but the commit is in doubt.
            bumped = is_fencing(exc) or (committing and is_end_txn_unknown_error(exc))
            if committing:
                # EndTxn may have reached the coordinator: the outcome is unknown until the
                # next InitProducerId, so the producer is dropped rather than aborted.
                # (A checkpoint note may follow the batch in `sends`: only the batch counts.)
                mine = offsets[: len(batch)] if batch is not None else []
                if batch is not None and len(mine) == len(batch) and min(mine) >= 0:
                    self._in_doubt = (batch, list(mine))
                self._drop_producer()
            elif bumped:
                self._drop_producer()
            else:
                # A fence first seen by a delivery report (its records purged) shows in the
                # abort: librdkafka then raises the fatal _FENCED.
                abort_error = self._abort_and_drop(deadline)
                bumped = abort_error is not None and is_fencing(abort_error)
            if bumped:
                # Not final by itself: the claim log decides, now. FencedError (for good) if
                # another writer claimed after us; if the last claim is still ours we hold the
                # ledger again and the caller retries (an in-doubt batch is settled then).
                log.warning(
                    "topic %s: %s failed: our producer epoch was bumped (%s)%s; asking "
                    "the claim log",
                    self.topic,
                    step,
                    describe(exc),
                    ", the commit is in doubt" if committing else "",
                )
                try:
                    self.claim_writer()
                except StoreError as decided:
                    raise decided from exc
                raise StoreUnavailableError(
                    f"Kafka topic {self.topic}: {step} failed because our producer epoch was "
                    f"bumped ({describe(exc)}), but the last claim in {self.writers_topic} "
                    f"is still ours: re-claimed, retry"
                ) from exc
            refused = self._rdlog.authorization_failure
            if refused is not None or has_code(exc, KafkaError.TOPIC_AUTHORIZATION_FAILED):
                topic = refused_topic(refused or "", [t for t, _, _ in sends])
                raise KafkaNotAuthorizedError.missing(
                    "Write", f"topic {topic}", f"{step} to {topic}", refused or describe(exc)
                ) from exc
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
            end_transaction(producer, commit=False, timeout=_left(deadline, 1.0))
        except Exception as exc:
            log.warning(
                "topic %s: abort after a failed append failed too (%s); the next "
                "InitProducerId aborts it",
                self.topic,
                describe(exc),
            )
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
        yield from read_records(self.config, tp, start, end, limit)

    def follow(self, start: int = 0, *, idle_timeout: float = 0.5) -> Iterator[StoredRecord | None]:
        self._check_open()
        return follow_records(
            self.config, self._tp, start, idle_timeout, closed=lambda: self._closed
        )

    def end_position(self) -> int:
        self._check_open()
        return self._end_offset(self._tp)

    def _end_offset(self, tp: TopicPartition) -> int:
        """Last stable offset of `tp` (see ledger/store/kafka_end_offsets.py)."""
        return self._end_offsets.end_offset(tp)

    def checkpoints(self) -> list[StoredCheckpoint]:
        self._check_open()
        out: list[StoredCheckpoint] = []
        by_size: dict[int, list[int]] = {}  # size -> indexes in out
        for rec in self._read(self._cp_tp, 0, None):
            try:
                size, note = int(rec.key.decode("ascii")), rec.value.decode()
            except (ValueError, UnicodeDecodeError):
                # Only the ledger writes this topic: a record it cannot read is damage, named
                # in one line (ledger.integrity), not a traceback.
                raise StoreDamagedError(
                    f"the checkpoint record at offset {rec.position} of {self.checkpoints_topic} "
                    "is unreadable (its key is not a tree size or its note is not UTF-8)"
                ) from None
            _add_stored(out, by_size, StoredCheckpoint(size, note))
        return out

    def add_cosignatures(self, size: int, note: str, lines: Sequence[str]) -> None:
        """A record of its own on the checkpoints topic, keyed by the size like the note: the
        note with every cosignature line appended, so the newest record of a size carries them
        all and a reader of the topic (steward-audit --kafka) needs no merging. Readers that
        know nothing of witnesses read it as one more note for that size, which verifies with
        the same key and root."""
        cosigned = note + "".join(line + "\n" for line in dict.fromkeys(lines))
        with self._lock:
            self._check_open()
            self._raise_if_fenced()
            offsets = self._transaction(
                [(self.checkpoints_topic, _checkpoint_key(size), cosigned.encode())]
            )
            self._await_visible(self._cp_tp, offsets[-1])

    # ------------------------------------------------------------------ lifecycle

    def close(self) -> None:
        with self._lock:
            if self._closed:
                return
            self._closed = True
            self._drop_producer()
        self._end_offsets.close()


def _add_stored(
    out: list[StoredCheckpoint], by_size: dict[int, list[int]], record: StoredCheckpoint
) -> None:
    """Add `record` to `out`: as cosignatures of the note of its size it extends (written by
    add_cosignatures), or as a checkpoint of its own."""
    for i in by_size.get(record.size, ()):
        cp = out[i]
        if record.note.startswith(cp.note) and record.note != cp.note:
            extra = record.note[len(cp.note) :].splitlines()
            merged = tuple(dict.fromkeys((*cp.cosignatures, *extra)))
            out[i] = StoredCheckpoint(cp.size, cp.note, merged)
            return
    by_size.setdefault(record.size, []).append(len(out))
    out.append(record)


def _left(deadline: float, floor: float) -> float:
    """Seconds left until `deadline`, but at least `floor`."""
    return max(floor, deadline - time.monotonic())
