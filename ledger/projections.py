"""SQL projections of the log: keys, policies, proposals, evals, approvals, rollouts, kill switches.

A :class:`Projector` reads a :class:`~ledger.store.base.LogStore` from its stored position,
decodes every record, re-checks it with the shared rules against an in-memory
:class:`~ledger.state.LedgerState` (storage is untrusted: a record that fails decoding or the
rules is skipped and written to ``proj_invalid_records``), folds it, and writes the derived
rows **and** the new read position in one transaction per batch. A crash therefore leaves the
projections exactly at some batch boundary: never ahead of the log, never behind their position.

Restart: the in-memory state is rebuilt by replaying the log from its first record up to the
stored position through the same decode/check/apply path, writing no rows; the result must land
on the stored ``(next_seq, last_hash)`` or :class:`ProjectionDivergenceError` is raised (the log was
rewritten under projections already made). The same rebuild runs after any failed batch, since
the in-memory state may then be ahead of the database.

Works on SQLite and PostgreSQL (SQLAlchemy Core only). The tables are in
ledger/projection_schema.py, what each event type writes in ledger/projection_rows.py.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from sqlalchemy.pool import StaticPool

from ledger.errors import StewardError, StoreError, StoreUnavailableError
from ledger.formats import ZERO_HASH, LogEntry, decode_log_entry
from ledger.projection_rows import write_entry
from ledger.projection_schema import (
    DEFAULT_NAME,
    DERIVED_TABLES,
    create_tables,
    invalid_records_table,
    position_table,
)
from ledger.rules import check
from ledger.state import LedgerState
from ledger.store.base import LogStore, StoredRecord

log = logging.getLogger(__name__)

MAX_REASON = 2000  # characters of a skipped record's reason kept in proj_invalid_records


class ProjectionError(StewardError):
    """The projections cannot be brought up to date."""


class ProjectionDivergenceError(ProjectionError):
    """Replaying the log does not reach the stored position: the log changed under them."""


@dataclass(frozen=True)
class Position:
    next_position: int
    next_seq: int
    last_hash: bytes


START = Position(0, 0, ZERO_HASH)


def memory_engine() -> sa.Engine:
    """A private in-memory SQLite database shared by every thread of this process."""
    return sa.create_engine(
        "sqlite://", connect_args={"check_same_thread": False}, poolclass=StaticPool
    )


# --------------------------------------------------------------------------------------------
# The projector


@dataclass(frozen=True)
class _Outcome:
    """What one record did: folded (entry, signers) or was skipped (reason)."""

    record: StoredRecord
    entry: LogEntry | None = None
    signers: tuple[str, ...] = ()
    seq: int | None = None
    reason: str | None = None


def _judge(state: LedgerState, record: StoredRecord) -> _Outcome:
    """Decode and check one record, folding it into `state` when valid. Never raises on bad input."""
    try:
        e = decode_log_entry(record.value)
    except Exception as exc:  # storage is untrusted: anything that fails to decode is skipped
        return _Outcome(record, reason=f"decode: {type(exc).__name__}: {exc}"[:MAX_REASON])
    try:
        violation = check(state, e)
    except Exception as exc:  # the rules must not crash on hostile content either
        return _Outcome(
            record, seq=e.seq, reason=f"check raised {type(exc).__name__}: {exc}"[:MAX_REASON]
        )
    if violation is not None:
        return _Outcome(record, seq=e.seq, reason=f"rule {violation}"[:MAX_REASON])
    # Signers in signature order, resolved before apply (a key may revoke itself).
    signers = tuple(
        dict.fromkeys(
            state.keys[s.key_id].principal for s in e.entry.signatures if s.key_id in state.keys
        )
    )
    state.apply(e)
    return _Outcome(record, entry=e, signers=signers)


class Projector:
    """Keeps the ``proj_*`` tables of `engine` equal to a fold of `store`.

    One projector per (database, name) should run at a time; a second one is detected by an
    optimistic check on the position row and its batch is rolled back.
    """

    def __init__(
        self,
        store: LogStore,
        engine: sa.Engine,
        *,
        name: str = DEFAULT_NAME,
        batch_size: int = 500,
        create: bool = True,
        full_replay: bool = False,
        new_state: Callable[[], LedgerState] = LedgerState,
    ) -> None:
        if batch_size < 1:
            raise ValueError("batch_size must be at least 1")
        self.store = store
        self.engine = engine
        self.name = name
        self.batch_size = batch_size
        # Re-check every signature and rule of the already projected prefix on restart (slow);
        # by default the hash chain proves the prefix unchanged instead.
        self.full_replay = full_replay
        # An empty state to fold into: in memory by default; the server's keeps what grows
        # with history in its scratch directory (ledger.spilled_index.spilled_state).
        self._new_state = new_state
        if create:
            create_tables(engine)
        self._state: LedgerState | None = None
        self._position = START
        self.invalid_count = 0  # records skipped by this process (also in proj_invalid_records)
        self._lock = threading.Lock()

    # -- reading the stored position

    def stored_position(self) -> Position:
        with self.engine.connect() as conn:
            row = conn.execute(
                sa.select(
                    position_table.c.next_position,
                    position_table.c.next_seq,
                    position_table.c.last_hash,
                ).where(position_table.c.name == self.name)
            ).one_or_none()
        if row is None:
            return START
        return Position(row.next_position, row.next_seq, bytes.fromhex(row.last_hash))

    @property
    def position(self) -> Position:
        """Where this projector is (after its last committed batch)."""
        return self._position

    @property
    def state(self) -> LedgerState:
        """The folded state at :attr:`position` (rebuilt from the log on first use)."""
        return self._ensure_state()

    # -- rebuilding after a restart or a failed batch

    def _ensure_state(self) -> LedgerState:
        if self._state is not None:
            return self._state
        stored = self.stored_position()
        state = self._replay_checked(stored) if self.full_replay else self._replay_trusted(stored)
        if state is None or (state.size, state.last_hash) != (stored.next_seq, stored.last_hash):
            observed = (
                "a broken chain"
                if state is None
                else f"seq {state.size} (last hash {state.last_hash.hex()})"
            )
            raise ProjectionDivergenceError(
                f"projection {self.name!r} is at position {stored.next_position} = seq {stored.next_seq} "
                f"(last hash {stored.last_hash.hex()}), but replaying the log up to that position gives "
                f"{observed}; the log changed under the projections: rebuild them"
            )
        self._state, self._position = state, stored
        return state

    def _replay_checked(self, stored: Position) -> LedgerState:
        """Replay the prefix through decode, check and apply, writing nothing."""
        state = self._new_state()
        if stored.next_position > 0:
            for record in self.store.read(0):
                if record.position >= stored.next_position:
                    break
                _judge(state, record)
        return state

    def _replay_trusted(self, stored: Position) -> LedgerState | None:
        """Replay the prefix without re-verifying signatures and rules.

        Sound because the prefix was checked when it was projected, and the hash chain proves
        it is the same bytes now: each entry must link to the previous one's leaf hash and the
        last must be the stored `last_hash`. Records recorded as invalid are skipped by
        position. Returns None at the first record that does not fit (the caller reports it).
        """
        state = self._new_state()
        if stored.next_position == 0:
            return state
        t = invalid_records_table.c
        with self.engine.connect() as conn:
            skipped = set(
                conn.execute(
                    sa.select(t.position).where(
                        t.name == self.name, t.position < stored.next_position
                    )
                ).scalars()
            )
        for record in self.store.read(0):
            if record.position >= stored.next_position:
                break
            if record.position in skipped:
                continue
            try:
                e = decode_log_entry(record.value)
                if e.seq != state.size or e.entry.prev != state.last_hash:
                    return None
                state.apply(e)
            except Exception:  # anything that does not fold is a changed log
                return None
        return state

    def reset(self) -> None:
        """Forget the in-memory state; the next call rebuilds it from the stored position."""
        self._state = None

    def rebuild(self) -> int:
        """Clear every projection row and project the whole log again."""
        with self._lock, self.engine.begin() as conn:
            for table in reversed(DERIVED_TABLES):
                conn.execute(table.delete())
            conn.execute(
                invalid_records_table.delete().where(invalid_records_table.c.name == self.name)
            )
            conn.execute(position_table.delete().where(position_table.c.name == self.name))
            self._state, self._position = None, START
        return self.catch_up()

    # -- projecting

    def catch_up(self) -> int:
        """Project every record available now; returns how many records were consumed."""
        consumed = 0
        with self._lock:
            while True:
                self._ensure_state()
                batch = list(self.store.read(self._position.next_position, limit=self.batch_size))
                if not batch:
                    return consumed
                self._project(batch)
                consumed += len(batch)

    def run(
        self, stop_event: threading.Event, *, idle_timeout: float = 0.2, retry_delay: float = 1.0
    ) -> None:
        """Follow the log until `stop_event` is set, committing a batch whenever the log idles
        or `batch_size` records are pending. Unavailable storage or database is retried."""
        while not stop_event.is_set():
            try:
                self._follow(stop_event, idle_timeout)
            except (StoreUnavailableError, sa.exc.OperationalError) as exc:
                log.warning("projection %s: %s; retrying in %.1f s", self.name, exc, retry_delay)
                self.reset()
                stop_event.wait(retry_delay)
            except StoreError:
                # Stopping: the server closes the store after setting the stop, without waiting
                # for this thread. What is committed stays committed; the rest is projected on
                # the next start. Not stopping, a closed or broken store is a real failure.
                if stop_event.is_set():
                    return
                raise

    def _follow(self, stop_event: threading.Event, idle_timeout: float) -> None:
        with self._lock:
            self._ensure_state()
            # Positions only increase; they need not be contiguous (Kafka offsets skip the
            # transaction markers), so "someone else moved us" is judged by our own cursor.
            cursor = self._position.next_position
        pending: list[StoredRecord] = []
        for record in self.store.follow(cursor, idle_timeout=idle_timeout):
            if record is not None:
                pending.append(record)
            if pending and (record is None or len(pending) >= self.batch_size):
                with self._lock:
                    if self._state is None or self._position.next_position != cursor:
                        return  # someone else moved us (catch_up, reset): restart from the position
                    self._project(pending)
                    cursor = self._position.next_position
                pending = []
            if stop_event.is_set():
                if pending:
                    with self._lock:
                        if self._state is not None and self._position.next_position == cursor:
                            self._project(pending)
                return

    def _project(self, batch: Sequence[StoredRecord]) -> None:
        state = self._state
        assert state is not None
        expected = self._position
        try:
            with self.engine.begin() as conn:
                invalid = 0
                for record in batch:
                    # Rows are derived from the state right after this entry folds, not later.
                    o = _judge(state, record)
                    if o.entry is not None:
                        write_entry(conn, state, o.entry, list(o.signers))
                    else:
                        invalid += 1
                        log.warning(
                            "projection %s: skipped record at position %d: %s",
                            self.name,
                            o.record.position,
                            o.reason,
                        )
                        conn.execute(
                            invalid_records_table.insert().values(
                                name=self.name,
                                position=o.record.position,
                                seq=o.seq,
                                reason=o.reason,
                            )
                        )
                new = Position(batch[-1].position + 1, state.size, state.last_hash)
                self._commit_position(conn, expected, new)
        except BaseException:
            # The state may have folded entries whose rows were rolled back.
            self._state = None
            raise
        self._position = new
        self.invalid_count += invalid

    def _commit_position(self, conn: sa.Connection, expected: Position, new: Position) -> None:
        """Move the position inside the batch's transaction, only from where we found it."""
        values = {
            "next_position": new.next_position,
            "next_seq": new.next_seq,
            "last_hash": new.last_hash.hex(),
        }
        t = position_table.c
        if expected == START:
            exists = conn.execute(sa.select(t.name).where(t.name == self.name)).one_or_none()
            if exists is None:
                conn.execute(position_table.insert().values(name=self.name, **values))
                return
        moved = conn.execute(
            position_table.update()
            .where(t.name == self.name, t.next_position == expected.next_position)
            .values(**values)
        )
        if moved.rowcount != 1:
            raise ProjectionError(
                f"projection {self.name!r} was moved by another projector since position "
                f"{expected.next_position}; this batch is rolled back"
            )


# --------------------------------------------------------------------------------------------
# Comparing projections (tests, and the ledger's crash checks)


def dump(
    engine: sa.Engine, tables: Iterable[sa.Table] = DERIVED_TABLES
) -> dict[str, list[tuple[Any, ...]]]:
    """Every row of the derived tables, sorted, for comparisons."""
    out: dict[str, list[tuple[Any, ...]]] = {}
    with engine.connect() as conn:
        for table in tables:
            rows = conn.execute(sa.select(table)).all()
            out[table.name] = sorted((tuple(r) for r in rows), key=repr)
    return out


def fresh_dump(store: LogStore) -> dict[str, list[tuple[Any, ...]]]:
    """The rows a fresh fold of the whole log gives, projected into a private in-memory database."""
    engine = memory_engine()
    try:
        Projector(store, engine, batch_size=10_000).catch_up()
        return dump(engine)
    finally:
        engine.dispose()
