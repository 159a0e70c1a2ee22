"""The controller's per-entry indexes as rows of a SQL table, written with each snapshot part.

Issue #19: a restart read, hashed and decoded every byte of the snapshot's base before the
controller could act: 1.8 GB at ten million entries, two thirds of it the four per-entry
indexes (``event_ids``, ``entry_seqs``, ``entry_types``, ``evals``), which the fold only ever
looks up one key at a time. Since snapshot parts of version 2 those indexes are rows of
``controller_snapshot_index_rows`` (source, index, key -> value), inserted in the same
transaction as the part and the head that names it. A restart reads none of them; the
restored indexes (:class:`~controller.packed_index.PackedIndex` on rows) look a key up when the
fold asks. What the fold adds stays in memory only until the next part writes it, so the
controller's memory no longer holds an entry per entry of history either.

Damage: each row carries a CRC-32 of its index, key and value. A row that does not match it is
found when it is read, in the middle of a fold that cannot go on: the head of the chain is then
deleted (the next start replays the log from the beginning, as for any damaged snapshot) and
the lookup raises SnapshotError, which stops the controller.
"""

from __future__ import annotations

import logging
import threading
import zlib
from collections.abc import Iterable, Iterator
from typing import Any

import sqlalchemy as sa

from controller.errors import SnapshotError

log = logging.getLogger("steward.controller.snapshots")

rows_metadata = sa.MetaData()
source_table = sa.Table(
    "controller_snapshot_sources",
    rows_metadata,
    sa.Column("source", sa.String(200), primary_key=True),
    # A small number per source, so that a row does not repeat a long source name.
    sa.Column("id", sa.Integer, nullable=False, unique=True),
)
rows_table = sa.Table(
    "controller_snapshot_index_rows",
    rows_metadata,
    sa.Column("source_id", sa.Integer, primary_key=True),
    sa.Column("ix", sa.SmallInteger, primary_key=True),  # controller.snapshot_parts.INDEXES
    sa.Column("key", sa.LargeBinary, primary_key=True),
    sa.Column("value", sa.LargeBinary, nullable=False),  # the encoded value, then its CRC-32
    sqlite_with_rowid=False,  # the key is the row: no second B-tree beside it
)

CHECK_SIZE = 4
INSERT_BATCH = 50_000  # rows per executemany: a base's millions never sit in one Python list


def checked_value(ix: int, key: bytes, value: bytes) -> bytes:
    """What a row stores as its value: the value, then the CRC-32 of index, key and value."""
    return value + zlib.crc32(value, zlib.crc32(key, ix)).to_bytes(CHECK_SIZE, "little")


def _placeholder(engine: sa.Engine) -> str:
    style = engine.dialect.paramstyle
    if style == "qmark":
        return "?"
    if style in ("format", "pyformat"):
        return "%s"
    raise SnapshotError(f"snapshot database driver uses paramstyle {style!r}; qmark or format")


def source_id(conn: sa.Connection, source: str) -> int:
    """The number of `source`'s rows, given it on first use (call in a write transaction)."""
    found = conn.execute(sa.select(source_table.c.id).where(source_table.c.source == source))
    row = found.first()
    if row is not None:
        return int(row[0])
    top = conn.execute(sa.select(sa.func.max(source_table.c.id))).scalar()
    new = 1 + (int(top) if top is not None else 0)
    conn.execute(source_table.insert().values(source=source, id=new))
    return new


def insert_rows(
    conn: sa.Connection, sid: int, ix: int, pairs: Iterable[tuple[bytes, bytes]]
) -> int:
    """Insert (key, encoded value) rows of index `ix` in batches; how many were inserted.

    A key already present fails the transaction (IntegrityError): an index only grows and each
    entry is indexed once, so that means the rows and the part disagree."""
    mark = _placeholder(conn.engine)
    sql = (
        f"INSERT INTO {rows_table.name} (source_id, ix, key, value) "
        f"VALUES ({mark}, {mark}, {mark}, {mark})"
    )
    batch: list[tuple[int, int, bytes, bytes]] = []
    count = 0
    for key, value in pairs:
        batch.append((sid, ix, key, checked_value(ix, key, value)))
        if len(batch) >= INSERT_BATCH:
            conn.exec_driver_sql(sql, batch)
            count += len(batch)
            batch = []
    if batch:
        conn.exec_driver_sql(sql, batch)
        count += len(batch)
    return count


def delete_rows(conn: sa.Connection, sid: int) -> None:
    conn.execute(rows_table.delete().where(rows_table.c.source_id == sid))


class IndexRows:
    """Lookups in one source's rows, on a connection of their own (the fold's thread asks while
    the snapshot writer inserts on another; with SQLite's WAL each lookup sees the last commit).

    Each lookup runs to completion, so no read transaction stays open between two of them
    (one would stop SQLite from ever resetting its write-ahead log)."""

    def __init__(self, engine: sa.Engine, source: str, sid: int, on_damage: Any) -> None:
        self.source, self.sid = source, sid
        self._on_damage = on_damage  # called (no lock held) before a damaged row is reported
        self._lock = threading.Lock()
        self._conn: Any = engine.raw_connection()
        dbapi = self._conn.dbapi_connection
        if engine.dialect.name != "sqlite" and dbapi is not None and hasattr(dbapi, "autocommit"):
            dbapi.autocommit = True  # no transaction left open between two lookups
        mark = _placeholder(engine)
        self._get = (
            f"SELECT value FROM {rows_table.name} "
            f"WHERE source_id = {mark} AND ix = {mark} AND key = {mark}"
        )
        self._keys = (
            f"SELECT key FROM {rows_table.name} WHERE source_id = {mark} AND ix = {mark} "
            f"AND key > {mark} ORDER BY key LIMIT 10000"
        )
        self.lookups = 0  # for the bench and the tests

    def get(self, ix: int, key: bytes) -> bytes | None:
        with self._lock:
            if self._conn is None:
                raise SnapshotError(f"index rows of {self.source} read after the store closed")
            cursor = self._conn.cursor()
            try:
                cursor.execute(self._get, (self.sid, ix, key))
                found = cursor.fetchall()
            finally:
                cursor.close()
            self.lookups += 1
        if not found:
            return None
        stored = bytes(found[0][0])
        value = stored[:-CHECK_SIZE]
        if len(stored) < CHECK_SIZE or checked_value(ix, key, value) != stored:
            self._on_damage(f"index {ix} row {key.hex()} does not match its check")
            raise SnapshotError(
                f"snapshot index row damaged (source {self.source}, index {ix}, key "
                f"{key.hex()}): the snapshot is dropped; restart to replay the log"
            )
        return value

    def keys(self, ix: int) -> Iterator[bytes]:
        """Every key of index `ix`, in order, read a page at a time."""
        after = b""
        while True:
            with self._lock:
                if self._conn is None:
                    raise SnapshotError(f"index rows of {self.source} read after the store closed")
                cursor = self._conn.cursor()
                try:
                    cursor.execute(self._keys, (self.sid, ix, after))
                    page = [bytes(r[0]) for r in cursor.fetchall()]
                finally:
                    cursor.close()
            yield from page
            if len(page) < 10000:
                return
            after = page[-1]

    def close(self) -> None:
        with self._lock:
            if self._conn is not None:
                self._conn.close()
                self._conn = None


__all__ = [
    "CHECK_SIZE",
    "IndexRows",
    "checked_value",
    "delete_rows",
    "insert_rows",
    "rows_metadata",
    "rows_table",
    "source_id",
    "source_table",
]
