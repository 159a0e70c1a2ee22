"""QueryService: read-only gRPC views of the SQL projections (ledger/projection_schema.py).

Each call reads one consistent snapshot of the ``proj_*`` tables (REPEATABLE READ on
PostgreSQL, one read transaction on SQLite), so the rows and the ``projection`` status of a
response agree. Lists are ordered by creating seq; a page token carries the last key of the
page and a digest of the filters, base64url-encoded, so it is stable while the log grows and is
refused (INVALID_ARGUMENT, field ``page.page_token``) with other filters.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import hashlib
import json
import logging
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import grpc
import sqlalchemy as sa

from ledger import projection_schema as schema
from ledger.formats import HASH_SIZE, ROLES, ROLLOUT_PHASES
from ledger.grpc_errors import ServiceError, guarded
from ledger.rules import principal_kind
from steward.v1 import common_pb2, query_pb2, query_pb2_grpc

log = logging.getLogger(__name__)

DEFAULT_PAGE_SIZE = 50
MAX_PAGE_SIZE = 500
PROPOSAL_PHASES = ("PENDING", *(p for p in ROLLOUT_PHASES if p != "DRIFT_CORRECTED"))
ROLLOUT_FILTER_PHASES = PROPOSAL_PHASES[1:]
_NAME_RE = re.compile(r"^[A-Za-z0-9*][A-Za-z0-9._\-/*]{0,252}$")
_HEX_RE = re.compile(r"^[0-9a-fA-F]{64}$")

INVALID_FILTER = "INVALID_FILTER"
INVALID_PAGE_TOKEN = "INVALID_PAGE_TOKEN"
PROPOSAL_NOT_FOUND = "PROPOSAL_NOT_FOUND"


def _invalid(field: str, message: str, code: str = INVALID_FILTER) -> ServiceError:
    return ServiceError(
        grpc.StatusCode.INVALID_ARGUMENT, f"{field}: {message}", violation_code=code, field=field
    )


# --------------------------------------------------------------------------------------------
# Filters


def _name(field: str, value: str) -> str:
    if value and not _NAME_RE.match(value):
        raise _invalid(field, f"{value[:80]!r} is not a Kubernetes-style name")
    return value


def _principal(field: str, value: str) -> str:
    if value and principal_kind(value) is None:
        raise _invalid(
            field,
            f"{value[:80]!r} is not a principal (expected human:, agent: or service: and a name)",
        )
    return value


def _phase(field: str, value: str, allowed: Sequence[str]) -> str:
    phase = value.upper()
    if phase and phase not in allowed:
        raise _invalid(field, f"unknown phase {value[:40]!r}; expected one of {', '.join(allowed)}")
    return phase


def _hash_ref(
    request: Any, oneof: str, bytes_field: str, hex_field: str, *, required: bool
) -> bytes | None:
    which = request.WhichOneof(oneof)
    if which is None:
        if required:
            raise _invalid(
                oneof, f"set {bytes_field} (32 bytes) or {hex_field} (64 hex characters)"
            )
        return None
    if which == bytes_field:
        raw: bytes = getattr(request, bytes_field)
        if len(raw) != HASH_SIZE:
            raise _invalid(bytes_field, f"{len(raw)} bytes, expected a {HASH_SIZE}-byte entry hash")
        return raw
    text: str = getattr(request, hex_field)
    if not _HEX_RE.match(text):
        raise _invalid(hex_field, f"{text[:80]!r} is not 64 hex characters")
    return bytes.fromhex(text)


# --------------------------------------------------------------------------------------------
# Paging


@dataclass(frozen=True)
class _Page:
    size: int
    after: tuple[int, str] | None
    digest: str


def _filters_digest(method: str, filters: Sequence[object]) -> str:
    text = json.dumps([method, *[f.hex() if isinstance(f, bytes) else f for f in filters]])
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _parse_page(page: common_pb2.PageRequest, method: str, filters: Sequence[object]) -> _Page:
    digest = _filters_digest(method, filters)
    size = page.page_size or DEFAULT_PAGE_SIZE
    size = min(size, MAX_PAGE_SIZE)  # larger requests are served in pages of the maximum
    if not page.page_token:
        return _Page(size, None, digest)
    try:
        padded = page.page_token + "=" * (-len(page.page_token) % 4)
        data = json.loads(base64.urlsafe_b64decode(padded.encode("ascii")))
        version, seq, tie, token_digest = data["v"], data["s"], data["t"], data["f"]
        if version != 1 or not isinstance(seq, int) or not isinstance(tie, str) or seq < 0:
            raise ValueError("bad fields")
    except (ValueError, KeyError, TypeError, UnicodeError, binascii.Error) as exc:
        raise _invalid(
            "page.page_token", "not a page token this service issued", INVALID_PAGE_TOKEN
        ) from exc
    if token_digest != digest:
        raise _invalid(
            "page.page_token",
            "issued for other filters; repeat the request with the same filters",
            INVALID_PAGE_TOKEN,
        )
    return _Page(size, (seq, tie), digest)


def _token(page: _Page, seq: int, tie: str) -> str:
    raw = json.dumps({"v": 1, "s": seq, "t": tie, "f": page.digest}, separators=(",", ":"))
    return base64.urlsafe_b64encode(raw.encode()).decode().rstrip("=")


def _paged(
    conn: sa.Connection, stmt: sa.Select[Any], page: _Page, seq_col: Any, tie_col: Any | None = None
) -> tuple[list[Any], common_pb2.PageResponse]:
    """Rows of `stmt` after the page's key, ordered by (seq, tie), and the next token."""
    if page.after is not None:
        seq, tie = page.after
        stmt = stmt.where(
            seq_col > seq
            if tie_col is None
            else sa.or_(seq_col > seq, sa.and_(seq_col == seq, tie_col > tie))
        )
    order = [seq_col] if tie_col is None else [seq_col, tie_col]
    rows = list(conn.execute(stmt.order_by(*order).limit(page.size + 1)))
    more = len(rows) > page.size
    rows = rows[: page.size]
    token = ""
    if more:
        last = rows[-1]
        token = _token(
            page,
            int(last._mapping[seq_col.name]),
            "" if tie_col is None else str(last._mapping[tie_col.name]),
        )
    return rows, common_pb2.PageResponse(next_page_token=token)


# --------------------------------------------------------------------------------------------
# Rows to messages


def _proposal(r: Any) -> query_pb2.Proposal:
    return query_pb2.Proposal(
        hash=bytes.fromhex(r.hash),
        seq=r.seq,
        submitted_at_ms=r.submitted_at,
        proposer=r.proposer,
        namespace=r.namespace,
        deployment=r.deployment,
        candidate_image=r.candidate_image,
        candidate_digest=r.candidate_digest,
        baseline_image=r.baseline_image,
        baseline_digest=r.baseline_digest,
        rationale=r.rationale,
        origin_agent=r.origin_agent,
        origin_run=r.origin_run,
        policy_id=r.policy_id,
        phase=r.phase,
        step=r.step,
        weight=r.weight,
        updated_seq=r.updated_seq,
    )


def _eval(r: Any) -> query_pb2.Eval:
    return query_pb2.Eval(
        hash=bytes.fromhex(r.hash),
        proposal=bytes.fromhex(r.proposal),
        seq=r.seq,
        suite=r.suite,
        evaluator=r.evaluator,
        metrics=[query_pb2.EvalMetric(name=n, value=v) for n, v in r.metrics],
        artifact_digest=r.artifact_digest,
        passed=r.passed,
        failures=list(r.failures),
        is_latest=r.is_latest,
    )


def _approval(r: Any) -> query_pb2.Approval:
    return query_pb2.Approval(
        hash=bytes.fromhex(r.hash),
        proposal=bytes.fromhex(r.proposal),
        seq=r.seq,
        approver=r.approver,
        decision=r.decision,
        evals=[bytes.fromhex(h) for h in r.evals],
        comment=r.comment,
        valid_now=r.valid_now,
    )


def _step(r: Any) -> query_pb2.RolloutStepRecord:
    obs = r.observed
    return query_pb2.RolloutStepRecord(
        seq=r.seq,
        hash=bytes.fromhex(r.hash),
        proposal=bytes.fromhex(r.proposal),
        step=r.step,
        weight=r.weight,
        phase=r.phase,
        reason=r.reason,
        at_ms=r.at,
        stable_replicas=obs["stable_replicas"],
        canary_replicas=obs["canary_replicas"],
        canary_ready=obs["canary_ready"],
        stable_image=obs["stable_image"],
        canary_image=obs["canary_image"],
    )


def _kill_switch(r: Any) -> query_pb2.KillSwitch:
    return query_pb2.KillSwitch(
        engaged_seq=r.engaged_seq,
        scope_kind=r.scope_kind,
        namespace=r.scope_namespace,
        deployment=r.scope_deployment,
        proposal=bytes.fromhex(r.scope_proposal) if r.scope_proposal else b"",
        engaged_by=r.engaged_by,
        reason=r.reason,
        active=r.released_seq is None,
        released_seq=r.released_seq,
        released_by=list(r.released_by or ()),
        release_reason=r.release_reason or "",
    )


def _key(r: Any) -> query_pb2.GrantedKey:
    return query_pb2.GrantedKey(
        key_id=bytes.fromhex(r.key_id),
        principal=r.principal,
        kind=r.kind,
        roles=r.roles.split(),
        granted_seq=r.granted_seq,
        expires_at_ms=r.expires_at,
        revoked_seq=r.revoked_seq,
        revoke_reason=r.revoke_reason or "",
    )


# --------------------------------------------------------------------------------------------
# The servicer


class QueryServicer(query_pb2_grpc.QueryServiceServicer):
    def __init__(self, engine: sa.Engine, *, projection: str = schema.DEFAULT_NAME) -> None:
        self.engine = engine
        self.projection = projection

    @contextlib.contextmanager
    def _snapshot(self) -> Iterator[sa.Connection]:
        """One read-only snapshot for a whole response."""
        if self.engine.dialect.name == "postgresql":
            with (
                self.engine.connect().execution_options(isolation_level="REPEATABLE READ") as conn,
                conn.begin(),
            ):
                conn.exec_driver_sql("SET TRANSACTION READ ONLY")
                yield conn
            return
        with self.engine.connect() as conn:
            if self.engine.dialect.name == "sqlite":
                # pysqlite would run each SELECT in its own implicit snapshot otherwise.
                conn.exec_driver_sql("BEGIN")
            try:
                yield conn
            finally:
                conn.rollback()

    def _status(self, conn: sa.Connection) -> query_pb2.ProjectionStatus:
        pos, inv = schema.position_table.c, schema.invalid_records_table.c
        row = conn.execute(
            sa.select(pos.next_seq, pos.last_hash).where(pos.name == self.projection)
        ).one_or_none()
        invalid = conn.execute(
            sa.select(sa.func.count()).where(inv.name == self.projection)
        ).scalar_one()
        if row is None:
            return query_pb2.ProjectionStatus(
                size=0, last_hash=bytes(HASH_SIZE), invalid_records=invalid
            )
        return query_pb2.ProjectionStatus(
            size=row.next_seq, last_hash=bytes.fromhex(row.last_hash), invalid_records=invalid
        )

    def _require_proposal(self, conn: sa.Connection, h: bytes, field: str) -> Any:
        t = schema.proposals_table
        row = conn.execute(sa.select(t).where(t.c.hash == h.hex())).one_or_none()
        if row is None:
            raise ServiceError(
                grpc.StatusCode.NOT_FOUND,
                f"{field}: no proposal {h.hex()} in the projections",
                violation_code=PROPOSAL_NOT_FOUND,
                field=field,
            )
        return row

    # -- RPCs

    @guarded(log)
    def GetProjectionStatus(
        self, request: query_pb2.GetProjectionStatusRequest, context: grpc.ServicerContext
    ) -> query_pb2.ProjectionStatus:
        with self._snapshot() as conn:
            return self._status(conn)

    @guarded(log)
    def ListProposals(
        self, request: query_pb2.ListProposalsRequest, context: grpc.ServicerContext
    ) -> query_pb2.ListProposalsResponse:
        namespace = _name("namespace", request.namespace)
        deployment = _name("deployment", request.deployment)
        phase = _phase("phase", request.phase, PROPOSAL_PHASES)
        proposer = _principal("proposer", request.proposer)
        page = _parse_page(request.page, "ListProposals", [namespace, deployment, phase, proposer])
        t = schema.proposals_table.c
        stmt = sa.select(schema.proposals_table)
        for col, value in (
            (t.namespace, namespace),
            (t.deployment, deployment),
            (t.phase, phase),
            (t.proposer, proposer),
        ):
            if value:
                stmt = stmt.where(col == value)
        with self._snapshot() as conn:
            rows, page_out = _paged(conn, stmt, page, t.seq)
            return query_pb2.ListProposalsResponse(
                proposals=[_proposal(r) for r in rows], page=page_out, projection=self._status(conn)
            )

    @guarded(log)
    def GetProposal(
        self, request: query_pb2.GetProposalRequest, context: grpc.ServicerContext
    ) -> query_pb2.GetProposalResponse:
        h = _hash_ref(request, "proposal", "hash", "hash_hex", required=True)
        assert h is not None
        ev, ap, st, pol = (
            schema.evals_table,
            schema.approvals_table,
            schema.rollout_steps_table,
            schema.policies_table,
        )
        with self._snapshot() as conn:
            row = self._require_proposal(conn, h, request.WhichOneof("proposal") or "proposal")
            evals = conn.execute(
                sa.select(ev).where(ev.c.proposal == row.hash, ev.c.is_latest).order_by(ev.c.seq)
            )
            approvals = list(
                conn.execute(sa.select(ap).where(ap.c.proposal == row.hash).order_by(ap.c.seq))
            )
            steps = conn.execute(sa.select(st).where(st.c.proposal == row.hash).order_by(st.c.seq))
            required = conn.execute(
                sa.select(pol.c.approvals_required).where(pol.c.policy_id == row.policy_id)
            ).scalar_one()
            return query_pb2.GetProposalResponse(
                proposal=_proposal(row),
                latest_evals=[_eval(r) for r in evals],
                approvals=[_approval(r) for r in approvals],
                steps=[_step(r) for r in steps],
                approvals_required=required,
                valid_approvers=sorted({a.approver for a in approvals if a.valid_now}),
                projection=self._status(conn),
            )

    @guarded(log)
    def ListEvals(
        self, request: query_pb2.ListEvalsRequest, context: grpc.ServicerContext
    ) -> query_pb2.ListEvalsResponse:
        h = _hash_ref(request, "proposal", "proposal_hash", "proposal_hex", required=False)
        suite = request.suite
        if len(suite) > 256:
            raise _invalid("suite", "longer than 256 characters")
        page = _parse_page(request.page, "ListEvals", [h or b"", suite, request.latest_only])
        t = schema.evals_table.c
        stmt = sa.select(schema.evals_table)
        if h is not None:
            stmt = stmt.where(t.proposal == h.hex())
        if suite:
            stmt = stmt.where(t.suite == suite)
        if request.latest_only:
            stmt = stmt.where(t.is_latest)
        with self._snapshot() as conn:
            if h is not None:
                self._require_proposal(conn, h, request.WhichOneof("proposal") or "proposal")
            rows, page_out = _paged(conn, stmt, page, t.seq)
            return query_pb2.ListEvalsResponse(
                evals=[_eval(r) for r in rows], page=page_out, projection=self._status(conn)
            )

    @guarded(log)
    def ListApprovals(
        self, request: query_pb2.ListApprovalsRequest, context: grpc.ServicerContext
    ) -> query_pb2.ListApprovalsResponse:
        h = _hash_ref(request, "proposal", "proposal_hash", "proposal_hex", required=False)
        approver = _principal("approver", request.approver)
        page = _parse_page(request.page, "ListApprovals", [h or b"", approver, request.valid_only])
        t = schema.approvals_table.c
        stmt = sa.select(schema.approvals_table)
        if h is not None:
            stmt = stmt.where(t.proposal == h.hex())
        if approver:
            stmt = stmt.where(t.approver == approver)
        if request.valid_only:
            stmt = stmt.where(t.valid_now)
        with self._snapshot() as conn:
            if h is not None:
                self._require_proposal(conn, h, request.WhichOneof("proposal") or "proposal")
            rows, page_out = _paged(conn, stmt, page, t.seq)
            return query_pb2.ListApprovalsResponse(
                approvals=[_approval(r) for r in rows], page=page_out, projection=self._status(conn)
            )

    @guarded(log)
    def ListRollouts(
        self, request: query_pb2.QueryRolloutsRequest, context: grpc.ServicerContext
    ) -> query_pb2.QueryRolloutsResponse:
        phase = _phase("phase", request.phase, ROLLOUT_FILTER_PHASES)
        namespace = _name("namespace", request.namespace)
        deployment = _name("deployment", request.deployment)
        page = _parse_page(request.page, "ListRollouts", [phase, namespace, deployment])
        t = schema.proposals_table.c
        stmt = sa.select(schema.proposals_table).where(
            t.phase == phase if phase else t.phase != "PENDING"
        )
        if namespace:
            stmt = stmt.where(t.namespace == namespace)
        if deployment:
            stmt = stmt.where(t.deployment == deployment)
        st = schema.rollout_steps_table
        with self._snapshot() as conn:
            rows, page_out = _paged(conn, stmt, page, t.seq)
            steps: dict[str, list[query_pb2.RolloutStepRecord]] = {r.hash: [] for r in rows}
            if steps:
                for s in conn.execute(
                    sa.select(st).where(st.c.proposal.in_(list(steps))).order_by(st.c.seq)
                ):
                    steps[s.proposal].append(_step(s))
            return query_pb2.QueryRolloutsResponse(
                rollouts=[
                    query_pb2.RolloutHistory(proposal=_proposal(r), steps=steps[r.hash])
                    for r in rows
                ],
                page=page_out,
                projection=self._status(conn),
            )

    @guarded(log)
    def ListKillSwitches(
        self, request: query_pb2.ListKillSwitchesRequest, context: grpc.ServicerContext
    ) -> query_pb2.ListKillSwitchesResponse:
        page = _parse_page(request.page, "ListKillSwitches", [request.active_only])
        t = schema.kill_switches_table.c
        stmt = sa.select(schema.kill_switches_table)
        if request.active_only:
            stmt = stmt.where(t.released_seq.is_(None))
        with self._snapshot() as conn:
            rows, page_out = _paged(conn, stmt, page, t.engaged_seq)
            return query_pb2.ListKillSwitchesResponse(
                kill_switches=[_kill_switch(r) for r in rows],
                page=page_out,
                projection=self._status(conn),
            )

    @guarded(log)
    def ListKeys(
        self, request: query_pb2.ListKeysRequest, context: grpc.ServicerContext
    ) -> query_pb2.ListKeysResponse:
        principal = _principal("principal", request.principal)
        role = request.role
        if role and role not in ROLES:
            raise _invalid(
                "role", f"unknown role {role[:40]!r}; expected one of {', '.join(ROLES)}"
            )
        page = _parse_page(request.page, "ListKeys", [principal, role, request.include_revoked])
        t = schema.keys_table.c
        stmt = sa.select(schema.keys_table)
        if principal:
            stmt = stmt.where(t.principal == principal)
        if role:
            # roles is space separated; the role name is checked above, so no LIKE wildcards.
            stmt = stmt.where((sa.literal(" ") + t.roles + sa.literal(" ")).like(f"% {role} %"))
        if not request.include_revoked:
            stmt = stmt.where(t.revoked_seq.is_(None))
        with self._snapshot() as conn:
            rows, page_out = _paged(conn, stmt, page, t.granted_seq, t.key_id)
            return query_pb2.ListKeysResponse(
                keys=[_key(r) for r in rows], page=page_out, projection=self._status(conn)
            )


def add_query_service(
    server: grpc.Server, engine: sa.Engine, *, projection: str = schema.DEFAULT_NAME
) -> QueryServicer:
    """Register QueryService on `server`, reading the projections in `engine`.

    The tables are created when missing, so the service answers (with empty lists) before the
    first projection batch commits. Returns the servicer.
    """
    schema.create_tables(engine)
    servicer = QueryServicer(engine, projection=projection)
    query_pb2_grpc.add_QueryServiceServicer_to_server(servicer, server)
    return servicer
