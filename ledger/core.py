"""The ledger's in-memory core: the rules state, the Merkle tree and the next position.

It decides, without I/O, whether a signed event may be appended and what entry it becomes.
The server wraps it with a store (durability), checkpoints and the gRPC API; tests and the
vector generator use it on its own.
"""

from __future__ import annotations

import hashlib
from array import array
from collections.abc import Callable, Container, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

from ledger.column_index import ColumnIndex
from ledger.errors import StewardError
from ledger.formats import (
    EVENT_ID_SIZE,
    EventBody,
    LogEntry,
    ReceivedEvent,
    SignedEvent,
    decode_body,
    encode_signed_event,
    make_entry,
)
from ledger.merkle import HASH_SIZE, MerkleTree
from ledger.quick_init import quick_init
from ledger.rules import (
    RuleViolationError,
    VerifiedSignature,
    Violation,
    check,
    signature_order_violation,
)
from ledger.state import LedgerState

if TYPE_CHECKING:  # the server hands one in; the core itself does no I/O
    from ledger.spilled_index import ScratchIndexes


@quick_init
@dataclass(frozen=True)
class Receipt:
    seq: int
    leaf_hash: bytes
    received_at: int
    duplicate: bool = False  # True when the same event (the same body bytes) was already in the log


class DuplicateEventIdError(StewardError):
    """The event id is in the log with a different body."""

    def __init__(self, event_id: bytes, seq: int) -> None:
        super().__init__(f"event_id {event_id.hex()} is already at seq {seq} with a different body")
        self.event_id = event_id
        self.seq = seq


def event_digest(event: SignedEvent | ReceivedEvent) -> bytes:
    """The SHA-256 of a signed event's encoding (body and signatures)."""
    encoded = event.encoding() if isinstance(event, ReceivedEvent) else encode_signed_event(event)
    return hashlib.sha256(encoded).digest()


def body_digest(body_bytes: bytes) -> bytes:
    """What makes two submissions "the same event" for idempotency: the body bytes signed.

    Not the signatures: they attest the body, and a retry may carry another valid set (a
    co-signer added, one left out) or a bystander may have submitted a subset first. Either
    way the event is in the log, so the retry gets the original receipt and the entry keeps the
    signatures it was first accepted with (docs/FORMAT.md "One event, one encoding").
    """
    return hashlib.sha256(body_bytes).digest()


class MemorySeqColumns:
    """Per seq: the leaf hash, the body digest and the receive time, as packed columns.

    A Receipt and a digest per entry in dicts cost 321 bytes per entry (tracemalloc, 100,000
    entries); these columns cost 72. A server keeps them on disk instead
    (ledger.spilled_index.SpilledSeqColumns, the same interface).
    """

    def __init__(self) -> None:
        self._leaf_hashes = bytearray()  # 32 bytes per seq
        self._digests = bytearray()  # 32 bytes per seq: body_digest of its event
        self._received_at = array("q")  # per seq

    def __len__(self) -> int:
        return len(self._received_at)

    def append(self, leaf: bytes, digest: bytes, received_at: int) -> None:
        self._leaf_hashes += leaf
        self._digests += digest
        self._received_at.append(received_at)

    def __getitem__(self, seq: int) -> tuple[bytes, bytes, int]:
        if not 0 <= seq < len(self._received_at):
            raise IndexError(f"seq {seq} of {len(self._received_at)}")
        at = seq * HASH_SIZE
        return (
            bytes(self._leaf_hashes[at : at + HASH_SIZE]),
            bytes(self._digests[at : at + HASH_SIZE]),
            self._received_at[seq],
        )


class SeqColumns(Protocol):
    def __len__(self) -> int: ...
    def append(self, leaf: bytes, digest: bytes, received_at: int) -> None: ...
    def __getitem__(self, seq: int) -> tuple[bytes, bytes, int]: ...


class LedgerCore:
    def __init__(
        self,
        *,
        keep_entries: bool = False,
        tree: MerkleTree | None = None,
        scratch: ScratchIndexes | None = None,
    ) -> None:
        # The maps with a key per entry, and the columns with a value per seq, grow with the
        # whole history. In memory they are packed (ledger.column_index: a fraction of the
        # dicts' memory); a server hands in `scratch` and keeps them on disk
        # (ledger.spilled_index), with every proposal but the most recently used ones: its
        # memory then holds what is in flight, not the history.
        self.scratch = scratch
        self.state: LedgerState
        self._columns: SeqColumns
        if scratch is None:
            self.state = LedgerState(
                event_ids=ColumnIndex.ints(EVENT_ID_SIZE),
                entry_types=ColumnIndex.names(HASH_SIZE),
                entry_seqs=ColumnIndex.ints(HASH_SIZE),
            )
            self._columns = MemorySeqColumns()
        else:
            from ledger.spilled_index import spilled_state  # the server's; the core does no I/O

            self.state = spilled_state(scratch)
            self._columns = scratch.seq_columns()
        # Only tests and the vector generator keep entries; the server reads its store.
        self.entries: list[LogEntry] | None = [] if keep_entries else None
        # Empty: the replay fills it (a server on SQLite hands in one kept as tiles).
        self.tree = MerkleTree() if tree is None else tree
        if self.tree.size:
            raise ValueError(f"a new core needs an empty tree, this one has {self.tree.size}")

    def close(self) -> None:
        """Remove the scratch indexes, if any (the core is unusable after)."""
        if self.scratch is not None:
            self.scratch.close()

    @property
    def size(self) -> int:
        return self.state.size

    def replay(self, entries: Iterable[LogEntry]) -> None:
        """Rebuild from entries already in the log (each is re-checked: storage is untrusted)."""
        for e in entries:
            violation = check(self.state, e)
            if violation is not None:
                raise RuleViolationError(violation)
            self.commit(e)

    def existing_receipt(
        self, event: SignedEvent, *, body: EventBody | None = None, digest: bytes | None = None
    ) -> Receipt | None:
        """The original receipt when this event (the same body bytes) is already in the log,
        whatever signatures the retry carries (see :func:`body_digest`).

        Raises DuplicateEventIdError when the id is taken by a different body. `body` and `digest`,
        when given, are ``decode_body(event.body)`` and ``body_digest(event.body)``.
        """
        body = decode_body(event.body) if body is None else body
        seq = self.state.event_ids.get(body.event_id)
        if seq is None:
            return None
        leaf, stored_digest, received_at = self._columns[seq]
        if stored_digest != (body_digest(event.body) if digest is None else digest):
            raise DuplicateEventIdError(body.event_id, seq)
        return Receipt(seq, leaf, received_at, duplicate=True)

    def prepare(
        self,
        event: SignedEvent | ReceivedEvent,
        received_at: int,
        *,
        seq: int | None = None,
        prev: bytes | None = None,
        state: LedgerState | None = None,
        body: EventBody | None = None,
        verified: Container[VerifiedSignature] = (),
    ) -> LogEntry:
        """The entry `event` becomes next; raises RuleViolationError (nothing changes) if refused.

        A ReceivedEvent lends the entry the bytes it came in (``make_entry``).
        `verified`: signatures the caller already checked with Ed25519 (rules.check trusts
        only their cryptography; who may sign is still judged on the state).
        """
        state = state or self.state
        e = make_entry(
            state.size if seq is None else seq,
            state.last_hash if prev is None else prev,
            event,
            received_at,
            body,
        )
        violation: Violation | None = check(state, e, verified)
        if violation is not None:
            raise RuleViolationError(violation)
        return e

    def commit(self, e: LogEntry, *, digest: bytes | None = None) -> Receipt:
        """Fold a prepared entry; `digest`, when given, is the body_digest of its event."""
        if e.entry.seq != len(self._columns):  # the columns are indexed by seq
            raise ValueError(f"entry seq {e.entry.seq}, expected {len(self._columns)}")
        self.state.apply(e)
        self.tree.append(e.leaf_hash)
        if self.entries is not None:
            self.entries.append(e)
        if digest is None:
            digest = body_digest(e.entry.body)
        self._columns.append(e.leaf_hash, digest, e.entry.received_at)
        return Receipt(e.entry.seq, e.leaf_hash, e.entry.received_at)

    def append(self, event: SignedEvent, clock: Callable[[], int]) -> Receipt:
        """Check and fold one event in memory (no store): for tests and vectors."""
        order = signature_order_violation(event.signatures)  # before the retry lookup, as staging
        if order is not None:
            raise RuleViolationError(order)
        existing = self.existing_receipt(event)
        if existing is not None:
            return existing
        return self.commit(self.prepare(event, clock()))
