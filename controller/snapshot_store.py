"""Where the controller's snapshots live: a chain of parts in a SQL database (SQLite by default).

Per log source, ``controller_snapshot_heads`` holds one row (the next store position to read,
the position of the last valid entry, the counts, and ``through``: the number of the last part),
and ``controller_snapshot_parts`` the parts (controller.snapshot_parts): a base, then one part
per snapshot holding what changed since the one before, their bytes in 64 MiB rows of
``controller_snapshot_chunks`` (SQLite refuses a value over 1 GB). The per-entry indexes are
rows of ``controller_snapshot_index_rows`` (controller.index_rows), which a restart does not
read. Writing part N inserts its row and its index rows and moves the head to it in ONE
transaction, so a crash keeps the chain up to N - 1 or up to N.

Compaction merges parts off the fold, in a background thread (or at once, for tests):

* the newest parts, four at a time once four of about the same size follow each other
  (size-tiered: each entry is rewritten a few times, about log4(entries / part size));
* everything into a new base once the parts after the base hold a quarter as many entries as
  the base itself. The new base's packed indexes then replace the controller's in-memory ones
  (``on_base``), so memory does not keep a dict entry for every entry folded since the start.

Each compaction replaces the rows it merged in one transaction, checking they are still there.
A load reads the head, the parts ``1..through`` it names (their numbers and sizes must follow
each other, every part's digest must match), and builds the state; anything else — a missing or
damaged part, a head that disagrees with its parts — means a full replay, as before.

A database written by earlier code holds one whole snapshot per source in ``controller_snapshots``
(controller.snapshot, version 1); it is still read when no head exists, and the first part
written after it is a base, which replaces it.
"""

from __future__ import annotations

import fcntl
import logging
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from controller.errors import SnapshotError
from controller.index_rows import (
    IndexRows,
    delete_rows,
    insert_rows,
    rows_metadata,
    source_id,
)
from controller.snapshot import decode_state
from controller.snapshot_parts import (
    INDEXES,
    ROWS_VERSION,
    Capture,
    Part,
    PartBlobs,
    decode_part,
    encode_part,
    merge_parts,
    part_version,
    state_from_parts,
)
from controller.snapshot_restore import LazyDocs, decode_restored, restore_state
from controller.state import ControllerState
from ledger.store.sqlite import sqlite_engine

log = logging.getLogger("steward.controller.snapshots")

_metadata = sa.MetaData()
head_table = sa.Table(
    "controller_snapshot_heads",
    _metadata,
    sa.Column("source", sa.String(200), primary_key=True),
    sa.Column("position", sa.BigInteger, nullable=False),  # next store position to read
    sa.Column("last_position", sa.BigInteger, nullable=False),  # position of the last valid entry
    sa.Column("size", sa.BigInteger, nullable=False),  # entries folded (= next seq)
    sa.Column("applied", sa.BigInteger, nullable=False),
    sa.Column("invalid", sa.BigInteger, nullable=False),
    sa.Column("through", sa.BigInteger, nullable=False),  # the number of the last part
    sa.Column("taken_at_ms", sa.BigInteger, nullable=False),
)
part_table = sa.Table(
    "controller_snapshot_parts",
    _metadata,
    sa.Column("source", sa.String(200), primary_key=True),
    sa.Column("first", sa.BigInteger, primary_key=True),
    sa.Column("last", sa.BigInteger, nullable=False),
    sa.Column("size_before", sa.BigInteger, nullable=False),
    sa.Column("size", sa.BigInteger, nullable=False),
    sa.Column("length", sa.BigInteger, nullable=False),  # bytes of the part, in `chunks` rows
    sa.Column("chunks", sa.Integer, nullable=False),
)
# A part's bytes, cut in pieces: SQLite refuses a value over 1,000,000,000 bytes, and a base at
# ten million entries is about 1.8 GB.
chunk_table = sa.Table(
    "controller_snapshot_chunks",
    _metadata,
    sa.Column("source", sa.String(200), primary_key=True),
    sa.Column("first", sa.BigInteger, primary_key=True),
    sa.Column("chunk", sa.Integer, primary_key=True),
    sa.Column("data", sa.LargeBinary, nullable=False),
)
CHUNK_BYTES = 64 * 2**20
# A part's evidence (version 2), apart from its sections so that a restart does not read it:
# the proposals' documents, read when the first of them is (controller.snapshot_restore).
docs_table = sa.Table(
    "controller_snapshot_docs",
    _metadata,
    sa.Column("source", sa.String(200), primary_key=True),
    sa.Column("first", sa.BigInteger, primary_key=True),
    sa.Column("chunk", sa.Integer, primary_key=True),
    sa.Column("data", sa.LargeBinary, nullable=False),
)
# Version 1: one whole snapshot per source (read, never written now).
legacy_table = sa.Table(
    "controller_snapshots",
    _metadata,
    sa.Column("source", sa.String(200), primary_key=True),
    sa.Column("position", sa.BigInteger, nullable=False),
    sa.Column("last_position", sa.BigInteger, nullable=False),
    sa.Column("size", sa.BigInteger, nullable=False),
    sa.Column("applied", sa.BigInteger, nullable=False),
    sa.Column("invalid", sa.BigInteger, nullable=False),
    sa.Column("state", sa.LargeBinary, nullable=False),
    sa.Column("taken_at_ms", sa.BigInteger, nullable=False),
)

# Four parts whose entry counts have the same base-4 magnitude are merged into one.
TIER_FANOUT = 4
# Everything is merged into a new base once the later parts hold this share of its entries
# (and at least REBASE_MIN_ENTRIES): each entry is then rewritten a bounded number of times.
REBASE_SHARE = 0.25
REBASE_MIN_ENTRIES = 1024


@dataclass(frozen=True)
class Snapshot:
    position: int
    last_position: int
    state: ControllerState


@dataclass(frozen=True)
class PartRow:
    first: int
    last: int
    size_before: int
    size: int

    @property
    def entries(self) -> int:
        return self.size - self.size_before


def compaction_plan(rows: list[PartRow]) -> list[PartRow]:
    """The run of consecutive parts to merge next (empty: none). Pure, for the tests."""
    if len(rows) < 2 or rows[0].size_before != 0:
        return []
    later = sum(r.entries for r in rows[1:])
    if later >= REBASE_MIN_ENTRIES and later >= REBASE_SHARE * rows[0].entries:
        return rows
    tail: list[PartRow] = []
    for r in reversed(rows[1:]):
        if tail and _tier(r) != _tier(tail[-1]):
            break
        tail.append(r)
    return list(reversed(tail)) if len(tail) >= TIER_FANOUT else []


def _tier(row: PartRow) -> int:
    return max(row.entries, 1).bit_length() // 2


def _insert_part(
    conn: sa.Connection,
    source: str,
    first: int,
    last: int,
    size_before: int,
    size: int,
    blobs: PartBlobs,
) -> None:
    blob = blobs.main
    chunks = [blob[i : i + CHUNK_BYTES] for i in range(0, len(blob), CHUNK_BYTES)] or [b""]
    conn.execute(
        part_table.insert().values(
            source=source,
            first=first,
            last=last,
            size_before=size_before,
            size=size,
            length=len(blob),
            chunks=len(chunks),
        )
    )
    for i, data in enumerate(chunks):
        conn.execute(chunk_table.insert().values(source=source, first=first, chunk=i, data=data))
    docs = blobs.docs
    for i in range(0, len(docs), CHUNK_BYTES):
        conn.execute(
            docs_table.insert().values(
                source=source, first=first, chunk=i // CHUNK_BYTES, data=docs[i : i + CHUNK_BYTES]
            )
        )


def _read_docs(conn: sa.Connection, source: str, first: int) -> bytes:
    """A part's evidence (version 2), from its chunks (its meta's digest checks them)."""
    pieces = conn.execute(
        sa.select(docs_table.c.data)
        .where(docs_table.c.source == source, docs_table.c.first == first)
        .order_by(docs_table.c.chunk)
    ).all()
    return b"".join(bytes(p[0]) for p in pieces)


def _read_blobs(conn: sa.Connection, source: str, row: sa.Row[Any]) -> PartBlobs:
    """A part's sections and its evidence."""
    return PartBlobs(_read_blob(conn, source, row), _read_docs(conn, source, int(row.first)))


def _read_blob(conn: sa.Connection, source: str, row: sa.Row[Any]) -> bytes:
    """A part's bytes from its chunks; SnapshotError if one is missing or the length differs."""
    pieces = conn.execute(
        sa.select(chunk_table.c.chunk, chunk_table.c.data)
        .where(chunk_table.c.source == source, chunk_table.c.first == row.first)
        .order_by(chunk_table.c.chunk)
    ).all()
    if [int(p[0]) for p in pieces] != list(range(row.chunks)):
        raise SnapshotError(
            f"part {row.first} has chunks {[int(p[0]) for p in pieces]}, expected {row.chunks}"
        )
    blob = b"".join(bytes(p[1]) for p in pieces)
    if len(blob) != row.length:
        raise SnapshotError(f"part {row.first} is {len(blob)} bytes, its row says {row.length}")
    return blob


def _exclusive_lock(path: str) -> Any:
    """An open lock file beside the database, locked (flock, released when the process ends,
    even by SIGKILL); SnapshotError naming the file if another process holds it."""
    lock_path = f"{path}.lock"
    handle = open(lock_path, "a+")  # noqa: SIM115 - held open for the store's life
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.close()
        raise SnapshotError(
            f"snapshot database {path} is in use by another controller (lock {lock_path}); "
            "give each controller its own --snapshot-db"
        ) from None
    except OSError as exc:
        handle.close()
        raise SnapshotError(f"cannot lock snapshot database {path} ({lock_path}): {exc}") from exc
    return handle


class SnapshotStore:
    """Snapshot chains in a SQL database (a SQLite file by default), one per log source."""

    def __init__(
        self, url_or_path: str | Path, *, background: bool = True, exclusive: bool = False
    ) -> None:
        text = str(url_or_path)
        # `exclusive` (what steward-controller asks): a lock beside a SQLite file, held until
        # close, so that no second controller writes the same file. A state restored from
        # version 2 parts reads its indexes from the rows its own parts wrote; another writer's
        # rows (or its base, deleting them) would be taken as this controller's.
        self._lock_file = _exclusive_lock(text) if exclusive and "://" not in text else None
        self.engine = sa.create_engine(text) if "://" in text else sqlite_engine(text)
        _metadata.create_all(self.engine)
        rows_metadata.create_all(self.engine)
        self._rows: dict[str, IndexRows] = {}  # per source, the lookups of its index rows
        # Per source, the evidence of the parts a load restored proposals from (read lazily).
        self._restored: dict[str, dict[int, LazyDocs]] = {}
        self._rows_lock = threading.Lock()
        # Held from a capture to its bookkeeping after the commit, and by a compaction from its
        # check that its parts are still there to its swap of the in-memory base: the chain
        # changes one step at a time. Always taken before the replayer's fold lock.
        self.writing = threading.Lock()
        self.background = background
        self._wake = threading.Condition()
        self._todo: dict[str, Callable[[Part], None]] = {}
        self._closed = False
        self._busy = False
        self._thread: threading.Thread | None = None
        self.compactions = 0  # merges committed (for the bench and the tests)

    # -- reading ----------------------------------------------------------------------------

    def load(self, source: str) -> Snapshot | None:
        # `writing`: no compaction replaces the parts between their reading and the note of
        # the evidence the restored state will read from them (_keep_docs).
        with self.writing:
            return self._load(source)

    def _load(self, source: str) -> Snapshot | None:
        with self.engine.connect() as conn:
            head = conn.execute(sa.select(head_table).where(head_table.c.source == source)).first()
            if head is None:
                return self._load_legacy(conn, source)
            rows = conn.execute(
                sa.select(part_table)
                .where(part_table.c.source == source, part_table.c.first <= head.through)
                .order_by(part_table.c.first)
            ).all()
            try:
                mains = [_read_blob(conn, source, r) for r in rows]
                if mains and all(part_version(m) == ROWS_VERSION for m in mains):
                    # Version 2: the proposals stay in columns, their evidence in the database
                    # until it is read (controller.snapshot_restore).
                    restored = [
                        decode_restored(
                            m,
                            self._docs_loader(source, int(r.first)),
                            lambda why: self._drop_head(source, why),
                        )
                        for m, r in zip(mains, rows, strict=True)
                    ]
                    parts: list[Any] = [x.cols for x in restored]
                else:
                    restored = []
                    parts = [
                        decode_part(PartBlobs(m, _read_docs(conn, source, int(r.first))))
                        for m, r in zip(mains, rows, strict=True)
                    ]
            except SnapshotError as exc:
                log.warning(
                    "snapshot unreadable, replaying from the start source=%s error=%s", source, exc
                )
                return None
        try:
            for r, p in zip(rows, parts, strict=True):
                if (r.first, r.last, r.size_before, r.size) != (
                    p.first,
                    p.last,
                    p.size_before,
                    p.size,
                ):
                    raise SnapshotError(
                        f"part row {r.first}..{r.last} holds part {p.first}..{p.last}"
                    )
            if not parts or parts[-1].last != head.through:
                raise SnapshotError(
                    f"head names part {head.through}, the parts end at "
                    f"{parts[-1].last if parts else 'none'}"
                )
            if restored:
                state = restore_state(restored, self.index_rows(source))
                with self._rows_lock:
                    self._restored[source] = {x.cols.first: x.docs for x in restored}
            else:
                lookups = (
                    self.index_rows(source) if parts and parts[0].index_rows is not None else None
                )
                state = state_from_parts(parts, lookups)
        except SnapshotError as exc:  # a damaged chain only costs a full replay
            log.warning(
                "snapshot unreadable, replaying from the start source=%s error=%s", source, exc
            )
            return None
        return self._checked(head, state, source)

    def _docs_loader(self, source: str, first: int) -> Callable[[], bytes]:
        def load() -> bytes:
            with self.engine.connect() as conn:
                return _read_docs(conn, source, first)

        return load

    def _keep_docs(self, source: str, firsts: Iterable[int] | None) -> None:
        """Load, before their rows are deleted, the evidence of restored parts whose
        proposals may not have been read yet (all of the source's with None)."""
        with self._rows_lock:
            live = self._restored.get(source, {})
            wanted = [docs for first, docs in live.items() if firsts is None or first in firsts]
        for docs in wanted:
            docs.get()

    def read_evidence(self, source: str) -> None:
        """Read now (no lock of the caller's held) the evidence of the parts the last load of
        `source` restored proposals from, so that no fold or plan reads it with the fold lock
        held (760 MB at ten million entries). Nothing after the first call."""
        self._keep_docs(source, None)

    def index_rows(self, source: str) -> IndexRows:
        """The lookups of `source`'s index rows (one connection per source, kept open)."""
        with self._rows_lock:
            found = self._rows.get(source)
            if found is None:
                with self.engine.begin() as conn:
                    sid = source_id(conn, source)
                found = IndexRows(
                    self.engine, source, sid, lambda why: self._drop_head(source, why)
                )
                self._rows[source] = found
            return found

    def _drop_head(self, source: str, why: str) -> None:
        """A damaged index row: without its head the chain is not read, and the next start
        replays the log."""
        log.error("snapshot dropped: %s source=%s", why, source)
        with self.engine.begin() as conn:
            conn.execute(head_table.delete().where(head_table.c.source == source))

    def _load_legacy(self, conn: sa.Connection, source: str) -> Snapshot | None:
        row = conn.execute(sa.select(legacy_table).where(legacy_table.c.source == source)).first()
        if row is None:
            return None
        try:
            state = decode_state(bytes(row.state))
        except SnapshotError as exc:
            log.warning(
                "snapshot unreadable, replaying from the start source=%s error=%s", source, exc
            )
            return None
        return self._checked(row, state, source)

    @staticmethod
    def _checked(row: sa.Row[object], state: ControllerState, source: str) -> Snapshot | None:
        held = (state.ledger.size, state.applied, state.invalid)
        said = (row.size, row.applied, row.invalid)  # type: ignore[attr-defined]
        if held != said:
            log.warning(
                "snapshot row says size/applied/invalid=%s, its state holds %s; replaying "
                "from the start source=%s",
                said,
                held,
                source,
            )
            return None
        return Snapshot(int(row.position), int(row.last_position), state)  # type: ignore[attr-defined]

    def through(self, source: str) -> int | None:
        """The number of the last part of `source`'s chain, or None when it has none."""
        with self.engine.connect() as conn:
            value = conn.execute(
                sa.select(head_table.c.through).where(head_table.c.source == source)
            ).scalar()
        return None if value is None else int(value)

    def part_rows(self, source: str) -> list[PartRow]:
        with self.engine.connect() as conn:
            rows = conn.execute(
                sa.select(
                    part_table.c.first,
                    part_table.c.last,
                    part_table.c.size_before,
                    part_table.c.size,
                )
                .where(part_table.c.source == source)
                .order_by(part_table.c.first)
            ).all()
        return [PartRow(int(r[0]), int(r[1]), int(r[2]), int(r[3])) for r in rows]

    # -- writing (with `writing` held) --------------------------------------------------------

    def write_part(
        self, source: str, c: Capture, blob: PartBlobs, position: int, last_position: int
    ) -> None:
        """Part `c.part` and the head that names it, in one transaction; a full part replaces
        the whole chain (and a version 1 snapshot)."""
        head = {
            "position": position,
            "last_position": last_position,
            "size": c.size,
            "applied": c.applied,
            "invalid": c.invalid,
            "through": c.part,
            "taken_at_ms": time.time_ns() // 1_000_000,
        }
        if c.full:
            self._keep_docs(source, None)
        with self.engine.begin() as conn:
            if c.full:
                conn.execute(part_table.delete().where(part_table.c.source == source))
                conn.execute(chunk_table.delete().where(chunk_table.c.source == source))
                conn.execute(docs_table.delete().where(docs_table.c.source == source))
                conn.execute(legacy_table.delete().where(legacy_table.c.source == source))
            if c.rows:
                sid = source_id(conn, source)
                if c.full:
                    delete_rows(conn, sid)
                for ix, (name, *_) in enumerate(INDEXES):
                    insert_rows(conn, sid, ix, c.rows[name])
            _insert_part(conn, source, c.part, c.part, c.size_before, c.size, blob)
            updated = conn.execute(
                head_table.update().where(head_table.c.source == source).values(**head)
            ).rowcount
            if not updated:
                conn.execute(head_table.insert().values(source=source, **head))

    # -- compaction ---------------------------------------------------------------------------

    def after_write(self, source: str, on_base: Callable[[Part], None]) -> None:
        """A part was written: compact in the background (or now, without a thread)."""
        if not self.background:
            while self.compact(source, on_base):
                pass
            return
        with self._wake:
            if self._closed:
                return
            self._todo[source] = on_base
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._compactor, name="snapshot-compaction", daemon=True
                )
                self._thread.start()
            self._wake.notify_all()

    def _compactor(self) -> None:
        while True:
            with self._wake:
                while not self._todo and not self._closed:
                    self._wake.wait()
                if self._closed:
                    return
                source, on_base = self._todo.popitem()
                self._busy = True
            try:
                while not self._closed and self.compact(source, on_base):
                    pass
            except Exception:  # a failed compaction leaves the chain as it was
                log.exception("snapshot compaction failed source=%s", source)
            finally:
                with self._wake:
                    self._busy = False
                    self._wake.notify_all()

    def wait_idle(self, timeout: float = 60.0) -> bool:
        """Wait until no compaction is queued or running (for the bench and the tests)."""
        with self._wake:
            return self._wake.wait_for(lambda: not self._todo and not self._busy, timeout)

    def compact(self, source: str, on_base: Callable[[Part], None]) -> bool:
        """Merge the run of parts `compaction_plan` names; True when it merged one."""
        run = compaction_plan(self.part_rows(source))
        if not run:
            return False
        with self.engine.connect() as conn:
            rows = conn.execute(
                sa.select(part_table)
                .where(
                    part_table.c.source == source,
                    part_table.c.first >= run[0].first,
                    part_table.c.first <= run[-1].first,
                )
                .order_by(part_table.c.first)
            ).all()
            merged = merge_parts([decode_part(_read_blobs(conn, source, r)) for r in rows])
        blob = encode_part(merged)
        with self.writing:
            # A state restored from these parts may not have read their evidence yet: it is
            # read now, before its rows go (a merged part keeps the number of its first).
            self._keep_docs(source, {r.first for r in run})
            with self.engine.begin() as conn:
                still = conn.execute(
                    sa.select(part_table.c.first, part_table.c.last)
                    .where(
                        part_table.c.source == source,
                        part_table.c.first >= run[0].first,
                        part_table.c.first <= run[-1].first,
                    )
                    .order_by(part_table.c.first)
                ).all()
                if [(int(a), int(b)) for a, b in still] != [(r.first, r.last) for r in run]:
                    return False  # a base was written meanwhile: these parts are gone
                for table in (part_table, chunk_table, docs_table):
                    conn.execute(
                        table.delete().where(
                            table.c.source == source,
                            table.c.first >= run[0].first,
                            table.c.first <= run[-1].first,
                        )
                    )
                _insert_part(
                    conn, source, merged.first, merged.last, merged.size_before, merged.size, blob
                )
            self.compactions += 1
            log.info(
                "snapshot parts merged source=%s parts=%d..%d entries=%d bytes=%d",
                source,
                merged.first,
                merged.last,
                merged.entries,
                blob.size,
            )
            if merged.size_before == 0:
                on_base(merged)
        return True

    def close(self) -> None:
        with self._wake:
            self._closed = True
            self._wake.notify_all()
            thread = self._thread
        if thread is not None:
            thread.join(timeout=60)
        with self._rows_lock:
            for rows in self._rows.values():
                rows.close()
            self._rows.clear()
        self.engine.dispose()
        if self._lock_file is not None:
            self._lock_file.close()  # releases the lock
            self._lock_file = None


__all__ = [
    "PartRow",
    "Snapshot",
    "SnapshotStore",
    "chunk_table",
    "compaction_plan",
    "docs_table",
    "head_table",
    "legacy_table",
    "part_table",
]
