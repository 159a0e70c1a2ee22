"""The ledger server: the single writer of one ledger, and its gRPC LedgerService.

:class:`LedgerServer` owns a :class:`~ledger.store.base.LogStore`, the in-memory
:class:`~ledger.core.LedgerCore` (rules state + Merkle tree) and the checkpoint signer. On start
it reads every stored record and re-checks it (storage is untrusted): records that do not decode
or break a rule are skipped, counted and logged, and the chain continues from the last valid
entry. Appends go through one lock: decode, idempotency, rules (``core.prepare``), then one
``store.append`` per batch. The core is folded before the store write; if the write fails the
core is rebuilt from the store, so it is never ahead of what is durable. A store with a writer
claim (Kafka's ``claim_writer()``) is claimed before every replay, at start and after a failure,
so nobody else can append between the replay and our next append; a FencedError (from an
append, a claim or a checkpoint) fences the server for good and turns its health NOT_SERVING.

Checkpoints come from the one append-only tree, so their sizes only grow and any two are
consistent. They are published every N entries, every T ms (a background thread) and on demand,
and saved with ``store.save_checkpoint`` before anyone sees them.

Run it with ``python -m ledger.server --db PATH --checkpoint-key FILE`` (see ``--help``) or
``serve(LedgerServerConfig(...))``.
"""

from __future__ import annotations

import argparse
import logging
import os
import queue
import signal
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from concurrent import futures
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import grpc
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from ledger import checkpoint as notes
from ledger.core import LedgerCore, Receipt, event_digest
from ledger.errors import (
    ConfigError,
    FencedError,
    FormatError,
    StewardError,
    StoreUnavailable,
    VerificationError,
)
from ledger.formats import (
    EventBody,
    LedgerGenesis,
    LogEntry,
    SignedEvent,
    decode_body,
    decode_log_entry,
    decode_signed_event,
)
from ledger.grpc_errors import ServiceError, guarded, status_for
from ledger.heap import settle_heap, tune_collector
from ledger.keys import PrivateKey
from ledger.merkle import leaf_hash
from ledger.rules import VerifiedSignature, check
from ledger.sigcheck import PendingChecks, SignatureChecker
from ledger.state import LedgerState
from ledger.store.base import LogStore
from ledger.store.sqlite import SQLiteLogStore
from steward.v1 import ledger_pb2, ledger_pb2_grpc

log = logging.getLogger("ledger.server")

SERVICE_NAME = ledger_pb2.DESCRIPTOR.services_by_name["LedgerService"].full_name
MAX_BATCH_EVENTS = 1024
DEFAULT_MAX_MESSAGE_BYTES = 4 * 1024 * 1024
CHECKPOINT_KEY_MISMATCH = "CHECKPOINT_KEY_MISMATCH"


@runtime_checkable
class ClaimingStore(Protocol):
    """A store with a writer claim (Kafka): `claim_writer()` makes this process the one writer
    or raises FencedError. SQLite has none: one file, one server."""

    def claim_writer(self) -> None: ...


def now_ms() -> int:
    return time.time_ns() // 1_000_000


# A store append taking at least this long is logged (store_append_slow).
SLOW_STORE_APPEND_S = 2.0


@dataclass(frozen=True)
class LedgerServerConfig:
    """How to run one ledger server. Secrets are never stored here, only where to find them."""

    store: str | Path | LogStore = field(compare=False)  # a SQLite path or a LogStore object
    checkpoint_key: str | Path | PrivateKey = field(repr=False, compare=False)
    # Name of the environment variable holding the key's passphrase (never the passphrase).
    checkpoint_key_passphrase_env: str | None = None
    listen: str = "127.0.0.1:0"
    checkpoint_every_entries: int = 256
    checkpoint_every_ms: int = 1000
    tls_cert: str | Path | None = None  # server certificate chain (PEM)
    tls_key: str | Path | None = None  # its private key (PEM)
    client_ca: str | Path | None = None  # CA that signs client certificates (mutual TLS)
    require_client_cert: bool = False
    max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES
    max_workers: int = 32  # each following Read stream holds one worker
    max_batch_events: int = MAX_BATCH_EVENTS
    # Signature-checking worker processes for streamed batches (ledger.sigcheck): 0 checks in
    # the serving process, None one when the machine has more than one core.
    verify_processes: int | None = None


@dataclass(frozen=True)
class PublishedCheckpoint:
    size: int
    note: str
    root: bytes
    origin: str


@dataclass(frozen=True)
class ReplayReport:
    entries: int
    skipped: int


@dataclass(frozen=True)
class StagedEvent:
    """One submitted event, decoded outside the append lock (or why it does not decode)."""

    size: int  # bytes as submitted
    event: SignedEvent | None = None
    body: EventBody | None = None
    digest: bytes = b""  # event_digest(event), for idempotency
    error: StewardError | None = None


@dataclass(frozen=True)
class StagedBatch:
    """Events decoded and their signatures checked with Ed25519 before the append lock.

    `verified` only says which signatures are cryptographically valid; whether their keys may
    sign (known, not revoked, not expired, by an earlier event of the same batch too) is decided
    under the lock by ``rules.check``, on the state the entry really follows.
    """

    events: tuple[StagedEvent, ...]
    verified: frozenset[VerifiedSignature]

    @property
    def size(self) -> int:
        return sum(e.size for e in self.events)


@dataclass(frozen=True)
class DecodedBatch:
    """A batch decoded, its signatures not checked yet (LedgerServer.decode)."""

    events: tuple[StagedEvent, ...]
    pending: PendingChecks


class _Request:
    """One caller's batch on its way through the group commit: queued, folded, stored."""

    __slots__ = ("after", "done", "error", "on_done", "results", "staged", "taken")

    def __init__(self, staged: StagedBatch, after: _Request | None = None,
                 on_done: Callable[[], None] | None = None) -> None:
        self.staged = staged
        self.after = after  # the previous batch of the same caller: this one must follow it
        self.results: list[Receipt | StewardError] = []
        self.error: BaseException | None = None
        self.on_done = on_done  # called (by whichever thread finishes it) once done is set
        self.taken = False  # folded into the core by a group's leader
        self.done = False  # answered: stored (results) or failed (error)

    @property
    def outcome(self) -> list[Receipt | StewardError] | BaseException:
        return self.error if self.error is not None else self.results


@dataclass(eq=False)
class _Folded:
    """A group folded into the core, waiting for the store writer (see LedgerServer)."""

    requests: list[_Request]
    results: list[list[Receipt | StewardError]]
    entries: list[LogEntry]
    epoch: int  # LedgerServer._failures when it was folded

    @property
    def size(self) -> int:
        """Bytes of the entries."""
        return sum(len(e.entry_bytes) for e in self.entries)

    @property
    def weight(self) -> int:
        """What it counts for against MAX_BATCH_EVENTS while it waits (an empty group too)."""
        return max(1, len(self.entries))


def _notify(requests: Sequence[_Request]) -> None:
    """Call the on_done callbacks of finished requests (outside every server lock)."""
    for request in requests:
        if request.on_done is not None:
            request.on_done()


def _load_checkpoint_key(config: LedgerServerConfig) -> PrivateKey:
    if isinstance(config.checkpoint_key, PrivateKey):
        return config.checkpoint_key
    passphrase = None
    if config.checkpoint_key_passphrase_env:
        value = os.environ.get(config.checkpoint_key_passphrase_env)
        if value is None:
            raise ConfigError(
                f"environment variable {config.checkpoint_key_passphrase_env} "
                "(the checkpoint key passphrase) is not set"
            )
        passphrase = value.encode()
    return PrivateKey.load(Path(config.checkpoint_key), passphrase)


class LedgerServer:
    """The single writer: verifies, sequences and stores events; signs checkpoints."""

    def __init__(
        self,
        store: LogStore,
        checkpoint_key: PrivateKey,
        *,
        checkpoint_every_entries: int = 256,
        checkpoint_every_ms: int = 1000,
        clock: Callable[[], int] = now_ms,
        on_fenced: Callable[[], None] | None = None,
        checker: SignatureChecker | None = None,
    ) -> None:
        self.store = store
        # Checks the signatures of staged batches; the default checks in the caller's thread.
        self.checker = checker if checker is not None else SignatureChecker(0)
        self._key = checkpoint_key
        self._every_entries = max(1, checkpoint_every_entries)
        self._every_ms = checkpoint_every_ms
        self._clock = clock
        self._on_fenced = on_fenced
        # One lock for everything that changes the core or signs: folds, rebuilds, checkpoints.
        # The store write of a folded group is made without it (see _write_loop).
        self._lock = threading.RLock()
        self._appended = threading.Condition(self._lock)
        # Group commit, in two stages that overlap:
        # 1. fold: callers queue their staged batches; one of them at a time (the one that set
        #    _committing) takes every queued batch (up to the limits), checks and folds it into
        #    the core under the lock, and hands the group to the store writer;
        # 2. store: one writer thread stores the folded groups in order, several per store
        #    transaction, and answers their callers once they are durable.
        # So the next group is checked while the previous one's store round trip is under way
        # (a Kafka transaction is mostly waiting on the broker). The core runs ahead of the
        # store by at most one stored and MAX_BATCH_EVENTS queued events; readers only ever see
        # the durable part (_positions). A failed store write fails every group folded on top
        # of it (_failures counts failures, a group remembers the count it was folded under),
        # and the core is rebuilt from the store before anything else is folded.
        self._pending: deque[_Request] = deque()
        self._pending_lock = threading.Lock()
        self._group_done = threading.Condition(self._pending_lock)
        self._committing = False
        self._folded: deque[_Folded] = deque()
        self._writing: list[_Folded] = []
        self._store_turn = threading.Condition(self._lock)
        self._failures = 0
        self._last_failure: BaseException | None = None
        self._writer: threading.Thread | None = None
        self._riding = 0  # size of the checkpoint riding in the writer's transaction, if any
        self._closing = False  # close(): the writer stores what is folded, then ends
        self._core = LedgerCore()
        self._positions: list[int] = []  # store position of each seq (positions are not seqs)
        self._last_received_at = 0
        self._checkpoints: list[PublishedCheckpoint] = []
        self._by_size: dict[int, PublishedCheckpoint] = {}
        self._signer: notes.Signer | None = None  # known once the genesis names the key
        self._origin = ""
        self._needs_rebuild = False
        self._fenced = False
        self._stopping = threading.Event()
        self._publisher: threading.Thread | None = None
        self.ready = threading.Event()
        self.replay_report = ReplayReport(0, 0)

    # -- start and replay --------------------------------------------------------------------

    def start(self) -> ReplayReport:
        with self._lock:
            self.replay_report = self._claim_and_rebuild()
            self._load_checkpoints()
        self._writer = threading.Thread(target=self._write_loop, name="ledger-store-writer",
                                        daemon=True)
        self._writer.start()
        self.ready.set()
        if self._every_ms > 0:
            self._publisher = threading.Thread(
                target=self._publish_loop, name="checkpoint-publisher", daemon=True
            )
            self._publisher.start()
        return self.replay_report

    def _claim_and_rebuild(self) -> ReplayReport:
        """Claim the store as its writer, then fold it: claimed first, so that nobody else can
        append between our reading the tail and our next append. A FencedError fences us."""
        if isinstance(self.store, ClaimingStore):
            try:
                self.store.claim_writer()
            except FencedError as exc:
                self._become_fenced("claim", exc)
                raise
        return self._rebuild()

    def _become_fenced(self, where: str, exc: FencedError) -> None:
        """Another writer took over: for good (appends refused, health NOT_SERVING)."""
        self._needs_rebuild = True
        if self._fenced:
            return
        self._fenced = True
        log.error("fenced at=%s: another writer took over; appends stop (%s)", where, exc)
        if self._on_fenced is not None:
            self._on_fenced()

    def _rebuild(self) -> ReplayReport:
        """Fold the store again from scratch, re-checking every record."""
        started = time.monotonic()
        core = LedgerCore()
        positions: list[int] = []
        last_received_at = 0
        skipped = 0
        for record in self.store.read(0):
            try:
                e = decode_log_entry(record.value)
            except FormatError as exc:
                skipped += 1
                log.warning("replay_skip position=%d reason=malformed detail=%r", record.position, str(exc)[:200])
                continue
            violation = check(core.state, e)
            if violation is None and e.seq == 0:
                assert isinstance(e.body.payload, LedgerGenesis)
                self._require_our_key(e.body.payload, stored=True)
            if violation is not None:
                skipped += 1
                log.warning("replay_skip position=%d seq=%d reason=%s field=%s", record.position,
                            e.seq, violation.code, violation.field)
                continue
            core.commit(e)
            positions.append(record.position)
            last_received_at = max(last_received_at, e.entry.received_at)
        self._core = core
        self._positions = positions
        self._last_received_at = last_received_at
        self._needs_rebuild = False
        if core.size and self._signer is None:
            self._set_genesis(core.state)
        log.info("replay_done entries=%d skipped=%d ms=%d", core.size, skipped,
                 int((time.monotonic() - started) * 1000))
        return ReplayReport(core.size, skipped)

    def _set_genesis(self, state: LedgerState) -> None:
        self._origin = state.origin
        private = Ed25519PrivateKey.from_private_bytes(self._key.raw_private())
        self._signer = notes.Signer(state.checkpoint_key_name, private)

    def _require_our_key(self, genesis: LedgerGenesis, *, stored: bool) -> None:
        ours = self._key.public.raw
        if genesis.checkpoint_public_key == ours:
            return
        message = (
            f"the genesis names checkpoint key {genesis.checkpoint_public_key.hex()}, but this "
            f"server signs checkpoints with {ours.hex()}"
        )
        if stored:
            raise ConfigError(f"refusing to start: {message}; start it with the ledger's own key")
        raise ServiceError(grpc.StatusCode.FAILED_PRECONDITION,
                           message + "; the genesis must name the server's checkpoint key",
                           violation_code=CHECKPOINT_KEY_MISMATCH,
                           field="payload.checkpoint_public_key")

    def _load_checkpoints(self) -> None:
        """Keep the stored checkpoints that match the log; refuse one signed over another log."""
        if self._signer is None:
            return
        size = self._core.size
        for stored in self.store.checkpoints():
            try:
                cp = notes.verify_checkpoint(stored.note, self._signer.verifier, self._origin)
            except VerificationError as exc:
                log.warning("checkpoint_skip size=%d reason=%r", stored.size, str(exc)[:200])
                continue
            if cp.size > size or cp.root != self._core.tree.root(cp.size):
                # Signing again at this size would publish two inconsistent checkpoints.
                raise ConfigError(
                    f"refusing to start: stored checkpoint for size {cp.size} does not match the "
                    f"log of {size} valid entries (entries lost or rewritten in the store)"
                )
            if self._checkpoints and cp.size <= self._checkpoints[-1].size:
                continue
            self._remember(PublishedCheckpoint(cp.size, stored.note, cp.root, cp.origin))

    def _remember(self, cp: PublishedCheckpoint) -> None:
        self._checkpoints.append(cp)
        self._by_size[cp.size] = cp

    # -- appends -----------------------------------------------------------------------------

    def append(self, signed_event: bytes) -> Receipt:
        (result,) = self.append_batch([signed_event])
        if isinstance(result, BaseException):
            raise result
        return result

    def stage(self, signed_events: Sequence[bytes]) -> StagedBatch:
        """Decode `signed_events` and check their signatures, without the append lock.

        Pure work on the submitted bytes: it reads the keys known now only to know which public
        key to try, and changes nothing. Run it in the caller's thread, so concurrent callers
        verify in parallel with each other's store writes.
        """
        return self.check_signatures(self.decode(signed_events))

    def decode(self, signed_events: Sequence[bytes]) -> DecodedBatch:
        """The first half of stage(): decode, and collect the signatures to check."""
        # Keys read without the lock: only a hint, see StagedBatch. A key granted later (e.g.
        # earlier in this batch) is checked under the lock.
        pending = PendingChecks(self._core.state.keys)
        staged: list[StagedEvent] = []
        for raw in signed_events:
            try:
                event = decode_signed_event(raw)
                body = decode_body(event.body)
            except StewardError as exc:
                staged.append(StagedEvent(len(raw), error=exc))
                continue
            staged.append(StagedEvent(len(raw), event, body, event_digest(event)))
            pending.add(event.body, event.signatures)
        return DecodedBatch(tuple(staged), pending)

    def check_signatures(self, decoded: DecodedBatch) -> StagedBatch:
        """The second half of stage(): all of the batch's signatures at once (in a worker
        process for a large batch, the interpreter lock released while it waits)."""
        return StagedBatch(decoded.events, self.checker.verified(decoded.pending))

    def append_batch(self, signed_events: Sequence[bytes], *,
                     staged: StagedBatch | None = None) -> list[Receipt | StewardError]:
        """Check each event in order; store the accepted ones in one transaction.

        Returns one result per event: its receipt, or the error that refused it. Raises (and
        appends nothing) only when the batch cannot be stored at all. `staged` is
        ``self.stage(signed_events)`` when the caller has it already.

        Concurrent calls are group-committed: batches that queue while a store write is under
        way go to the store together in the next transaction, each checked in arrival order.
        """
        self._wait_ready()
        if staged is None:
            staged = self.stage(signed_events)
        (outcome,) = self.append_batches([staged])
        if isinstance(outcome, BaseException):
            raise outcome
        return outcome

    def append_batches(self, batches: Sequence[StagedBatch]
                       ) -> list[list[Receipt | StewardError] | BaseException]:
        """Several staged batches of one caller, in order, in as few transactions as the limits
        allow. Per batch: its results, or the exception that kept it out of the store; a batch
        after a failed one is not attempted (it gets the same exception)."""
        requests = self.submit(batches)
        with self._group_done:
            while not all(r.done for r in requests):
                self._group_done.wait()
        return [r.outcome for r in requests]

    def submit(self, batches: Sequence[StagedBatch], on_done: Callable[[], None] | None = None,
               after: _Request | None = None) -> list[_Request]:
        """Queue staged batches of one caller and return once they are folded (checked, in the
        core), not stored: each request is ``done`` once stored or failed, and `on_done` is called
        then. `after` is the caller's previous request, if it may still be on its way: these
        are then never stored ahead of it. Lets a stream check its next batches while the
        previous ones are being stored."""
        self._wait_ready()
        requests: list[_Request] = []
        for staged in batches:
            requests.append(_Request(staged, requests[-1] if requests else after, on_done))
        with self._pending_lock:
            self._pending.extend(requests)
        for request in requests:
            while True:
                with self._group_done:
                    while self._committing and not (request.taken or request.done):
                        self._group_done.wait()
                    if request.taken or request.done:
                        break
                    self._committing = True
                try:
                    self._fold_group(self._take_group())
                finally:
                    with self._group_done:
                        self._committing = False
                        self._group_done.notify_all()
        return requests

    def _take_group(self) -> list[_Request]:
        """The queued requests of the next transaction: at least one, FIFO, within the limits
        one request may reach on its own (MAX_BATCH_EVENTS events, the gRPC message size)."""
        group: list[_Request] = []
        failed: list[_Request] = []
        events = size = 0
        with self._pending_lock:
            while self._pending:
                first = self._pending[0]
                if first.after is not None and first.after.error is not None:
                    # Its caller's previous batch failed: never store this one ahead of it.
                    self._pending.popleft()
                    first.error = first.after.error
                    first.done = True
                    failed.append(first)
                    continue
                head = first.staged
                if group and (events + len(head.events) > MAX_BATCH_EVENTS
                              or size + head.size > DEFAULT_MAX_MESSAGE_BYTES):
                    break
                request = self._pending.popleft()
                request.taken = True
                group.append(request)
                events += len(head.events)
                size += head.size
        _notify(failed)
        return group

    def _fold_group(self, group: list[_Request]) -> None:
        """Check and fold `group` into the core, then hand it to the store writer."""
        if not group:
            return
        try:
            with self._lock:
                # At most MAX_BATCH_EVENTS folded events wait for the writer: the core stays
                # close to the store, and batches queueing meanwhile make the next group larger.
                while sum(f.weight for f in self._folded) >= MAX_BATCH_EVENTS:
                    self._store_turn.wait()
                if self._fenced:
                    raise FencedError("this server was fenced earlier")
                if self._closing:
                    raise StoreUnavailable("the ledger server is shutting down; retry")
                if self._needs_rebuild:
                    # Only from the store's truth: wait until nothing folded is left to store.
                    while self._folded or self._writing:
                        self._store_turn.wait()
                    if self._needs_rebuild:
                        self._claim_and_rebuild()
                results, entries = self._fold_locked(group)
                self._folded.append(_Folded(group, results, entries, self._failures))
                self._store_turn.notify_all()
        except BaseException as exc:
            # Nothing of the group is acknowledged; a half-applied fold set _needs_rebuild.
            for request in group:
                request.error = exc
                request.done = True
            _notify(group)
            if not isinstance(exc, Exception):
                raise

    def _fold_locked(self, group: list[_Request]
                     ) -> tuple[list[list[Receipt | StewardError]], list[LogEntry]]:
        core = self._core
        out: list[list[Receipt | StewardError]] = []
        staged_entries: list[LogEntry] = []
        for request in group:
            results: list[Receipt | StewardError] = []
            verified = request.staged.verified
            for item in request.staged.events:
                try:
                    if item.error is not None:
                        raise item.error
                    assert item.event is not None and item.body is not None
                    existing = core.existing_receipt(item.event, body=item.body, digest=item.digest)
                    if existing is not None:
                        # Maybe of an entry still on its way to the store: answered with this
                        # group, which the writer answers after the earlier ones.
                        results.append(existing)
                        continue
                    e = core.prepare(item.event, self._received_at(), body=item.body,
                                     verified=verified)
                    if e.seq == 0:
                        assert isinstance(e.body.payload, LedgerGenesis)
                        self._require_our_key(e.body.payload, stored=False)
                except StewardError as exc:
                    results.append(exc)
                    continue
                try:
                    results.append(core.commit(e, digest=item.digest))
                except BaseException:
                    self._needs_rebuild = True  # a half-applied fold must not survive
                    raise
                staged_entries.append(e)
                self._last_received_at = e.entry.received_at
            out.append(results)
        return out, staged_entries

    def _received_at(self) -> int:
        # Never goes back, so hold times and key expiry see a monotonic ledger clock.
        return max(self._clock(), self._last_received_at)

    # -- the store writer --------------------------------------------------------------------

    def _write_loop(self) -> None:
        """Store folded groups in order, as many per transaction as the limits allow, and
        answer their callers. Runs until close(), storing what was folded before it."""
        while True:
            with self._lock:
                while not self._folded:
                    if self._closing:
                        return
                    self._store_turn.wait()
                take = self._take_folded()
            error = self._write(take)
            finished: list[_Request] = []
            for folded in take:
                for request, results in zip(folded.requests, folded.results, strict=True):
                    if error is None:
                        request.results = results
                    else:
                        request.error = error
                    request.done = True
                    finished.append(request)
            with self._group_done:
                self._group_done.notify_all()
            _notify(finished)

    def _write(self, take: list[_Folded]) -> BaseException | None:
        """Store the groups in `take`; None, or the error that kept them out of the store."""
        entries = [e for g in take for e in g.entries]
        error: BaseException | None = None
        positions: list[int] = []
        checkpoint: PublishedCheckpoint | None = None
        stale = False
        try:
            with self._lock:
                stale = take[0].epoch != self._failures
                # A checkpoint due for the log as it stood before these groups (durable
                # already) rides in their transaction: one store round trip, not two. Never a
                # note for the tree they make: on Kafka an aborted transaction's records stay
                # readable to read_uncommitted consumers, and a signed note for a tree that
                # then never existed would look like the ledger signing two inconsistent trees.
                checkpoint = None if stale or not entries else self._checkpoint_due()
                self._riding = checkpoint.size if checkpoint is not None else 0
            if stale:
                # Folded on top of a group whose store write failed: its checks assumed
                # entries that were never stored.
                error = self._last_failure or StoreUnavailable(
                    "an earlier batch could not be stored; retry")
            elif entries:
                positions = self._store_batch(entries, checkpoint)
        except BaseException as exc:  # every failure fails the groups; the writer lives on
            error = exc
        with self._lock:
            self._riding = 0
            try:
                if error is None:
                    self._stored(entries, positions, checkpoint)
                elif not stale:
                    self._failures += 1
                    self._last_failure = error
                    self._needs_rebuild = True
            finally:
                self._writing = []
                if self._needs_rebuild and not self._folded and not self._fenced:
                    self._rebuild_after_failure()
                self._store_turn.notify_all()
        return error

    def _take_folded(self) -> list[_Folded]:
        """The folded groups of the next transaction (caller holds the lock): those of the same
        epoch, within MAX_BATCH_EVENTS entries and the message size, at least one."""
        take = [self._folded.popleft()]
        entries, size = len(take[0].entries), take[0].size
        while self._folded:
            nxt = self._folded[0]
            if nxt.epoch != take[0].epoch or entries + len(nxt.entries) > MAX_BATCH_EVENTS \
                    or size + nxt.size > DEFAULT_MAX_MESSAGE_BYTES:
                break
            take.append(self._folded.popleft())
            entries += len(nxt.entries)
            size += nxt.size
        self._writing = take
        self._store_turn.notify_all()
        return take

    def _store_batch(self, staged: list[LogEntry], checkpoint: PublishedCheckpoint | None
                     ) -> list[int]:
        """Store the entries (and a due checkpoint) in one store append; the writer's thread."""
        started = time.monotonic()
        try:
            positions = self.store.append([(e.body.event_id, e.entry_bytes) for e in staged],
                                          (checkpoint.size, checkpoint.note) if checkpoint else None)
        except FencedError as exc:
            with self._lock:
                self._become_fenced(f"append seq={staged[0].seq}", exc)
            raise
        except BaseException as exc:
            log.error("store_append_failed seq=%d count=%d error=%s", staged[0].seq, len(staged),
                      type(exc).__name__)
            raise
        took = time.monotonic() - started
        if took >= SLOW_STORE_APPEND_S:
            # Appends wait on the store: say so, or an outage the store rides out (a broker
            # restarting) looks like a silent stall in this log.
            log.warning("store_append_slow seq=%d count=%d seconds=%.1f", staged[0].seq,
                        len(staged), took)
        return positions

    def _stored(self, entries: list[LogEntry], positions: list[int],
                checkpoint: PublishedCheckpoint | None) -> None:
        """Make stored entries durable for readers (caller holds the lock)."""
        self._positions.extend(positions)
        if checkpoint is not None and (not self._checkpoints
                                       or checkpoint.size > self._checkpoints[-1].size):
            self._remember(checkpoint)
            log.info("checkpoint_published size=%d root=%s", checkpoint.size, checkpoint.root.hex())
        if entries and entries[0].seq == 0:
            self._set_genesis(self._core.state)
        self._appended.notify_all()
        last = self._checkpoints[-1].size if self._checkpoints else 0
        if self._durable_size() - last >= self._every_entries and self._every_ms <= 0:
            # Due now. With the timer running (checkpoint_every_ms) it rides with the next
            # transaction, or the next tick publishes it when none comes; without a timer,
            # publish it at once in a transaction of its own.
            try:
                self._publish_checkpoint()
            except Exception as exc:
                # The entries are stored and acknowledged; the next append or tick publishes.
                log.error("checkpoint_publish_failed error=%s", type(exc).__name__, exc_info=exc)

    def _rebuild_after_failure(self) -> None:
        """The core is ahead of the store: claim again, then rebuild from what the store really
        holds (an ambiguous failure may have stored the batch; the rebuild keeps it). Caller
        holds the lock and nothing is left to store; on failure the next fold tries again."""
        try:
            self._claim_and_rebuild()
        except Exception as again:
            log.error("rebuild_failed error=%s; retrying on the next append", type(again).__name__)

    def _wait_ready(self) -> None:
        if not self.ready.is_set():
            raise ServiceError(grpc.StatusCode.UNAVAILABLE, "starting: the ledger is replaying its log")

    # -- checkpoints -------------------------------------------------------------------------

    def _checkpoint_due(self) -> PublishedCheckpoint | None:
        """The checkpoint for the durable log, signed, if one is due by count and not
        published yet; None otherwise (or before the genesis names the key)."""
        size = self._durable_size()
        last = self._checkpoints[-1].size if self._checkpoints else 0
        if self._signer is None or size - last < self._every_entries:
            return None
        return self._signed_checkpoint(size)

    def _signed_checkpoint(self, size: int) -> PublishedCheckpoint:
        """A checkpoint note for the first `size` entries, signed (not stored, not published)."""
        assert self._signer is not None
        root = self._core.tree.root(size)
        note = notes.sign_checkpoint(notes.Checkpoint(self._origin, size, root), self._signer)
        return PublishedCheckpoint(size, note, root, self._origin)

    def _publish_checkpoint(self) -> PublishedCheckpoint | None:
        """Sign and save a checkpoint for the current size if it grew. Caller holds the lock."""
        size = self._durable_size()
        while self._riding and self._riding >= size:
            # The writer is storing a note for this size: wait for it rather than store twice.
            self._store_turn.wait()
        latest = self._checkpoints[-1] if self._checkpoints else None
        if self._signer is None or size == 0:
            return latest
        if latest is not None and latest.size >= size:
            return latest
        cp = self._signed_checkpoint(size)
        try:
            self.store.save_checkpoint(size, cp.note)  # saved before anyone can see it
        except FencedError as exc:
            self._become_fenced(f"checkpoint size={size}", exc)
            raise
        self._remember(cp)
        log.info("checkpoint_published size=%d root=%s", size, cp.root.hex())
        return cp

    def _publish_loop(self) -> None:
        while not self._stopping.wait(self._every_ms / 1000):
            try:
                with self._lock:
                    if not self._fenced and not self._needs_rebuild:
                        self._publish_checkpoint()
            except Exception as exc:
                log.error("checkpoint_publish_failed error=%s", type(exc).__name__, exc_info=exc)

    def checkpoint(self, size: int | None = None, *, publish_now: bool = False) -> PublishedCheckpoint:
        self._wait_ready()
        with self._lock:
            if publish_now:
                if self._fenced:
                    raise FencedError("this server was fenced; it signs no more checkpoints")
                self._publish_checkpoint()
            if size is None:
                if not self._checkpoints:
                    raise ServiceError(grpc.StatusCode.NOT_FOUND,
                                       "no checkpoint published yet (the ledger is empty)")
                return self._checkpoints[-1]
            found = self._by_size.get(size)
            if found is None:
                raise ServiceError(grpc.StatusCode.NOT_FOUND,
                                   f"no checkpoint was published for size {size}")
            return found

    def checkpoints(self) -> list[PublishedCheckpoint]:
        with self._lock:
            return list(self._checkpoints)

    def _covering_checkpoint(self, size: int) -> PublishedCheckpoint:
        """The latest checkpoint, published now if it does not cover `size` entries yet."""
        latest = self._checkpoints[-1] if self._checkpoints else None
        if latest is None or latest.size < size:
            latest = self._publish_checkpoint()
        if latest is None or latest.size < size:
            raise ServiceError(grpc.StatusCode.OUT_OF_RANGE,
                               f"the log has {self._durable_size()} entries, fewer than {size}",
                               violation_code="OUT_OF_RANGE")
        return latest

    # -- reads and proofs --------------------------------------------------------------------

    def _durable_size(self) -> int:
        return len(self._positions)

    def head(self) -> tuple[int, bytes, bytes, PublishedCheckpoint | None]:
        with self._lock:
            size = self._durable_size()
            last = self._core.tree.leaf(size - 1) if size else bytes(32)
            cp = self._checkpoints[-1] if self._checkpoints else None
            return size, self._core.tree.root(size), last, cp

    @property
    def ledger_name(self) -> str:
        return self._core.state.ledger

    @property
    def origin(self) -> str:
        return self._origin

    @property
    def stopping(self) -> bool:
        return self._stopping.is_set()

    def vkey(self) -> tuple[str, str, bytes]:
        self._wait_ready()
        if self._signer is None:
            raise ServiceError(grpc.StatusCode.FAILED_PRECONDITION,
                               "no genesis yet: the key name comes from the genesis")
        return self._signer.vkey, self._signer.name, self._signer.public_key

    def get(self, seq: int) -> tuple[bytes, bytes]:
        for _, entry_bytes, leaf in self.read(seq, 1):
            return entry_bytes, leaf
        raise ServiceError(grpc.StatusCode.NOT_FOUND,
                           f"no entry at seq {seq}; the log has {self._durable_size()}",
                           violation_code="OUT_OF_RANGE", field="seq")

    def read(self, start: int, limit: int | None = None) -> Iterator[tuple[int, bytes, bytes]]:
        """Durable entries from `start` (seq, entry bytes, leaf hash), at most `limit`."""
        self._wait_ready()
        with self._lock:
            positions, tree = self._positions, self._core.tree
            end = len(positions)
        if limit is not None:
            end = min(end, start + limit)
        seq = start
        if seq >= end:
            return
        span = positions[end - 1] - positions[seq] + 1  # read no further than needed
        for record in self.store.read(positions[seq], span):
            if record.position != positions[seq]:
                continue  # a record that failed verification at replay
            leaf = leaf_hash(record.value)
            if leaf != tree.leaf(seq):
                raise ServiceError(grpc.StatusCode.DATA_LOSS,
                                   f"the stored record for seq {seq} changed after it was verified")
            yield seq, record.value, leaf
            seq += 1
            if seq >= end:
                return
        raise ServiceError(grpc.StatusCode.DATA_LOSS, f"the store no longer holds seq {seq}")

    def wait_for_size(self, size: int, timeout: float) -> int:
        """Block until the log holds more than `size` entries or `timeout` passes."""
        with self._appended:
            if self._durable_size() <= size:
                self._appended.wait(timeout)
            return self._durable_size()

    def inclusion_proof(self, seq: int, tree_size: int | None) -> tuple[int, list[bytes], bytes, bytes, str]:
        self._wait_ready()
        with self._lock:
            if tree_size is None:
                cp = self._covering_checkpoint(seq + 1)
                tree_size = cp.size
            self._check_size(tree_size)
            if seq >= tree_size:
                raise ServiceError(grpc.StatusCode.OUT_OF_RANGE,
                                   f"seq {seq} is not in a tree of size {tree_size}",
                                   violation_code="OUT_OF_RANGE", field="seq")
            tree = self._core.tree
            proof = tree.inclusion_proof(seq, tree_size)
            note = self._by_size[tree_size].note if tree_size in self._by_size else ""
            return tree_size, proof, tree.leaf(seq), tree.root(tree_size), note

    def consistency_proof(self, size1: int, size2: int | None) -> tuple[int, list[bytes], bytes, bytes]:
        self._wait_ready()
        with self._lock:
            if size2 is None:
                size2 = self._covering_checkpoint(max(size1, 1)).size
            self._check_size(size2)
            if size1 > size2:
                raise ServiceError(grpc.StatusCode.OUT_OF_RANGE,
                                   f"size1 {size1} is larger than size2 {size2}",
                                   violation_code="OUT_OF_RANGE", field="size1")
            tree = self._core.tree
            return size2, tree.consistency_proof(size1, size2), tree.root(size1), tree.root(size2)

    def _check_size(self, size: int) -> None:
        if size > self._durable_size():
            raise ServiceError(grpc.StatusCode.OUT_OF_RANGE,
                               f"tree size {size} is beyond the log's {self._durable_size()} entries",
                               violation_code="OUT_OF_RANGE", field="tree_size")

    def note_for(self, size: int) -> str:
        cp = self._by_size.get(size)
        return cp.note if cp else ""

    def stop(self) -> None:
        self._stopping.set()
        with self._appended:
            self._appended.notify_all()
        if self._publisher is not None:
            self._publisher.join(timeout=5)

    def close(self, timeout: float = 10.0) -> None:
        """After stop() and the last append: the writer stores what is folded, then ends."""
        with self._lock:
            self._closing = True
            self._store_turn.notify_all()
        if self._writer is not None:
            self._writer.join(timeout)

    @property
    def fenced(self) -> bool:
        return self._fenced


# --------------------------------------------------------------------------------------------
# gRPC


def _receipt_pb(r: Receipt) -> ledger_pb2.Receipt:
    return ledger_pb2.Receipt(seq=r.seq, leaf_hash=r.leaf_hash, received_at=r.received_at,
                              duplicate=r.duplicate)


def _checkpoint_pb(cp: PublishedCheckpoint) -> ledger_pb2.Checkpoint:
    return ledger_pb2.Checkpoint(size=cp.size, note=cp.note, root=cp.root, origin=cp.origin)


_END_OF_STREAM = object()


class LedgerServicer(ledger_pb2_grpc.LedgerServiceServicer):
    def __init__(self, ledger: LedgerServer, *, max_batch_events: int = MAX_BATCH_EVENTS) -> None:
        self.ledger = ledger
        self.max_batch_events = max_batch_events

    @guarded(log)
    def Append(self, request: ledger_pb2.AppendRequest, context: grpc.ServicerContext) -> ledger_pb2.Receipt:
        return _receipt_pb(self.ledger.append(request.signed_event))

    @guarded(log)
    def AppendStream(self, request_iterator: Iterator[ledger_pb2.AppendBatch],
                     context: grpc.ServicerContext) -> Iterator[ledger_pb2.AppendBatchResult]:
        # Per-event refusals travel in the results; only whole-batch failures end the stream.
        # Three stages overlap: a reader thread decodes and verifies the next batches; this
        # thread checks them into the ledger (submit) as soon as they are staged, without
        # waiting for the earlier batches' store writes; the ledger's writer stores them. Each
        # batch is answered in order once durable.
        decoded: queue.Queue[Any] = queue.Queue(maxsize=2)
        ahead: queue.Queue[Any] = queue.Queue(maxsize=3)
        stop = threading.Event()
        wake = threading.Event()  # something was staged, or a submitted batch is done

        def put(into: queue.Queue[Any], item: Any) -> bool:
            while not stop.is_set():
                try:
                    into.put(item, timeout=0.5)
                    if into is ahead:
                        wake.set()
                    return True
                except queue.Full:
                    continue
            return False

        def read_ahead() -> None:
            # Decodes batch n+1 while the signature worker checks batch n (check_ahead).
            try:
                for batch in request_iterator:
                    if len(batch.signed_events) > self.max_batch_events:
                        put(decoded, ServiceError(
                            grpc.StatusCode.INVALID_ARGUMENT,
                            f"batch {batch.batch_id} has {len(batch.signed_events)} events, "
                            f"at most {self.max_batch_events} are accepted",
                            violation_code="BATCH_TOO_LARGE", field="signed_events"))
                        return
                    events = list(batch.signed_events)
                    if not put(decoded, (batch.batch_id, events, self.ledger.decode(events))):
                        return
            except BaseException as exc:  # the client's stream failed: end ours the same way
                put(decoded, exc)
                return
            put(decoded, _END_OF_STREAM)

        def check_ahead() -> None:
            while not stop.is_set():
                try:
                    item = decoded.get(timeout=0.5)
                except queue.Empty:
                    continue
                if not isinstance(item, tuple):
                    put(ahead, item)
                    return
                batch_id, events, batch = item
                try:
                    staged = self.ledger.check_signatures(batch)
                except BaseException as exc:
                    put(ahead, exc)
                    return
                if not put(ahead, (batch_id, events, staged)):
                    return

        threading.Thread(target=read_ahead, name="append-stream-reader", daemon=True).start()
        threading.Thread(target=check_ahead, name="append-stream-checker", daemon=True).start()
        inflight: deque[tuple[int, Any]] = deque()  # (batch id, request) in submission order
        last = None  # the previous request: a batch is never stored ahead of it
        end: Any = None  # _END_OF_STREAM or the exception that ends the client's stream
        try:
            while True:
                wake.clear()  # before looking: a change after this look wakes the wait below
                items: list[Any] = []
                if end is None:
                    try:
                        items.append(ahead.get() if not inflight else ahead.get_nowait())
                        while isinstance(items[-1], tuple):
                            items.append(ahead.get_nowait())
                    except queue.Empty:
                        pass
                batches = [it for it in items if isinstance(it, tuple)]
                if batches:
                    # The batches staged together are checked together (group commit).
                    requests = self.ledger.submit([staged for _, _, staged in batches],
                                                  on_done=wake.set, after=last)
                    last = requests[-1]
                    inflight.extend(zip([batch_id for batch_id, _, _ in batches], requests,
                                        strict=True))
                if items and not isinstance(items[-1], tuple):
                    end = items[-1]
                while inflight and inflight[0][1].done:
                    batch_id, request = inflight.popleft()
                    outcome = request.outcome
                    if isinstance(outcome, BaseException):
                        raise outcome
                    yield ledger_pb2.AppendBatchResult(batch_id=batch_id,
                                                       results=self._results_pb(outcome))
                if not inflight and end is not None:
                    if end is _END_OF_STREAM:
                        return
                    raise end
                if not batches and inflight:
                    wake.wait()
        finally:
            stop.set()

    @staticmethod
    def _results_pb(outcome: list[Receipt | StewardError]) -> list[ledger_pb2.AppendResult]:
        results = []
        for i, result in enumerate(outcome):
            if isinstance(result, Receipt):
                results.append(ledger_pb2.AppendResult(index=i, receipt=_receipt_pb(result)))
            else:
                results.append(ledger_pb2.AppendResult(
                    index=i, error=status_for(result, log).detail()))
        return results

    @guarded(log)
    def Get(self, request: ledger_pb2.GetRequest, context: grpc.ServicerContext) -> ledger_pb2.EntryMessage:
        entry_bytes, leaf = self.ledger.get(request.seq)
        return ledger_pb2.EntryMessage(seq=request.seq, entry_bytes=entry_bytes, leaf_hash=leaf)

    @guarded(log)
    def GetGenesis(self, request: ledger_pb2.GetGenesisRequest, context: grpc.ServicerContext) -> ledger_pb2.EntryMessage:
        entry_bytes, leaf = self.ledger.get(0)
        return ledger_pb2.EntryMessage(seq=0, entry_bytes=entry_bytes, leaf_hash=leaf)

    @guarded(log)
    def Read(self, request: ledger_pb2.ReadRequest, context: grpc.ServicerContext) -> Iterator[ledger_pb2.EntryMessage]:
        seq = request.start_seq
        remaining = request.limit or None
        while context.is_active() and not self.ledger.stopping:
            for s, entry_bytes, leaf in self.ledger.read(seq, remaining):
                yield ledger_pb2.EntryMessage(seq=s, entry_bytes=entry_bytes, leaf_hash=leaf)
                seq = s + 1
                if remaining is not None:
                    remaining -= 1
            if not request.follow or remaining == 0:
                return
            # Wake at once on appends; the timeout lets a cancelled stream end promptly.
            self.ledger.wait_for_size(seq, timeout=0.5)
        if self.ledger.stopping:
            raise ServiceError(grpc.StatusCode.UNAVAILABLE, "the ledger server is stopping; reconnect")

    @guarded(log)
    def GetHead(self, request: ledger_pb2.GetHeadRequest, context: grpc.ServicerContext) -> ledger_pb2.Head:
        size, root, last, cp = self.ledger.head()
        return ledger_pb2.Head(size=size, root=root, last_leaf_hash=last, ledger=self.ledger.ledger_name,
                               origin=self.ledger.origin, checkpoint_size=cp.size if cp else 0)

    @guarded(log)
    def GetCheckpoint(self, request: ledger_pb2.GetCheckpointRequest, context: grpc.ServicerContext) -> ledger_pb2.Checkpoint:
        size = request.size if request.HasField("size") else None
        return _checkpoint_pb(self.ledger.checkpoint(size, publish_now=request.publish_now))

    @guarded(log)
    def ListCheckpoints(self, request: ledger_pb2.ListCheckpointsRequest, context: grpc.ServicerContext) -> Iterator[ledger_pb2.Checkpoint]:
        for cp in self.ledger.checkpoints():
            yield _checkpoint_pb(cp)

    @guarded(log)
    def GetInclusionProof(self, request: ledger_pb2.GetInclusionProofRequest, context: grpc.ServicerContext) -> ledger_pb2.InclusionProof:
        tree_size = request.tree_size if request.HasField("tree_size") else None
        size, proof, leaf, root, note = self.ledger.inclusion_proof(request.seq, tree_size)
        return ledger_pb2.InclusionProof(index=request.seq, tree_size=size, proof=proof,
                                         checkpoint=note, leaf_hash=leaf, root=root)

    @guarded(log)
    def GetConsistencyProof(self, request: ledger_pb2.GetConsistencyProofRequest, context: grpc.ServicerContext) -> ledger_pb2.ConsistencyProof:
        size2 = request.size2 if request.HasField("size2") else None
        size2, proof, root1, root2 = self.ledger.consistency_proof(request.size1, size2)
        return ledger_pb2.ConsistencyProof(
            size1=request.size1, size2=size2, proof=proof, root1=root1, root2=root2,
            checkpoint1=self.ledger.note_for(request.size1), checkpoint2=self.ledger.note_for(size2))

    @guarded(log)
    def GetVkey(self, request: ledger_pb2.GetVkeyRequest, context: grpc.ServicerContext) -> ledger_pb2.Vkey:
        vkey, name, public = self.ledger.vkey()
        return ledger_pb2.Vkey(vkey=vkey, key_name=name, public_key=public, origin=self.ledger.origin)


@dataclass
class RunningServer:
    """A started server: its bound address, the ledger and the gRPC server."""

    address: str
    port: int
    ledger: LedgerServer
    grpc_server: grpc.Server
    health: health.HealthServicer
    _owns_store: bool = True

    def stop(self, grace: float | None = 1.0) -> None:
        self.health.enter_graceful_shutdown()
        self.ledger.stop()
        self.grpc_server.stop(grace).wait()
        self.ledger.close()
        self.ledger.checker.close()
        if self._owns_store:
            self.ledger.store.close()

    def wait(self) -> None:
        self.grpc_server.wait_for_termination()


def _read(path: str | Path | None) -> bytes | None:
    return Path(path).read_bytes() if path is not None else None


def _credentials(config: LedgerServerConfig) -> grpc.ServerCredentials | None:
    if config.tls_cert is None and config.tls_key is None:
        if config.client_ca is not None or config.require_client_cert:
            raise ConfigError("mutual TLS needs TLS: give tls_cert and tls_key too")
        return None
    if config.tls_cert is None or config.tls_key is None:
        raise ConfigError("TLS needs both tls_cert and tls_key")
    if config.require_client_cert and config.client_ca is None:
        raise ConfigError("require_client_cert needs client_ca, the CA that signs client certificates")
    pair = (_read(config.tls_key), _read(config.tls_cert))
    return grpc.ssl_server_credentials([pair], root_certificates=_read(config.client_ca),  # type: ignore[list-item]
                                       require_client_auth=config.require_client_cert)


# Registers one more servicer (QueryService, ControllerService ...) on the same gRPC server
# and returns its full service name, so health and reflection cover it too.
AddService = Callable[[grpc.Server, "LedgerServer"], str]


def serve(config: LedgerServerConfig, *, add_services: Sequence[AddService] = ()) -> RunningServer:
    """Bind, replay the store, then report SERVING. Returns once the server accepts appends."""
    creds = _credentials(config)  # configuration errors first, before anything is opened
    key = _load_checkpoint_key(config)
    owns_store = not isinstance(config.store, LogStore)
    store = config.store if isinstance(config.store, LogStore) else SQLiteLogStore(config.store)
    health_servicer = health.HealthServicer()

    names = [SERVICE_NAME]

    def set_health(status: int) -> None:
        for name in ("", *names):
            health_servicer.set(name, status)

    def on_fenced() -> None:
        set_health(health_pb2.HealthCheckResponse.NOT_SERVING)

    ledger = LedgerServer(store, key, checkpoint_every_entries=config.checkpoint_every_entries,
                          checkpoint_every_ms=config.checkpoint_every_ms, on_fenced=on_fenced,
                          checker=SignatureChecker(config.verify_processes))
    options = [
        ("grpc.max_receive_message_length", config.max_message_bytes),
        ("grpc.max_send_message_length", config.max_message_bytes),
        ("grpc.so_reuseport", 0),
    ]
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=config.max_workers,
                                                    thread_name_prefix="ledger-rpc"),
                         options=options)
    ledger_pb2_grpc.add_LedgerServiceServicer_to_server(
        LedgerServicer(ledger, max_batch_events=config.max_batch_events), server)
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    names.extend(add(server, ledger) for add in add_services)
    set_health(health_pb2.HealthCheckResponse.NOT_SERVING)  # until the replay has finished
    reflection.enable_server_reflection(
        (*names, health_pb2.DESCRIPTOR.services_by_name["Health"].full_name,
         reflection.SERVICE_NAME), server)
    port = (server.add_secure_port(config.listen, creds) if creds is not None
            else server.add_insecure_port(config.listen))
    if port == 0:
        raise ConfigError(f"cannot listen on {config.listen}")
    host = config.listen.rsplit(":", 1)[0]
    server.start()
    try:
        report = ledger.start()
    except BaseException:
        server.stop(None)
        ledger.checker.close()
        if owns_store:
            store.close()
        raise
    set_health(health_pb2.HealthCheckResponse.SERVING)
    address = f"{host}:{port}"
    log.info("listening address=%s tls=%s mtls=%s entries=%d skipped=%d", address, creds is not None,
             config.require_client_cert, report.entries, report.skipped)
    return RunningServer(address, port, ledger, server, health_servicer, owns_store)


# --------------------------------------------------------------------------------------------
# python -m ledger.server


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m ledger.server",
                                description="Run a Steward ledger server on a SQLite or Kafka log.")
    where = p.add_mutually_exclusive_group(required=True)
    where.add_argument("--db", help="SQLite file of the log (created if missing)")
    where.add_argument("--kafka-bootstrap", metavar="HOST:PORT[,...]",
                       help="Kafka bootstrap servers: keep the log on a Kafka topic (docs/KAFKA.md)")
    p.add_argument("--checkpoint-key", required=True, help="the ledger's checkpoint private key (PEM)")
    p.add_argument("--passphrase-env", metavar="VAR",
                   help="environment variable that holds the checkpoint key's passphrase")
    p.add_argument("--listen", default="127.0.0.1:0", help="HOST:PORT (port 0 picks a free one)")
    p.add_argument("--port-file", help="write the bound port here once serving")
    p.add_argument("--checkpoint-every-entries", type=int, default=256)
    p.add_argument("--checkpoint-every-ms", type=int, default=1000)
    p.add_argument("--tls-cert", help="server certificate chain (PEM)")
    p.add_argument("--tls-key", help="server private key (PEM)")
    p.add_argument("--client-ca", help="CA for client certificates (mutual TLS)")
    p.add_argument("--require-client-cert", action="store_true", help="refuse clients without a certificate")
    p.add_argument("--max-message-bytes", type=int, default=DEFAULT_MAX_MESSAGE_BYTES)
    p.add_argument("--verify-processes", type=int, choices=(0, 1), default=None, metavar="0|1",
                   help="check the signatures of streamed batches in a worker process (1) or "
                        "in the serving process (0); default: 1 on a machine with more than "
                        "one core")
    p.add_argument("--projections", default="same", metavar="URL|PATH",
                   help="where the query projections live and QueryService reads them: a SQLAlchemy "
                        "URL or a SQLite file path; 'same' (default) uses the --db SQLite file (with "
                        "--kafka-bootstrap: no projections), 'off' serves no QueryService")
    p.add_argument("--log-level", default="INFO")
    p.add_argument("--kafka-log-level", default="WARNING",
                   help="level of the Kafka clients' loggers: kafka-python's (their INFO is a "
                        "line per connection) and librdkafka's (logger kafka.librdkafka)")
    k = p.add_argument_group("Kafka store (with --kafka-bootstrap)")
    k.add_argument("--topic", help="the ledger topic (checkpoints go to TOPIC.checkpoints)")
    k.add_argument("--ledger", default="", metavar="NAME",
                   help="ledger name for the transactional id steward-ledger-NAME (default: the topic)")
    k.add_argument("--replication-factor", type=int, default=1,
                   help="replication factor of created topics, minimum of existing ones (production: 3)")
    k.add_argument("--min-insync-replicas", type=int, default=1,
                   help="min.insync.replicas of created topics, minimum of existing ones (production: 2)")
    k.add_argument("--no-create-topics", action="store_true",
                   help="never create the topics: they must exist (they are still checked)")
    k.add_argument("--kafka-timeout", type=float, default=60.0, metavar="SECONDS",
                   help="longest one Kafka append or read may take before the store reports UNAVAILABLE "
                        "(one broker request: at most half of it, and at most 15 s)")
    k.add_argument("--kafka-security-protocol", default="PLAINTEXT",
                   choices=("PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"))
    k.add_argument("--kafka-sasl-mechanism", help="PLAIN, SCRAM-SHA-256, SCRAM-SHA-512, ...")
    k.add_argument("--kafka-sasl-username")
    k.add_argument("--kafka-sasl-password-env", metavar="VAR",
                   help="environment variable that holds the SASL password (never on the command line)")
    k.add_argument("--kafka-ssl-cafile", help="CA bundle that signs the brokers' certificates (PEM)")
    k.add_argument("--kafka-ssl-certfile", help="client certificate (PEM)")
    k.add_argument("--kafka-ssl-keyfile", help="client private key (PEM)")
    k.add_argument("--kafka-ssl-password-env", metavar="VAR",
                   help="environment variable that holds the client key's password")
    return p


def _secret_from_env(var: str | None, what: str) -> str | None:
    if var is None:
        return None
    value = os.environ.get(var)
    if value is None:
        raise ConfigError(f"environment variable {var} ({what}) is not set")
    return value


def kafka_store_from_args(args: argparse.Namespace) -> LogStore:
    """The KafkaLogStore the command line asks for, already claimed as this ledger's writer.

    The claim (InitProducerId) comes before serve() replays the log: once it returns, no other
    writer can append, so the tail we replay is the one our first append continues.
    """
    from ledger.store.kafka import KafkaLogStore, KafkaStoreConfig

    if not args.topic:
        raise ConfigError("--kafka-bootstrap needs --topic")
    config = KafkaStoreConfig(
        bootstrap_servers=args.kafka_bootstrap, topic=args.topic, ledger=args.ledger,
        replication_factor=args.replication_factor, min_insync_replicas=args.min_insync_replicas,
        create_topics=not args.no_create_topics, operation_timeout_s=args.kafka_timeout,
        # kafka-python wants delivery_timeout_ms (= the operation timeout) > request_timeout_ms.
        request_timeout_ms=min(15000, int(args.kafka_timeout * 500)),
        security_protocol=args.kafka_security_protocol, sasl_mechanism=args.kafka_sasl_mechanism,
        sasl_plain_username=args.kafka_sasl_username,
        sasl_plain_password=_secret_from_env(args.kafka_sasl_password_env, "the Kafka SASL password"),
        ssl_cafile=args.kafka_ssl_cafile, ssl_certfile=args.kafka_ssl_certfile,
        ssl_keyfile=args.kafka_ssl_keyfile,
        ssl_password=_secret_from_env(args.kafka_ssl_password_env, "the Kafka client key password"))
    store = KafkaLogStore(config)
    try:
        store.claim_writer()
    except BaseException:
        store.close()
        raise
    log.info("kafka_store %r", store)  # repr() leaves the secrets out
    return store


def _projections_url(args: argparse.Namespace) -> str | None:
    """'off' -> None; 'same' -> the --db file (none on Kafka); a path -> a SQLite URL."""
    value: str = args.projections
    if value == "off" or (value == "same" and args.db is None):
        return None
    if value == "same":
        return f"sqlite:///{args.db}"
    return value if "://" in value else f"sqlite:///{value}"


def projections_service(url: str, stop: threading.Event) -> AddService:
    """QueryService over projections that a background thread keeps caught up with the log.

    The projector follows the same store the ledger writes and commits rows together with its
    read position, so the projections are never ahead of or behind what they say they cover.
    """
    import sqlalchemy as sa

    from ledger.projections import Projector
    from ledger.query import add_query_service
    from ledger.store.sqlite import sqlite_engine
    from steward.v1 import query_pb2

    def add(server: grpc.Server, ledger: LedgerServer) -> str:
        if url.startswith("sqlite:///"):
            engine = sqlite_engine(url.removeprefix("sqlite:///"))
        else:
            engine = sa.create_engine(url, pool_pre_ping=True)
        projector = Projector(ledger.store, engine)
        threading.Thread(target=projector.run, args=(stop,), name="projector", daemon=True).start()
        add_query_service(server, engine)
        return str(query_pb2.DESCRIPTOR.services_by_name["QueryService"].full_name)

    return add


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.db is not None and args.topic:
        parser.error("--topic is for --kafka-bootstrap, not --db")
    logging.basicConfig(level=args.log_level.upper(), stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s %(message)s")
    logging.getLogger("kafka").setLevel(args.kafka_log_level.upper())
    store: str | LogStore = args.db
    try:
        if args.kafka_bootstrap is not None:
            store = kafka_store_from_args(args)
        config = LedgerServerConfig(
            store=store, checkpoint_key=args.checkpoint_key,
            checkpoint_key_passphrase_env=args.passphrase_env, listen=args.listen,
            checkpoint_every_entries=args.checkpoint_every_entries,
            checkpoint_every_ms=args.checkpoint_every_ms, tls_cert=args.tls_cert,
            tls_key=args.tls_key, client_ca=args.client_ca,
            require_client_cert=args.require_client_cert, max_message_bytes=args.max_message_bytes,
            verify_processes=args.verify_processes)
        done = threading.Event()
        services: list[AddService] = []
        url = _projections_url(args)
        if url is not None:
            services.append(projections_service(url, done))
        tune_collector()  # before the replay: it allocates the long-lived state
        running = serve(config, add_services=services)
        settle_heap()
    except StewardError as exc:
        if isinstance(store, LogStore):
            store.close()
        print(f"ledger server: {exc}", file=sys.stderr)
        return 2
    print(f"listening on {running.address}", flush=True)
    if args.port_file:
        tmp = Path(args.port_file + ".tmp")
        tmp.write_text(f"{running.port}\n")
        tmp.replace(args.port_file)  # readers never see a half-written file

    def on_signal(signum: int, _frame: Any) -> None:
        log.info("stopping signal=%d", signum)
        done.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    done.wait()
    running.stop()
    if isinstance(store, LogStore):
        store.close()  # serve() does not close a store it was given
    return 0


if __name__ == "__main__":
    sys.exit(main())
