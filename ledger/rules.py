"""The governance rules (docs/DESIGN.md §4) as one pure function over a folded state.

``check(state, entry)`` returns ``None`` when the entry may follow the log folded into
``state`` (a :class:`ledger.state.LedgerState`), or the first :class:`Violation` it finds, with
a code from :data:`CODES`, the field at fault and a message saying what was observed and what
was expected. It does no I/O and changes nothing. ``state.apply(entry)`` folds an entry that
passed into the state; :func:`apply_checked` (check, then apply) and :func:`fold` (a whole
log) live here, not in :mod:`ledger.state`, because the rules read the state and the state
never imports the rules. The ledger (at ingest) and the controller (at replay) share this
module; the auditor has its own, independent implementation of the same rules.

Thresholds are counted by distinct *principal*: two keys of one principal count once (and one
key may not be listed twice at all: an event's signatures are sorted by key id, each key once,
so that one event has one encoding). A signature by a revoked key, an expired key or an unknown
key rejects the whole event, so a stale key can never help reach a threshold. Names and free
text must be well formed (:mod:`ledger.names`).

One idea, read top to bottom (hence its length): the violation codes, then :func:`check`
(the chain and structure, the signatures and thresholds), then the rules of each event type.
"""

from __future__ import annotations

import math
import re
from collections.abc import Container, Iterable, Sequence
from dataclasses import dataclass
from typing import NamedTuple

from ledger.analysis import MAX_COUNT, checks_for_step, evidence_problem, judge
from ledger.delivery import delivery_problem
from ledger.errors import StewardError
from ledger.formats import (
    COMPARE_OPS,
    HASH_SIZE,
    NO_DATA_ACTIONS,
    PRINCIPAL_KINDS,
    ROLES,
    SINGLE_OBJECT_MAGIC,
    ApprovalRecorded,
    EvalRecorded,
    EventBody,
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
    RolloutPaused,
    RolloutResumed,
    RolloutStep,
    Signature,
    payload_hashes,
    signed_bytes,
)
from ledger.keys import PublicKey, key_id
from ledger.names import first_payload_problem
from ledger.quick_init import quick_init
from ledger.state import ACTIVE_PHASES, KeyInfo, LedgerState, ProposalState

# Categories say what a client should do about a violation; the gRPC layer maps them to
# status codes (malformed → INVALID_ARGUMENT, unauthenticated → UNAUTHENTICATED,
# permission → PERMISSION_DENIED, precondition → FAILED_PRECONDITION,
# duplicate → ALREADY_EXISTS).
MALFORMED = "malformed"
UNAUTHENTICATED = "unauthenticated"
PERMISSION = "permission"
PRECONDITION = "precondition"
DUPLICATE = "duplicate"

# Every violation code, with its category and what it means: the one list of them. The strings
# are part of the API (clients, docs/GOVERNANCE.md and the auditor rely on them) and a
# meta-test in tests/unit/test_rules.py fails if one is never produced.
CODES: dict[str, str] = {
    # Structure and chain
    "GENESIS_MISPLACED": PRECONDITION,  # LedgerGenesis not at seq 0, or another type at seq 0
    "LEDGER_MISMATCH": MALFORMED,  # the body names another ledger than its genesis
    "SEQ_MISMATCH": PRECONDITION,  # the entry's seq is not the log's next position
    "PREV_MISMATCH": PRECONDITION,  # the entry's prev is not the hash of the log's last entry
    "DUPLICATE_EVENT_ID": DUPLICATE,  # the event id (the idempotency key) is already in the log
    "REF_UNKNOWN": PRECONDITION,  # a ref names no entry of the log
    "REF_MISSING": MALFORMED,  # the payload names an entry that refs does not list
    "INVALID_FIELD": MALFORMED,  # a field out of its domain (Violation.field names it)
    "NAME_INVALID": MALFORMED,  # a namespace, Deployment name or principal that is not well formed (ledger.names)
    "TEXT_INVALID": MALFORMED,  # free text with a control character or over its length cap (ledger.names)
    # Signatures and keys
    "NO_SIGNATURES": UNAUTHENTICATED,  # the event carries no signature
    "SIGNATURES_NOT_CANONICAL": MALFORMED,  # signatures not in ascending key-id order, or a key twice
    "UNKNOWN_KEY": UNAUTHENTICATED,  # a signature by a key never granted on this ledger
    "BAD_SIGNATURE": UNAUTHENTICATED,  # a signature does not verify over the signed bytes
    "KEY_REVOKED": PERMISSION,  # a signature by a key revoked before this entry
    "KEY_EXPIRED": PERMISSION,  # a signature by a key past its expiry at the entry's received_at
    "ROLE_REQUIRED": PERMISSION,  # the author holds no key with a role this event needs
    "MULTIPLE_AUTHORS": PERMISSION,  # an event of one author signed by several principals
    "THRESHOLD_NOT_MET": PERMISSION,  # fewer distinct root (or approver) principals than required
    "KEY_EXISTS": DUPLICATE,  # the key was granted before, or genesis lists it twice
    "KEY_UNKNOWN": PRECONDITION,  # revoking a key never granted or already revoked
    # Proposals, evals, approvals
    "NO_POLICY": PRECONDITION,  # no policy selects the proposal's target
    "PROPOSAL_UNKNOWN": PRECONDITION,  # the hash names no proposal of this ledger
    "PROPOSAL_CLOSED": PRECONDITION,  # an eval or a decision on a proposal already promoted
    "SELF_EVALUATION": PRECONDITION,  # the proposer evaluating its own proposal
    "SELF_APPROVAL": PRECONDITION,  # the proposer approving or rejecting its own proposal
    "APPROVER_KIND_NOT_ALLOWED": PERMISSION,  # the policy takes no decision from this principal kind
    "EVALS_MISSING": PRECONDITION,  # approving before every required suite has an eval
    "EVAL_FAILED": PRECONDITION,  # approving over a failing latest eval
    "EVAL_NOT_FOR_PROPOSAL": PRECONDITION,  # a decision names an entry that is no eval of this proposal
    "APPROVAL_NOT_BOUND_TO_LATEST_EVAL": PRECONDITION,  # an approval not naming exactly the latest eval of each required suite
    "DECISION_NOT_AFTER_LATEST_ROLLBACK": PRECONDITION,  # a decision whose refs do not name exactly the proposal's latest rollback
    "HEALTH_NOT_FOR_CURRENT_RUN": PRECONDITION,  # a health report whose refs do not name exactly the current run of its step
    "HEALTH_VERDICT_MISMATCH": MALFORMED,  # a check's signed verdict (or the report's healthy) is not what its samples make under the policy
    # Rollouts
    "APPROVALS_INSUFFICIENT": PRECONDITION,  # too few valid approvals by distinct principals to go forward
    "VETOED": PRECONDITION,  # a standing rejection under a veto policy
    "KILL_SWITCH_ENGAGED": PRECONDITION,  # a kill switch covering the proposal is engaged
    "ROLLOUT_STATE": PRECONDITION,  # this phase cannot follow the rollout's current one
    "TARGET_BUSY": PRECONDITION,  # another proposal's rollout is active on the same target
    "STEP_NOT_IN_PLAN": PRECONDITION,  # a step other than the plan's next one, or outside the plan
    "WEIGHT_NOT_IN_PLAN": PRECONDITION,  # a weight other than the plan's for that step
    "HOLD_NOT_ELAPSED": PRECONDITION,  # the current step was not held for its hold_seconds yet
    "HEALTH_GATE": PRECONDITION,  # a health-gated step without a healthy report (or passing checks) since it started
    "ROLLOUT_PAUSED": PRECONDITION,  # a forward step (ADVANCED, PROMOTED) while a RolloutPaused is in force
    # Pause and resume
    "ROLLOUT_NOT_RUNNING": PRECONDITION,  # pausing a rollout that has not started, or has ended (PROMOTED, ROLLED_BACK)
    "ROLLOUT_ALREADY_PAUSED": PRECONDITION,  # pausing a rollout already paused
    "ROLLOUT_NOT_PAUSED": PRECONDITION,  # resuming a rollout that is not paused
    "RESUME_NOT_FOR_CURRENT_PAUSE": PRECONDITION,  # a resume whose refs do not name exactly the pause it ends
    # Kill switches
    "KILL_SWITCH_NOT_ENGAGED": PRECONDITION,  # releasing a scope that is not engaged
    "KILL_SWITCH_ALREADY_ENGAGED": PRECONDITION,  # engaging a scope that is already engaged
    "RELEASE_NOT_FOR_CURRENT_ENGAGEMENT": PRECONDITION,  # a release whose refs do not name exactly the engagement it releases
}


@quick_init
@dataclass(frozen=True)
class Violation:
    code: str
    field: str
    message: str

    @property
    def category(self) -> str:
        return CODES[self.code]

    def __str__(self) -> str:
        return f"{self.code} ({self.field}): {self.message}"


class RuleViolationError(StewardError):
    """Raised by :func:`apply_checked` when an entry breaks a rule."""

    def __init__(self, violation: Violation) -> None:
        super().__init__(str(violation))
        self.violation = violation


_PRINCIPAL_RE = re.compile(r"^(human|agent|service):[^\s:][^\s]*$")
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._\-/]*$")
MAX_REFS = 64


def principal_kind(principal: str) -> str | None:
    """`human`, `agent` or `service` for a well-formed principal name, else None."""
    if not _PRINCIPAL_RE.match(principal) or len(principal) > 256:
        return None
    return principal.split(":", 1)[0]


# --------------------------------------------------------------------------------------------
# The check


def _v(code: str, fld: str, message: str) -> Violation:
    return Violation(code, fld, message)


class _Signers(NamedTuple):
    """The distinct keys that signed an event (each verified, live) and their principals."""

    keys: tuple[KeyInfo, ...]
    principals: frozenset[str]

    def principals_with(self, role: str) -> set[str]:
        return {k.principal for k in self.keys if role in k.roles}


# A signature already verified by the caller: (raw public key, signature, body bytes). Ed25519
# verification is a pure function of these three, so a caller may verify outside its lock and
# pass the set in; who may sign (known, live, unexpired key) is still decided here, on `state`.
VerifiedSignature = tuple[bytes, bytes, bytes]


def signature_order_violation(signatures: Sequence[Signature]) -> Violation | None:
    """One event has one encoding: its signatures in strictly ascending key-id order.

    Listing a key twice or reordering the list would otherwise give a second, equally valid
    encoding of the same signed event, which a bystander could submit first (docs/FORMAT.md).
    The writer refuses such a submission before anything else (``ledger.staging``) and the rules
    refuse such an entry wherever it comes from.
    """
    for i in range(1, len(signatures)):
        before, here = signatures[i - 1].key_id, signatures[i].key_id
        if here <= before:
            return _v(
                "SIGNATURES_NOT_CANONICAL",
                f"signatures[{i}]",
                f"key {here.hex()} "
                + ("is listed twice" if here == before else f"follows key {before.hex()}")
                + "; signatures must be sorted by key id (bytewise ascending), each key once",
            )
    return None


def _verify_signatures(
    state: LedgerState,
    e: LogEntry,
    known: dict[bytes, KeyInfo],
    verified: Container[VerifiedSignature] = (),
) -> _Signers | Violation:
    """Step 1: every signature is by a known, live key and verifies over the signed bytes."""
    sigs = e.entry.signatures
    if not sigs:
        return _v(
            "NO_SIGNATURES", "signatures", "the event carries no signature, expected at least one"
        )
    if len(sigs) > 1:
        order = signature_order_violation(sigs)
        if order is not None:
            return order
    body = e.entry.body
    if body[:2] != SINGLE_OBJECT_MAGIC:
        signed_bytes(body)  # raises its FormatError, before any signature is looked at
    message: bytes | None = None  # the signed bytes, made when a signature is not in `verified`
    seen: dict[bytes, KeyInfo] = {}
    for i, sig in enumerate(sigs):
        info = known.get(sig.key_id)
        if info is None:
            return _v(
                "UNKNOWN_KEY",
                f"signatures[{i}]",
                f"key {sig.key_id.hex()} was never granted on this ledger",
            )
        if info.revoked_seq is not None:
            return _v(
                "KEY_REVOKED",
                f"signatures[{i}]",
                f"key {sig.key_id.hex()} of {info.principal} was revoked at seq {info.revoked_seq}; "
                f"this entry is seq {e.seq}",
            )
        if info.expires_at is not None and e.entry.received_at >= info.expires_at:
            return _v(
                "KEY_EXPIRED",
                f"signatures[{i}]",
                f"key {sig.key_id.hex()} of {info.principal} expired at {info.expires_at} ms; "
                f"the entry was received at {e.entry.received_at} ms",
            )
        if (info.public_key, sig.sig, body) not in verified:
            if message is None:
                message = signed_bytes(body)
            if not PublicKey(info.public_key).verify(sig.sig, message):
                return _v(
                    "BAD_SIGNATURE",
                    f"signatures[{i}]",
                    f"signature by key {sig.key_id.hex()} does not verify over the signed bytes",
                )
        seen[sig.key_id] = info
    keys = tuple(seen.values())
    return _Signers(keys, frozenset([k.principal for k in keys]))


def _single_author(signers: _Signers, roles: Sequence[str], what: str) -> Violation | None:
    principals = signers.principals
    if len(principals) != 1:
        return _v(
            "MULTIPLE_AUTHORS",
            "signatures",
            f"{what} is signed by {len(principals)} principals ({', '.join(sorted(principals))}), "
            "expected exactly one author",
        )
    for k in signers.keys:
        if not k.roles.isdisjoint(roles):
            return None
    (principal,) = principals
    return _v(
        "ROLE_REQUIRED",
        "signatures",
        f"{principal} signed {what} without a key holding role {' or '.join(roles)}",
    )


def _root_threshold(signers: _Signers, m: int, what: str) -> Violation | None:
    roots = signers.principals_with("root")
    if len(roots) < m:
        return _v(
            "THRESHOLD_NOT_MET",
            "signatures",
            f"{what} needs {m} distinct root principals, observed {len(roots)}"
            + (f" ({', '.join(sorted(roots))})" if roots else ""),
        )
    return None


def check(
    state: LedgerState, e: LogEntry, verified: Container[VerifiedSignature] = ()
) -> Violation | None:
    """Whether `e` may be the next entry after the log folded into `state`.

    `verified` holds signatures the caller has already checked with Ed25519 (see
    :data:`VerifiedSignature`); every other rule, the signer's key included, is checked here.
    """
    body = e.body
    payload = body.payload
    seq = e.entry.seq

    # Structure: position in the chain, ledger name, idempotency key, references.
    if seq != state.size:
        return _v("SEQ_MISMATCH", "seq", f"entry seq is {seq}, expected {state.size}")
    if e.entry.prev != state.last_hash:
        return _v(
            "PREV_MISMATCH",
            "prev",
            f"prev is {e.entry.prev.hex()}, expected {state.last_hash.hex()}",
        )
    if isinstance(payload, LedgerGenesis) != (seq == 0):
        return _v(
            "GENESIS_MISPLACED",
            "type",
            f"{body.type} at seq {seq}: LedgerGenesis must be the first entry and only the first",
        )
    if seq > 0 and body.ledger != state.ledger:
        return _v(
            "LEDGER_MISMATCH",
            "ledger",
            f"body names ledger {body.ledger!r}, expected {state.ledger!r}",
        )
    if len(body.event_id) != 16:
        return _v(
            "INVALID_FIELD", "event_id", f"event_id is {len(body.event_id)} bytes, expected 16"
        )
    if body.event_id in state.event_ids:
        return _v(
            "DUPLICATE_EVENT_ID",
            "event_id",
            f"event_id {body.event_id.hex()} is already at seq {state.event_ids[body.event_id]}",
        )
    if len(body.refs) > MAX_REFS or len(set(body.refs)) != len(body.refs):
        return _v("INVALID_FIELD", "refs", f"refs must be distinct and at most {MAX_REFS}")
    for i, ref in enumerate(body.refs):
        if ref not in state.entry_types:
            return _v("REF_UNKNOWN", f"refs[{i}]", f"no entry with hash {ref.hex()} in the log")
    for h in payload_hashes(payload):
        if h not in body.refs:
            return _v(
                "REF_MISSING",
                "refs",
                f"the payload names entry {h.hex()}, which refs does not list",
            )
    problem = first_payload_problem(payload)
    if problem is not None:
        return _v(problem.code, problem.field, problem.message)

    if isinstance(payload, LedgerGenesis):
        return _check_genesis(e, payload)

    signers = _verify_signatures(state, e, state.keys, verified)
    if isinstance(signers, Violation):
        return signers

    if isinstance(payload, KeyGranted):
        return _check_key_granted(state, signers, payload)
    if isinstance(payload, KeyRevoked):
        return _check_key_revoked(state, signers, payload)
    if isinstance(payload, PolicySet):
        return _root_threshold(signers, state.root_threshold, "PolicySet") or _check_policy(payload)
    if isinstance(payload, ProposalSubmitted):
        return _check_proposal(state, signers, payload)
    if isinstance(payload, EvalRecorded):
        return _check_eval(state, signers, payload)
    if isinstance(payload, ApprovalRecorded):
        return _check_approval(state, signers, payload, body)
    if isinstance(payload, HealthReported):
        return _check_health(state, signers, payload, body)
    if isinstance(payload, RolloutStep):
        return _check_rollout_step(state, signers, payload, e)
    if isinstance(payload, KillSwitchEngaged):
        return _check_kill_engaged(state, signers, payload)
    if isinstance(payload, KillSwitchReleased):
        return _check_kill_released(state, signers, payload, body)
    if isinstance(payload, RolloutPaused):
        return _check_paused(state, signers, payload)
    if isinstance(payload, RolloutResumed):
        return _check_resumed(state, signers, payload, body)
    raise AssertionError(f"unhandled payload {body.type}")  # decoding admits no other type


def apply_checked(state: LedgerState, e: LogEntry) -> None:
    """check() then apply(); raises RuleViolationError and leaves the state untouched on failure."""
    violation = check(state, e)
    if violation is not None:
        raise RuleViolationError(violation)
    state.apply(e)


def fold(entries: Iterable[LogEntry]) -> LedgerState:
    state = LedgerState()
    for e in entries:
        apply_checked(state, e)
    return state


# --------------------------------------------------------------------------------------------
# Per-type rules


def _check_genesis(e: LogEntry, g: LedgerGenesis) -> Violation | None:
    if not e.body.ledger or not _NAME_RE.match(e.body.ledger):
        return _v(
            "INVALID_FIELD", "ledger", f"ledger name {e.body.ledger!r} must be a non-empty name"
        )
    if not g.origin or any(c.isspace() for c in g.origin):
        return _v(
            "INVALID_FIELD",
            "payload.origin",
            f"origin {g.origin!r} must be non-empty without spaces",
        )
    if (
        not g.checkpoint_key_name
        or "+" in g.checkpoint_key_name
        or any(c.isspace() for c in g.checkpoint_key_name)
    ):
        return _v(
            "INVALID_FIELD",
            "payload.checkpoint_key_name",
            "a note key name has no spaces and no '+'",
        )
    if not g.roots:
        return _v("INVALID_FIELD", "payload.roots", "genesis lists no root keys")
    known: dict[bytes, KeyInfo] = {}
    for i, root in enumerate(g.roots):
        if principal_kind(root.principal) is None:
            return _v(
                "INVALID_FIELD",
                f"payload.roots[{i}].principal",
                f"{root.principal!r} is not kind:name with kind one of {', '.join(PRINCIPAL_KINDS)}",
            )
        kid = key_id(root.public_key)
        if kid in known:
            return _v("KEY_EXISTS", f"payload.roots[{i}]", f"root key {kid.hex()} is listed twice")
        known[kid] = KeyInfo(kid, root.principal, root.public_key, frozenset({"root"}), 0)
    distinct = len({r.principal for r in g.roots})
    if not 1 <= g.root_threshold <= distinct:
        return _v(
            "INVALID_FIELD",
            "payload.root_threshold",
            f"root threshold is {g.root_threshold}, expected 1..{distinct} (the distinct root principals)",
        )
    signers = _verify_signatures(LedgerState(), e, known)
    if isinstance(signers, Violation):
        return signers
    return _root_threshold(signers, g.root_threshold, "LedgerGenesis")


def _check_key_granted(state: LedgerState, signers: _Signers, p: KeyGranted) -> Violation | None:
    violation = _root_threshold(signers, state.root_threshold, "KeyGranted")
    if violation:
        return violation
    if principal_kind(p.principal) is None:
        return _v(
            "INVALID_FIELD",
            "payload.principal",
            f"{p.principal!r} is not kind:name with kind one of {', '.join(PRINCIPAL_KINDS)}",
        )
    if not p.roles or len(set(p.roles)) != len(p.roles):
        return _v("INVALID_FIELD", "payload.roles", "roles must be non-empty and distinct")
    if any(r not in ROLES for r in p.roles):
        return _v(
            "INVALID_FIELD", "payload.roles", f"unknown role; expected some of {', '.join(ROLES)}"
        )
    kid = key_id(p.public_key)
    if kid in state.keys:
        old = state.keys[kid]
        return _v(
            "KEY_EXISTS",
            "payload.public_key",
            f"key {kid.hex()} was already granted to {old.principal} at seq {old.granted_seq}",
        )
    return None


def _check_key_revoked(state: LedgerState, signers: _Signers, p: KeyRevoked) -> Violation | None:
    target = state.keys.get(p.key_id)
    if target is None:
        return _v("KEY_UNKNOWN", "payload.key_id", f"key {p.key_id.hex()} was never granted")
    if target.revoked_seq is not None:
        return _v(
            "KEY_UNKNOWN",
            "payload.key_id",
            f"key {p.key_id.hex()} was already revoked at seq {target.revoked_seq}",
        )
    # A key may always revoke itself (a holder who lost control of it can stop it at once).
    if {k.key_id for k in signers.keys} == {p.key_id}:
        return None
    return _root_threshold(signers, state.root_threshold, "KeyRevoked")


def _check_policy(p: PolicySet) -> Violation | None:
    if not p.policy_id or not _NAME_RE.match(p.policy_id):
        return _v(
            "INVALID_FIELD",
            "payload.policy_id",
            f"policy id {p.policy_id!r} must be a non-empty name",
        )
    if not p.selector.namespace or not p.selector.deployment:
        return _v(
            "INVALID_FIELD",
            "payload.selector",
            "selector namespace and deployment are names or '*'",
        )
    for i, req in enumerate(p.required_evals):
        if (
            not req.suite
            or not req.metric
            or req.op not in COMPARE_OPS
            or math.isnan(req.threshold)
        ):
            return _v(
                "INVALID_FIELD",
                f"payload.required_evals[{i}]",
                "suite, metric, op and a numeric threshold are required",
            )
    if p.approvals_required < 1:
        return _v(
            "INVALID_FIELD",
            "payload.approvals_required",
            f"is {p.approvals_required}, expected at least 1",
        )
    if not p.approver_kinds or len(set(p.approver_kinds)) != len(p.approver_kinds):
        return _v(
            "INVALID_FIELD",
            "payload.approver_kinds",
            "expected at least one distinct principal kind",
        )
    if not p.plan:
        return _v("INVALID_FIELD", "payload.plan", "the rollout plan has no step")
    previous = 0
    for i, step in enumerate(p.plan):
        if not previous < step.weight <= 100:
            return _v(
                "INVALID_FIELD",
                f"payload.plan[{i}].weight",
                f"weight {step.weight}, expected more than {previous} and at most 100 (weights increase)",
            )
        if step.hold_seconds < 0:
            return _v("INVALID_FIELD", f"payload.plan[{i}].hold_seconds", "must not be negative")
        previous = step.weight
    violation = _check_analysis(p)
    if violation:
        return violation
    if p.readiness_grace_seconds is not None and p.readiness_grace_seconds < 0:
        return _v("INVALID_FIELD", "payload.readiness_grace_seconds", "must not be negative")
    delivery = delivery_problem(p)
    if delivery is not None:
        return _v("INVALID_FIELD", *delivery)
    if p.kill_release_approvals < 1:
        return _v(
            "INVALID_FIELD",
            "payload.kill_release_approvals",
            f"is {p.kill_release_approvals}, expected at least 1",
        )
    if p.kill_rollback_bound_ms < 1:
        return _v("INVALID_FIELD", "payload.kill_rollback_bound_ms", "expected a positive bound")
    return None


def _check_analysis(p: PolicySet) -> Violation | None:
    """Each health check is complete and can decide: docs/ANALYSIS.md "The policy"."""
    gated = [i for i, step in enumerate(p.plan) if step.health_gate]
    names: set[str] = set()
    for i, c in enumerate(p.analysis):
        at = f"payload.analysis[{i}]"
        if not c.name or c.name in names:
            return _v("INVALID_FIELD", f"{at}.name", f"check name {c.name!r} is empty or repeated")
        names.add(c.name)
        if not c.query:
            return _v("INVALID_FIELD", f"{at}.query", "the query is required")
        if c.op not in COMPARE_OPS or math.isnan(c.threshold):
            return _v("INVALID_FIELD", f"{at}.op", "an op and a numeric threshold are required")
        if c.interval_seconds < 1:
            return _v("INVALID_FIELD", f"{at}.interval_seconds", "expected at least 1 second")
        if not 1 <= c.count <= MAX_COUNT:
            return _v("INVALID_FIELD", f"{at}.count", f"is {c.count}, expected 1..{MAX_COUNT}")
        if not 1 <= c.failure_limit <= c.count:
            return _v(
                "INVALID_FIELD",
                f"{at}.failure_limit",
                f"is {c.failure_limit}, expected 1..{c.count} (the count)",
            )
        if c.steps is not None and (
            not c.steps or len(set(c.steps)) != len(c.steps) or not set(c.steps) <= set(gated)
        ):
            return _v(
                "INVALID_FIELD",
                f"{at}.steps",
                f"expected null or distinct health-gated steps of the plan ({gated})",
            )
        if c.no_data.action not in NO_DATA_ACTIONS:
            return _v("INVALID_FIELD", f"{at}.no_data.action", f"expected {NO_DATA_ACTIONS}")
        least = c.count * c.interval_seconds
        if c.no_data.deadline_seconds < least:
            # A shorter deadline would act on a check still measuring on schedule.
            return _v(
                "INVALID_FIELD",
                f"{at}.no_data.deadline_seconds",
                f"is {c.no_data.deadline_seconds}, expected at least count * interval_seconds ({least})",
            )
    return None


def _check_proposal(
    state: LedgerState, signers: _Signers, p: ProposalSubmitted
) -> Violation | None:
    violation = _single_author(signers, ["proposer"], "ProposalSubmitted")
    if violation:
        return violation
    if not p.target.namespace or not p.target.deployment:
        return _v("INVALID_FIELD", "payload.target", "target namespace and deployment are required")
    if not p.candidate.image:
        return _v("INVALID_FIELD", "payload.candidate.image", "the candidate image is required")
    if state.policy_for(p.target.namespace, p.target.deployment) is None:
        return _v(
            "NO_POLICY",
            "payload.target",
            f"no policy selects {p.target.namespace}/{p.target.deployment}; set one first",
        )
    return None


def _proposal(state: LedgerState, h: bytes) -> ProposalState | Violation:
    proposal = state.proposals.get(h)
    if proposal is None:
        kind = state.entry_types.get(h, "nothing")
        return _v(
            "PROPOSAL_UNKNOWN",
            "payload.proposal",
            f"entry {h.hex()} is {kind}, expected a ProposalSubmitted",
        )
    return proposal


def _judge_of(
    state: LedgerState, signers: _Signers, h: bytes, role: str, what: str, self_code: str, verb: str
) -> tuple[ProposalState, str] | Violation:
    """The one author of an event judging proposal `h`, who must not be its proposer."""
    violation = _single_author(signers, [role], what)
    if violation:
        return violation
    proposal = _proposal(state, h)
    if isinstance(proposal, Violation):
        return proposal
    (author,) = signers.principals
    if author == proposal.proposer:
        return _v(self_code, "signatures", f"{author} proposed this change and cannot {verb} it")
    return proposal, author


def _check_eval(state: LedgerState, signers: _Signers, p: EvalRecorded) -> Violation | None:
    judged = _judge_of(
        state, signers, p.proposal, "evaluator", "EvalRecorded", "SELF_EVALUATION", "evaluate"
    )
    if isinstance(judged, Violation):
        return judged
    proposal, _author = judged
    if proposal.phase in ("PROMOTED",):
        return _v("PROPOSAL_CLOSED", "payload.proposal", "the proposal was already promoted")
    if not p.suite:
        return _v("INVALID_FIELD", "payload.suite", "the suite name is required")
    names = [m.name for m in p.metrics]
    if names != sorted(set(names)):
        return _v(
            "INVALID_FIELD", "payload.metrics", "metrics must be sorted by name without repeats"
        )
    return None


def _bound_to_current(
    state: LedgerState, body: EventBody, kind: str, code: str, rule: str
) -> Violation | None:
    """The refs of `body` that name entries of type `kind` must be exactly those the current
    state expects for its payload (:meth:`LedgerState.binding_refs`): an authorization signed
    for an earlier state, or in advance of the state it would authorize, names another entry
    or none, and is refused."""
    named = [r for r in body.refs if state.entry_types.get(r) == kind]
    expected = state.binding_refs(body.payload)
    if sorted(named) == sorted(expected):
        return None
    return _v(
        code,
        "refs",
        f"{rule}: expected refs to name {_hashes(expected) or f'no {kind}'}, observed {_hashes(named) or f'no {kind}'}",
    )


def _hashes(hashes: Sequence[bytes]) -> str:
    return ", ".join(h.hex()[:16] for h in hashes)


def _check_approval(
    state: LedgerState, signers: _Signers, p: ApprovalRecorded, body: EventBody
) -> Violation | None:
    judged = _judge_of(
        state,
        signers,
        p.proposal,
        "approver",
        "ApprovalRecorded",
        "SELF_APPROVAL",
        "approve or reject",
    )
    if isinstance(judged, Violation):
        return judged
    proposal, author = judged
    policy = state.policy_of(proposal)
    kind = author.split(":", 1)[0]
    if kind not in policy.approver_kinds:
        return _v(
            "APPROVER_KIND_NOT_ALLOWED",
            "signatures",
            f"policy {policy.policy_id} accepts approvals from {', '.join(policy.approver_kinds)}, observed a {kind}",
        )
    if proposal.phase == "PROMOTED":
        return _v("PROPOSAL_CLOSED", "payload.proposal", "the proposal was already promoted")
    violation = _bound_to_current(
        state,
        body,
        "RolloutStep",
        "DECISION_NOT_AFTER_LATEST_ROLLBACK",
        "a decision names the proposal's latest rollback, if there is one",
    )
    if violation:
        return violation
    for i, h in enumerate(p.evals):
        if state.evals.get(h) != p.proposal:
            return _v(
                "EVAL_NOT_FOR_PROPOSAL",
                f"payload.evals[{i}]",
                f"entry {h.hex()} is not an eval of this proposal",
            )
    if p.decision == "REJECT":
        return None
    required = sorted({r.suite for r in policy.required_evals})
    missing = [s for s in required if s not in proposal.latest_evals]
    if missing:
        return _v(
            "EVALS_MISSING",
            "payload.evals",
            f"no eval recorded yet for required suite(s) {', '.join(missing)}",
        )
    latest = {proposal.latest_evals[s].entry_hash for s in required}
    if set(p.evals) != latest:
        return _v(
            "APPROVAL_NOT_BOUND_TO_LATEST_EVAL",
            "payload.evals",
            "an approval must name exactly the latest eval of every required suite: expected "
            f"{sorted(h.hex()[:16] for h in latest)}, observed {sorted(h.hex()[:16] for h in p.evals)}",
        )
    failed = [s for s in required if not proposal.latest_evals[s].passed]
    if failed:
        reasons = "; ".join(f"{s}: {', '.join(proposal.latest_evals[s].failures)}" for s in failed)
        return _v("EVAL_FAILED", "payload.evals", f"cannot approve over failing evals ({reasons})")
    return None


def _check_health(
    state: LedgerState, signers: _Signers, p: HealthReported, body: EventBody
) -> Violation | None:
    violation = _single_author(signers, ["monitor"], "HealthReported")
    if violation:
        return violation
    proposal = _proposal(state, p.proposal)
    if isinstance(proposal, Violation):
        return proposal
    if p.step < 0 or p.step >= len(state.policy_of(proposal).plan):
        return _v(
            "STEP_NOT_IN_PLAN",
            "payload.step",
            f"step {p.step} is outside the plan of {len(state.policy_of(proposal).plan)} steps",
        )
    violation = _check_evidence(state, proposal, p)
    if violation:
        return violation
    # A report on the step now running names the entry that began this run; a report on a
    # step not running names none and can open no gate (a gate counts reports since its run
    # began, and while it runs every accepted report names it).
    return _bound_to_current(
        state,
        body,
        "RolloutStep",
        "HEALTH_NOT_FOR_CURRENT_RUN",
        "a health report names the RolloutStep that began the run of its step, while it runs",
    )


def _check_evidence(
    state: LedgerState, proposal: ProposalState, p: HealthReported
) -> Violation | None:
    """The checks a report carries gate its step, and each signed verdict is the one its
    samples make under the policy (recomputed, never trusted), as is the report's `healthy`."""
    if not p.checks:
        return None  # judged by hand: `healthy` is the signer's word, as before analysis
    gating = {c.name: c for c in checks_for_step(state.policy_of(proposal), p.step)}
    seen: set[str] = set()
    for i, ev in enumerate(p.checks):
        at = f"payload.checks[{i}]"
        check = gating.get(ev.name)
        if check is None or ev.name in seen:
            return _v(
                "INVALID_FIELD",
                f"{at}.name",
                f"check {ev.name!r} is repeated or gates no step {p.step} of the policy "
                f"(gating: {', '.join(sorted(gating)) or 'none'})",
            )
        seen.add(ev.name)
        problem = evidence_problem(check, proposal.proposal.target, ev)
        if problem is not None:
            return _v("INVALID_FIELD", f"{at}.{problem[0]}", problem[1])
        judged = judge(check, ev.samples)
        if ev.verdict != judged.verdict:
            return _v(
                "HEALTH_VERDICT_MISMATCH",
                f"{at}.verdict",
                f"signed {ev.verdict}, the samples make {judged.verdict} ({judged.why})",
            )
    healthy = all(ev.verdict == "PASS" for ev in p.checks)
    if p.healthy != healthy:
        return _v(
            "HEALTH_VERDICT_MISMATCH",
            "payload.healthy",
            f"healthy is {p.healthy}, the checks' verdicts make it {healthy}",
        )
    return None


def _may_go(state: LedgerState, proposal: ProposalState, phase: str) -> Violation | None:
    """Checks every forward move shares: approvals, veto, kill switch."""
    policy = state.policy_of(proposal)
    approvers = state.valid_approvers(proposal)
    if len(approvers) < policy.approvals_required:
        return _v(
            "APPROVALS_INSUFFICIENT",
            "payload.phase",
            f"{phase} needs {policy.approvals_required} valid approvals from distinct principals, "
            f"observed {len(approvers)}" + (f" ({', '.join(approvers)})" if approvers else ""),
        )
    vetoes = state.vetoes(proposal)
    if vetoes:
        return _v("VETOED", "payload.phase", f"rejected by {', '.join(vetoes)} under a veto policy")
    scope = state.kill_switch_for(proposal)
    if scope is not None:
        return _v(
            "KILL_SWITCH_ENGAGED",
            "payload.phase",
            f"a {scope.kind} kill switch is engaged since seq {state.kill_switches[scope]}",
        )
    return None


def _hold_and_health(state: LedgerState, proposal: ProposalState, now: int) -> Violation | None:
    """The current step must have been held long enough and, if gated, reported healthy."""
    started = proposal.step_started
    assert started is not None
    plan_step = state.policy_of(proposal).plan[started.step]
    held_ms = now - started.at
    if held_ms < plan_step.hold_seconds * 1000:
        return _v(
            "HOLD_NOT_ELAPSED",
            "payload.phase",
            f"step {started.step} was held {held_ms} ms, expected at least {plan_step.hold_seconds * 1000} ms",
        )
    analysis = state.analysis_of_run(proposal, started)
    if analysis:
        # Every check gating the step has passed in this run, recomputed from its samples.
        pending = [
            f"{name}: " + ("no report" if r is None else f"{r.verdict} ({r.why})")
            for name, r in analysis
            if r is None or r.verdict != "PASS"
        ]
        if pending:
            return _v(
                "HEALTH_GATE",
                "payload.phase",
                f"step {started.step} needs every check to pass, observed {'; '.join(pending)}",
            )
    elif plan_step.health_gate:
        report = proposal.health.get(started.step)
        if report is None or report.seq < started.seq or not report.healthy:
            observed = (
                "no report since the step started"
                if report is None or report.seq < started.seq
                else "unhealthy"
            )
            return _v(
                "HEALTH_GATE",
                "payload.phase",
                f"step {started.step} needs a healthy report, observed {observed}",
            )
    return None


def _check_rollout_step(
    state: LedgerState, signers: _Signers, p: RolloutStep, e: LogEntry
) -> Violation | None:
    violation = _single_author(signers, ["controller"], "RolloutStep")
    if violation:
        return violation
    proposal = _proposal(state, p.proposal)
    if isinstance(proposal, Violation):
        return proposal
    plan = state.policy_of(proposal).plan
    phase, current = proposal.phase, proposal.current

    def expect(step: int, weight: int) -> Violation | None:
        if p.step != step:
            return _v(
                "STEP_NOT_IN_PLAN",
                "payload.step",
                f"{p.phase} at step {p.step}, expected step {step}",
            )
        if p.weight != weight:
            return _v(
                "WEIGHT_NOT_IN_PLAN",
                "payload.weight",
                f"{p.phase} with weight {p.weight}, expected {weight}",
            )
        return None

    def wrong_phase(allowed: str) -> Violation:
        return _v(
            "ROLLOUT_STATE",
            "payload.phase",
            f"{p.phase} while the rollout is {phase}, expected {allowed}",
        )

    if p.phase == "STARTED":
        if phase not in ("PENDING", "ROLLED_BACK"):
            return wrong_phase("PENDING or ROLLED_BACK")
        busy = state.active_rollout_on(
            proposal.proposal.target.namespace, proposal.proposal.target.deployment
        )
        if busy is not None:
            return _v(
                "TARGET_BUSY",
                "payload.proposal",
                f"proposal {busy.entry_hash.hex()} is rolling out on the same target",
            )
        return expect(0, plan[0].weight) or _may_go(state, proposal, p.phase)
    if p.phase in ("ADVANCED", "PROMOTED"):
        if phase not in ACTIVE_PHASES:
            return wrong_phase("STARTED, ADVANCED or PAUSED")
        assert current is not None
        if proposal.pause is not None:
            return _v(
                "ROLLOUT_PAUSED",
                "payload.phase",
                f"{p.phase} while the rollout is paused (by {proposal.pause.author} at seq "
                f"{proposal.pause.seq}); a RolloutResumed must come first",
            )
        if p.phase == "ADVANCED":
            if current.step + 1 >= len(plan):
                return _v(
                    "STEP_NOT_IN_PLAN",
                    "payload.step",
                    f"step {current.step} is the plan's last; expected PROMOTED",
                )
            v = expect(current.step + 1, plan[current.step + 1].weight)
        else:
            if current.step != len(plan) - 1:
                return _v(
                    "STEP_NOT_IN_PLAN",
                    "payload.step",
                    f"PROMOTED at step {current.step}, expected the last step {len(plan) - 1}",
                )
            v = expect(current.step, 100)
        return (
            v
            or _may_go(state, proposal, p.phase)
            or _hold_and_health(state, proposal, e.entry.received_at)
        )
    if p.phase in ("PAUSED", "ROLLED_BACK"):
        if phase not in ACTIVE_PHASES:
            return wrong_phase("STARTED, ADVANCED or PAUSED")
        assert current is not None
        return expect(current.step, 0 if p.phase == "ROLLED_BACK" else current.weight)
    if p.phase == "DRIFT_CORRECTED":
        if phase not in (*ACTIVE_PHASES, "PROMOTED"):
            return wrong_phase("an active or promoted rollout")
        assert current is not None
        return expect(current.step, current.weight)
    return _v("INVALID_FIELD", "payload.phase", f"unknown phase {p.phase}")


def _check_scope(state: LedgerState, scope: KillScope) -> Violation | None:
    if scope.kind == "GLOBAL":
        ok = not scope.namespace and not scope.deployment and scope.proposal is None
    elif scope.kind == "TARGET":
        ok = bool(scope.namespace and scope.deployment) and scope.proposal is None
    else:
        ok = not scope.namespace and not scope.deployment and scope.proposal is not None
        if ok and scope.proposal not in state.proposals:
            return _v(
                "PROPOSAL_UNKNOWN",
                "payload.scope.proposal",
                "the scope names no proposal of this ledger",
            )
    if not ok:
        return _v(
            "INVALID_FIELD",
            "payload.scope",
            f"a {scope.kind} scope takes "
            + {
                "GLOBAL": "nothing else",
                "TARGET": "namespace and deployment only",
                "PROPOSAL": "a proposal hash only",
            }[scope.kind],
        )
    if scope.proposal is not None and len(scope.proposal) != HASH_SIZE:
        return _v("INVALID_FIELD", "payload.scope.proposal", "expected a 32-byte entry hash")
    return None


def _check_kill_engaged(
    state: LedgerState, signers: _Signers, p: KillSwitchEngaged
) -> Violation | None:
    # Stopping is cheap: one operator or approver. The controller may sign only to record an
    # emergency stop requested by annotating a ModelRollout, and must say so.
    roles = ["operator", "approver"] + (["controller"] if p.annotation is not None else [])
    violation = _single_author(signers, roles, "KillSwitchEngaged")
    if violation:
        return violation
    violation = _check_scope(state, p.scope)
    if violation:
        return violation
    if p.scope in state.kill_switches:
        return _v(
            "KILL_SWITCH_ALREADY_ENGAGED",
            "payload.scope",
            f"this scope is engaged since seq {state.kill_switches[p.scope]}",
        )
    return None


def _check_kill_released(
    state: LedgerState, signers: _Signers, p: KillSwitchReleased, body: EventBody
) -> Violation | None:
    violation = _check_scope(state, p.scope)
    if violation:
        return violation
    if p.scope not in state.kill_switches:
        return _v(
            "KILL_SWITCH_NOT_ENGAGED", "payload.scope", "no kill switch is engaged for this scope"
        )
    violation = _bound_to_current(
        state,
        body,
        "KillSwitchEngaged",
        "RELEASE_NOT_FOR_CURRENT_ENGAGEMENT",
        "a release names the engagement it releases",
    )
    if violation:
        return violation
    # Every governing policy must be met on its own terms (LedgerState.kill_release_requirements).
    requirements, stopped_proposers = state.kill_release_requirements(p.scope)
    approvers = signers.principals_with("approver")
    for req in requirements:
        counted = {
            a for a in approvers if a not in stopped_proposers and a.split(":", 1)[0] in req.kinds
        }
        if len(counted) >= req.approvals:
            continue
        why = [
            f"{a} (proposer of a rollout this switch stopped)"
            if a in stopped_proposers
            else f"{a} (kind not in {', '.join(req.kinds)})"
            for a in sorted(approvers - counted)
        ]
        under = f" under policy {req.policy_id}" if req.policy_id else ""
        return _v(
            "THRESHOLD_NOT_MET",
            "signatures",
            f"releasing this kill switch needs {req.approvals} distinct approver principals of kind "
            f"{' or '.join(req.kinds)}{under}, observed {len(counted)}"
            + (f" ({', '.join(sorted(counted))})" if counted else "")
            + (f"; not counted: {'; '.join(why)}" if why else ""),
        )
    return None


# --------------------------------------------------------------------------------------------
# Pause and resume (EventBody v3)


def _check_paused(state: LedgerState, signers: _Signers, p: RolloutPaused) -> Violation | None:
    # Holding is cheap, as stopping is: one approver or operator.
    violation = _single_author(signers, ["approver", "operator"], "RolloutPaused")
    if violation:
        return violation
    proposal = _proposal(state, p.proposal)
    if isinstance(proposal, Violation):
        return proposal
    if proposal.phase not in ACTIVE_PHASES:
        return _v(
            "ROLLOUT_NOT_RUNNING",
            "payload.proposal",
            f"the rollout is {proposal.phase}; only a rollout that has started and is not "
            "promoted or rolled back can be paused",
        )
    if proposal.pause is not None:
        return _v(
            "ROLLOUT_ALREADY_PAUSED",
            "payload.proposal",
            f"the rollout is paused since seq {proposal.pause.seq} (by {proposal.pause.author})",
        )
    return None


def _check_resumed(
    state: LedgerState, signers: _Signers, p: RolloutResumed, body: EventBody
) -> Violation | None:
    proposal = _proposal(state, p.proposal)
    if isinstance(proposal, Violation):
        return proposal
    if proposal.pause is None:
        return _v(
            "ROLLOUT_NOT_PAUSED",
            "payload.proposal",
            f"the rollout is {proposal.phase} and not paused; there is nothing to resume",
        )
    violation = _bound_to_current(
        state,
        body,
        "RolloutPaused",
        "RESUME_NOT_FOR_CURRENT_PAUSE",
        "a resume names the pause it ends",
    )
    if violation:
        return violation
    # Like a kill-switch release: distinct approver principals of the policy's kinds, never
    # the proposer (who could otherwise push its own change on past a hold).
    policy = state.policy_of(proposal)
    approvers = signers.principals_with("approver")
    counted = {
        a
        for a in approvers
        if a != proposal.proposer and a.split(":", 1)[0] in policy.approver_kinds
    }
    if len(counted) >= policy.resume_approvals:
        return None
    why = [
        f"{a} (proposer of this change)"
        if a == proposal.proposer
        else f"{a} (kind not in {', '.join(policy.approver_kinds)})"
        for a in sorted(approvers - counted)
    ] + [f"{a} (no approver role)" for a in sorted(signers.principals - approvers)]
    return _v(
        "THRESHOLD_NOT_MET",
        "signatures",
        f"resuming needs {policy.resume_approvals} distinct approver principals of kind "
        f"{' or '.join(policy.approver_kinds)} under policy {policy.policy_id}, observed "
        f"{len(counted)}"
        + (f" ({', '.join(sorted(counted))})" if counted else "")
        + (f"; not counted: {'; '.join(why)}" if why else ""),
    )
