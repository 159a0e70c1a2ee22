"""The SQL schema of the projections: the ``proj_*`` tables, their columns and indexes.

SQLAlchemy Core tables, for SQLite and PostgreSQL alike. The tables are prefixed ``proj_`` so
they can share a database with the SQLite log store; hashes and key ids are lowercase hex.
ledger/projection_rows.py writes the derived tables, ledger/projections.py (the `Projector`) the
position and the skipped records, and ledger/query.py reads them all (docs/PROJECTIONS.md).
"""

from __future__ import annotations

import sqlalchemy as sa

# The name of a projection (its row in proj_position) unless the server is told another.
DEFAULT_NAME = "steward"

metadata = sa.MetaData()

HexHash = sa.String(64)

keys_table = sa.Table(
    "proj_keys",
    metadata,
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
    "proj_policies",
    metadata,
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
    "proj_proposals",
    metadata,
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
    "proj_evals",
    metadata,
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
    "proj_approvals",
    metadata,
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
    "proj_rollout_steps",
    metadata,
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
    "proj_kill_switches",
    metadata,
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
    "proj_projection_position",
    metadata,
    sa.Column("name", sa.String(64), primary_key=True),
    sa.Column("next_position", sa.BigInteger, nullable=False),  # store position to read next
    sa.Column("next_seq", sa.BigInteger, nullable=False),  # = size of the projected log
    sa.Column("last_hash", HexHash, nullable=False),
)

invalid_records_table = sa.Table(
    "proj_invalid_records",
    metadata,
    sa.Column("name", sa.String(64), primary_key=True),
    sa.Column("position", sa.BigInteger, primary_key=True, autoincrement=False),
    sa.Column("seq", sa.BigInteger, nullable=True),  # when the record decoded
    sa.Column("reason", sa.Text, nullable=False),
)

# Derived tables, in an order that is safe to clear.
DERIVED_TABLES = (
    keys_table,
    policies_table,
    proposals_table,
    evals_table,
    approvals_table,
    rollout_steps_table,
    kill_switches_table,
)


def create_tables(engine: sa.Engine) -> None:
    metadata.create_all(engine)
