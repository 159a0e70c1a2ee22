"""The ledger state: what the governance rules need to judge the next entry, folded from the log.

Pure: no I/O. :class:`LedgerState` holds a log's keys, policies, proposals (with their latest
evals, standing decisions, health reports and rollout steps), engaged kill switches and
per-entry indexes, and answers the queries the rules, the controller and the projections share.
``state.apply(entry)`` folds one entry into it, trusting that the entry passed
:func:`ledger.rules.check`. Values are frozen; the containers are updated in place by ``apply``.

The dependency runs one way: :mod:`ledger.rules` reads this state to judge an entry and this
module never imports the rules. So what needs both, checking then applying
(``ledger.rules.apply_checked``) and folding a whole log (``ledger.rules.fold``), lives there.
"""

from __future__ import annotations

from collections.abc import MutableMapping
from dataclasses import dataclass, field

from ledger.analysis import checks_for_step, judge, meets
from ledger.formats import (
    PRINCIPAL_KINDS,
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
    Payload,
    PolicySet,
    ProposalSubmitted,
    RolloutPaused,
    RolloutResumed,
    RolloutStep,
)
from ledger.keys import key_id
from ledger.quick_init import quick_init


@quick_init
@dataclass(frozen=True)
class KeyInfo:
    key_id: bytes
    principal: str
    public_key: bytes
    roles: frozenset[str]
    granted_seq: int
    expires_at: int | None = None
    revoked_seq: int | None = None

    @property
    def kind(self) -> str:
        return self.principal.split(":", 1)[0]


@quick_init
@dataclass(frozen=True)
class PolicyInfo:
    seq: int
    entry_hash: bytes
    policy: PolicySet


@quick_init
@dataclass(frozen=True)
class EvalInfo:
    entry_hash: bytes
    seq: int
    evaluator: str
    suite: str
    passed: bool
    failures: tuple[str, ...]


@quick_init
@dataclass(frozen=True)
class ApprovalInfo:
    entry_hash: bytes
    seq: int
    approver: str
    decision: str
    evals: frozenset[bytes]


@quick_init
@dataclass(frozen=True)
class HealthInfo:
    """The latest report on a step judged by hand (a report without checks)."""

    seq: int
    step: int
    healthy: bool


@quick_init
@dataclass(frozen=True)
class CheckResult:
    """The latest evidence of one check on one step, with its verdict recomputed from the
    signed samples under the policy (ledger.analysis.judge), never read from the report."""

    seq: int
    step: int
    name: str
    verdict: str
    why: str
    evaluated_at: int
    values: tuple[float | None, ...]  # every sample's value, None where inconclusive


@quick_init
@dataclass(frozen=True)
class StepInfo:
    seq: int
    at: int  # received_at of the RolloutStep entry
    step: int
    weight: int
    phase: str
    # The RolloutStep entry's hash: what a decision after a rollback, and a health report on
    # a run of a step, name in their refs to bind themselves to it.
    entry_hash: bytes


ACTIVE_PHASES = frozenset({"STARTED", "ADVANCED", "PAUSED"})
# A rollout ends here: a pause in force ends with it.
TERMINAL_PHASES = frozenset({"PROMOTED", "ROLLED_BACK"})


@quick_init
@dataclass(frozen=True)
class PauseInfo:
    """The RolloutPaused in force on a proposal: what a resume names, and who paused and why."""

    seq: int
    at: int  # received_at of the RolloutPaused entry
    entry_hash: bytes
    author: str
    reason: str

    def why(self) -> str:
        """How the controller's PAUSED record and the Paused condition say who paused and why."""
        return f"paused by {self.author} at seq {self.seq}: {self.reason}"


@quick_init
@dataclass(frozen=True)
class ResumeInfo:
    """The latest RolloutResumed of a proposal: the planner restarts the step's dwell here."""

    seq: int
    at: int  # received_at of the RolloutResumed entry
    entry_hash: bytes
    approvers: tuple[str, ...]  # every principal that signed it, sorted
    reason: str


@quick_init
@dataclass(frozen=True)
class Engagement:
    """The engaged kill switch of one scope: the entry a release must name, and whom it stopped."""

    entry_hash: bytes
    # The proposals whose rollout was active under the scope when it was engaged: their
    # proposers never count towards releasing it.
    stopped: frozenset[bytes]


@quick_init
@dataclass(frozen=True)
class ReleaseRequirement:
    """One policy's terms for releasing a kill switch: `approvals` distinct approver principals
    of `kinds`. `policy_id` is empty where no policy governs the scope (then every kind counts
    and the root threshold is the number)."""

    policy_id: str
    approvals: int
    kinds: tuple[str, ...]


@dataclass
class ProposalState:
    entry_hash: bytes
    seq: int
    proposer: str
    proposal: ProposalSubmitted
    policy_id: str
    latest_evals: dict[str, EvalInfo] = field(default_factory=dict)
    approvals: dict[str, ApprovalInfo] = field(default_factory=dict)
    health: dict[int, HealthInfo] = field(default_factory=dict)
    # step -> check name -> its latest evidence on that step (reports of automated analysis)
    checks: dict[int, dict[str, CheckResult]] = field(default_factory=dict)
    steps: list[StepInfo] = field(default_factory=list)
    # Approvals older than this seq no longer count: set at each rollback, so that a rollout
    # stopped by a kill switch resumes only on a fresh decision.
    decision_floor: int = -1
    # The governed pause in force (RolloutPaused, until a RolloutResumed or the rollout's end),
    # and the latest resume.
    pause: PauseInfo | None = None
    last_resume: ResumeInfo | None = None

    @property
    def paused_by(self) -> int | None:
        """The seq of the RolloutPaused in force, None when the rollout is not paused."""
        return self.pause.seq if self.pause is not None else None

    @property
    def phase(self) -> str:
        """The rollout phase; DRIFT_CORRECTED records never change it."""
        for s in reversed(self.steps):
            if s.phase != "DRIFT_CORRECTED":
                return s.phase
        return "PENDING"

    @property
    def current(self) -> StepInfo | None:
        for s in reversed(self.steps):
            if s.phase != "DRIFT_CORRECTED":
                return s
        return None

    @property
    def step_started(self) -> StepInfo | None:
        """The record that entered the current step (STARTED or ADVANCED)."""
        for s in reversed(self.steps):
            if s.phase in ("STARTED", "ADVANCED"):
                return s
        return None

    @property
    def current_run(self) -> StepInfo | None:
        """The record that entered the step running now; None unless the rollout is active.

        A health report judges this run and names this entry (a step that runs again after a
        rollback is a new run, with a new entry)."""
        return self.step_started if self.phase in ACTIVE_PHASES else None

    @property
    def latest_rollback(self) -> StepInfo | None:
        """The proposal's last ROLLED_BACK record: every later decision names it."""
        for s in reversed(self.steps):
            if s.phase == "ROLLED_BACK":
                return s
        return None


@dataclass
class LedgerState:
    """Everything the rules need to judge the next entry."""

    size: int = 0
    last_hash: bytes = ZERO_HASH
    ledger: str = ""
    origin: str = ""
    root_threshold: int = 0
    checkpoint_key_name: str = ""
    checkpoint_public_key: bytes = b""
    keys: dict[bytes, KeyInfo] = field(default_factory=dict)
    # The per-entry indexes are plain dicts while folding; a controller restored from its
    # snapshot holds packed, read-mostly mappings here instead (controller.snapshot).
    event_ids: MutableMapping[bytes, int] = field(default_factory=dict)
    entry_types: MutableMapping[bytes, str] = field(default_factory=dict)
    entry_seqs: MutableMapping[bytes, int] = field(default_factory=dict)
    policies: dict[str, PolicyInfo] = field(default_factory=dict)
    # A server keeps most proposals on disk (ledger.spilled_index.SpilledObjects): change a
    # proposal only right after looking it up, as `apply` does.
    proposals: MutableMapping[bytes, ProposalState] = field(default_factory=dict)
    evals: MutableMapping[bytes, bytes] = field(default_factory=dict)  # eval hash -> proposal hash
    kill_switches: dict[KillScope, int] = field(default_factory=dict)  # scope -> engaged seq
    engagements: dict[KillScope, Engagement] = field(default_factory=dict)  # the same scopes
    # (namespace, deployment) -> hashes of the proposals whose rollout there is active
    # (STARTED, ADVANCED or PAUSED); kept by `apply`, so `active_rollout_on` needs no scan.
    active_rollouts: dict[tuple[str, str], set[bytes]] = field(default_factory=dict)

    # -- queries shared by the rules, the controller and the projections -----------------

    def policy_for(self, namespace: str, deployment: str) -> PolicyInfo | None:
        """The most specific policy whose selector matches; the newest among equals."""
        best: tuple[int, int] | None = None
        found: PolicyInfo | None = None
        for info in self.policies.values():
            sel = info.policy.selector
            if sel.namespace not in ("*", namespace) or sel.deployment not in ("*", deployment):
                continue
            rank = ((sel.namespace != "*") + (sel.deployment != "*"), info.seq)
            if best is None or rank > best:
                best, found = rank, info
        return found

    def policy_of(self, proposal: ProposalState) -> PolicySet:
        return self.policies[proposal.policy_id].policy

    def kill_switch_for(self, proposal: ProposalState) -> KillScope | None:
        """The engaged kill switch whose scope covers this proposal, if any."""
        target = proposal.proposal.target
        for scope in self.kill_switches:
            if scope.kind == "GLOBAL":
                return scope
            if scope.kind == "TARGET" and (scope.namespace, scope.deployment) == (
                target.namespace,
                target.deployment,
            ):
                return scope
            if scope.kind == "PROPOSAL" and scope.proposal == proposal.entry_hash:
                return scope
        return None

    def valid_approvers(self, proposal: ProposalState) -> list[str]:
        """Distinct principals whose latest decision approves and still binds to the evidence."""
        policy = self.policy_of(proposal)
        latest = {suite: info.entry_hash for suite, info in proposal.latest_evals.items()}
        required = {r.suite for r in policy.required_evals}
        if not required <= latest.keys():
            return []
        bound = frozenset(latest[s] for s in required)
        if not all(proposal.latest_evals[s].passed for s in required):
            return []
        return sorted(
            a.approver
            for a in proposal.approvals.values()
            if a.decision == "APPROVE"
            and a.seq > proposal.decision_floor
            and a.evals == bound
            and a.approver != proposal.proposer
            and a.approver.split(":", 1)[0] in policy.approver_kinds
        )

    def vetoes(self, proposal: ProposalState) -> list[str]:
        policy = self.policy_of(proposal)
        if not policy.veto_on_reject:
            return []
        return sorted(
            a.approver
            for a in proposal.approvals.values()
            if a.decision == "REJECT"
            and a.seq > proposal.decision_floor
            and a.approver.split(":", 1)[0] in policy.approver_kinds
        )

    def kill_release_requirements(
        self, scope: KillScope
    ) -> tuple[list[ReleaseRequirement], frozenset[str]]:
        """What releasing the engaged switch of `scope` takes: every requirement must be met,
        each counting only approver principals of its kinds, never one of the returned
        principals (the proposers of the rollouts the switch stopped).

        The policies that govern a release: those of the rollouts the switch stopped, plus the
        policy covering the scope itself (the proposal's for PROPOSAL, the one selecting the
        target for TARGET, every policy for GLOBAL, which holds every target). A switch holding
        several policies is released only by signatures that satisfy each on its own terms
        (its k, its approver kinds): the strictest policy is never diluted by a laxer one, and
        no combination of kinds can lock a switch for good as an intersection of kinds could.
        Without any policy, k is the root threshold and every kind counts.
        """
        engagement = self.engagements.get(scope)
        stopped = [self.proposals[h] for h in engagement.stopped] if engagement else []
        governing: dict[str, PolicySet] = {}
        for proposal in stopped:
            governing.setdefault(proposal.policy_id, self.policy_of(proposal))
        if (
            scope.kind == "PROPOSAL"
            and scope.proposal is not None
            and scope.proposal in self.proposals
        ):
            proposal = self.proposals[scope.proposal]
            governing.setdefault(proposal.policy_id, self.policy_of(proposal))
        elif scope.kind == "TARGET":
            info = self.policy_for(scope.namespace, scope.deployment)
            if info is not None:
                governing.setdefault(info.policy.policy_id, info.policy)
        elif scope.kind == "GLOBAL":
            for info in self.policies.values():
                governing.setdefault(info.policy.policy_id, info.policy)
        excluded = frozenset(p.proposer for p in stopped)
        if not governing:
            return [ReleaseRequirement("", max(self.root_threshold, 1), PRINCIPAL_KINDS)], excluded
        return [
            ReleaseRequirement(pid, policy.kill_release_approvals, policy.approver_kinds)
            for pid, policy in sorted(governing.items())
        ], excluded

    def binding_refs(self, payload: Payload) -> tuple[bytes, ...]:
        """The entries an authorization signed now must name in its refs to bind itself to
        the state it authorizes (empty when there is none): a release names the engagement it
        releases, a resume the pause it ends, a decision the proposal's latest rollback, a
        health report the run of the step it judges. Clients call this on their folded state
        before they sign."""
        if isinstance(payload, KillSwitchReleased):
            engagement = self.engagements.get(payload.scope)
            return (engagement.entry_hash,) if engagement else ()
        if isinstance(payload, RolloutResumed):
            paused = self.proposals.get(payload.proposal)
            pause = paused.pause if paused is not None else None
            return (pause.entry_hash,) if pause is not None else ()
        if isinstance(payload, ApprovalRecorded | HealthReported):
            proposal = self.proposals.get(payload.proposal)
            if proposal is None:
                return ()
            if isinstance(payload, ApprovalRecorded):
                rollback = proposal.latest_rollback
                return (rollback.entry_hash,) if rollback else ()
            run = proposal.current_run
            return (run.entry_hash,) if run is not None and run.step == payload.step else ()
        return ()

    def analysis_of_run(
        self, proposal: ProposalState, run: StepInfo
    ) -> list[tuple[str, CheckResult | None]]:
        """Each check gating the step of `run`, with its latest evidence since the run began
        (None: no report yet); empty when no check gates the step (it is judged by hand)."""
        results = proposal.checks.get(run.step, {})
        out: list[tuple[str, CheckResult | None]] = []
        for check in checks_for_step(self.policy_of(proposal), run.step):
            found = results.get(check.name)
            out.append((check.name, found if found is not None and found.seq > run.seq else None))
        return out

    def active_rollout_on(self, namespace: str, deployment: str) -> ProposalState | None:
        active = self.active_rollouts.get((namespace, deployment))
        if not active:
            return None
        # The rules allow one active rollout per target; were there more, the oldest proposal
        # wins, as the scan over `proposals` (in log order) used to decide.
        return min((self.proposals[h] for h in active), key=lambda p: p.seq)

    def _active_under(self, scope: KillScope) -> frozenset[bytes]:
        """The proposals with an active rollout that `scope` covers."""
        return frozenset(
            h
            for hashes in self.active_rollouts.values()
            for h in hashes
            if _covers(scope, self.proposals[h])
        )

    # -- folding -------------------------------------------------------------------------

    def apply(self, e: LogEntry) -> None:
        """Fold an entry that passed :func:`ledger.rules.check` into the state."""
        body, seq, h = e.body, e.entry.seq, e.leaf_hash
        payload = body.payload
        author = ""  # the principal of the first signature by a known key
        for sig in e.entry.signatures:
            signer = self.keys.get(sig.key_id)
            if signer is not None:
                author = signer.principal
                break
        if isinstance(payload, LedgerGenesis):
            self.ledger, self.origin = body.ledger, payload.origin
            self.root_threshold = payload.root_threshold
            self.checkpoint_key_name = payload.checkpoint_key_name
            self.checkpoint_public_key = payload.checkpoint_public_key
            for root in payload.roots:
                kid = key_id(root.public_key)
                self.keys[kid] = KeyInfo(
                    kid, root.principal, root.public_key, frozenset({"root"}), seq
                )
        elif isinstance(payload, KeyGranted):
            kid = key_id(payload.public_key)
            self.keys[kid] = KeyInfo(
                kid,
                payload.principal,
                payload.public_key,
                frozenset(payload.roles),
                seq,
                payload.expires_at,
            )
        elif isinstance(payload, KeyRevoked):
            old = self.keys[payload.key_id]
            self.keys[payload.key_id] = KeyInfo(
                old.key_id,
                old.principal,
                old.public_key,
                old.roles,
                old.granted_seq,
                old.expires_at,
                seq,
            )
        elif isinstance(payload, PolicySet):
            self.policies[payload.policy_id] = PolicyInfo(seq, h, payload)
        elif isinstance(payload, ProposalSubmitted):
            info = self.policy_for(payload.target.namespace, payload.target.deployment)
            assert info is not None  # ledger.rules.check refused proposals without a policy
            self.proposals[h] = ProposalState(h, seq, author, payload, info.policy.policy_id)
        elif isinstance(payload, EvalRecorded):
            proposal = self.proposals[payload.proposal]
            failures = eval_failures(self.policy_of(proposal), payload)
            proposal.latest_evals[payload.suite] = EvalInfo(
                h, seq, author, payload.suite, not failures, failures
            )
            self.evals[h] = payload.proposal
        elif isinstance(payload, ApprovalRecorded):
            self.proposals[payload.proposal].approvals[author] = ApprovalInfo(
                h, seq, author, payload.decision, frozenset(payload.evals)
            )
        elif isinstance(payload, HealthReported):
            proposal = self.proposals[payload.proposal]
            if not payload.checks:
                proposal.health[payload.step] = HealthInfo(seq, payload.step, payload.healthy)
            else:
                by_name = {c.name: c for c in self.policy_of(proposal).analysis}
                results = proposal.checks.setdefault(payload.step, {})
                for ev in payload.checks:
                    judged = judge(by_name[ev.name], ev.samples)
                    results[ev.name] = CheckResult(
                        seq,
                        payload.step,
                        ev.name,
                        judged.verdict,
                        judged.why,
                        ev.evaluated_at,
                        tuple(s.value for s in ev.samples),
                    )
        elif isinstance(payload, RolloutStep):
            proposal = self.proposals[payload.proposal]
            proposal.steps.append(
                StepInfo(seq, e.entry.received_at, payload.step, payload.weight, payload.phase, h)
            )
            if payload.phase == "ROLLED_BACK":
                proposal.decision_floor = seq
            if payload.phase in TERMINAL_PHASES:
                proposal.pause = None  # the rollout ended: nothing is held any more
            t = proposal.proposal.target
            where = (t.namespace, t.deployment)
            if proposal.phase in ACTIVE_PHASES:
                self.active_rollouts.setdefault(where, set()).add(payload.proposal)
            elif where in self.active_rollouts:
                self.active_rollouts[where].discard(payload.proposal)
                if not self.active_rollouts[where]:
                    del self.active_rollouts[where]
        elif isinstance(payload, RolloutPaused):
            self.proposals[payload.proposal].pause = PauseInfo(
                seq, e.entry.received_at, h, author, payload.reason
            )
        elif isinstance(payload, RolloutResumed):
            proposal = self.proposals[payload.proposal]
            proposal.pause = None
            proposal.last_resume = ResumeInfo(
                seq, e.entry.received_at, h, self._signers_of(e), payload.reason
            )
        elif isinstance(payload, KillSwitchEngaged):
            self.kill_switches[payload.scope] = seq
            self.engagements[payload.scope] = Engagement(h, self._active_under(payload.scope))
        elif isinstance(payload, KillSwitchReleased):
            del self.kill_switches[payload.scope]
            del self.engagements[payload.scope]
        self.event_ids[body.event_id] = seq
        # The seq first: a server's two maps are one table, written when the type is
        # (ledger.spilled_index.SpilledEntryIndex).
        self.entry_seqs[h] = seq
        self.entry_types[h] = body.type
        self.size = seq + 1
        self.last_hash = h

    def _signers_of(self, e: LogEntry) -> tuple[str, ...]:
        """The distinct principals of the keys that signed `e`, sorted."""
        return tuple(
            sorted(
                {self.keys[s.key_id].principal for s in e.entry.signatures if s.key_id in self.keys}
            )
        )


def _covers(scope: KillScope, proposal: ProposalState) -> bool:
    target = proposal.proposal.target
    if scope.kind == "GLOBAL":
        return True
    if scope.kind == "TARGET":
        return (scope.namespace, scope.deployment) == (target.namespace, target.deployment)
    return scope.proposal == proposal.entry_hash


def eval_failures(policy: PolicySet, ev: EvalRecorded) -> tuple[str, ...]:
    """Why an eval fails its policy (empty when it passes); recomputed, never trusted."""
    metrics = {m.name: m.value for m in ev.metrics}
    failures = []
    for req in policy.required_evals:
        if req.suite != ev.suite:
            continue
        value = metrics.get(req.metric)
        if value is None:
            failures.append(f"{req.metric}: missing, expected {req.op} {req.threshold}")
        elif not meets(value, req.op, req.threshold):
            failures.append(f"{req.metric}: {value} is not {req.op} {req.threshold}")
    return tuple(failures)
