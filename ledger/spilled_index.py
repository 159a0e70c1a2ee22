"""The per-entry indexes of a ledger server kept on disk, in a scratch SQLite database.

The rules state has four maps with a key per entry of the log (``event_ids``, ``entry_types``,
``entry_seqs``, ``evals``: ledger.state), and the core three columns with a value per seq (leaf
hash, body digest, receive time: what an idempotent retry is answered from). Even packed
(ledger.column_index) they cost about 214 bytes per entry: 2 GiB at ten million entries, all
of it history. Issue #19 asks that the server's memory grow with live state instead.

So the server keeps them in a :class:`ScratchIndexes` (``entry_seqs`` and ``entry_types`` in
one table, :class:`SpilledEntryIndex`): a SQLite database in a file created in
the scratch directory (``--scratch-dir``; by default the system's, ``TMPDIR`` or /tmp) and
unlinked as soon as it is open, so nothing else can open it and it is gone with the process,
however that ends. Its page cache is a few MB. What was added recently sits in memory in
front of each table: a map's newest :data:`FLUSH_AT` keys, written to the table a slice of
neighbouring keys at a time while the next ones gather (:class:`SpilledMap`), because a
random key costs a page read and written whole; the newest :data:`SEQ_FLUSH_AT` per-seq rows
(:class:`SpilledSeqColumns`). A lookup tries memory, then the keys found in the table lately
(:data:`FOUND_KEYS`), then the table. The event ids, looked up for every event
submitted and nearly always absent, also have a :class:`ledger.key_filter.KeyFilter` that
rules most misses out without a query. Those two took a Kafka ingest from 139 to 94 µs of
server CPU per event (bench.ingest, 2026-12-07: 3.5 queries per event before, 6 µs each at
200,000 keys and more as the table outgrows the page cache). The same file
holds the proposals but for the most recently used (:class:`SpilledObjects`), and, for a store
that keeps none, the tree's tiles (:class:`ScratchTileStorage`); :func:`spilled_state` is the
empty rules state the writer and the projector fold into.

Why scratch, rebuilt at every start, rather than tables in the ledger's store: a server
replays and re-checks its whole log at every start anyway (ledger.integrity), so the index is
built from entries it has just verified and is never trusted from disk, and it works the same
on every store (SQLite, Kafka). No journal and no fsync: a crash loses only this file, which
nobody reads again. A directory that cannot hold it is found at start, never at an append.

Thread safety: one connection, used under a lock (the writer calls under its own lock;
readers of the state may call from other threads).
"""

from __future__ import annotations

import json
import os
import pickle
import sqlite3
import tempfile
import threading
from collections import OrderedDict
from collections.abc import Iterator, MutableMapping, Sequence
from pathlib import Path
from typing import Any, Generic, TypeVar

from ledger.errors import ConfigError
from ledger.key_filter import FIRST_LAYER_KEYS, KeyFilter
from ledger.merkle import HASH_SIZE
from ledger.model import PAYLOAD_TYPES
from ledger.state import LedgerState
from ledger.tile_store import StoredTile

__all__ = [
    "FIRST_FLUSH_AT",
    "FLUSH_AT",
    "FOUND_KEYS",
    "GENERATION_SHARE",
    "HOT_OBJECTS",
    "SEQ_FLUSH_AT",
    "WRITE_KEYS",
    "ScratchIndexes",
    "ScratchTileStorage",
    "SpilledEntryIndex",
    "SpilledMap",
    "SpilledObjects",
    "SpilledSeqColumns",
    "spilled_state",
]

V = TypeVar("V")

FLUSH_AT = 262_144
"""The most additions a map holds in memory before it writes them to its table (a generation).

The keys are random (hashes, event ids), so a batch of them lands on as many leaf pages of the
B-tree as it has keys once the table has millions, and each page is read and written whole:
at ten million keys a batch of 2,048 sorted keys wrote 5.2 KB to the file per key (a 40-byte
row) and cost 6.1 µs a key, most of it in the kernel copying pages. A generation of 262,144
written in slices of neighbouring keys puts about two keys on each page a slice touches: 1.6 KB
written and 2.5 µs a key (2026-12-08, 10,000,000 keys in two tables, one process; 65,536: 3.4
KB and 4.0 µs). Memory: about 150 bytes a key held, at most two generations."""

GENERATION_SHARE = 32
"""A server's map holds a generation of one 32nd of the keys in its table (between
:data:`FIRST_FLUSH_AT` and :data:`FLUSH_AT`): the pages a key costs depend on the table's size
over the generation's, so that ratio is what is kept, and a short log holds little in memory.
The most, 262,144, is reached at 8.4 million keys."""

FIRST_FLUSH_AT = 2048
"""The smallest generation: what a map holds while its table is small enough to be cheap."""

WRITE_KEYS = 1024
"""Keys a slice of a generation holds on average: one statement, one stretch of the fold."""

SEQ_FLUSH_AT = 2048
"""Per-seq rows held in memory before they are written: appended in seq order, they fill each
page in turn, so a bigger batch would buy nothing."""

FOUND_KEYS = 4096
"""Keys read back from a table that each map keeps in memory (values never change, so a copy
stays right): the proposals an ingest refers to again and again are found without a query."""

HOT_OBJECTS = 4096
"""Objects a :class:`SpilledObjects` keeps in memory (the most recently used): at about 4.3 KB
a proposal (tracemalloc, 100,000 generated entries), 17 MB."""

CACHE_KIB = 4096
"""SQLite's page cache for the whole scratch database, per connection (KiB)."""


class ScratchIndexes:
    """A private temporary on-disk SQLite database holding a server's per-entry indexes."""

    def __init__(
        self,
        directory: str | Path | None = None,
        *,
        cache_kib: int = CACHE_KIB,
        flush_at: int = FLUSH_AT,
        hot_objects: int = HOT_OBJECTS,
        found_keys: int = FOUND_KEYS,
        first_filter_keys: int = FIRST_LAYER_KEYS,
    ) -> None:
        # How many additions each map holds in memory, how many objects, and how many keys
        # found in a table (tests make them tiny, so that lookups go to the tables); and the
        # first layer of a filtered map's KeyFilter.
        self.flush_at = flush_at
        self.hot_objects = hot_objects
        self.found_keys = found_keys
        self.first_filter_keys = first_filter_keys
        where = str(directory) if directory is not None else tempfile.gettempdir()
        try:
            fd, path = tempfile.mkstemp(prefix="steward-scratch-", suffix=".sqlite", dir=where)
        except OSError as exc:
            raise ConfigError(
                f"the scratch directory {where} cannot hold the server's indexes "
                f"({exc.strerror or exc}); give a writable one with --scratch-dir"
            ) from exc
        try:
            self._conn = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
            for pragma in (
                "journal_mode=OFF",  # no journal file beside it: SQLite never needs its name
                "synchronous=OFF",
                f"cache_size=-{int(cache_kib)}",
                "temp_store=MEMORY",  # a pod's root file system is read-only
            ):
                self._conn.execute(f"PRAGMA {pragma}")
            self._conn.execute("CREATE TABLE created (x)")  # the file is SQLite's now
        finally:
            # Unlinked while open: no other process can open it by name, and the space is
            # freed when the last handle closes, a crash included.
            os.close(fd)
            os.unlink(path)
        self.lock = threading.Lock()
        self._closed = False

    def map(self, name: str, *, filtered: bool = False) -> SpilledMap[object]:
        """A new bytes-keyed map in a table of its own (values: int, str or bytes).

        `filtered`: keep a :class:`ledger.key_filter.KeyFilter` of the keys in the table, for a
        map most lookups of which miss (4 to 8 bytes a key in memory, no query for a miss)."""
        return SpilledMap(
            self,
            name,
            flush_at=self.flush_at,
            share=GENERATION_SHARE,
            found_keys=self.found_keys,
            key_filter=KeyFilter(self.first_filter_keys) if filtered else None,
        )

    def objects(self, name: str) -> SpilledObjects[Any]:
        """A new bytes-keyed map of objects, the most recently used ones in memory."""
        return SpilledObjects(self, name, hot=self.hot_objects)

    def tile_storage(self) -> ScratchTileStorage:
        """Tiles of the Merkle tree, for a store that keeps none (Kafka)."""
        return ScratchTileStorage(self)

    def seq_columns(self) -> SpilledSeqColumns:
        return SpilledSeqColumns(self, flush_at=min(self.flush_at, SEQ_FLUSH_AT))

    def execute(self, sql: str, params: tuple[object, ...] = ()) -> sqlite3.Cursor:
        return self._conn.execute(sql, params)

    def executemany(self, sql: str, rows: list[tuple[object, ...]]) -> None:
        self._conn.execute("BEGIN")
        try:
            self._conn.executemany(sql, rows)
        except BaseException:
            self._conn.execute("ROLLBACK")
            raise
        self._conn.execute("COMMIT")

    def size_bytes(self) -> int:
        """The database's size on disk (pages in use times the page size)."""
        with self.lock:
            pages = self._conn.execute("PRAGMA page_count").fetchone()[0]
            size = self._conn.execute("PRAGMA page_size").fetchone()[0]
        return int(pages) * int(size)

    def close(self) -> None:
        with self.lock:
            if not self._closed:
                self._closed = True
                self._conn.close()


def _identifier(name: str) -> str:
    if not name.isidentifier():
        raise ValueError(f"table name {name!r} is not an identifier")
    return name


def spilled_state(scratch: ScratchIndexes) -> LedgerState:
    """An empty rules state whose per-entry maps and proposals are in `scratch`: what a server
    folds into (the writer's core, and the projector beside it)."""
    entries = SpilledEntryIndex(scratch.map("entries"))  # type: ignore[arg-type]
    return LedgerState(
        # Looked up for every event submitted, and nearly always absent: a new event.
        event_ids=scratch.map("event_ids", filtered=True),  # type: ignore[arg-type]
        entry_types=entries.types,
        entry_seqs=entries.seqs,
        evals=scratch.map("evals"),  # type: ignore[arg-type]
        proposals=scratch.objects("proposals"),
    )


_JSON_INT = range(-(2**63), 2**63)


def bulk_insert(table: str, rows: list[tuple[bytes, Any]]) -> tuple[str, tuple[Any, ...]] | None:
    """One INSERT statement for `rows` (key, value) of `table`, or None when they do not fit it.

    executemany binds each row in Python, and SQLite lets go of the interpreter lock for each
    row's step only. Here the keys go in one blob and the values in one JSON array (or a blob),
    and one statement inserts them all: 3.3 µs a row against 4.2-6.0 (2026-12-07, 2,048 rows of
    32-byte keys into 200,000), the B-tree work in one stretch without the interpreter lock.
    It fits keys all of one width, and values that are all ints (64-bit) or all ASCII text, or
    all bytes of one width; anything else (never a server's indexes) goes row by row. The
    statement is atomic: a key already in the table fails it whole, as the row-by-row
    transaction fails whole.
    """
    if not rows:
        return None
    width = len(rows[0][0])
    if width == 0 or any(len(k) != width for k, _ in rows):
        return None
    keys = b"".join([k for k, _ in rows])
    values = [v for _, v in rows]
    kind = type(values[0])
    if any(type(v) is not kind for v in values):
        return None
    key = f"substr(?1, j.key * {width} + 1, {width})"
    if kind is int and all(v in _JSON_INT for v in values):
        sql = f"INSERT INTO {table} (k, v) SELECT {key}, j.value FROM json_each(?2) AS j"
        return sql, (keys, json.dumps(values))
    if kind is str and all(v.isascii() for v in values):
        sql = f"INSERT INTO {table} (k, v) SELECT {key}, j.value FROM json_each(?2) AS j"
        return sql, (keys, json.dumps(values))
    if kind is bytes:
        value_width = len(values[0])
        if value_width and all(len(v) == value_width for v in values):
            blob = b"".join(values)
            value = f"substr(?2, j.key * {value_width} + 1, {value_width})"
            sql = f"INSERT INTO {table} (k, v) SELECT {key}, {value} FROM json_each(?3) AS j"
            return sql, (keys, blob, "[" + "0," * (len(values) - 1) + "0]")
    return None


class SpilledMap(MutableMapping[bytes, V], Generic[V]):
    """bytes -> value, the newest additions in memory and the rest in a scratch table.

    Only grows, as the rules' maps do (an entry never leaves the log): deletion is refused, and
    a key is added once: the rules refuse a second event with an event id, and an entry hash
    covers its predecessor's, so neither repeats. A key added twice is found when it is written
    and raises ValueError there.

    Additions go to a dict, the newest generation. When it holds `flush_at` keys (with
    `share`: one `share`-th of the map's keys, at least :data:`FIRST_FLUSH_AT` and at most
    `flush_at`) it is closed and written to the table while the next one fills, in slices of
    neighbouring keys (each slice the keys sharing their leading bits, sorted). Each addition
    owes the table one key, paid a slice at a time: the whole is written as the next
    generation fills, at an even cost per addition (not a phase of writing twice as fast),
    and no addition waits for more than a slice. A map whose generation is smaller than two
    slices (:data:`WRITE_KEYS`) writes it at once, sorted, when it closes. A lookup tries the
    newest generation, the one being written, the keys found in the table lately
    (:data:`FOUND_KEYS`), then the table.
    """

    def __init__(
        self,
        db: ScratchIndexes,
        name: str,
        *,
        flush_at: int = FLUSH_AT,
        share: int | None = None,
        found_keys: int = FOUND_KEYS,
        key_filter: KeyFilter | None = None,
    ) -> None:
        if flush_at < 1:
            raise ValueError(f"flush_at is {flush_at}, expected >= 1")
        if share is not None and share < 1:
            raise ValueError(f"share is {share}, expected >= 1 or None")
        self._db = db
        self._name = _identifier(name)
        self._flush_at = flush_at
        self._share = share
        self._flushed = 0
        self._unwritten = 0
        self._recent: dict[bytes, V] = {}
        self._plan_generation()
        # Keys of the closed generation owed to the table: one per addition, paid a slice (or
        # a part of a big one, `_due` keys) at a time.
        self._owed = 0
        self._due = 0
        # The closed generation being written, and its slices not yet written (from
        # `_next_slice` on); `_unwritten` counts their keys.
        self._closed: dict[bytes, V] = {}
        self._closed_slices: list[list[bytes]] = []
        self._next_slice = 0
        self._slice_pos = 0  # keys of the next slice already written (a big slice's parts)
        # Keys found in the table lately, oldest first (a value never changes once added).
        self._found: OrderedDict[bytes, V] = OrderedDict()
        self._found_keys = found_keys
        # The keys in the table, when most lookups miss: a miss it rules out costs no query.
        self._filter = key_filter
        # The last key the table was asked for and did not hold. The rules look a new event's
        # id up right after existing_receipt did, so a key the filter lets through would cost
        # its query twice. A key enters the table only by a write, which clears this under the
        # same lock as the query that set it.
        self._absent: bytes | None = None
        self.queries = 0  # lookups that went to the table (for benches and tests)
        self.writes = 0  # statements that wrote keys to the table (for benches and tests)
        db.execute(f"CREATE TABLE {self._name} (k BLOB PRIMARY KEY, v) WITHOUT ROWID")
        self._select = f"SELECT v FROM {self._name} WHERE k = ?"
        self._insert = f"INSERT INTO {self._name} (k, v) VALUES (?, ?)"

    def _stored(self, key: bytes) -> tuple[V] | None:
        found = self._found
        if key in found:
            return (found[key],)
        if self._filter is not None and not self._filter.might_contain(key):
            return None
        if key == self._absent:
            return None
        with self._db.lock:  # (readers of the state call from other threads too)
            self.queries += 1
            row: tuple[V] | None = self._db.execute(self._select, (key,)).fetchone()
            if row is None:
                self._absent = key
            elif self._found_keys > 0:
                if len(found) >= self._found_keys:
                    found.popitem(last=False)
                found[key] = row[0]
        return row

    def __getitem__(self, key: bytes) -> V:
        try:
            return self._recent[key]
        except KeyError:
            pass
        try:
            return self._closed[key]
        except KeyError:
            pass
        row = self._stored(key)
        if row is None:
            raise KeyError(key)
        return row[0]

    def get(self, key: bytes, default: V | None = None) -> V | None:  # type: ignore[override]
        try:
            return self._recent[key]
        except KeyError:
            pass
        try:
            return self._closed[key]
        except KeyError:
            pass
        if not isinstance(key, bytes):
            return default
        row = self._stored(key)
        return default if row is None else row[0]

    def __contains__(self, key: object) -> bool:
        if key in self._recent or key in self._closed:
            return True
        return isinstance(key, bytes) and self._stored(key) is not None

    def __setitem__(self, key: bytes, value: V) -> None:
        if type(key) is not bytes:
            raise TypeError(f"keys are bytes, not {type(key).__name__}")
        self._recent[key] = value
        if self._slices > 1:
            head = key[:2] if len(key) >= 2 else key.ljust(2, b"\0")
            self._recent_slices[int.from_bytes(head, "big") >> self._shift].append(key)
        if len(self._recent) >= self._generation:
            self._close_generation()
        elif self._unwritten:
            self._owed += 1
            if self._owed >= self._due:
                self._write_next_slice()

    def _plan_generation(self) -> None:
        """Size the newest generation, and the slices it will be written in."""
        size = self._flush_at
        if self._share is not None:
            size = min(size, max(FIRST_FLUSH_AT, len(self) // self._share))
        # Slices: a power of two, the keys' leading 16 bits split evenly among them; one when
        # the generation is too small to be worth splitting.
        slices = 1
        while slices < 256 and slices * 2 * WRITE_KEYS <= size:
            slices *= 2
        self._generation = size
        self._slices = slices
        self._shift = 16 - (slices.bit_length() - 1)
        self._recent_slices: list[list[bytes]] = [[] for _ in range(slices)]

    def _close_generation(self) -> None:
        """The newest generation is full: write it at once (one slice), or start writing it."""
        while self._unwritten:  # only if something wrote fewer slices than planned
            self._write_next_slice()
        recent = self._recent
        if self._slices == 1:
            self._write(sorted(recent.items()))  # raises before anything changed
            self._recent = {}
            self._plan_generation()
            return
        # The closed dict is set before the newest is replaced, so a reader in another thread
        # finds every key in one of them.
        self._closed, self._closed_slices = recent, self._recent_slices
        self._next_slice = 0
        self._slice_pos = 0
        self._unwritten = len(recent)
        self._owed = 0
        self._recent = {}
        self._plan_generation()
        self._to_next_write()

    def _chunk(self) -> tuple[int, int]:
        """Where the next write of the closed generation starts and ends in its slice."""
        keys = self._closed_slices[self._next_slice]
        start = self._slice_pos
        return start, len(keys) if len(keys) - start <= 2 * WRITE_KEYS else start + WRITE_KEYS

    def _write_next_slice(self) -> None:
        """Write the next slice of the closed generation, or the next part of a big one.

        Keys the author chooses (event ids) need not be spread: ids counted up or led by a
        timestamp all share their leading bits, and one slice would hold the generation. Such
        a slice is written :data:`WRITE_KEYS` at a time in the order they were added (each part
        sorted), so that no write sorts or holds the fold for more than a part; keys that
        close in order are close in the table too."""
        keys = self._closed_slices[self._next_slice]
        start, end = self._chunk()
        closed = self._closed
        self._write(sorted([(k, closed[k]) for k in keys[start:end]]))  # raises before moving
        self._unwritten -= end - start
        self._owed = max(0, self._owed - (end - start))
        if end < len(keys):
            self._slice_pos = end
        else:
            self._closed_slices[self._next_slice] = []
            self._next_slice += 1
            self._slice_pos = 0
        self._to_next_write()

    def _to_next_write(self) -> None:
        """Past the empty slices to the next write, and how many keys it is `_due`; or, all in
        the table, let the closed dict go."""
        slices = self._closed_slices
        while self._next_slice < len(slices) and not slices[self._next_slice]:
            self._next_slice += 1
        if self._next_slice == len(slices):
            self._closed, self._closed_slices, self._unwritten = {}, [], 0
            return
        start, end = self._chunk()
        self._due = end - start

    def _write(self, rows: list[tuple[bytes, V]]) -> None:
        """Insert `rows` (sorted by key) into the table, and tell the filter of their keys."""
        if not rows:
            return
        bulk = bulk_insert(self._name, rows)
        with self._db.lock:
            self._absent = None  # the rows may hold it
            try:
                if bulk is None:
                    self._db.executemany(self._insert, rows)  # type: ignore[arg-type]
                else:
                    self._db.execute(*bulk)
            except sqlite3.IntegrityError as exc:
                raise ValueError(f"{self._name}: a key added twice ({exc})") from exc
            self.writes += 1
        if self._filter is not None:
            self._filter.add_many([k for k, _ in rows])
        self._flushed += len(rows)

    def flush(self) -> None:
        """Write every addition held in memory to the table."""
        if self._recent:
            self._close_generation()  # (which first writes what the closed one still holds)
        while self._unwritten:
            self._write_next_slice()

    def __delitem__(self, key: bytes) -> None:
        raise TypeError("a spilled index only grows: entries never leave the log")

    def __len__(self) -> int:
        return self._flushed + self._unwritten + len(self._recent)

    def __iter__(self) -> Iterator[bytes]:
        """The keys in the table (key order), then those held in memory."""
        with self._db.lock:
            stored = [k for (k,) in self._db.execute(f"SELECT k FROM {self._name} ORDER BY k")]
        held = [k for keys in self._closed_slices[self._next_slice :] for k in keys]
        held = held[self._slice_pos :]
        yield from stored
        yield from held
        yield from list(self._recent)

    @property
    def in_memory(self) -> int:
        """Keys held in memory, not yet in the table."""
        return self._unwritten + len(self._recent)

    def __repr__(self) -> str:
        return f"SpilledMap({self._name}, {len(self)} keys, {self.in_memory} in memory)"


ENTRY_TYPES: tuple[str, ...] = tuple(sorted(PAYLOAD_TYPES))
"""The entry types a :class:`SpilledEntryIndex` value names, by their code (its low bits)."""
_TYPE_BITS = 6  # room for 64 entry types; there are len(ENTRY_TYPES)
_TYPE_MASK = (1 << _TYPE_BITS) - 1
_TYPE_CODES = {name: code for code, name in enumerate(ENTRY_TYPES)}
assert len(ENTRY_TYPES) <= _TYPE_MASK + 1


class SpilledEntryIndex:
    """A state's ``entry_seqs`` and ``entry_types`` (both keyed by an entry's leaf hash) in one
    table, as ``seq << 6 | code of the type``: one B-tree insert an entry where two maps took
    two, at a key that is random, so each lands on a page of its own.

    Those inserts are what a long history costs an append (``bench.ingest --history``): 1.7 µs
    a row into a table of 50,000 keys and 4.7-5.4 µs into one of 1,000,000, per map
    (2026-12-07, 50,000 inserts after the fill, one process). The pair as one row, measured
    the same way: 3.47 -> 2.19 µs an entry after 3,000 and 10.08 -> 4.81 µs after 1,000,000.
    The type codes live only in this scratch file, which every start rebuilds, so a new entry
    type may renumber them. The server never reads
    ``entry_seqs`` (the rules ask only ``entry_types``; the controller keeps its own), so it
    costs its one lookup only to whoever asks.

    :class:`EntrySeqs` and :class:`EntryTypes` are the two mappings; ``LedgerState.apply`` sets
    an entry's seq, then its type, and the type's write stores the pair. Anything else, a
    second seq before a type or a type without its seq, is a bug: it raises ValueError and
    stores neither half.
    """

    def __init__(self, table: SpilledMap[int]) -> None:
        self.table = table
        self.pending: tuple[bytes, int] | None = None  # (leaf hash, seq) awaiting its type
        self.seqs = EntrySeqs(self)
        self.types = EntryTypes(self)

    def put_seq(self, key: bytes, seq: int) -> None:
        if type(key) is not bytes:
            raise TypeError(f"keys are bytes, not {type(key).__name__}")
        pending, self.pending = self.pending, None  # a misuse keeps neither half
        if pending is not None:
            raise ValueError(f"entry_seqs: seq {seq} set while seq {pending[1]} has no type")
        if not 0 <= seq < 1 << (63 - _TYPE_BITS):
            raise ValueError(f"entry_seqs: seq {seq} is out of range")
        self.pending = (key, seq)

    def put_type(self, key: bytes, name: str) -> None:
        pending, self.pending = self.pending, None
        if pending is None or pending[0] != key:
            raise ValueError("entry_types: an entry's type is set right after its seq, never alone")
        code = _TYPE_CODES.get(name)
        if code is None:
            raise ValueError(f"entry_types: {name!r} is not an entry type")
        self.table[key] = pending[1] << _TYPE_BITS | code


class _EntryView(MutableMapping[bytes, V], Generic[V]):
    """One of the two mappings a :class:`SpilledEntryIndex` answers; only grows."""

    def __init__(self, index: SpilledEntryIndex) -> None:
        self._index = index
        self._table = index.table

    def _value(self, packed: int) -> V:
        raise NotImplementedError

    def __getitem__(self, key: bytes) -> V:
        return self._value(self._table[key])

    def get(self, key: bytes, default: V | None = None) -> V | None:  # type: ignore[override]
        packed = self._table.get(key)
        return default if packed is None else self._value(packed)

    def __contains__(self, key: object) -> bool:
        return key in self._table

    def __delitem__(self, key: bytes) -> None:
        raise TypeError("a spilled index only grows: entries never leave the log")

    def __len__(self) -> int:
        return len(self._table)

    def __iter__(self) -> Iterator[bytes]:
        return iter(self._table)


class EntrySeqs(_EntryView[int]):
    """leaf hash -> seq, of a :class:`SpilledEntryIndex`."""

    def _value(self, packed: int) -> int:
        return packed >> _TYPE_BITS

    def __setitem__(self, key: bytes, value: int) -> None:
        self._index.put_seq(key, value)


class EntryTypes(_EntryView[str]):
    """leaf hash -> entry type, of a :class:`SpilledEntryIndex`."""

    def _value(self, packed: int) -> str:
        return ENTRY_TYPES[packed & _TYPE_MASK]

    def __setitem__(self, key: bytes, value: str) -> None:
        self._index.put_type(key, value)


class SpilledObjects(MutableMapping[bytes, V], Generic[V]):
    """bytes -> mutable object, the `hot` most recently used in memory and the rest pickled in
    a scratch table: the server's proposals (ledger.state.ProposalState), which a busy log
    leaves open by the hundred thousand while a few dozen are in flight.

    An object is read back into memory when it is looked up, and pickled again when it is the
    least recently used of more than `hot`: whatever was changed in it meanwhile goes with it.
    So a caller changes an object only right after looking it up, never through a reference
    kept across other lookups (an object pickled since is a copy the map no longer knows);
    ledger.state.LedgerState.apply does exactly that. Objects never leave (deletion is refused).

    Pickle, in a file nobody else can open (SQLite unlinks it when it creates it), holding only
    what this process pickled.
    """

    def __init__(self, db: ScratchIndexes, name: str, *, hot: int = HOT_OBJECTS) -> None:
        if hot < 1:
            raise ValueError(f"hot is {hot}, expected >= 1")
        self._db = db
        self._name = _identifier(name)
        self._capacity = hot
        self._hot: OrderedDict[bytes, V] = OrderedDict()
        self._count = 0
        self.loads = 0  # objects read back from the table (for benches and tests)
        # A rowid table, unlike the maps': a pickled proposal (about 1.5 KB) fits in its leaf
        # page there, where a WITHOUT ROWID row over about 1 KB takes a 4 KB overflow page of
        # its own (4.6 KB a proposal on disk, measured with dbstat at 100,000 entries; 2.0 KB
        # here).
        db.execute(f"CREATE TABLE {self._name} (k BLOB PRIMARY KEY, v BLOB)")
        self._select = f"SELECT v FROM {self._name} WHERE k = ?"
        self._exists = f"SELECT 1 FROM {self._name} WHERE k = ?"
        self._upsert = f"INSERT OR REPLACE INTO {self._name} (k, v) VALUES (?, ?)"

    def __getitem__(self, key: bytes) -> V:
        hot = self._hot
        if key in hot:
            hot.move_to_end(key)
            return hot[key]
        if not isinstance(key, bytes):
            raise KeyError(key)
        with self._db.lock:
            row = self._db.execute(self._select, (key,)).fetchone()
        if row is None:
            raise KeyError(key)
        value: V = pickle.loads(row[0])
        self.loads += 1
        hot[key] = value
        self._evict()
        return value

    def __contains__(self, key: object) -> bool:
        if key in self._hot:
            return True
        if not isinstance(key, bytes):
            return False
        with self._db.lock:
            return self._db.execute(self._exists, (key,)).fetchone() is not None

    def __setitem__(self, key: bytes, value: V) -> None:
        if type(key) is not bytes:
            raise TypeError(f"keys are bytes, not {type(key).__name__}")
        if key not in self:
            self._count += 1
        self._hot[key] = value
        self._hot.move_to_end(key)
        self._evict()

    def _evict(self) -> None:
        hot = self._hot
        if len(hot) <= self._capacity:
            return
        rows = []
        while len(hot) > self._capacity:
            key, value = hot.popitem(last=False)
            rows.append((key, pickle.dumps(value, protocol=pickle.HIGHEST_PROTOCOL)))
        with self._db.lock:
            self._db.executemany(self._upsert, rows)  # type: ignore[arg-type]

    def flush(self) -> None:
        """Pickle every object in memory to the table too (they stay in memory)."""
        rows = [
            (k, pickle.dumps(v, protocol=pickle.HIGHEST_PROTOCOL)) for k, v in self._hot.items()
        ]
        if rows:
            with self._db.lock:
                self._db.executemany(self._upsert, rows)  # type: ignore[arg-type]

    def __delitem__(self, key: bytes) -> None:
        raise TypeError("spilled objects only grow: entries never leave the log")

    def __len__(self) -> int:
        return self._count

    def __iter__(self) -> Iterator[bytes]:
        """Every key, in key order (the objects in memory are pickled to the table first)."""
        self.flush()
        with self._db.lock:
            keys = [k for (k,) in self._db.execute(f"SELECT k FROM {self._name} ORDER BY k")]
        yield from keys

    @property
    def in_memory(self) -> int:
        return len(self._hot)

    def __repr__(self) -> str:
        return f"SpilledObjects({self._name}, {self._count} keys, {len(self._hot)} in memory)"


Row = tuple[bytes, bytes, int]  # leaf hash, body digest, received_at


class SpilledSeqColumns:
    """Per seq (0, 1, 2 ... appended in order): the leaf hash, the body digest and the receive
    time; the last ones in memory, the rest in a scratch table keyed by seq."""

    def __init__(self, db: ScratchIndexes, *, flush_at: int = SEQ_FLUSH_AT) -> None:
        self._db = db
        self._flush_at = flush_at
        self._recent: list[tuple[int, bytes, bytes, int]] = []
        self._size = 0
        db.execute(
            "CREATE TABLE seq_columns (seq INTEGER PRIMARY KEY, leaf BLOB, digest BLOB, at INTEGER)"
        )

    def __len__(self) -> int:
        return self._size

    def append(self, leaf: bytes, digest: bytes, received_at: int) -> None:
        self._recent.append((self._size, bytes(leaf), bytes(digest), received_at))
        self._size += 1
        if len(self._recent) >= self._flush_at:
            self.flush()

    def flush(self) -> None:
        if not self._recent:
            return
        rows = self._recent
        times = [at for _, _, _, at in rows]
        with self._db.lock:
            if all(
                len(leaf) == len(digest) == HASH_SIZE and at in _JSON_INT
                for _, leaf, digest, at in rows
            ):
                leaves = b"".join([leaf for _, leaf, _, _ in rows])
                digests = b"".join([digest for _, _, digest, _ in rows])
                # One statement, as bulk_insert does for the maps (the seqs are consecutive).
                self._db.execute(
                    "INSERT INTO seq_columns (seq, leaf, digest, at) SELECT ?1 + j.key, "
                    f"substr(?2, j.key * {HASH_SIZE} + 1, {HASH_SIZE}), "
                    f"substr(?3, j.key * {HASH_SIZE} + 1, {HASH_SIZE}), j.value "
                    "FROM json_each(?4) AS j",
                    (rows[0][0], leaves, digests, json.dumps(times)),
                )
            else:
                self._db.executemany(
                    "INSERT INTO seq_columns (seq, leaf, digest, at) VALUES (?, ?, ?, ?)",
                    rows,  # type: ignore[arg-type]
                )
        self._recent = []

    def __getitem__(self, seq: int) -> Row:
        if not 0 <= seq < self._size:
            raise IndexError(f"seq {seq} of {self._size}")
        first_recent = self._size - len(self._recent)
        if seq >= first_recent:
            _, leaf, digest, at = self._recent[seq - first_recent]
            return leaf, digest, at
        with self._db.lock:
            row = self._db.execute(
                "SELECT leaf, digest, at FROM seq_columns WHERE seq = ?", (seq,)
            ).fetchone()
        if row is None:  # written by flush in order, so a gap is a bug, not damage
            raise LookupError(f"seq {seq} is missing from the scratch index")
        return bytes(row[0]), bytes(row[1]), int(row[2])


class ScratchTileStorage:
    """A :class:`ledger.tile_store.TileStorage` in the scratch database, for a store that keeps
    no tiles (Kafka): the tree's memory is then its right edge there too, not 64 bytes a leaf.

    Like every tile storage it is a cache of what the entries determine (ledger.tile_store):
    the start fills it while it replays, and each tile read back is checked against the edge.
    """

    def __init__(self, db: ScratchIndexes) -> None:
        self._db = db
        db.execute(
            "CREATE TABLE tiles (level INTEGER, idx INTEGER, hashes BLOB, PRIMARY KEY (level, idx))"
            " WITHOUT ROWID"
        )

    def read_tile(self, level: int, index: int) -> bytes | None:
        with self._db.lock:
            row = self._db.execute(
                "SELECT hashes FROM tiles WHERE level = ? AND idx = ?", (level, index)
            ).fetchone()
        return None if row is None else bytes(row[0])

    def write_tiles(self, tiles: Sequence[StoredTile]) -> None:
        rows: list[tuple[object, ...]] = [(t.level, t.index, bytes(t.hashes)) for t in tiles]
        with self._db.lock:
            self._db.executemany(
                "INSERT OR REPLACE INTO tiles (level, idx, hashes) VALUES (?, ?, ?)", rows
            )
