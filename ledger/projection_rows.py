"""The projections' row writers: what each folded log entry changes in the ``proj_*`` tables.

`write_entry` is called by the `Projector` (ledger/projections.py) after the state has folded the
entry, inside the batch's transaction; it reads the folded state for what the entry implies
(an approval still valid, a proposal's phase) and writes one event type's rows.
"""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa

from ledger.formats import (
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
)
from ledger.keys import key_id
from ledger.projection_schema import (
    approvals_table,
    evals_table,
    keys_table,
    kill_switches_table,
    policies_table,
    proposals_table,
    rollout_steps_table,
)
from ledger.state import LedgerState


def _hex(h: bytes | None) -> str | None:
    return h.hex() if h is not None else None


def _scope_filter(scope: KillScope) -> Any:
    t = kill_switches_table.c
    return sa.and_(
        t.scope_kind == scope.kind,
        t.scope_namespace == scope.namespace,
        t.scope_deployment == scope.deployment,
        t.scope_proposal.is_(None)
        if scope.proposal is None
        else t.scope_proposal == scope.proposal.hex(),
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


def write_entry(conn: sa.Connection, state: LedgerState, e: LogEntry, signers: list[str]) -> None:
    """The rows of folded entry `e` (signed by `signers`, in signature order)."""
    payload, seq, h = e.body.payload, e.seq, e.leaf_hash
    author = signers[0] if signers else ""
    if isinstance(payload, LedgerGenesis):
        conn.execute(
            keys_table.insert(),
            [
                {
                    "key_id": key_id(r.public_key).hex(),
                    "principal": r.principal,
                    "kind": r.principal.split(":", 1)[0],
                    "roles": "root",
                    "granted_seq": seq,
                    "expires_at": None,
                    "revoked_seq": None,
                }
                for r in payload.roots
            ],
        )
    elif isinstance(payload, KeyGranted):
        conn.execute(
            keys_table.insert().values(
                key_id=key_id(payload.public_key).hex(),
                principal=payload.principal,
                kind=payload.principal.split(":", 1)[0],
                roles=" ".join(sorted(set(payload.roles))),
                granted_seq=seq,
                expires_at=payload.expires_at,
                revoked_seq=None,
            )
        )
    elif isinstance(payload, KeyRevoked):
        conn.execute(
            keys_table.update()
            .where(keys_table.c.key_id == payload.key_id.hex())
            .values(revoked_seq=seq, revoke_reason=payload.reason)
        )
    elif isinstance(payload, PolicySet):
        row = {
            "seq": seq,
            "entry_hash": h.hex(),
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
        updated = conn.execute(
            policies_table.update()
            .where(policies_table.c.policy_id == payload.policy_id)
            .values(**row)
        )
        if updated.rowcount == 0:
            conn.execute(policies_table.insert().values(policy_id=payload.policy_id, **row))
        # A replaced policy changes which approvals count for every proposal under it.
        for ph, p in state.proposals.items():
            if p.policy_id == payload.policy_id:
                _refresh_approvals(conn, state, ph)
    elif isinstance(payload, ProposalSubmitted):
        p = state.proposals[h]
        conn.execute(
            proposals_table.insert().values(
                hash=h.hex(),
                seq=seq,
                submitted_at=e.entry.received_at,
                proposer=p.proposer,
                namespace=payload.target.namespace,
                deployment=payload.target.deployment,
                candidate_image=payload.candidate.image,
                candidate_digest=payload.candidate.model_digest,
                baseline_image=payload.baseline.image,
                baseline_digest=payload.baseline.model_digest,
                rationale=payload.rationale,
                origin_agent=payload.origin.agent,
                origin_run=payload.origin.run,
                policy_id=p.policy_id,
                phase=p.phase,
                step=None,
                weight=None,
                updated_seq=seq,
            )
        )
    elif isinstance(payload, EvalRecorded):
        info = state.proposals[payload.proposal].latest_evals[payload.suite]
        t = evals_table.c
        conn.execute(
            evals_table.update()
            .where(t.proposal == payload.proposal.hex(), t.suite == payload.suite, t.is_latest)
            .values(is_latest=False)
        )
        conn.execute(
            evals_table.insert().values(
                hash=h.hex(),
                proposal=payload.proposal.hex(),
                seq=seq,
                suite=payload.suite,
                evaluator=info.evaluator,
                metrics=[[m.name, m.value] for m in payload.metrics],
                artifact_digest=payload.artifact_digest,
                passed=info.passed,
                failures=list(info.failures),
                is_latest=True,
            )
        )
        _refresh_approvals(conn, state, payload.proposal)
        _touch(conn, state, payload.proposal, seq)
    elif isinstance(payload, ApprovalRecorded):
        conn.execute(
            approvals_table.insert().values(
                hash=h.hex(),
                proposal=payload.proposal.hex(),
                seq=seq,
                approver=author,
                decision=payload.decision,
                evals=[x.hex() for x in payload.evals],
                comment=payload.comment,
                valid_now=False,
            )
        )
        _refresh_approvals(conn, state, payload.proposal)
        _touch(conn, state, payload.proposal, seq)
    elif isinstance(payload, HealthReported):
        _touch(conn, state, payload.proposal, seq)
    elif isinstance(payload, RolloutStep):
        obs = payload.observed
        conn.execute(
            rollout_steps_table.insert().values(
                seq=seq,
                hash=h.hex(),
                proposal=payload.proposal.hex(),
                step=payload.step,
                weight=payload.weight,
                phase=payload.phase,
                reason=payload.reason,
                at=e.entry.received_at,
                observed={
                    "stable_replicas": obs.stable_replicas,
                    "canary_replicas": obs.canary_replicas,
                    "canary_ready": obs.canary_ready,
                    "stable_image": obs.stable_image,
                    "canary_image": obs.canary_image,
                },
            )
        )
        _touch(conn, state, payload.proposal, seq)
        if payload.phase == "ROLLED_BACK":  # older decisions stop counting
            _refresh_approvals(conn, state, payload.proposal)
    elif isinstance(payload, KillSwitchEngaged):
        s = payload.scope
        conn.execute(
            kill_switches_table.insert().values(
                engaged_seq=seq,
                scope_kind=s.kind,
                scope_namespace=s.namespace,
                scope_deployment=s.deployment,
                scope_proposal=_hex(s.proposal),
                engaged_by=author,
                reason=payload.reason,
            )
        )
    elif isinstance(payload, KillSwitchReleased):
        conn.execute(
            kill_switches_table.update()
            .where(_scope_filter(payload.scope))
            .values(
                released_seq=seq,
                released_by=sorted(set(signers)),
                release_reason=payload.reason,
            )
        )
