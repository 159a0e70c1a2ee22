"""What the ledger publishes as tiles: the writer's newest checkpoint and the log it covers.

:class:`LedgerTileLog` is the :class:`ledger.tiles_http.TileLog` of a running writer
(:class:`ledger.writer.LedgerServer`): hash tiles come straight from its in-memory Merkle tree,
entry bundles from its store (each record re-checked against the tree by ``LedgerServer.read``).
The checkpoint served, and so the size up to which anything is served, comes from one place,
:meth:`LedgerTileLog.published_checkpoint_text`.
"""

from __future__ import annotations

from ledger.checkpoint import Checkpoint
from ledger.errors import CheckpointNotFoundError
from ledger.signed_note import split_note
from ledger.tiles import TileRef
from ledger.writer import LedgerServer


class LedgerTileLog:
    """The tiles of one running ledger writer."""

    def __init__(self, ledger: LedgerServer) -> None:
        self._ledger = ledger
        self._sized: tuple[str, int] = ("", 0)  # the last note parsed, and its size

    def published_checkpoint_text(self) -> str | None:
        """The checkpoint served at ``checkpoint``: the newest the writer has published (and so
        saved in its store), with the witnesses' cosignatures collected for it so far (the
        ledger's own note unchanged, their lines after it: docs/WITNESS.md). None before the
        first one; LedgerStartingError while it replays."""
        try:
            return self._ledger.checkpoint().cosigned_note
        except CheckpointNotFoundError:
            return None

    def checkpoint_size(self, text: str) -> int:
        last_text, last_size = self._sized
        if text == last_text:
            return last_size
        body, _ = split_note(text)
        size = Checkpoint.parse(body).size
        self._sized = (text, size)
        return size

    def tile_hashes(self, ref: TileRef) -> bytes:
        return self._ledger.tile_hashes(ref)

    def entries(self, start: int, count: int) -> list[bytes]:
        return [entry for _, entry, _ in self._ledger.read(start, count)]
