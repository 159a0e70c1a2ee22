"""What the auditor folds from the log: its own, independent model of the ledger's state.

Pure: no I/O. :class:`State` holds the keys, policies, proposals (latest evals, standing
decisions by principal and by key, health reports, rollout steps), engaged kill switches and
per-entry indexes, and answers the queries the rules (:mod:`audit.rules`) and rollout
conformance (:mod:`audit.conformance`) share. :func:`apply` folds one entry into it, and only an
entry that had no finding, as the controller ignores such entries; :class:`Signers` is what
:func:`audit.rules.resolve_signers` found of the entry's signatures, which ``apply`` needs for
the author.

The dependency runs one way: the rules read this state; this module never imports them. It
imports nothing from ``ledger/`` or ``controller/`` either: it is the auditor's second opinion.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from audit.analysis import verdict
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
    RolloutStep,
    key_id,
)

ACTIVE = frozenset({"STARTED", "ADVANCED", "PAUSED"})
ENDED = frozenset({"PROMOTED", "ROLLED_BACK"})  # a pause in force ends with the rollout


def kind_of(principal: str) -> str:
    return principal.split(":", 1)[0]


@dataclass(frozen=True)
class KeyRecord:
    key_id: bytes
    principal: str
    public_key: bytes
    roles: frozenset[str]
    granted_seq: int
    expires_at: int | None = None
    revoked_seq: int | None = None


@dataclass(slots=True)
class EvalRecord:
    hash: bytes
    seq: int
    suite: str
    passed: bool


@dataclass(slots=True)
class Decision:
    hash: bytes
    seq: int
    principal: str
    key_id: bytes
    decision: str
    evals: frozenset[bytes]


@dataclass(slots=True)
class StepRecord:
    seq: int
    at: int  # received_at
    step: int
    weight: int
    phase: str
    hash: bytes  # the RolloutStep entry, which later decisions and health reports name


@dataclass
class ProposalRecord:
    hash: bytes
    seq: int
    at: int
    proposer: str
    proposal: ProposalSubmitted
    policy_id: str
    latest_evals: dict[str, EvalRecord] = field(default_factory=dict)
    by_principal: dict[str, Decision] = field(default_factory=dict)
    by_key: dict[bytes, Decision] = field(default_factory=dict)
    health: dict[int, tuple[int, bool]] = field(default_factory=dict)  # step -> (seq, healthy)
    # step -> check name -> (seq, verdict recomputed, why): reports of automated analysis;
    # `health` keeps only the reports judged by hand (without checks).
    checks: dict[int, dict[str, tuple[int, str, str]]] = field(default_factory=dict)
    steps: list[StepRecord] = field(default_factory=list)
    floor: int = -1  # decisions at or before this seq (the last rollback) no longer count
    # The RolloutPaused in force: (seq, entry hash, author); None when not paused.
    paused: tuple[int, bytes, str] | None = None

    def current(self) -> StepRecord | None:
        for s in reversed(self.steps):
            if s.phase != "DRIFT_CORRECTED":
                return s
        return None

    @property
    def phase(self) -> str:
        cur = self.current()
        return cur.phase if cur else "PENDING"

    def entered(self) -> StepRecord | None:
        for s in reversed(self.steps):
            if s.phase in ("STARTED", "ADVANCED"):
                return s
        return None

    def running(self) -> StepRecord | None:
        """The entry that began the run of the current step, while the rollout is active."""
        return self.entered() if self.phase in ACTIVE else None

    def last_rollback(self) -> StepRecord | None:
        for s in reversed(self.steps):
            if s.phase == "ROLLED_BACK":
                return s
        return None


@dataclass(frozen=True)
class Engaged:
    """An engaged kill switch: its entry, and the proposals whose active rollout it stopped."""

    hash: bytes
    stopped: frozenset[bytes]


@dataclass
class State:
    ledger: str = ""
    origin: str = ""
    root_threshold: int = 0
    checkpoint_key_name: str = ""
    checkpoint_public_key: bytes = b""
    keys: dict[bytes, KeyRecord] = field(default_factory=dict)
    event_ids: dict[bytes, int] = field(default_factory=dict)
    entries: dict[bytes, int] = field(default_factory=dict)  # valid entry hash -> seq
    policies: dict[str, tuple[int, PolicySet]] = field(default_factory=dict)
    proposals: dict[bytes, ProposalRecord] = field(default_factory=dict)
    evals: dict[bytes, bytes] = field(default_factory=dict)  # eval hash -> proposal hash
    kills: dict[KillScope, int] = field(default_factory=dict)  # scope -> engaged seq
    engaged: dict[KillScope, Engaged] = field(default_factory=dict)  # the same scopes
    # Entry hashes of every valid RolloutStep and KillSwitchEngaged: which refs bind to what.
    step_hashes: set[bytes] = field(default_factory=set)
    engagement_hashes: set[bytes] = field(default_factory=set)
    pause_hashes: set[bytes] = field(default_factory=set)  # every valid RolloutPaused
    # (namespace, deployment) -> hashes of the proposals whose rollout is active there, kept
    # by apply() so that finding the active rollout of a target does not scan every proposal.
    active: dict[tuple[str, str], set[bytes]] = field(default_factory=dict)

    def policy_for(self, namespace: str, deployment: str) -> PolicySet | None:
        """Most specific selector wins, then the newest."""
        best: tuple[int, int, PolicySet] | None = None
        for seq, policy in self.policies.values():
            sel = policy.selector
            if sel.namespace in ("*", namespace) and sel.deployment in ("*", deployment):
                rank = (int(sel.namespace != "*") + int(sel.deployment != "*"), seq)
                if best is None or rank > best[:2]:
                    best = (*rank, policy)
        return best[2] if best else None

    def policy(self, p: ProposalRecord) -> PolicySet:
        return self.policies[p.policy_id][1]

    def covering_kill(self, p: ProposalRecord) -> KillScope | None:
        for scope in self.kills:
            if covers(scope, p):
                return scope
        return None

    def approvals(self, p: ProposalRecord) -> tuple[set[str], set[bytes]]:
        """(distinct principals, distinct keys) whose standing decision is a valid approval."""
        policy = self.policy(p)
        required = {r.suite for r in policy.required_evals}
        if not required <= p.latest_evals.keys() or not all(
            p.latest_evals[s].passed for s in required
        ):
            return set(), set()
        bound = frozenset(p.latest_evals[s].hash for s in required)

        def valid(d: Decision) -> bool:
            return (
                d.decision == "APPROVE"
                and d.seq > p.floor
                and d.evals == bound
                and d.principal != p.proposer
                and kind_of(d.principal) in policy.approver_kinds
            )

        principals = {d.principal for d in p.by_principal.values() if valid(d)}
        keys = {d.key_id for d in p.by_key.values() if valid(d)}
        return principals, keys

    def vetoes(self, p: ProposalRecord) -> set[str]:
        policy = self.policy(p)
        if not policy.veto_on_reject:
            return set()
        return {
            d.principal
            for d in p.by_principal.values()
            if d.decision == "REJECT"
            and d.seq > p.floor
            and kind_of(d.principal) in policy.approver_kinds
        }

    def active_on(self, namespace: str, deployment: str) -> ProposalRecord | None:
        """The oldest proposal with an active rollout on the target."""
        hashes = self.active.get((namespace, deployment))
        if not hashes:
            return None
        return min((self.proposals[h] for h in hashes), key=lambda p: p.seq)

    def active_proposals(self) -> list[ProposalRecord]:
        """Every proposal with an active rollout, oldest first."""
        return sorted(
            (self.proposals[h] for hs in self.active.values() for h in hs), key=lambda p: p.seq
        )

    def release_terms(
        self, scope: KillScope
    ) -> tuple[list[tuple[str, int, tuple[str, ...]]], frozenset[str]]:
        """([(policy id, k, approver kinds)], excluded principals) for releasing `scope`.

        Every listed policy must be met on its own: the policies of the rollouts the switch
        stopped, and the policy covering the scope (the proposal's, the target's, or every
        policy for GLOBAL). The proposers of the stopped rollouts never count. Without any
        policy: the root threshold, any kind (policy id "").
        """
        engaged = self.engaged.get(scope)
        stopped = [self.proposals[h] for h in engaged.stopped] if engaged else []
        governing: dict[str, PolicySet] = {p.policy_id: self.policy(p) for p in stopped}
        if scope.kind == "PROPOSAL" and scope.proposal in self.proposals:
            prop = self.proposals[scope.proposal]
            governing[prop.policy_id] = self.policy(prop)
        elif scope.kind == "TARGET":
            pol = self.policy_for(scope.namespace, scope.deployment)
            if pol is not None:
                governing[pol.policy_id] = pol
        elif scope.kind == "GLOBAL":
            governing.update((pid, pol) for pid, (_, pol) in self.policies.items())
        excluded = frozenset(p.proposer for p in stopped)
        if not governing:
            return [("", max(self.root_threshold, 1), ("human", "agent", "service"))], excluded
        return [
            (pid, pol.kill_release_approvals, tuple(pol.approver_kinds))
            for pid, pol in sorted(governing.items())
        ], excluded

    def binding(self, body: EventBody) -> tuple[set[bytes], set[bytes]]:
        """(named, expected): the refs of `body` binding it to a state, and those the state
        folded so far expects, for a release (engagements), a resume (the pause in force), a
        decision (its proposal's latest rollback) or a health report (the run of its step,
        while it runs)."""
        p = body.payload
        if type(p) is KillSwitchReleased:
            engaged = self.engaged.get(p.scope)
            return (
                {r for r in body.refs if r in self.engagement_hashes},
                {engaged.hash} if engaged else set(),
            )
        if type(p) is RolloutResumed:
            prop = self.proposals.get(p.proposal)
            paused = prop.paused if prop is not None else None
            return (
                {r for r in body.refs if r in self.pause_hashes},
                {paused[1]} if paused is not None else set(),
            )
        named = {r for r in body.refs if r in self.step_hashes}
        if type(p) is ApprovalRecorded:
            prop = self.proposals.get(p.proposal)
            rollback = prop.last_rollback() if prop is not None else None
            return named, {rollback.hash} if rollback else set()
        if type(p) is HealthReported:
            prop = self.proposals.get(p.proposal)
            run = prop.running() if prop is not None else None
            return named, {run.hash} if run is not None and run.step == p.step else set()
        return named, set()


@dataclass(slots=True)
class Signers:
    """The keys whose signatures on an entry verified and were valid at its seq."""

    keys: tuple[KeyRecord, ...]

    @property
    def principals(self) -> set[str]:
        return {k.principal for k in self.keys}

    def with_role(self, role: str) -> tuple[set[str], set[bytes]]:
        ks = [k for k in self.keys if role in k.roles]
        return {k.principal for k in ks}, {k.key_id for k in ks}


def covers(scope: KillScope, p: ProposalRecord) -> bool:
    t = p.proposal.target
    return (
        scope.kind == "GLOBAL"
        or (
            scope.kind == "TARGET"
            and (scope.namespace, scope.deployment) == (t.namespace, t.deployment)
        )
        or (scope.kind == "PROPOSAL" and scope.proposal == p.hash)
    )


def eval_passes(policy: PolicySet, ev: EvalRecorded) -> bool:
    """Recomputed from the policy; an eval never says itself whether it passed."""
    values = {m.name: m.value for m in ev.metrics}
    for req in policy.required_evals:
        if req.suite != ev.suite:
            continue
        v = values.get(req.metric)
        if v is None or math.isnan(v):
            return False
        ok = {
            "GE": v >= req.threshold,
            "GT": v > req.threshold,
            "LE": v <= req.threshold,
            "LT": v < req.threshold,
            "EQ": v == req.threshold,
        }[req.op]
        if not ok:
            return False
    return True


def genesis_keys(g: LedgerGenesis) -> dict[bytes, KeyRecord]:
    return {
        key_id(r.public_key): KeyRecord(
            key_id(r.public_key), r.principal, r.public_key, frozenset({"root"}), 0
        )
        for r in g.roots
    }


# --------------------------------------------------------------------------------------------
# Folding an entry that had no finding


def apply(
    state: State, seq: int, entry: Entry, body: EventBody, leaf: bytes, signers: Signers
) -> None:
    p = body.payload  # exact types (the payload classes are final), the frequent ones first
    author = signers.keys[0].principal if signers.keys else ""
    if type(p) is HealthReported:
        prop = state.proposals[p.proposal]
        if not p.checks:
            prop.health[p.step] = (seq, p.healthy)
        else:
            by_name = {c.name: c for c in state.policy(prop).analysis}
            results = prop.checks.setdefault(p.step, {})
            for ev in p.checks:
                results[ev.name] = (seq, *verdict(by_name[ev.name], ev.samples))
    elif type(p) is EvalRecorded:
        prop = state.proposals[p.proposal]
        prop.latest_evals[p.suite] = EvalRecord(
            leaf, seq, p.suite, eval_passes(state.policy(prop), p)
        )
        state.evals[leaf] = p.proposal
    elif type(p) is ApprovalRecorded:
        prop = state.proposals[p.proposal]
        d = Decision(leaf, seq, author, signers.keys[0].key_id, p.decision, frozenset(p.evals))
        prop.by_principal[author] = d
        prop.by_key[d.key_id] = d
    elif type(p) is LedgerGenesis:
        state.ledger, state.origin, state.root_threshold = body.ledger, p.origin, p.root_threshold
        state.checkpoint_key_name, state.checkpoint_public_key = (
            p.checkpoint_key_name,
            p.checkpoint_public_key,
        )
        state.keys.update(genesis_keys(p))
    elif type(p) is KeyGranted:
        kid = key_id(p.public_key)
        state.keys[kid] = KeyRecord(
            kid, p.principal, p.public_key, frozenset(p.roles), seq, p.expires_at
        )
    elif type(p) is KeyRevoked:
        old = state.keys[p.key_id]
        state.keys[p.key_id] = KeyRecord(
            old.key_id,
            old.principal,
            old.public_key,
            old.roles,
            old.granted_seq,
            old.expires_at,
            seq,
        )
    elif type(p) is PolicySet:
        state.policies[p.policy_id] = (seq, p)
    elif type(p) is ProposalSubmitted:
        pol = state.policy_for(p.target.namespace, p.target.deployment)
        assert pol is not None
        state.proposals[leaf] = ProposalRecord(
            leaf, seq, entry.received_at, author, p, pol.policy_id
        )
    elif type(p) is RolloutStep:
        prop = state.proposals[p.proposal]
        prop.steps.append(StepRecord(seq, entry.received_at, p.step, p.weight, p.phase, leaf))
        state.step_hashes.add(leaf)
        if p.phase == "ROLLED_BACK":
            prop.floor = seq
        if p.phase in ENDED:
            prop.paused = None
        t = prop.proposal.target
        if prop.phase in ACTIVE:
            state.active.setdefault((t.namespace, t.deployment), set()).add(prop.hash)
        else:
            state.active.get((t.namespace, t.deployment), set()).discard(prop.hash)
    elif type(p) is KillSwitchEngaged:
        state.kills[p.scope] = seq
        state.engaged[p.scope] = Engaged(
            leaf, frozenset(q.hash for q in state.active_proposals() if covers(p.scope, q))
        )
        state.engagement_hashes.add(leaf)
    elif type(p) is KillSwitchReleased:
        state.kills.pop(p.scope, None)
        state.engaged.pop(p.scope, None)
    elif type(p) is RolloutPaused:
        state.proposals[p.proposal].paused = (seq, leaf, author)
        state.pause_hashes.add(leaf)
    elif type(p) is RolloutResumed:
        state.proposals[p.proposal].paused = None
    state.event_ids[body.event_id] = seq
    state.entries[leaf] = seq
