"""Replay the log into the controller's state, with a durable snapshot for fast restarts.

The :class:`Replayer` reads any :class:`~ledger.store.base.LogStore` (SQLite, Kafka, or the
ledger's gRPC read stream through :class:`LedgerReadStore`) from a position, decodes every
record and checks it with the shared rules against its *own* state. Storage is untrusted
(docs/DESIGN.md §2): a record that does not decode or breaks a rule — forged, unsigned, written straight
into Kafka — is logged, counted and skipped; it never reaches the planner.

Snapshots (controller.snapshot_store): every N entries or T seconds, one *part* holding what
changed since the last one (controller.snapshot_parts, no pickle), written with the next store
position and the counts in ONE transaction; the fold lock is held only to take the changes,
not to encode or write them. A restart loads the chain of parts and continues from its
position. A snapshot is trusted only if every part decodes intact (magic, version, digest,
schema, counts, a chain without gaps), its head agrees with the state it holds, and the record
at its last valid position still hashes to the state's last entry (same log, not a replaced
file); otherwise it is discarded and the log replayed from the start.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor

from controller.seams import LedgerReader
from controller.snapshot_parts import (
    ChangeLog,
    Part,
    after_failure,
    after_write,
    begin_full,
    capture,
    encode_capture,
    prepare_step,
    rebase,
    release_base,
    tracked,
)
from controller.snapshot_store import Snapshot, SnapshotStore
from controller.state import ControllerState
from ledger.errors import FormatError, StoreError
from ledger.formats import LogEntry, decode_log_entry
from ledger.heap import freeze_survivors
from ledger.rules import VerifiedSignature
from ledger.sigcheck import PendingChecks, SignatureChecker
from ledger.store.base import LogStore, StoredCheckpoint, StoredRecord

log = logging.getLogger("steward.controller.replay")

# Snapshots are spaced at least this many times their own write time apart (see snapshot_due).
SNAPSHOT_DUTY_FACTOR = 50.0
# Under a steady stream (never idle) a snapshot is still taken after this many every_seconds.
SNAPSHOT_BUSY_FACTOR = 6.0


class Replayer:
    """Folds a log store into a ControllerState; thread-safe for one folder and many readers."""

    def __init__(
        self,
        store: LogStore,
        *,
        snapshots: SnapshotStore | None = None,
        source: str = "default",
        snapshot_every_entries: int = 500,
        snapshot_every_seconds: float = 5.0,
        checker: SignatureChecker | None = None,
        background_snapshots: bool = False,
    ) -> None:
        self.store = store
        # True (steward-controller): a snapshot that falls due is written by a thread of its
        # own, so the follower goes on folding (a kill switch) while it is encoded and written:
        # a part of 500 entries is ~45 ms of SQL at a million entries, a base minutes at ten
        # million; and a failed write (a full disk) is logged, never the end of the follower.
        # False: written in the caller's thread before it goes on (tests, the bench).
        self.background_snapshots = background_snapshots
        self._snapshot_thread: threading.Thread | None = None
        # Checks the signatures of a catch-up chunk at once (a worker process, when the checker
        # has one); None: each entry's signatures are checked by the rules as it is folded.
        self.checker = checker
        self.snapshots = snapshots
        self.source = source
        self.every_entries = snapshot_every_entries
        self.every_seconds = snapshot_every_seconds
        # With snapshots, last_seq is a ChangeLog from the start (not yet tracking): the first
        # base would otherwise copy the replayed dict into one under the fold lock.
        self.state = (
            ControllerState(last_seq=ChangeLog(tracking=False))
            if snapshots is not None
            else ControllerState()
        )
        self.position = 0  # next store position to read
        self.last_position = -1  # store position of the last valid entry
        self.lock = threading.RLock()  # hold it while reading self.state
        self._folded = threading.Condition(self.lock)
        self._since_snapshot = 0
        self._last_snapshot = time.monotonic()
        self._last_snapshot_cost = 0.0  # seconds the last snapshot write took
        self.loaded_from_snapshot = False
        self.last_capture_seconds = 0.0  # the longest the last snapshot held the fold lock
        # Each hold of the fold lock by the last snapshot, (start, end) in time.perf_counter()
        # (the bench tells the collector's pauses inside them apart).
        self.last_capture_holds: list[tuple[float, float]] = []
        self.last_part_bytes = 0
        # Monotonic time each recent entry was folded: how fast the controller reacts to it.
        self.folded_at: dict[int, float] = {}
        # Called with each valid entry and its store position right after it is folded, under
        # the lock (the notifications: it must only queue, never wait).
        self.on_fold: Callable[[LogEntry, int], None] | None = None

    # -- snapshots ------------------------------------------------------------------------

    def load_snapshot(self) -> bool:
        """Start from the stored snapshot if it still matches the log; True when it did."""
        if self.snapshots is None:
            return False
        snap = self.snapshots.load(self.source)
        if snap is None:
            return False
        if snap.last_position >= 0:
            record = next(iter(self.store.read(snap.last_position, limit=1)), None)
            try:
                matches = record is not None and (
                    decode_log_entry(record.value).leaf_hash == snap.state.ledger.last_hash
                )
            except FormatError:
                matches = False
            if not matches:
                log.warning(
                    "snapshot does not match the log, replaying from the start source=%s "
                    "position=%d",
                    self.source,
                    snap.position,
                )
                return False
        with self.lock:
            self.state, self.position, self.last_position = (
                snap.state,
                snap.position,
                snap.last_position,
            )
        self.loaded_from_snapshot = True
        log.info(
            "snapshot loaded source=%s position=%d size=%d invalid=%d",
            self.source,
            snap.position,
            snap.state.ledger.size,
            snap.state.invalid,
        )
        return True

    def snapshot(self, *, wait: bool = True) -> bool:
        """Write a part holding what changed since the last one; False if none was written
        (no store, or `wait` is False and a compaction is committing).

        The fold lock is held only while the changes are taken (references to what was
        folded, and the changed proposals encoded) and while the written part is recorded;
        the part is encoded and written outside it."""
        store = self.snapshots
        if store is None or not store.writing.acquire(blocking=wait):
            return False
        try:
            started = time.monotonic()
            through = store.through(self.source)  # the chain cannot move: `writing` is held
            holds: list[tuple[float, float]] = []
            prepared = None
            with self.lock:
                held_from = time.perf_counter()
                log_ = tracked(self.state)
                full = through is None or log_ is None or log_.through != through
                if full:  # a base: prepared in steps, the fold going on between them
                    prepared = begin_full(self.state)
                holds.append((held_from, time.perf_counter()))
            while prepared is not None:
                with self.lock:
                    held_from = time.perf_counter()
                    done = prepare_step(self.state, prepared)
                    holds.append((held_from, time.perf_counter()))
                if done:
                    break
                # The rows encoded so far live until the base is written: left young, they
                # set off the collector inside later steps (ledger.heap).
                freeze_survivors()
            with self.lock:
                held_from = time.perf_counter()
                taken = capture(self.state, (through or 0) + 1, full=full, prepared=prepared)
                position, last_position = self.position, self.last_position
                self._since_snapshot = 0
                holds.append((held_from, time.perf_counter()))
            self.last_capture_holds = holds
            self.last_capture_seconds = max(end - begin for begin, end in holds)
            try:
                blob = encode_capture(taken)
                store.write_part(self.source, taken, blob, position, last_position)
            except BaseException:
                with self.lock:
                    after_failure(self.state, taken)
                raise
            rows = store.index_rows(self.source) if taken.rows else None
            with self.lock:
                after_write(self.state, taken, rows)
            if taken.full:
                release_base(taken)  # a piece at a time: freed at once, no thread would run
            self.last_part_bytes = blob.size
            self._last_snapshot = time.monotonic()
            self._last_snapshot_cost = self._last_snapshot - started
        finally:
            store.writing.release()
        store.after_write(self.source, self._rebase)
        return True

    def _rebase(self, base: Part) -> None:
        """A compaction wrote a new base: the in-memory indexes take its packed bytes."""
        with self.lock:
            rebase(self.state, base)

    def snapshot_due(self, *, idle: bool = True, now: float | None = None) -> bool:
        """Whether `_maybe_snapshot` would write one now.

        Every `every_entries` entries or `every_seconds`, but never more often than
        SNAPSHOT_DUTY_FACTOR times the last write's duration: the follower thread writes the
        part (the fold lock is free meanwhile, but the next entry waits for the follower), so
        snapshots are spaced to keep that under ~2% of the time. A part costs what changed
        (6 ms p50 for 500 entries at 1,000,000, bench.replay); a base costs everything, and
        this keeps the next part well behind it. While entries are still arriving (`idle`
        False) a snapshot waits for a pause, up to SNAPSHOT_BUSY_FACTOR times `every_seconds`.
        """
        if self.snapshots is None or self._since_snapshot == 0:
            return False
        since = (time.monotonic() if now is None else now) - self._last_snapshot
        if since < SNAPSHOT_DUTY_FACTOR * self._last_snapshot_cost:
            return False
        if not idle:
            return since >= SNAPSHOT_BUSY_FACTOR * self.every_seconds
        return self._since_snapshot >= self.every_entries or since >= self.every_seconds

    def _maybe_snapshot(self, *, idle: bool = True) -> None:
        if not self.snapshot_due(idle=idle):
            return
        if not self.background_snapshots:
            # Never waits for a compaction's commit: the next entry or pause tries again.
            self.snapshot(wait=False)
            return
        running = self._snapshot_thread
        if running is not None and running.is_alive():
            return  # the one being written; the next is due after it
        self._snapshot_thread = threading.Thread(
            target=self._snapshot_in_background, name="snapshot", daemon=True
        )
        self._snapshot_thread.start()

    def _snapshot_in_background(self) -> None:
        try:
            self.snapshot(wait=False)
        except Exception:
            log.exception("snapshot failed; the next one is tried when due source=%s", self.source)

    def wait_for_snapshot(self, timeout: float = 600.0) -> None:
        """Wait for a snapshot being written in the background (for the tests and shutdown)."""
        running = self._snapshot_thread
        if running is not None:
            running.join(timeout)

    # -- folding --------------------------------------------------------------------------

    def handle(
        self,
        record: StoredRecord,
        decoded: LogEntry | FormatError | None = None,
        verified: frozenset[VerifiedSignature] = frozenset(),
    ) -> bool:
        """Decode, check and fold one record; False when it was skipped as invalid.

        `decoded` is ``decode_log_entry(record.value)`` (or its error) when the caller has it;
        `verified` the signatures the caller already checked (see catch_up)."""
        with self.lock:
            self.position = record.position + 1
            self._since_snapshot += 1
            try:
                if isinstance(decoded, FormatError):
                    raise decoded
                e = decode_log_entry(record.value) if decoded is None else decoded
            except FormatError as exc:
                self.state.count_undecodable()
                log.warning("invalid record skipped position=%d reason=%s", record.position, exc)
                self._folded.notify_all()
                return False
            violation = self.state.fold(e, verified)
            if violation is not None:
                log.warning(
                    "invalid record skipped position=%d seq=%d code=%s reason=%s",
                    record.position,
                    e.seq,
                    violation.code,
                    violation.message,
                )
                self._folded.notify_all()
                return False
            self.last_position = record.position
            self.folded_at[e.seq] = time.monotonic()
            if len(self.folded_at) > 1024:
                # Seqs are folded in increasing order, so the first key is the oldest (a scan
                # with min() here cost ~6% of a cold replay).
                del self.folded_at[next(iter(self.folded_at))]
            if self.on_fold is not None:
                self.on_fold(e, record.position)
            self._folded.notify_all()
        return True

    def catch_up(self) -> int:
        """Fold every record committed now; returns how many records were read.

        With a checker, records go in chunks whose signatures are checked all at once by the
        checker's worker process, one chunk ahead: the worker verifies chunk k+1 while this
        process folds chunk k. Only keys the state knew when a chunk was prepared are tried
        (a hint); a key granted since is checked by the rules as usual, and the rules decide
        for every signature whether its key may sign at that seq."""
        n = 0
        if self.checker is None:
            for record in self.store.read(self.position):
                self.handle(record)
                n += 1
            self._maybe_snapshot()
            return n
        with ThreadPoolExecutor(1, thread_name_prefix="catch-up-verify") as verifier:
            pending: (
                tuple[
                    list[StoredRecord],
                    list[LogEntry | FormatError],
                    Future[frozenset[VerifiedSignature]],
                ]
                | None
            ) = None
            chunk: list[StoredRecord] = []
            records = self.store.read(self.position)
            while True:
                nxt = next(records, None)
                if nxt is not None:
                    chunk.append(nxt)
                    if len(chunk) < CATCH_UP_CHUNK:
                        continue
                # A full chunk (or the last one): send it to be verified, then fold the one
                # before it while the worker checks this one.
                ready = None
                if chunk:
                    decoded, checks = self._prepare_chunk(chunk)
                    ready = (chunk, decoded, verifier.submit(self.checker.verified, checks))
                    chunk = []
                if pending is not None:
                    n += self._fold_chunk(*pending)
                pending = ready
                if nxt is None:
                    if pending is not None:
                        n += self._fold_chunk(*pending)
                    break
        self._maybe_snapshot()
        return n

    def _prepare_chunk(
        self, chunk: list[StoredRecord]
    ) -> tuple[list[LogEntry | FormatError], PendingChecks]:
        decoded: list[LogEntry | FormatError] = []
        # Keys read without the lock: only a hint (see catch_up).
        checks = PendingChecks(self.state.ledger.keys)
        for record in chunk:
            try:
                e = decode_log_entry(record.value)
            except FormatError as exc:
                decoded.append(exc)
                continue
            decoded.append(e)
            checks.add(e.entry.body, e.entry.signatures)
        return decoded, checks

    def _fold_chunk(
        self,
        chunk: list[StoredRecord],
        decoded: list[LogEntry | FormatError],
        verified: Future[frozenset[VerifiedSignature]],
    ) -> int:
        done = verified.result()
        for record, d in zip(chunk, decoded, strict=True):
            self.handle(record, d, done)
        return len(chunk)

    def run(
        self,
        stop: threading.Event,
        on_change: Callable[[], None] = lambda: None,
        idle_timeout: float = 0.2,
    ) -> None:
        """Follow the store until `stop` is set, calling `on_change` after each valid entry."""
        follower = self.store.follow(self.position, idle_timeout=idle_timeout)
        try:
            for record in follower:
                if stop.is_set():
                    return
                if record is not None and self.handle(record):
                    on_change()
                # Preferably when idle (caught up), so a snapshot does not delay entries
                # already waiting to be folded, such as a kill switch.
                self._maybe_snapshot(idle=record is None)
        finally:
            close = getattr(follower, "close", None)
            if close is not None:
                close()
            if self.snapshots is not None:
                self.snapshot()

    def wait_for_size(self, size: int, timeout: float) -> bool:
        """Block until at least `size` entries are folded (e.g. our own append came back)."""
        with self._folded:
            return self._folded.wait_for(lambda: self.state.ledger.size >= size, timeout)


# Records per catch-up chunk whose signatures are checked together (with a checker).
CATCH_UP_CHUNK = 512


class LedgerReadStore(LogStore):
    """Read-only LogStore over a ledger server's Read stream (positions = seqs).

    For controllers that cannot reach the storage itself. The client verifies the hash chain;
    the Replayer still checks every signature and rule.
    """

    def __init__(self, client: LedgerReader) -> None:
        self.client = client

    def append(
        self, records: Sequence[tuple[bytes, bytes]], checkpoint: tuple[int, str] | None = None
    ) -> list[int]:
        raise StoreError("a LedgerReadStore is read-only")

    def read(self, start: int = 0, limit: int | None = None) -> Iterator[StoredRecord]:
        end = self.end_position()
        if start >= end:
            return
        count = end - start if limit is None else min(limit, end - start)
        for e in self.client.read(start, limit=count):
            yield StoredRecord(e.seq, e.body.event_id, e.entry_bytes)

    def follow(self, start: int = 0, *, idle_timeout: float = 0.5) -> Iterator[StoredRecord | None]:
        q: queue.Queue[StoredRecord | BaseException] = queue.Queue()

        def pump() -> None:
            try:
                for e in self.client.read(start, follow=True):
                    q.put(StoredRecord(e.seq, e.body.event_id, e.entry_bytes))
            except BaseException as exc:  # surfaced in the reading thread
                q.put(exc)

        threading.Thread(target=pump, name="ledger-follow", daemon=True).start()
        while True:
            try:
                item = q.get(timeout=idle_timeout)
            except queue.Empty:
                yield None
                continue
            if isinstance(item, BaseException):
                raise item
            yield item

    def end_position(self) -> int:
        return self.client.head().size

    def save_checkpoint(self, size: int, note: str) -> None:
        raise StoreError("a LedgerReadStore is read-only")

    def checkpoints(self) -> list[StoredCheckpoint]:
        return [StoredCheckpoint(c.size, c.note) for c in self.client.checkpoints()]

    def close(self) -> None:
        pass


__all__ = [
    "CATCH_UP_CHUNK",
    "SNAPSHOT_BUSY_FACTOR",
    "SNAPSHOT_DUTY_FACTOR",
    "LedgerReadStore",
    "Replayer",
    "Snapshot",
    "SnapshotStore",
]
