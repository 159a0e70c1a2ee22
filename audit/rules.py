"""The governance rules of docs/DESIGN.md §4, implemented again for the auditor.

Steps 3 (key validity at each seq), 4 (thresholds by distinct principal) and 9 (the rules of
each event type) live here; step 10 (rollout conformance) is in :mod:`audit.conformance`. They
read the state folded so far (:mod:`audit.state`, which never imports this module) and append
their findings to ``out``; the state only ever folds entries that had no finding
(``audit.state.apply``), as the controller ignores such entries.

Semantics, as DESIGN states them: a key counts from the entry after its grant, stops counting
after the entry that revokes it (earlier signatures stay valid) and at its expiry (compared with
the entry's received_at). Thresholds count distinct principals: several keys of one principal,
or one key twice, count once.

One idea, read top to bottom (the state, signer resolution, then each event type's checks and
the fold), which is why it stays in one file past 600 lines.

Its length is one idea read top to bottom: the signers and the structure, then one check per
event type.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from typing import Any

from audit import names
from audit.analysis import MAX_SAMPLES, gating, policy_problems, rendered, verdict
from audit.delivery import delivery_problems
from audit.findings import Finding
from audit.formats import (
    ApprovalRecorded,
    Entry,
    EvalRecorded,
    EventBody,
    HealthReported,
    KeyGranted,
    KeyRevoked,
    KillScope,
    KillSwitchEngaged,
    KillSwitchReleased,
    LedgerGenesis,
    PolicySet,
    ProposalSubmitted,
    RolloutPaused,
    RolloutResumed,
    key_id,
    payload_hashes,
)
from audit.state import ACTIVE, KeyRecord, ProposalRecord, Signers, State, kind_of

ROLES = frozenset(
    {"root", "proposer", "evaluator", "approver", "operator", "monitor", "controller"}
)
KINDS = ("human", "agent", "service")
OPS = frozenset({"GE", "GT", "LE", "LT", "EQ"})
MAX_REFS = 64
_PRINCIPAL = re.compile(r"^(human|agent|service):[^\s:]\S*$")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._\-/]*$")


def well_formed_principal(principal: str) -> bool:
    return len(principal) <= 256 and _PRINCIPAL.match(principal) is not None


# --------------------------------------------------------------------------------------------
# Steps 2-4: signatures, key validity, thresholds


def resolve_signers(
    state: State,
    seq: int,
    entry: Entry,
    sig_ok: tuple[bool | None, ...],
    out: list[Finding],
    keys: dict[bytes, KeyRecord] | None = None,
) -> Signers:
    """Steps 2 and 3: which signatures count. `sig_ok[i]` says whether signature i verified
    against the key its key_id names anywhere in the log (None: no such key anywhere)."""
    keys = state.keys if keys is None else keys
    signatures = entry.signatures
    if len(signatures) == 1 and len(sig_ok) == 1 and sig_ok[0]:  # the common case, no finding
        rec = keys.get(signatures[0].key_id)
        if (
            rec is not None
            and (rec.revoked_seq is None or rec.revoked_seq >= seq)
            and (rec.expires_at is None or entry.received_at < rec.expires_at)
        ):
            return Signers((rec,))
    if not entry.signatures:
        out.append(
            Finding(
                "NO_SIGNATURES", seq, "the entry carries no signature", "0 signatures", "at least 1"
            )
        )
    for i in range(1, len(signatures)):  # one event, one encoding: ascending key ids, each once
        if signatures[i].key_id <= signatures[i - 1].key_id:
            out.append(
                Finding(
                    "SIGNATURES_NOT_CANONICAL",
                    seq,
                    f"signatures[{i}] is not after signatures[{i - 1}] in key-id order",
                    f"{signatures[i - 1].key_id.hex()[:16]} then {signatures[i].key_id.hex()[:16]}",
                    "signatures sorted by key id, each key once",
                )
            )
            break
    valid: dict[bytes, KeyRecord] = {}
    for i, (sig, ok) in enumerate(zip(entry.signatures, sig_ok, strict=True)):
        rec = keys.get(sig.key_id)
        if rec is None:
            out.append(
                Finding(
                    "UNKNOWN_KEY",
                    seq,
                    f"signatures[{i}] is by key {sig.key_id.hex()[:16]}, not granted before this seq",
                    sig.key_id.hex(),
                    "a key granted at an earlier seq",
                )
            )
            continue
        if not ok:
            out.append(
                Finding(
                    "BAD_SIGNATURE",
                    seq,
                    f"signatures[{i}] by {rec.principal} does not verify over the signed bytes",
                    sig.sig.hex()[:32] + "…",
                    f"an Ed25519 signature by {sig.key_id.hex()[:16]}",
                )
            )
            continue
        if rec.revoked_seq is not None and rec.revoked_seq < seq:
            out.append(
                Finding(
                    "KEY_REVOKED",
                    seq,
                    f"signatures[{i}] by {rec.principal} uses a key revoked at seq {rec.revoked_seq}",
                    f"signed at seq {seq}",
                    f"before seq {rec.revoked_seq}",
                )
            )
            continue
        if rec.expires_at is not None and entry.received_at >= rec.expires_at:
            out.append(
                Finding(
                    "KEY_EXPIRED",
                    seq,
                    f"signatures[{i}] by {rec.principal} uses an expired key",
                    f"received_at {entry.received_at}",
                    f"before {rec.expires_at}",
                )
            )
            continue
        valid[sig.key_id] = rec
    return Signers(tuple(valid.values()))


def _threshold(
    signers: Signers, role: str, needed: int, what: str, seq: int, out: list[Finding]
) -> bool:
    principals, keys = signers.with_role(role)
    if len(principals) >= needed:
        return True
    code = "DOUBLE_COUNTED" if len(keys) >= needed else "THRESHOLD_NOT_MET"
    out.append(
        Finding(
            code,
            seq,
            f"{what} needs {needed} distinct {role} principals",
            f"{len(principals)} principal(s) {sorted(principals)} with {len(keys)} key(s)",
            f">= {needed} principals",
        )
    )
    return False


def _single_author(
    signers: Signers, roles: tuple[str, ...], what: str, seq: int, out: list[Finding]
) -> str | None:
    keys = signers.keys
    if len(keys) == 1:  # the common case: one valid key, so one principal
        k = keys[0]
        for r in roles:
            if r in k.roles:
                return k.principal
    principals = signers.principals
    if len(principals) != 1:
        if principals:  # zero is already a signature finding
            out.append(
                Finding(
                    "MULTIPLE_AUTHORS",
                    seq,
                    f"{what} must have exactly one author",
                    ", ".join(sorted(principals)),
                    "one principal",
                )
            )
        return None
    (author,) = principals
    if not any(r in k.roles for k in signers.keys for r in roles):
        out.append(
            Finding(
                "ROLE_MISSING",
                seq,
                f"{author} signed {what} without a key holding role {'/'.join(roles)}",
                ", ".join(sorted({r for k in signers.keys for r in k.roles})),
                " or ".join(roles),
            )
        )
        return None
    return author


# --------------------------------------------------------------------------------------------
# Step 9: the rules of each event type


def check_structure(state: State, seq: int, body: EventBody, out: list[Finding]) -> None:
    payload = body.payload
    if (type(payload) is LedgerGenesis) != (seq == 0):
        out.append(
            Finding(
                "GENESIS_MISPLACED",
                seq,
                f"{body.type} at seq {seq}",
                body.type,
                "LedgerGenesis exactly at seq 0",
            )
        )
    if seq > 0 and body.ledger != state.ledger:
        out.append(
            Finding(
                "LEDGER_MISMATCH", seq, "the body names another ledger", body.ledger, state.ledger
            )
        )
    if body.event_id in state.event_ids:
        out.append(
            Finding(
                "EVENT_REPLAYED",
                seq,
                f"event id {body.event_id.hex()} was already used",
                f"at seq {seq}",
                f"only at seq {state.event_ids[body.event_id]}",
            )
        )
    if len(body.refs) > 1 and (len(body.refs) > MAX_REFS or len(set(body.refs)) != len(body.refs)):
        out.append(
            Finding(
                "FIELD_INVALID",
                seq,
                "refs must be distinct and few",
                str(len(body.refs)),
                f"<= {MAX_REFS} distinct",
            )
        )
    for i, ref in enumerate(body.refs):
        if ref not in state.entries:
            out.append(
                Finding(
                    "REF_UNKNOWN",
                    seq,
                    f"refs[{i}] names no earlier valid entry",
                    ref.hex(),
                    "an earlier entry hash",
                )
            )
    for h in payload_hashes(payload):
        if h not in body.refs:
            out.append(
                Finding(
                    "REF_MISSING",
                    seq,
                    "the payload names an entry the refs omit",
                    h.hex(),
                    "listed in refs",
                )
            )
    for code, fld, message in names.problems(payload):
        out.append(Finding(code, seq, f"{fld}: {message}"))


def check_genesis(body: EventBody, g: LedgerGenesis, signers: Signers, out: list[Finding]) -> None:
    problems = []
    if not body.ledger or not _NAME.match(body.ledger):
        problems.append(f"ledger name {body.ledger!r}")
    if not g.origin or any(c.isspace() for c in g.origin):
        problems.append(f"origin {g.origin!r}")
    name = g.checkpoint_key_name
    if not name or "+" in name or any(c.isspace() for c in name):
        problems.append(f"checkpoint key name {name!r}")
    if not g.roots:
        problems.append("no roots")
    if len({key_id(r.public_key) for r in g.roots}) != len(g.roots):
        problems.append("a root key listed twice")
    problems += [
        f"root principal {r.principal!r}" for r in g.roots if not well_formed_principal(r.principal)
    ]
    distinct = len({r.principal for r in g.roots})
    if not 1 <= g.root_threshold <= distinct:
        problems.append(f"root threshold {g.root_threshold} outside 1..{distinct}")
    if problems:
        out.append(Finding("GENESIS_INVALID", 0, "invalid genesis: " + "; ".join(problems)))
    _threshold(signers, "root", max(g.root_threshold, 1), "LedgerGenesis", 0, out)


def _check_policy(p: PolicySet, seq: int, out: list[Finding]) -> None:
    problems = []
    if not _NAME.match(p.policy_id or "-") or not p.policy_id:
        problems.append("policy id")
    if not p.selector.namespace or not p.selector.deployment:
        problems.append("selector")
    for r in p.required_evals:
        if not r.suite or not r.metric or r.op not in OPS or math.isnan(r.threshold):
            problems.append(f"required eval {r.suite!r}")
    if p.approvals_required < 1:
        problems.append("approvals_required < 1")
    if not p.approver_kinds or len(set(p.approver_kinds)) != len(p.approver_kinds):
        problems.append("approver kinds")
    if not p.plan:
        problems.append("empty plan")
    last = 0
    for i, s in enumerate(p.plan):
        if not last < s.weight <= 100 or s.hold_seconds < 0:
            problems.append(f"plan[{i}]")
        last = s.weight
    if p.kill_release_approvals < 1 or p.kill_rollback_bound_ms < 1:
        problems.append("kill switch settings")
    problems += policy_problems(p)
    problems += delivery_problems(p)
    if problems:
        out.append(
            Finding("POLICY_INVALID", seq, "invalid policy: " + ", ".join(problems), p.policy_id)
        )


def _proposal(state: State, h: bytes, seq: int, out: list[Finding]) -> ProposalRecord | None:
    p = state.proposals.get(h)
    if p is None:
        out.append(
            Finding(
                "PROPOSAL_UNKNOWN",
                seq,
                "the event names no proposal of this ledger",
                h.hex(),
                "a ProposalSubmitted hash",
            )
        )
    return p


def _check_scope(state: State, scope: KillScope, seq: int, out: list[Finding]) -> bool:
    if scope.kind == "GLOBAL":
        ok = not scope.namespace and not scope.deployment and scope.proposal is None
    elif scope.kind == "TARGET":
        ok = bool(scope.namespace and scope.deployment) and scope.proposal is None
    else:
        ok = not scope.namespace and not scope.deployment and scope.proposal is not None
        if ok and scope.proposal not in state.proposals:
            out.append(Finding("PROPOSAL_UNKNOWN", seq, "the kill scope names no proposal"))
            return False
    if not ok:
        out.append(Finding("FIELD_INVALID", seq, f"malformed {scope.kind} kill scope"))
    return ok


def _check_key_granted(
    state: State, seq: int, p: KeyGranted, signers: Signers, out: list[Finding]
) -> None:
    if _threshold(signers, "root", state.root_threshold, "KeyGranted", seq, out):
        if not well_formed_principal(p.principal):
            out.append(
                Finding("FIELD_INVALID", seq, "malformed principal", p.principal, "kind:name")
            )
        if not p.roles or len(set(p.roles)) != len(p.roles) or not set(p.roles) <= ROLES:
            out.append(
                Finding("FIELD_INVALID", seq, "roles must be known and distinct", ",".join(p.roles))
            )
        if key_id(p.public_key) in state.keys:
            out.append(
                Finding(
                    "KEY_DUPLICATE", seq, "the key was granted before", key_id(p.public_key).hex()
                )
            )


def _check_key_revoked(
    state: State, seq: int, p: KeyRevoked, signers: Signers, out: list[Finding]
) -> None:
    target = state.keys.get(p.key_id)
    if target is None or target.revoked_seq is not None:
        out.append(Finding("KEY_UNKNOWN", seq, "revoking a key that is not live", p.key_id.hex()))
    elif {k.key_id for k in signers.keys} != {p.key_id}:  # a key may always revoke itself
        _threshold(signers, "root", state.root_threshold, "KeyRevoked", seq, out)


def _check_policy_set(
    state: State, seq: int, p: PolicySet, signers: Signers, out: list[Finding]
) -> None:
    if _threshold(signers, "root", state.root_threshold, "PolicySet", seq, out):
        _check_policy(p, seq, out)


def _check_proposal_submitted(
    state: State, seq: int, p: ProposalSubmitted, signers: Signers, out: list[Finding]
) -> None:
    if _single_author(signers, ("proposer",), "ProposalSubmitted", seq, out) is None:
        return
    if not p.target.namespace or not p.target.deployment or not p.candidate.image:
        out.append(Finding("FIELD_INVALID", seq, "target and candidate image are required"))
    elif state.policy_for(p.target.namespace, p.target.deployment) is None:
        out.append(
            Finding(
                "NO_POLICY",
                seq,
                "no policy selects the target",
                f"{p.target.namespace}/{p.target.deployment}",
            )
        )


def _check_eval_recorded(
    state: State, seq: int, p: EvalRecorded, signers: Signers, out: list[Finding]
) -> None:
    author = _single_author(signers, ("evaluator",), "EvalRecorded", seq, out)
    prop = _proposal(state, p.proposal, seq, out)
    if author is None or prop is None:
        return
    if author == prop.proposer:
        out.append(
            Finding(
                "SELF_EVALUATION",
                seq,
                f"{author} evaluated its own proposal",
                author,
                "a principal other than the proposer",
            )
        )
    if prop.phase == "PROMOTED":
        out.append(Finding("PROPOSAL_CLOSED", seq, "eval after promotion"))
    names = [m.name for m in p.metrics]
    if not p.suite or names != sorted(set(names)):
        out.append(
            Finding("FIELD_INVALID", seq, "suite required; metrics sorted by name, no repeats")
        )


def _bound(
    state: State, seq: int, body: EventBody, code: str, what: str, out: list[Finding]
) -> bool:
    """An authorization names exactly the entries that bind it to the current state
    (State.binding): one signed for an earlier state, or in advance, names another or none."""
    named, expected = state.binding(body)
    if named == expected:
        return True
    out.append(
        Finding(
            code,
            seq,
            what,
            ", ".join(sorted(h.hex()[:16] for h in named)) or "none",
            ", ".join(sorted(h.hex()[:16] for h in expected)) or "none",
        )
    )
    return False


def _check_health_reported(
    state: State, seq: int, p: HealthReported, signers: Signers, out: list[Finding], body: EventBody
) -> None:
    author = _single_author(signers, ("monitor",), "HealthReported", seq, out)
    prop = _proposal(state, p.proposal, seq, out)
    if author is None or prop is None:
        return
    if not 0 <= p.step < len(state.policy(prop).plan):
        out.append(
            Finding(
                "STEP_NOT_IN_PLAN",
                seq,
                "health report for a step outside the plan",
                str(p.step),
                f"0..{len(state.policy(prop).plan) - 1}",
            )
        )
        return
    _check_evidence(state, seq, prop, p, out)
    # A report on a step not running names no run and can open no gate (gates count reports
    # made since their run began).
    _bound(
        state,
        seq,
        body,
        "HEALTH_NOT_FOR_CURRENT_RUN",
        "a health report does not name the run of its step now running",
        out,
    )


def _check_evidence(
    state: State, seq: int, prop: ProposalRecord, p: HealthReported, out: list[Finding]
) -> None:
    """Each check a report carries gates its step with the policy's query, and its signed
    verdict is the one its samples make (recomputed, never trusted), as is `healthy`."""
    if not p.checks:
        return  # judged by hand
    checks = {c.name: c for c in gating(state.policy(prop), p.step)}
    seen: set[str] = set()
    for ev in p.checks:
        check = checks.get(ev.name)
        if check is None or ev.name in seen:
            out.append(
                Finding(
                    "HEALTH_EVIDENCE_INVALID",
                    seq,
                    f"check {ev.name!r} does not gate step {p.step}, or is repeated",
                    ev.name,
                    ", ".join(sorted(checks)) or "no check",
                )
            )
            return
        seen.add(ev.name)
        query = rendered(check, prop.proposal.target)
        if ev.query != query or len(ev.samples) > MAX_SAMPLES:
            out.append(
                Finding(
                    "HEALTH_EVIDENCE_INVALID",
                    seq,
                    f"check {ev.name!r}: not the policy's query, or too many samples",
                    f"{ev.query!r}, {len(ev.samples)} samples",
                    f"{query!r}, at most {MAX_SAMPLES}",
                )
            )
            return
        recomputed, why = verdict(check, ev.samples)
        if ev.verdict != recomputed:
            out.append(
                Finding(
                    "HEALTH_VERDICT_MISMATCH",
                    seq,
                    f"check {ev.name!r} signed {ev.verdict}; its samples make {recomputed}",
                    ev.verdict,
                    f"{recomputed} ({why})",
                )
            )
            return
    healthy = all(ev.verdict == "PASS" for ev in p.checks)
    if p.healthy != healthy:
        out.append(
            Finding(
                "HEALTH_VERDICT_MISMATCH",
                seq,
                "healthy disagrees with the checks' verdicts",
                str(p.healthy),
                str(healthy),
            )
        )


def _check_kill_switch_engaged(
    state: State, seq: int, p: KillSwitchEngaged, signers: Signers, out: list[Finding]
) -> None:
    roles = ("operator", "approver") + (("controller",) if p.annotation is not None else ())
    if _single_author(signers, roles, "KillSwitchEngaged", seq, out) is None:
        return
    if _check_scope(state, p.scope, seq, out) and p.scope in state.kills:
        out.append(
            Finding(
                "KILL_SWITCH_ALREADY_ENGAGED",
                seq,
                "scope already engaged",
                f"engaged since seq {state.kills[p.scope]}",
                "a released scope",
            )
        )


def _check_kill_switch_released(
    state: State,
    seq: int,
    p: KillSwitchReleased,
    signers: Signers,
    out: list[Finding],
    body: EventBody,
) -> None:
    if not _check_scope(state, p.scope, seq, out):
        return
    if p.scope not in state.kills:
        out.append(Finding("KILL_SWITCH_NOT_ENGAGED", seq, "releasing a scope that is not engaged"))
        return
    if not _bound(
        state,
        seq,
        body,
        "RELEASE_NOT_FOR_CURRENT_ENGAGEMENT",
        "a release does not name the engagement it releases",
        out,
    ):
        return
    # Each governing policy on its own terms: its k, its approver kinds, never a proposer of
    # a rollout the switch stopped.
    terms, excluded = state.release_terms(p.scope)
    for policy_id, needed, kinds in terms:
        ks = [
            k
            for k in signers.keys
            if "approver" in k.roles
            and k.principal not in excluded
            and kind_of(k.principal) in kinds
        ]
        principals = {k.principal for k in ks}
        if len(principals) >= needed:
            continue
        others = sorted({k.principal for k in signers.keys if "approver" in k.roles} - principals)
        code = "DOUBLE_COUNTED" if len({k.key_id for k in ks}) >= needed else "THRESHOLD_NOT_MET"
        out.append(
            Finding(
                code,
                seq,
                f"KillSwitchReleased needs {needed} distinct approver principals of kind {'/'.join(kinds)}"
                + (f" under policy {policy_id}" if policy_id else "")
                + (
                    f"; not counted: {', '.join(others)} (kind not allowed, or proposer of a stopped rollout)"
                    if others
                    else ""
                ),
                f"{len(principals)} principal(s) {sorted(principals)}",
                f">= {needed} principals",
            )
        )
        return


def _check_rollout_paused(
    state: State, seq: int, p: RolloutPaused, signers: Signers, out: list[Finding]
) -> None:
    author = _single_author(signers, ("approver", "operator"), "RolloutPaused", seq, out)
    prop = _proposal(state, p.proposal, seq, out)
    if author is None or prop is None:
        return
    if prop.phase not in ACTIVE:
        out.append(
            Finding(
                "ROLLOUT_NOT_RUNNING",
                seq,
                "a pause of a rollout that is not running",
                prop.phase,
                "STARTED, ADVANCED or PAUSED",
            )
        )
    elif prop.paused is not None:
        out.append(
            Finding(
                "ROLLOUT_ALREADY_PAUSED",
                seq,
                "a pause of a rollout already paused",
                f"paused at seq {prop.paused[0]} by {prop.paused[2]}",
                "a rollout not paused",
            )
        )


def _check_rollout_resumed(
    state: State,
    seq: int,
    p: RolloutResumed,
    signers: Signers,
    out: list[Finding],
    body: EventBody,
) -> None:
    prop = _proposal(state, p.proposal, seq, out)
    if prop is None:
        return
    if prop.paused is None:
        out.append(
            Finding(
                "ROLLOUT_NOT_PAUSED", seq, "a resume of a rollout not paused", prop.phase, "paused"
            )
        )
        return
    if not _bound(
        state,
        seq,
        body,
        "RESUME_NOT_FOR_CURRENT_PAUSE",
        "a resume does not name the pause in force",
        out,
    ):
        return
    # Distinct approver principals of the policy's kinds, never the proposer.
    policy = state.policy(prop)
    needed = policy.resume_approvals
    ks = [
        k
        for k in signers.keys
        if "approver" in k.roles
        and k.principal != prop.proposer
        and kind_of(k.principal) in policy.approver_kinds
    ]
    principals = {k.principal for k in ks}
    if len(principals) >= needed:
        return
    others = sorted(signers.principals - principals)
    out.append(
        Finding(
            "DOUBLE_COUNTED" if len({k.key_id for k in ks}) >= needed else "THRESHOLD_NOT_MET",
            seq,
            f"RolloutResumed needs {needed} distinct approver principals of kind "
            f"{'/'.join(policy.approver_kinds)} under policy {policy.policy_id}"
            + (
                f"; not counted: {', '.join(others)} (no approver role, kind not allowed, "
                "or the proposer)"
                if others
                else ""
            ),
            f"{len(principals)} principal(s) {sorted(principals)}",
            f">= {needed} principals",
        )
    )


def check_payload(
    state: State, seq: int, entry: Entry, body: EventBody, signers: Signers, out: list[Finding]
) -> None:
    """Step 4 (thresholds) and step 9 (type rules) for every type but genesis and rollout."""
    p = body.payload
    check = _PAYLOAD_CHECKS.get(type(p))
    if check is not None:
        check(state, seq, p, signers, out)
        return
    bound_check = _BOUND_CHECKS.get(type(p))
    if bound_check is not None:
        bound_check(state, seq, p, signers, out, body)


def _check_approval(
    state: State,
    seq: int,
    p: ApprovalRecorded,
    signers: Signers,
    out: list[Finding],
    body: EventBody,
) -> None:
    author = _single_author(signers, ("approver",), "ApprovalRecorded", seq, out)
    prop = _proposal(state, p.proposal, seq, out)
    if author is None or prop is None:
        return
    policy = state.policy(prop)
    if author == prop.proposer:
        out.append(
            Finding(
                "SELF_APPROVAL",
                seq,
                f"{author} decided on its own proposal",
                author,
                "a principal other than the proposer",
            )
        )
        return
    if kind_of(author) not in policy.approver_kinds:
        out.append(
            Finding(
                "APPROVER_KIND_NOT_ALLOWED",
                seq,
                f"policy {policy.policy_id} does not accept this kind",
                kind_of(author),
                ", ".join(policy.approver_kinds),
            )
        )
        return
    if prop.phase == "PROMOTED":
        out.append(Finding("PROPOSAL_CLOSED", seq, "decision after promotion"))
        return
    if not _bound(
        state,
        seq,
        body,
        "DECISION_NOT_AFTER_LATEST_ROLLBACK",
        "a decision does not name its proposal's latest rollback (signed before it?)",
        out,
    ):
        return
    for h in p.evals:
        if state.evals.get(h) != p.proposal:
            out.append(
                Finding(
                    "EVAL_NOT_FOR_PROPOSAL",
                    seq,
                    "the approval names an entry that is not an eval of this proposal",
                    h.hex(),
                )
            )
            return
    if p.decision == "REJECT":
        return
    required = sorted({r.suite for r in policy.required_evals})
    missing = [s for s in required if s not in prop.latest_evals]
    if missing:
        out.append(
            Finding(
                "EVALS_MISSING",
                seq,
                "approval before every required suite was evaluated",
                "",
                ", ".join(missing),
            )
        )
        return
    latest = {prop.latest_evals[s].hash for s in required}
    if set(p.evals) != latest:
        out.append(
            Finding(
                "APPROVAL_NOT_BOUND",
                seq,
                "the approval does not name the latest eval of every required suite",
                ", ".join(sorted(h.hex()[:16] for h in p.evals)),
                ", ".join(sorted(h.hex()[:16] for h in latest)),
            )
        )
        return
    failing = [s for s in required if not prop.latest_evals[s].passed]
    if failing:
        out.append(
            Finding(
                "EVAL_FAILED_APPROVED",
                seq,
                "approval over failing evals",
                ", ".join(failing),
                "passing evals",
            )
        )


# Dispatch on the payload's exact type (the payload classes are distinct and final).
_PAYLOAD_CHECKS: dict[type[Any], Callable[[State, int, Any, Signers, list[Finding]], None]] = {
    KeyGranted: _check_key_granted,
    KeyRevoked: _check_key_revoked,
    PolicySet: _check_policy_set,
    ProposalSubmitted: _check_proposal_submitted,
    EvalRecorded: _check_eval_recorded,
    KillSwitchEngaged: _check_kill_switch_engaged,
    RolloutPaused: _check_rollout_paused,
}
# The authorizations, which also read the body: its refs bind them to the state (#14).
_BOUND_CHECKS: dict[
    type[Any], Callable[[State, int, Any, Signers, list[Finding], EventBody], None]
] = {
    ApprovalRecorded: _check_approval,
    HealthReported: _check_health_reported,
    KillSwitchReleased: _check_kill_switch_released,
    RolloutResumed: _check_rollout_resumed,
}
