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

Works on SQLite and PostgreSQL (SQLAlchemy Core only). Tables are prefixed ``proj_`` so they
can share a database with the SQLite log store. Hashes and key ids are lowercase hex.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from sqlalchemy.pool import StaticPool

from ledger.errors import StewardError, StoreUnavailableError
from ledger.formats import (
    ZERO_HASH,
    ApprovalRecorded,
    EvalRecorded,
    HealthReported,
    KeyGranted,
    KeyRevoked,
    KillScope,
    KillSwitchEngaged,
    KillSwitchReleased,
    LedgerGenesis,
    LogEntry,
    PolicySet,
    ProposalSubmitted,
    RolloutStep,
    decode_log_entry,
)
from ledger.keys import key_id
from ledger.rules import check
from ledger.state import LedgerState
from ledger.store.base import LogStore, StoredRecord

log = logging.getLogger(__name__)

DEFAULT_NAME = "steward"
MAX_REASON = 2000

metadata = sa.MetaData()

HexHash = sa.String(64)

keys_table = sa.Table(
    "proj_keys", metadata,
    sa.Column("key_id", HexHash, primary_key=True),
    sa.Column("principal", sa.String(256), nullable=False, index=True),
    sa.Column("kind", sa.String(16), nullable=False),
    sa.Column("roles", sa.String(256), nullable=False),  # sorted, space separated
    sa.Column("granted_seq", sa.BigInteger, nullable=False, index=True),
    sa.Column("expires_at", sa.BigInteger, nullable=True),
    sa.Column("revoked_seq", sa.BigInteger, nullable=True),
    sa.Column("revoke_reason", sa.Text, nullable=True),
)

policies_table = sa.Table(
    "proj_policies", metadata,
    sa.Column("policy_id", sa.String(256), primary_key=True),
    sa.Column("seq", sa.BigInteger, nullable=False),
    sa.Column("entry_hash", HexHash, nullable=False),
    sa.Column("selector_namespace", sa.String(256), nullable=False),
    sa.Column("selector_deployment", sa.String(256), nullable=False),
    sa.Column("required_evals", sa.JSON, nullable=False),
    sa.Column("approvals_required", sa.Integer, nullable=False),
    sa.Column("approver_kinds", sa.JSON, nullable=False),
    sa.Column("plan", sa.JSON, nullable=False),
    sa.Column("veto_on_reject", sa.Boolean, nullable=False),
    sa.Column("kill_release_approvals", sa.Integer, nullable=False),
    sa.Column("kill_rollback_bound_ms", sa.BigInteger, nullable=False),
)

proposals_table = sa.Table(
    "proj_proposals", metadata,
    sa.Column("hash", HexHash, primary_key=True),
    sa.Column("seq", sa.BigInteger, nullable=False, unique=True),
    sa.Column("submitted_at", sa.BigInteger, nullable=False),  # received_at, ms
    sa.Column("proposer", sa.String(256), nullable=False, index=True),
    sa.Column("namespace", sa.String(256), nullable=False),
    sa.Column("deployment", sa.String(256), nullable=False),
    sa.Column("candidate_image", sa.Text, nullable=False),
    sa.Column("candidate_digest", sa.Text, nullable=False),
    sa.Column("baseline_image", sa.Text, nullable=False),
    sa.Column("baseline_digest", sa.Text, nullable=False),
    sa.Column("rationale", sa.Text, nullable=False),
    sa.Column("origin_agent", sa.Text, nullable=False),
    sa.Column("origin_run", sa.Text, nullable=False),
    sa.Column("policy_id", sa.String(256), nullable=False),
    sa.Column("phase", sa.String(32), nullable=False, index=True),  # PENDING until a step
    sa.Column("step", sa.Integer, nullable=True),
    sa.Column("weight", sa.Integer, nullable=True),
    sa.Column("updated_seq", sa.BigInteger, nullable=False),  # last entry about this proposal
)
sa.Index("ix_proj_proposals_target", proposals_table.c.namespace, proposals_table.c.deployment)

evals_table = sa.Table(
    "proj_evals", metadata,
    sa.Column("hash", HexHash, primary_key=True),
    sa.Column("proposal", HexHash, nullable=False, index=True),
    sa.Column("seq", sa.BigInteger, nullable=False, unique=True),
    sa.Column("suite", sa.String(256), nullable=False),
    sa.Column("evaluator", sa.String(256), nullable=False),
    sa.Column("metrics", sa.JSON, nullable=False),  # [[name, value], ...]
    sa.Column("artifact_digest", sa.Text, nullable=False),
    sa.Column("passed", sa.Boolean, nullable=False),  # recomputed from the policy
    sa.Column("failures", sa.JSON, nullable=False),
    sa.Column("is_latest", sa.Boolean, nullable=False),  # the latest of its suite
)

approvals_table = sa.Table(
    "proj_approvals", metadata,
    sa.Column("hash", HexHash, primary_key=True),
    sa.Column("proposal", HexHash, nullable=False, index=True),
    sa.Column("seq", sa.BigInteger, nullable=False, unique=True),
    sa.Column("approver", sa.String(256), nullable=False),
    sa.Column("decision", sa.String(16), nullable=False),
    sa.Column("evals", sa.JSON, nullable=False),  # hex hashes the approver saw
    sa.Column("comment", sa.Text, nullable=False),
    # Counts towards the threshold now: the approver's latest decision, an approval, bound to
    # the latest passing evals, not older than the last rollback, from an allowed kind.
    sa.Column("valid_now", sa.Boolean, nullable=False),
)

rollout_steps_table = sa.Table(
    "proj_rollout_steps", metadata,
    sa.Column("seq", sa.BigInteger, primary_key=True, autoincrement=False),
    sa.Column("hash", HexHash, nullable=False),
    sa.Column("proposal", HexHash, nullable=False, index=True),
    sa.Column("step", sa.Integer, nullable=False),
    sa.Column("weight", sa.Integer, nullable=False),
    sa.Column("phase", sa.String(32), nullable=False),
    sa.Column("reason", sa.Text, nullable=False),
    sa.Column("at", sa.BigInteger, nullable=False),  # received_at, ms
    sa.Column("observed", sa.JSON, nullable=False),
)

kill_switches_table = sa.Table(
    "proj_kill_switches", metadata,
    sa.Column("engaged_seq", sa.BigInteger, primary_key=True, autoincrement=False),
    sa.Column("scope_kind", sa.String(16), nullable=False),
    sa.Column("scope_namespace", sa.String(256), nullable=False),
    sa.Column("scope_deployment", sa.String(256), nullable=False),
    sa.Column("scope_proposal", HexHash, nullable=True),
    sa.Column("engaged_by", sa.String(256), nullable=False),
    sa.Column("reason", sa.Text, nullable=False),
    sa.Column("released_seq", sa.BigInteger, nullable=True, index=True),
    sa.Column("released_by", sa.JSON, nullable=True),  # signing principals, sorted
    sa.Column("release_reason", sa.Text, nullable=True),
)

position_table = sa.Table(
    "proj_projection_position", metadata,
    sa.Column("name", sa.String(64), primary_key=True),
    sa.Column("next_position", sa.BigInteger, nullable=False),  # store position to read next
    sa.Column("next_seq", sa.BigInteger, nullable=False),  # = size of the projected log
    sa.Column("last_hash", HexHash, nullable=False),
)

invalid_records_table = sa.Table(
    "proj_invalid_records", metadata,
    sa.Column("name", sa.String(64), primary_key=True),
    sa.Column("position", sa.BigInteger, primary_key=True, autoincrement=False),
    sa.Column("seq", sa.BigInteger, nullable=True),  # when the record decoded
    sa.Column("reason", sa.Text, nullable=False),
)

# Derived tables, in an order that is safe to clear.
DERIVED_TABLES = (
    keys_table, policies_table, proposals_table, evals_table, approvals_table,
    rollout_steps_table, kill_switches_table,
)


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


def create_tables(engine: sa.Engine) -> None:
    metadata.create_all(engine)


def memory_engine() -> sa.Engine:
    """A private in-memory SQLite database shared by every thread of this process."""
    return sa.create_engine(
        "sqlite://", connect_args={"check_same_thread": False}, poolclass=StaticPool
    )


# --------------------------------------------------------------------------------------------
# Row writers: one function per event type, called after the state has folded the entry.


def _hex(h: bytes | None) -> str | None:
    return h.hex() if h is not None else None


def _scope_filter(scope: KillScope) -> Any:
    t = kill_switches_table.c
    return sa.and_(
        t.scope_kind == scope.kind,
        t.scope_namespace == scope.namespace,
        t.scope_deployment == scope.deployment,
        t.scope_proposal.is_(None) if scope.proposal is None else t.scope_proposal == scope.proposal.hex(),
        t.released_seq.is_(None),
    )


def _refresh_approvals(conn: sa.Connection, state: LedgerState, proposal_hash: bytes) -> None:
    """Recompute valid_now for every approval of one proposal from the folded state."""
    proposal = state.proposals[proposal_hash]
    valid = set(state.valid_approvers(proposal))
    valid_hashes = [a.entry_hash.hex() for a in proposal.approvals.values() if a.approver in valid]
    t = approvals_table.c
    conn.execute(
        approvals_table.update()
        .where(t.proposal == proposal_hash.hex())
        .values(valid_now=t.hash.in_(valid_hashes) if valid_hashes else sa.false())
    )


def _touch(conn: sa.Connection, state: LedgerState, proposal_hash: bytes, seq: int) -> None:
    p = state.proposals[proposal_hash]
    current = p.current
    conn.execute(
        proposals_table.update()
        .where(proposals_table.c.hash == proposal_hash.hex())
        .values(
            phase=p.phase,
            step=current.step if current else None,
            weight=current.weight if current else None,
            updated_seq=seq,
        )
    )


def _write(conn: sa.Connection, state: LedgerState, e: LogEntry, signers: list[str]) -> None:
    payload, seq, h = e.body.payload, e.seq, e.leaf_hash
    author = signers[0] if signers else ""
    if isinstance(payload, LedgerGenesis):
        conn.execute(keys_table.insert(), [
            {"key_id": key_id(r.public_key).hex(), "principal": r.principal,
             "kind": r.principal.split(":", 1)[0], "roles": "root", "granted_seq": seq,
             "expires_at": None, "revoked_seq": None}
            for r in payload.roots
        ])
    elif isinstance(payload, KeyGranted):
        conn.execute(keys_table.insert().values(
            key_id=key_id(payload.public_key).hex(), principal=payload.principal,
            kind=payload.principal.split(":", 1)[0], roles=" ".join(sorted(set(payload.roles))),
            granted_seq=seq, expires_at=payload.expires_at, revoked_seq=None,
        ))
    elif isinstance(payload, KeyRevoked):
        conn.execute(keys_table.update().where(keys_table.c.key_id == payload.key_id.hex())
                     .values(revoked_seq=seq, revoke_reason=payload.reason))
    elif isinstance(payload, PolicySet):
        row = {
            "seq": seq, "entry_hash": h.hex(),
            "selector_namespace": payload.selector.namespace,
            "selector_deployment": payload.selector.deployment,
            "required_evals": [
                {"suite": r.suite, "metric": r.metric, "op": r.op, "threshold": r.threshold}
                for r in payload.required_evals
            ],
            "approvals_required": payload.approvals_required,
            "approver_kinds": list(payload.approver_kinds),
            "plan": [
                {"weight": s.weight, "hold_seconds": s.hold_seconds, "health_gate": s.health_gate}
                for s in payload.plan
            ],
            "veto_on_reject": payload.veto_on_reject,
            "kill_release_approvals": payload.kill_release_approvals,
            "kill_rollback_bound_ms": payload.kill_rollback_bound_ms,
        }
        updated = conn.execute(policies_table.update()
                               .where(policies_table.c.policy_id == payload.policy_id).values(**row))
        if updated.rowcount == 0:
            conn.execute(policies_table.insert().values(policy_id=payload.policy_id, **row))
        # A replaced policy changes which approvals count for every proposal under it.
        for ph, p in state.proposals.items():
            if p.policy_id == payload.policy_id:
                _refresh_approvals(conn, state, ph)
    elif isinstance(payload, ProposalSubmitted):
        p = state.proposals[h]
        conn.execute(proposals_table.insert().values(
            hash=h.hex(), seq=seq, submitted_at=e.entry.received_at, proposer=p.proposer,
            namespace=payload.target.namespace, deployment=payload.target.deployment,
            candidate_image=payload.candidate.image, candidate_digest=payload.candidate.model_digest,
            baseline_image=payload.baseline.image, baseline_digest=payload.baseline.model_digest,
            rationale=payload.rationale, origin_agent=payload.origin.agent, origin_run=payload.origin.run,
            policy_id=p.policy_id, phase=p.phase, step=None, weight=None, updated_seq=seq,
        ))
    elif isinstance(payload, EvalRecorded):
        info = state.proposals[payload.proposal].latest_evals[payload.suite]
        t = evals_table.c
        conn.execute(evals_table.update()
                     .where(t.proposal == payload.proposal.hex(), t.suite == payload.suite, t.is_latest)
                     .values(is_latest=False))
        conn.execute(evals_table.insert().values(
            hash=h.hex(), proposal=payload.proposal.hex(), seq=seq, suite=payload.suite,
            evaluator=info.evaluator, metrics=[[m.name, m.value] for m in payload.metrics],
            artifact_digest=payload.artifact_digest, passed=info.passed,
            failures=list(info.failures), is_latest=True,
        ))
        _refresh_approvals(conn, state, payload.proposal)
        _touch(conn, state, payload.proposal, seq)
    elif isinstance(payload, ApprovalRecorded):
        conn.execute(approvals_table.insert().values(
            hash=h.hex(), proposal=payload.proposal.hex(), seq=seq, approver=author,
            decision=payload.decision, evals=[x.hex() for x in payload.evals],
            comment=payload.comment, valid_now=False,
        ))
        _refresh_approvals(conn, state, payload.proposal)
        _touch(conn, state, payload.proposal, seq)
    elif isinstance(payload, HealthReported):
        _touch(conn, state, payload.proposal, seq)
    elif isinstance(payload, RolloutStep):
        obs = payload.observed
        conn.execute(rollout_steps_table.insert().values(
            seq=seq, hash=h.hex(), proposal=payload.proposal.hex(), step=payload.step,
            weight=payload.weight, phase=payload.phase, reason=payload.reason,
            at=e.entry.received_at,
            observed={"stable_replicas": obs.stable_replicas, "canary_replicas": obs.canary_replicas,
                      "canary_ready": obs.canary_ready, "stable_image": obs.stable_image,
                      "canary_image": obs.canary_image},
        ))
        _touch(conn, state, payload.proposal, seq)
        if payload.phase == "ROLLED_BACK":  # older decisions stop counting
            _refresh_approvals(conn, state, payload.proposal)
    elif isinstance(payload, KillSwitchEngaged):
        s = payload.scope
        conn.execute(kill_switches_table.insert().values(
            engaged_seq=seq, scope_kind=s.kind, scope_namespace=s.namespace,
            scope_deployment=s.deployment, scope_proposal=_hex(s.proposal),
            engaged_by=author, reason=payload.reason,
        ))
    elif isinstance(payload, KillSwitchReleased):
        conn.execute(kill_switches_table.update().where(_scope_filter(payload.scope)).values(
            released_seq=seq, released_by=sorted(set(signers)), release_reason=payload.reason,
        ))


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
        return _Outcome(record, seq=e.seq, reason=f"check raised {type(exc).__name__}: {exc}"[:MAX_REASON])
    if violation is not None:
        return _Outcome(record, seq=e.seq, reason=f"rule {violation}"[:MAX_REASON])
    # Signers in signature order, resolved before apply (a key may revoke itself).
    signers = tuple(dict.fromkeys(
        state.keys[s.key_id].principal for s in e.entry.signatures if s.key_id in state.keys
    ))
    state.apply(e)
    return _Outcome(record, entry=e, signers=signers)


class Projector:
    """Keeps the ``proj_*`` tables of `engine` equal to a fold of `store`.

    One projector per (database, name) should run at a time; a second one is detected by an
    optimistic check on the position row and its batch is rolled back.
    """

    def __init__(self, store: LogStore, engine: sa.Engine, *, name: str = DEFAULT_NAME,
                 batch_size: int = 500, create: bool = True, full_replay: bool = False) -> None:
        if batch_size < 1:
            raise ValueError("batch_size must be at least 1")
        self.store = store
        self.engine = engine
        self.name = name
        self.batch_size = batch_size
        # Re-check every signature and rule of the already projected prefix on restart (slow);
        # by default the hash chain proves the prefix unchanged instead.
        self.full_replay = full_replay
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
                sa.select(position_table.c.next_position, position_table.c.next_seq, position_table.c.last_hash)
                .where(position_table.c.name == self.name)
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
            observed = "a broken chain" if state is None else f"seq {state.size} (last hash {state.last_hash.hex()})"
            raise ProjectionDivergenceError(
                f"projection {self.name!r} is at position {stored.next_position} = seq {stored.next_seq} "
                f"(last hash {stored.last_hash.hex()}), but replaying the log up to that position gives "
                f"{observed}; the log changed under the projections: rebuild them"
            )
        self._state, self._position = state, stored
        return state

    def _replay_checked(self, stored: Position) -> LedgerState:
        """Replay the prefix through decode, check and apply, writing nothing."""
        state = LedgerState()
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
        state = LedgerState()
        if stored.next_position == 0:
            return state
        t = invalid_records_table.c
        with self.engine.connect() as conn:
            skipped = set(conn.execute(
                sa.select(t.position).where(t.name == self.name, t.position < stored.next_position)
            ).scalars())
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
            conn.execute(invalid_records_table.delete().where(invalid_records_table.c.name == self.name))
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

    def run(self, stop_event: threading.Event, *, idle_timeout: float = 0.2,
            retry_delay: float = 1.0) -> None:
        """Follow the log until `stop_event` is set, committing a batch whenever the log idles
        or `batch_size` records are pending. Unavailable storage or database is retried."""
        while not stop_event.is_set():
            try:
                self._follow(stop_event, idle_timeout)
            except (StoreUnavailableError, sa.exc.OperationalError) as exc:
                log.warning("projection %s: %s; retrying in %.1f s", self.name, exc, retry_delay)
                self.reset()
                stop_event.wait(retry_delay)

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
                        _write(conn, state, o.entry, list(o.signers))
                    else:
                        invalid += 1
                        log.warning("projection %s: skipped record at position %d: %s",
                                    self.name, o.record.position, o.reason)
                        conn.execute(invalid_records_table.insert().values(
                            name=self.name, position=o.record.position, seq=o.seq, reason=o.reason,
                        ))
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
        values = {"next_position": new.next_position, "next_seq": new.next_seq, "last_hash": new.last_hash.hex()}
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


def dump(engine: sa.Engine, tables: Iterable[sa.Table] = DERIVED_TABLES) -> dict[str, list[tuple[Any, ...]]]:
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
