"""The log store: an append-only sequence of opaque records.

A store knows nothing about signatures or rules. It holds `(key, value)` records at increasing
positions; the ledger server puts an event id in the key and an entry's single-object encoding
in the value. Readers decode and verify every record themselves, because storage is untrusted
(docs/DESIGN.md §2): a record someone wrote straight into Kafka is still returned by `read`.

Positions are backend-specific and only ordered: SQLite numbers records 0, 1, 2 ...; Kafka uses
partition offsets, which skip transaction markers. `end_position()` is one past the last
committed record, so `read(store.end_position())` is empty until something is appended.
"""

from __future__ import annotations

import abc
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

from ledger.errors import StoreError
from ledger.tile_store import TileStorage


@dataclass(frozen=True)
class StoredRecord:
    position: int
    key: bytes
    value: bytes


@dataclass(frozen=True)
class StoredCheckpoint:
    """A checkpoint note as the ledger signed it, and the witness cosignature lines kept for
    it since (added later, each a signed-note signature line; the note's bytes never change)."""

    size: int
    note: str
    cosignatures: tuple[str, ...] = ()


class LogStore(abc.ABC):
    """Contract every backend passes (tests/contract/store_contract.py)."""

    @abc.abstractmethod
    def append(
        self, records: Sequence[tuple[bytes, bytes]], checkpoint: tuple[int, str] | None = None
    ) -> list[int]:
        """Append a batch atomically and durably; return the positions assigned, in order.

        All or nothing: on any error no record of the batch becomes visible to readers.
        `checkpoint`, when given, is a (tree size, signed note) kept as `save_checkpoint`
        would keep it, in the same transaction: the batch and the note land together or not
        at all (one store round trip instead of two; the note is for the tree the batch ends).
        Raises FencedError when another writer has taken over, StoreUnavailableError when the
        backend cannot be reached (the caller may retry the same batch).
        """

    @abc.abstractmethod
    def read(self, start: int = 0, limit: int | None = None) -> Iterator[StoredRecord]:
        """Committed records at positions >= start, in order, at most `limit` of them."""

    @abc.abstractmethod
    def follow(self, start: int = 0, *, idle_timeout: float = 0.5) -> Iterator[StoredRecord | None]:
        """Like read, then keeps waiting for new records forever.

        Yields None whenever `idle_timeout` seconds pass without a record, so the caller can
        check for cancellation; it never returns by itself.
        """

    @abc.abstractmethod
    def end_position(self) -> int:
        """One past the position of the last committed record (0 when empty)."""

    @abc.abstractmethod
    def save_checkpoint(self, size: int, note: str) -> None:
        """Keep a signed checkpoint note for tree size `size` (all are kept)."""

    @abc.abstractmethod
    def checkpoints(self) -> list[StoredCheckpoint]:
        """Every saved checkpoint, oldest first, with the cosignatures kept for it."""

    def add_cosignatures(self, size: int, note: str, lines: Sequence[str]) -> None:
        """Keep witness cosignature lines for the saved checkpoint `note` of size `size`.

        `lines` are every cosignature the checkpoint carries now; those kept already are not
        kept twice. Adds to what is kept; never rewrites the note itself, so a crash half-way
        leaves the signed checkpoint as it was. A store that keeps none (a read-only view)
        says so.
        """
        raise StoreError(f"{type(self).__name__} keeps no witness cosignatures")

    def tile_storage(self) -> TileStorage | None:
        """Where the ledger keeps its Merkle tree as tlog-tiles (ledger.tile_store), or None
        when this backend keeps none: the writer then holds the tree in memory."""
        return None

    @abc.abstractmethod
    def close(self) -> None:
        """Release connections; the store is unusable afterwards."""
