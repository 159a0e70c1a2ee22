"""The ledger writer: the single writer of one ledger, without any wire protocol.

:class:`LedgerServer` owns a :class:`~ledger.store.base.LogStore`, the in-memory
:class:`~ledger.core.LedgerCore` (rules state + Merkle tree) and the checkpoint signer. On start
it reads every stored record and re-checks it (storage is untrusted) through
:mod:`ledger.integrity`, in the one pass that also rebuilds the state and the tree: records
written around it are skipped, counted and logged; damage to its own history (an acknowledged
entry missing or changed, a signed checkpoint the entries disagree with) raises
StoreDamagedError and nothing is appended, so no acknowledged seq is ever handed out again.
Appends are decoded and their signatures checked outside the lock (``stage``), then go
through the group commit (:mod:`ledger.group_commit`): idempotency and rules
(``core.prepare``) under one lock, then one ``store.append`` per group of batches. The core is
folded before the store write; if the write fails the core is rebuilt from the store, so it is
never ahead of what is durable. A store with a writer claim (Kafka's ``claim_writer()``) is
claimed before every replay, at start and after a failure, so nobody else can append between
the replay and our next append; a FencedError (from an append, a claim or a checkpoint) fences
the server for good (``on_fenced`` turns its health NOT_SERVING).

Checkpoints come from the one append-only tree, so their sizes only grow and any two are
consistent. They are published every N entries, every T ms (a background thread) and on demand,
and saved with ``store.save_checkpoint`` before anyone sees them. Listeners
(``on_checkpoint_published``: the witness client, ledger/witness.py) hear of each new one; the
witnesses' cosignatures come back through ``add_cosignatures``, stored added to the checkpoint,
and readers get the cosigned note.

Refusals are the domain errors of :mod:`ledger.errors`; :mod:`ledger.grpc_errors` maps them to
gRPC statuses for :mod:`ledger.servicer`. This module knows nothing of gRPC.

One idea, read top to bottom in the order an entry lives: start and replay, appends (staged,
then folded), the store writer's side, checkpoints, reads and proofs. Longer than most files
here because those share one lock and one core; the queue's mechanics are in group_commit.
"""

from __future__ import annotations

import bisect
import logging
import threading
import time
from array import array
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from ledger import checkpoint as notes
from ledger import staging, tiles
from ledger.clock import now_ms
from ledger.core import LedgerCore, Receipt
from ledger.cosignature import cosigned_note
from ledger.errors import (
    CheckpointKeyMismatchError,
    CheckpointNotFoundError,
    CheckpointPendingError,
    ConfigError,
    DataLossError,
    EntryNotFoundError,
    FencedError,
    LedgerStartingError,
    NoGenesisError,
    OutOfRangeError,
    StewardError,
    StoreDamagedError,
    StoreError,
    StoreUnavailableError,
)
from ledger.formats import LedgerGenesis, LogEntry
from ledger.group_commit import GroupCommit, Request, Results
from ledger.integrity import ChainCheck, Skip, VerifiedCheckpoint, verify_checkpoints
from ledger.keys import PrivateKey
from ledger.merkle import MerkleTree, leaf_hash
from ledger.replay_checks import fold_checked_ahead, replay_checker
from ledger.sigcheck import SignatureChecker
from ledger.spilled_index import ScratchIndexes
from ledger.staging import DecodedBatch, StagedBatch
from ledger.state import KeyInfo, LedgerState
from ledger.store.base import LogStore
from ledger.tile_store import TileNodeStore, TileStorage

# The server process's log: its lines keep the name operators and the docs know them by.
log = logging.getLogger("ledger.server")

# The most events one batch (and one group commit) may hold, and the most bytes: the gRPC
# message size, so a group never holds more than one request could on its own.
MAX_BATCH_EVENTS = 1024
DEFAULT_MAX_MESSAGE_BYTES = 4 * 1024 * 1024

# A store append taking at least this long is logged (store_append_slow).
SLOW_STORE_APPEND_S = 2.0


@runtime_checkable
class ClaimingStore(Protocol):
    """A store with a writer claim (Kafka): `claim_writer()` makes this process the one writer
    or raises FencedError. SQLite has none: one file, one server."""

    def claim_writer(self) -> None: ...


# --------------------------------------------------------------------------------------------
# What the writer answers


@dataclass(frozen=True)
class PublishedCheckpoint:
    """A checkpoint the ledger signed (`note`, its bytes as stored) and the witness cosignature
    lines collected for it since; `cosigned_note` is what readers are given."""

    size: int
    note: str
    root: bytes
    origin: str
    cosignatures: tuple[str, ...] = ()

    @property
    def cosigned_note(self) -> str:
        return cosigned_note(self.note, self.cosignatures) if self.cosignatures else self.note


@dataclass(frozen=True)
class ReplayReport:
    entries: int
    skipped: int


@dataclass(frozen=True)
class LogHead:
    """The durable log: its size, root and last leaf, and the newest published checkpoint."""

    size: int
    root: bytes
    last_leaf_hash: bytes  # 32 zero bytes for an empty log
    checkpoint: PublishedCheckpoint | None


@dataclass(frozen=True)
class TreeInclusion:
    """Entry `seq`'s inclusion proof in the tree of `tree_size` entries."""

    tree_size: int
    proof: tuple[bytes, ...]
    leaf_hash: bytes
    root: bytes
    note: str  # the checkpoint published for tree_size ("" if none was)


@dataclass(frozen=True)
class TreeConsistency:
    """The proof that the tree of `size1` entries is a prefix of the tree of `size2`."""

    size1: int
    size2: int
    proof: tuple[bytes, ...]
    root1: bytes
    root2: bytes


@dataclass(frozen=True)
class VerifierKey:
    """The checkpoint key as note verifiers name it (C2SP vkey), with its parts."""

    vkey: str
    name: str
    public_key: bytes


# --------------------------------------------------------------------------------------------
# The writer


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
        spill_indexes: bool = True,
        scratch_dir: str | None = None,
        verify_ahead: bool = True,
    ) -> None:
        self.store = store
        # A replay's signatures checked by a libsodium worker a chunk ahead of the fold
        # (ledger.replay_checks); False verifies them in the fold (the benchmark's baseline).
        self._verify_ahead = verify_ahead
        # The per-entry indexes on disk (ledger.spilled_index), rebuilt by every replay: memory
        # grows with live state, not with history. False keeps them packed in memory (tests).
        self._spill_indexes = spill_indexes
        self._scratch_dir = scratch_dir  # where that file goes (None: TMPDIR or /tmp)
        # Checks the signatures of staged batches; the default checks in the caller's thread.
        self.checker = checker if checker is not None else SignatureChecker(0)
        self._key = checkpoint_key
        self._every_entries = max(1, checkpoint_every_entries)
        self._every_ms = checkpoint_every_ms
        self._clock = clock
        self._on_fenced = on_fenced
        # One lock for everything that changes the core or signs: folds, rebuilds, checkpoints.
        # The store write of a folded group is made without it (see ledger.group_commit).
        self._lock = threading.RLock()
        # Notified (under the lock) whenever a checkpoint is remembered: proofs that may not
        # publish one themselves wait on it for the periodic publisher.
        self._published = threading.Condition(self._lock)
        self._appended = threading.Condition(self._lock)
        # Folds the next group while the previous one is being stored; readers only ever see
        # the durable part (_positions).
        self.group_commit = GroupCommit(
            self._lock,
            fold=self._fold_group,
            write=self._write,
            on_failure=self._store_failed,
            on_idle=self._rebuild_after_failure,
            max_events=MAX_BATCH_EVENTS,
            max_bytes=DEFAULT_MAX_MESSAGE_BYTES,
        )
        self._riding = 0  # size of the checkpoint riding in the writer's transaction, if any
        # A store that keeps tiles keeps the tree: memory holds its right edge, not its history.
        self._store_tiles_in: TileStorage | None = store.tile_storage()
        # Where the current core's tiles go: the store's, or (a store that keeps none, with
        # the scratch file) the scratch file's; set by each rebuild, read under the lock.
        self._tile_storage: TileStorage | None = self._store_tiles_in
        self._core = LedgerCore()
        # Store position of each seq (positions are not seqs), 8 bytes each.
        self._positions: array[int] = array("q")
        self._last_received_at = 0
        self._checkpoints: list[PublishedCheckpoint] = []
        self._verified_checkpoints: list[VerifiedCheckpoint] = []  # by the last replay
        self._by_size: dict[int, PublishedCheckpoint] = {}
        self._signer: notes.Signer | None = None  # known once the genesis names the key
        self._origin = ""
        self._needs_rebuild = False
        self._fenced = False
        self._stopping = threading.Event()
        self._publisher: threading.Thread | None = None
        # Called with each newly published checkpoint, under the lock: they must not block
        # (the witness client queues it; ledger.witness).
        self._on_published: list[Callable[[PublishedCheckpoint], None]] = []
        self._stored_cosignatures: dict[int, tuple[str, ...]] = {}  # by the last replay
        self._cosigning = threading.Lock()  # one cosignature store write at a time
        self.ready = threading.Event()
        self.replay_report = ReplayReport(0, 0)

    # -- start and replay --------------------------------------------------------------------

    def start(self) -> ReplayReport:
        """Replay and verify the store, then take appends. Raises StoreDamagedError (one line:
        the seq and what is wrong) rather than append over damaged history."""
        with self._lock:
            try:
                self.replay_report = self._claim_and_rebuild()
            except StoreDamagedError as exc:
                log.error("replay_refused %s", exc)
                raise
            self._load_checkpoints()
        self.group_commit.start()
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
        """Fold the store again from scratch, verifying every record and every stored
        checkpoint (ledger.integrity); StoreDamagedError on damage, with nothing changed."""
        started = time.monotonic()
        scratch = ScratchIndexes(self._scratch_dir) if self._spill_indexes else None
        storage, in_scratch = self._store_tiles_in, False
        if storage is None and scratch is not None:  # a store without tiles (Kafka)
            storage, in_scratch = scratch.tile_storage(), True
        tiled = None
        if storage is not None:
            tiled = TileNodeStore(storage, replaying=True, scratch=in_scratch)
        chain = ChainCheck(
            on_genesis=lambda genesis: self._require_our_key(genesis, stored=True),
            core=LedgerCore(tree=MerkleTree(tiled), scratch=scratch),
        )
        try:
            report = self._fold_store(chain, tiled, started)
            self._tile_storage = storage
            return report
        except BaseException:
            chain.core.close()  # its scratch indexes, half built
            raise

    def _fold_store(
        self, chain: ChainCheck, tiled: TileNodeStore | None, started: float
    ) -> ReplayReport:
        checker = replay_checker() if self._verify_ahead else None
        try:
            for skip in fold_checked_ahead(
                chain, ((r.position, r.value) for r in self.store.read(0)), checker
            ):
                if skip is not None:
                    _log_skip(skip)
        finally:
            if checker is not None:
                checker.close()  # its worker process: a start needs it no longer
        chain.finish()
        stored = self.store.checkpoints()
        verified = verify_checkpoints(chain, ((c.size, c.note) for c in stored))
        if tiled is not None:
            try:
                tiled.finish_replay()
            except StoreError as exc:
                # Derived data: the log is whole, so the start goes on; the tiles wait in
                # memory and are offered to the store again with the next full tile.
                log.warning(
                    "tiles_write_failed at=start error=%s detail=%s", type(exc).__name__, exc
                )
            if tiled.repaired:
                # Derived data, rewritten from the verified entries: missing after an upgrade
                # or a crash between a batch and its tiles; different only if damaged.
                level, index = tiled.repaired[0]
                log.warning(
                    "tiles_rewritten count=%d first=%s", len(tiled.repaired), f"{level}/{index}"
                )
        self._stored_cosignatures = {c.size: c.cosignatures for c in stored if c.cosignatures}
        core = chain.core
        # The previous core's scratch indexes go when nothing reads its state any more (SQLite
        # removes the file with the connection): a reader may still hold that state now.
        self._core = core
        self._positions = chain.positions
        self._last_received_at = chain.last_received_at
        self._needs_rebuild = False
        if core.size and self._signer is None:
            self._set_genesis(core.state)
        self._verified_checkpoints = verified
        log.info(
            "replay_done entries=%d skipped=%d checkpoints=%d ms=%d",
            core.size,
            chain.skipped,
            len(verified),
            int((time.monotonic() - started) * 1000),
        )
        return ReplayReport(core.size, chain.skipped)

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
        raise CheckpointKeyMismatchError(
            message + "; the genesis must name the server's checkpoint key",
            field="payload.checkpoint_public_key",
        )

    def _load_checkpoints(self) -> None:
        """Publish the stored checkpoints the replay verified, each size once, growing."""
        for cp in self._verified_checkpoints:
            if self._checkpoints and cp.size <= self._checkpoints[-1].size:
                continue
            cosigs = self._stored_cosignatures.get(cp.size, ())
            self._remember(PublishedCheckpoint(cp.size, cp.note, cp.root, cp.origin, cosigs))

    def _remember(self, cp: PublishedCheckpoint) -> None:
        self._checkpoints.append(cp)
        self._by_size[cp.size] = cp
        self._published.notify_all()

    def _announce(self, cp: PublishedCheckpoint) -> None:
        """Tell the listeners (the witness client) of a newly published checkpoint."""
        log.info("checkpoint_published size=%d root=%s", cp.size, cp.root.hex())
        for listener in self._on_published:
            try:
                listener(cp)
            except Exception as exc:  # a listener's bug must never fail a publication
                log.error("checkpoint_listener_failed error=%s", type(exc).__name__, exc_info=exc)

    def on_checkpoint_published(self, listener: Callable[[PublishedCheckpoint], None]) -> None:
        """Call `listener` with every checkpoint published from now on (under the writer's
        lock: it must return at once)."""
        with self._lock:
            self._on_published.append(listener)

    def add_cosignatures(self, size: int, lines: Sequence[str]) -> PublishedCheckpoint:
        """Keep verified witness cosignature lines for the published checkpoint of `size`:
        in the store first (added to the checkpoint, its note unchanged), then for readers.

        The store write is made without the writer's lock (appends go on meanwhile) but under
        a lock of its own, so each write sees every cosignature kept before it."""
        with self._cosigning:
            with self._lock:
                cp = self._by_size.get(size)
            if cp is None:
                raise CheckpointNotFoundError(f"no checkpoint was published for size {size}")
            new = [line for line in dict.fromkeys(lines) if line not in cp.cosignatures]
            if not new:
                return cp
            # All of them, not only the new ones: a store that writes a record per call
            # (Kafka) then holds one that carries every cosignature, whoever reads it.
            self.store.add_cosignatures(size, cp.note, [*cp.cosignatures, *new])
            updated = PublishedCheckpoint(
                cp.size, cp.note, cp.root, cp.origin, (*cp.cosignatures, *new)
            )
            with self._lock:
                self._by_size[size] = updated
                i = bisect.bisect_left(self._checkpoints, size, key=lambda c: c.size)
                if i < len(self._checkpoints) and self._checkpoints[i].size == size:
                    self._checkpoints[i] = updated
            return updated

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
        return staging.decode(signed_events, self._core.state.keys)

    def check_signatures(self, decoded: DecodedBatch) -> StagedBatch:
        """The second half of stage(): all of the batch's signatures at once (in a worker
        process for a large batch, the interpreter lock released while it waits)."""
        return staging.check_signatures(decoded, self.checker)

    def append_batch(
        self, signed_events: Sequence[bytes], *, staged: StagedBatch | None = None
    ) -> Results:
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

    def append_batches(self, batches: Sequence[StagedBatch]) -> list[Results | BaseException]:
        """Several staged batches of one caller, in order, in as few transactions as the limits
        allow. Per batch: its results, or the exception that kept it out of the store; a batch
        after a failed one is not attempted (it gets the same exception)."""
        requests = self.submit(batches)
        self.group_commit.wait(requests)
        return [r.outcome for r in requests]

    def submit(
        self,
        batches: Sequence[StagedBatch],
        on_done: Callable[[], None] | None = None,
        after: Request | None = None,
    ) -> list[Request]:
        """Queue staged batches of one caller and return once they are folded (checked, in the
        core), not stored: each request is ``done`` once stored or failed, and `on_done` is called
        then. `after` is the caller's previous request, if it may still be on its way: these
        are then never stored ahead of it. Lets a stream check its next batches while the
        previous ones are being stored."""
        self._wait_ready()
        return self.group_commit.submit(batches, on_done, after)

    def _fold_group(self, group: list[Request]) -> tuple[list[Results], list[LogEntry]]:
        """Check and fold `group` into the core (the group commit holds the lock)."""
        if self._fenced:
            raise FencedError("this server was fenced earlier")
        if self.group_commit.closing:
            raise StoreUnavailableError("the ledger server is shutting down; retry")
        if self._needs_rebuild:
            # Only from the store's truth: wait until nothing folded is left to store.
            self.group_commit.wait_until_stored()
            if self._needs_rebuild:
                self._claim_and_rebuild()
        return self._fold_locked(group)

    def _fold_locked(self, group: list[Request]) -> tuple[list[Results], list[LogEntry]]:
        core = self._core
        out: list[Results] = []
        staged_entries: list[LogEntry] = []
        for request in group:
            results: Results = []
            verified = request.staged.verified
            for item in request.staged.events:
                try:
                    if item.error is not None:
                        raise item.error
                    assert item.received is not None and item.body is not None
                    existing = core.existing_receipt(
                        item.received.event, body=item.body, digest=item.digest
                    )
                    if existing is not None:
                        # Maybe of an entry still on its way to the store: answered with this
                        # group, which the writer answers after the earlier ones.
                        results.append(existing)
                        continue
                    e = core.prepare(
                        item.received, self._received_at(), body=item.body, verified=verified
                    )
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

    # -- the store writer ---------------------------------------------------------------------

    def _write(self, entries: list[LogEntry]) -> None:
        """Store the entries of one transaction and make them durable for readers (the group
        commit's store writer thread, without the lock)."""
        positions: list[int] = []
        checkpoint: PublishedCheckpoint | None = None
        try:
            with self._lock:
                # A checkpoint due for the log as it stood before these groups (durable
                # already) rides in their transaction: one store round trip, not two. Never a
                # note for the tree they make: on Kafka an aborted transaction's records stay
                # readable to read_uncommitted consumers, and a signed note for a tree that
                # then never existed would look like the ledger signing two inconsistent trees.
                checkpoint = self._checkpoint_due() if entries else None
                self._riding = checkpoint.size if checkpoint is not None else 0
            if entries:
                positions = self._store_batch(entries, checkpoint)
        except BaseException:
            with self._lock:
                self._riding = 0
            raise
        with self._lock:
            self._riding = 0
            self._stored(entries, positions, checkpoint)
        self._store_tiles()

    def _store_tiles(self) -> None:
        """Hand the tiles the durable log completed to the store (the writer's thread, after
        the entries they cover are stored: a tile never runs ahead of its entries)."""
        try:
            with self._lock:  # the core and where its tiles go, both of one rebuild
                storage = self._tile_storage
                tree_store = self._core.tree.store
                if storage is None:
                    return
                if not isinstance(tree_store, TileNodeStore):
                    return
                tiles_due = tree_store.tiles_to_write(self._durable_size())
            if not tiles_due:
                return
            storage.write_tiles(tiles_due)
        except (StoreError, DataLossError) as exc:
            # The entries are stored and acknowledged: the tiles stay in memory and are offered
            # again with the next full tile; a restart recomputes them from the entries anyway.
            log.warning("tiles_write_failed error=%s detail=%s", type(exc).__name__, exc)
            return
        with self._lock:
            tree_store.written(tiles_due)

    def _store_failed(self, error: BaseException) -> None:
        """A store write failed: the core is ahead of the store (caller holds the lock)."""
        self._needs_rebuild = True

    def _store_batch(
        self, staged: list[LogEntry], checkpoint: PublishedCheckpoint | None
    ) -> list[int]:
        """Store the entries (and a due checkpoint) in one store append; the writer's thread."""
        started = time.monotonic()
        try:
            positions = self.store.append(
                [(e.body.event_id, e.entry_bytes) for e in staged],
                (checkpoint.size, checkpoint.note) if checkpoint else None,
            )
        except FencedError as exc:
            with self._lock:
                self._become_fenced(f"append seq={staged[0].seq}", exc)
            raise
        except BaseException as exc:
            log.error(
                "store_append_failed seq=%d count=%d error=%s",
                staged[0].seq,
                len(staged),
                type(exc).__name__,
            )
            raise
        took = time.monotonic() - started
        if took >= SLOW_STORE_APPEND_S:
            # Appends wait on the store: say so, or an outage the store rides out (a broker
            # restarting) looks like a silent stall in this log.
            log.warning(
                "store_append_slow seq=%d count=%d seconds=%.1f", staged[0].seq, len(staged), took
            )
        return positions

    def _stored(
        self, entries: list[LogEntry], positions: list[int], checkpoint: PublishedCheckpoint | None
    ) -> None:
        """Make stored entries durable for readers (caller holds the lock)."""
        self._positions.extend(positions)
        if checkpoint is not None and (
            not self._checkpoints or checkpoint.size > self._checkpoints[-1].size
        ):
            self._remember(checkpoint)
            self._announce(checkpoint)
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
        """If the core is ahead of the store: claim again, then rebuild from what the store
        really holds (an ambiguous failure may have stored the batch; the rebuild keeps it).
        Caller holds the lock and nothing is left to store; on failure the next fold tries
        again."""
        if not self._needs_rebuild or self._fenced:
            return
        try:
            self._claim_and_rebuild()
        except Exception as again:
            log.error("rebuild_failed error=%s; retrying on the next append", type(again).__name__)

    def _wait_ready(self) -> None:
        if not self.ready.is_set():
            raise LedgerStartingError("starting: the ledger is replaying its log")

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
            self.group_commit.wait_turn()
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
        self._announce(cp)
        return cp

    def _publish_loop(self) -> None:
        while not self._stopping.wait(self._every_ms / 1000):
            try:
                with self._lock:
                    if not self._fenced and not self._needs_rebuild:
                        self._publish_checkpoint()
            except Exception as exc:
                log.error("checkpoint_publish_failed error=%s", type(exc).__name__, exc_info=exc)

    def checkpoint(
        self, size: int | None = None, *, publish_now: bool = False
    ) -> PublishedCheckpoint:
        self._wait_ready()
        with self._lock:
            if publish_now:
                if self._fenced:
                    raise FencedError("this server was fenced; it signs no more checkpoints")
                self._publish_checkpoint()
            if size is None:
                if not self._checkpoints:
                    raise CheckpointNotFoundError(
                        "no checkpoint published yet (the ledger is empty)"
                    )
                return self._checkpoints[-1]
            found = self._by_size.get(size)
            if found is None:
                raise CheckpointNotFoundError(f"no checkpoint was published for size {size}")
            return found

    def checkpoints(self) -> list[PublishedCheckpoint]:
        with self._lock:
            return list(self._checkpoints)

    def _covering_checkpoint(self, size: int, *, may_publish: bool = True) -> PublishedCheckpoint:
        """The latest checkpoint, published now if it does not cover `size` entries yet.

        A caller that ``may_publish`` not (a read-only identity: a signature and a store write
        per call would be theirs to order, issue #14) waits for the periodic publisher instead,
        at most two periods and a second; then CheckpointPendingError (retry later).
        """
        latest = self._checkpoints[-1] if self._checkpoints else None
        if (latest is None or latest.size < size) and not may_publish:
            if size > self._durable_size():
                raise OutOfRangeError(
                    f"the log has {self._durable_size()} entries, fewer than {size}"
                )
            wait = 2 * max(self._every_ms, 0) / 1000 + 1.0
            if not self._published.wait_for(
                lambda: bool(self._checkpoints) and self._checkpoints[-1].size >= size, wait
            ):
                every = (
                    f"every {self._every_ms} ms"
                    if self._every_ms > 0
                    else f"every {self._every_entries} entries"
                )
                raise CheckpointPendingError(
                    f"no checkpoint covers {size} entries yet, and this caller may not have one "
                    f"published on demand (it needs 'append' or 'admin'); one is published "
                    f"{every}: retry, or name a tree size that a checkpoint covers",
                    field="tree_size",
                )
            latest = self._checkpoints[-1]
        if latest is None or latest.size < size:
            latest = self._publish_checkpoint()
        if latest is None or latest.size < size:
            raise OutOfRangeError(f"the log has {self._durable_size()} entries, fewer than {size}")
        return latest

    # -- reads and proofs --------------------------------------------------------------------

    def _durable_size(self) -> int:
        return len(self._positions)

    def head(self) -> LogHead:
        with self._lock:
            size = self._durable_size()
            last = self._core.tree.leaf(size - 1) if size else bytes(32)
            cp = self._checkpoints[-1] if self._checkpoints else None
            return LogHead(size, self._core.tree.root(size), last, cp)

    @property
    def ledger_name(self) -> str:
        return self._core.state.ledger

    @property
    def origin(self) -> str:
        return self._origin

    def key_info(self, key_id: bytes) -> KeyInfo | None:
        """The key granted under `key_id` as the ledger knows it now (read without the lock:
        a hint for rate limits, never for a rule)."""
        return self._core.state.keys.get(key_id)

    @property
    def stopping(self) -> bool:
        return self._stopping.is_set()

    def vkey(self) -> VerifierKey:
        self._wait_ready()
        if self._signer is None:
            raise NoGenesisError("no genesis yet: the key name comes from the genesis")
        return VerifierKey(self._signer.vkey, self._signer.name, self._signer.public_key)

    def get(self, seq: int) -> tuple[bytes, bytes]:
        for _, entry_bytes, leaf in self.read(seq, 1):
            return entry_bytes, leaf
        raise EntryNotFoundError(
            f"no entry at seq {seq}; the log has {self._durable_size()}", field="seq"
        )

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
                raise DataLossError(
                    f"the stored record for seq {seq} changed after it was verified"
                )
            yield seq, record.value, leaf
            seq += 1
            if seq >= end:
                return
        raise DataLossError(f"the store no longer holds seq {seq}")

    def wait_for_size(self, size: int, timeout: float) -> int:
        """Block until the log holds more than `size` entries or `timeout` passes."""
        with self._appended:
            if self._durable_size() <= size:
                self._appended.wait(timeout)
            return self._durable_size()

    def inclusion_proof(
        self, seq: int, tree_size: int | None, *, may_publish: bool = True
    ) -> TreeInclusion:
        """A proof of ``seq`` in the tree of ``tree_size`` (unset: the latest checkpoint, which
        a caller that ``may_publish`` has published if none covers ``seq`` yet)."""
        self._wait_ready()
        with self._lock:
            if tree_size is None:
                cp = self._covering_checkpoint(seq + 1, may_publish=may_publish)
                tree_size = cp.size
            self._check_size(tree_size)
            if seq >= tree_size:
                raise OutOfRangeError(
                    f"seq {seq} is not in a tree of size {tree_size}", field="seq"
                )
            tree = self._core.tree
            note = self._by_size[tree_size].cosigned_note if tree_size in self._by_size else ""
        # Outside the lock: the tree's nodes below the durable size never change, and reading
        # them may read tiles back from the store (ledger.tile_store), which must not hold up
        # an append (a kill switch) behind a reader's disk.
        proof = tree.inclusion_proof(seq, tree_size)
        return TreeInclusion(tree_size, tuple(proof), tree.leaf(seq), tree.root(tree_size), note)

    def consistency_proof(
        self, size1: int, size2: int | None, *, may_publish: bool = True
    ) -> TreeConsistency:
        self._wait_ready()
        with self._lock:
            if size2 is None:
                size2 = self._covering_checkpoint(max(size1, 1), may_publish=may_publish).size
            self._check_size(size2)
            if size1 > size2:
                raise OutOfRangeError(f"size1 {size1} is larger than size2 {size2}", field="size1")
            tree = self._core.tree
        # Outside the lock, as inclusion_proof.
        return TreeConsistency(
            size1,
            size2,
            tuple(tree.consistency_proof(size1, size2)),
            tree.root(size1),
            tree.root(size2),
        )

    def tile_hashes(self, ref: tiles.TileRef) -> bytes:
        """A tlog-tiles hash tile of the durable log, read from the tree (ledger.tiles)."""
        self._wait_ready()
        with self._lock:
            size = self._durable_size()
            if not tiles.exists_in(ref, size):
                raise OutOfRangeError(f"{tiles.tile_path(ref)} is beyond the log's {size} entries")
            tree = self._core.tree
        # Outside the lock, as inclusion_proof.
        if isinstance(tree.store, TileNodeStore) and ref.level is not None:
            return tree.store.tile(ref.level, ref.index, ref.width)
        return tiles.tile_hashes(tree, ref)

    def _check_size(self, size: int) -> None:
        if size > self._durable_size():
            raise OutOfRangeError(
                f"tree size {size} is beyond the log's {self._durable_size()} entries",
                field="tree_size",
            )

    def note_for(self, size: int) -> str:
        cp = self._by_size.get(size)
        return cp.cosigned_note if cp else ""

    def stop(self) -> None:
        self._stopping.set()
        with self._appended:
            self._appended.notify_all()
        if self._publisher is not None:
            self._publisher.join(timeout=5)

    def close(self, timeout: float = 10.0) -> None:
        """After stop() and the last append: the writer stores what is folded, then ends."""
        self.group_commit.close(timeout)
        with self._lock:
            self._core.close()

    @property
    def fenced(self) -> bool:
        return self._fenced


def _log_skip(skip: Skip) -> None:
    """A record the replay did not fold: foreign, unless the end shows damage (integrity)."""
    if skip.entry is None:
        log.warning(
            "replay_skip position=%d reason=malformed detail=%r", skip.position, skip.detail
        )
    else:
        log.warning(
            "replay_skip position=%d seq=%d reason=%s field=%s",
            skip.position,
            skip.entry.seq,
            skip.reason,
            skip.field,
        )
