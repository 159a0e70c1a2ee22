"""What a ledger entry tells the outside world: one :class:`Notice` per RolloutStep, kill switch,
release, pause or resume.

Pure: no I/O. The same notice feeds both outlets, so they can never tell different stories:

- Kubernetes Events on the ModelRollout and the target Deployment (``controller.kube_events``);
- CloudEvents 1.0 POSTed to webhook sinks (``controller.notify``).

A notice is derived from the entry and a state folded *at or after* it (the live fold, or a later
snapshot when a restart re-reads entries it had not yet delivered): a proposal's target never
changes, and which rollouts a kill switch stopped is recomputed from the recorded steps (the last
step before the kill was active), so both ways give the same notice.
"""

from __future__ import annotations

from collections.abc import Container
from dataclasses import dataclass, replace

from ledger.formats import (
    KillScope,
    KillSwitchEngaged,
    KillSwitchReleased,
    LogEntry,
    RolloutPaused,
    RolloutResumed,
    RolloutStep,
)
from ledger.state import ACTIVE_PHASES, LedgerState, ProposalState

# CloudEvents `type` per kind of notice (reverse-DNS, as the CloudEvents spec recommends).
STEP_TYPE = "dev.steward.rollout.step"
KILL_TYPE = "dev.steward.killswitch.engaged"
RELEASE_TYPE = "dev.steward.killswitch.released"
PAUSE_TYPE = "dev.steward.rollout.pause"  # the signed request; the planner's PAUSED step follows
RESUME_TYPE = "dev.steward.rollout.resume"
# Notices about exactly one rollout (the others are about a kill switch's scope).
ROLLOUT_TYPES = frozenset({STEP_TYPE, PAUSE_TYPE, RESUME_TYPE})

# Kubernetes Event `reason` (CamelCase, as kubectl shows it) per RolloutStep phase.
STEP_REASONS = {
    "STARTED": "RolloutStarted",
    "ADVANCED": "StepAdvanced",
    "PAUSED": "RolloutPaused",
    "PROMOTED": "RolloutPromoted",
    "ROLLED_BACK": "RolledBack",
    "DRIFT_CORRECTED": "DriftCorrected",
}
# Phases a person should look at: Kubernetes Event type Warning instead of Normal.
WARNING_PHASES = frozenset({"ROLLED_BACK", "DRIFT_CORRECTED"})


@dataclass(frozen=True)
class RolloutRef:
    """A rollout a notice is about: its proposal and the Deployment it replaces."""

    proposal: bytes
    namespace: str
    deployment: str

    @property
    def object_name(self) -> str:
        """The ModelRollout mirroring it (controller.view.RolloutView.object_name)."""
        return f"{self.deployment}-{self.proposal.hex()[:10]}"


@dataclass(frozen=True)
class Notice:
    seq: int
    entry_hash: bytes  # the ledger entry's hash: the CloudEvent id, part of the Event names
    type: str  # STEP_TYPE, KILL_TYPE or RELEASE_TYPE
    reason: str  # the Kubernetes Event reason (RolloutStarted, KillSwitchEngaged, ...)
    warning: bool
    time_ms: int  # the ledger's received_at
    rollouts: tuple[RolloutRef, ...]  # who it is about (empty: a kill that stopped nothing)
    message: str  # the entry's own reason text
    step: int | None = None
    weight: int | None = None
    phase: str = ""
    scope: str = ""  # for kills and releases: GLOBAL, TARGET ns/name, PROPOSAL <hash>

    @property
    def subject(self) -> str:
        """CloudEvents `subject`: the ModelRollout, or the kill switch's scope."""
        if len(self.rollouts) == 1 and self.type in ROLLOUT_TYPES:
            r = self.rollouts[0]
            return f"{r.namespace}/{r.object_name}"
        return self.scope or "ledger"

    @property
    def summary(self) -> str:
        """The one-line message of the Kubernetes Event (the Events API caps it at 1 kB)."""
        if self.type == STEP_TYPE:
            head = f"step {self.step} weight {self.weight}% {self.phase}"
        elif self.type == KILL_TYPE:
            head = f"kill switch {self.scope} engaged"
        elif self.type == PAUSE_TYPE:
            head = "pause requested"
        elif self.type == RESUME_TYPE:
            head = "resumed"
        else:
            head = f"kill switch {self.scope} released"
        text = f"{head} (ledger seq {self.seq})" + (f": {self.message}" if self.message else "")
        return text[:1000]


def describe_scope(scope: KillScope) -> str:
    if scope.kind == "TARGET":
        return f"TARGET {scope.namespace}/{scope.deployment}"
    if scope.kind == "PROPOSAL" and scope.proposal is not None:
        return f"PROPOSAL {scope.proposal.hex()[:16]}"
    return scope.kind


def _ref(p: ProposalState) -> RolloutRef:
    t = p.proposal.target
    return RolloutRef(p.entry_hash, t.namespace, t.deployment)


def _covers(scope: KillScope, p: ProposalState) -> bool:
    t = p.proposal.target
    if scope.kind == "GLOBAL":
        return True
    if scope.kind == "TARGET":
        return (scope.namespace, scope.deployment) == (t.namespace, t.deployment)
    return scope.kind == "PROPOSAL" and scope.proposal == p.entry_hash


def _active_at(p: ProposalState, seq: int) -> bool:
    """Whether the rollout was running just before entry `seq` (its last real step active)."""
    last = None
    for s in p.steps:
        if s.seq >= seq:
            break
        if s.phase != "DRIFT_CORRECTED":
            last = s
    return last is not None and last.phase in ACTIVE_PHASES


def stopped_by(state: LedgerState, scope: KillScope, seq: int) -> tuple[RolloutRef, ...]:
    """The rollouts a kill switch at `seq` stopped: in its scope and active just before it.

    A PROPOSAL scope always names its proposal, active or not (an emergency stop on a rollout
    that is just starting is still about it)."""
    refs = []
    for p in sorted(state.proposals.values(), key=lambda p: p.seq):
        if p.seq >= seq or not _covers(scope, p):
            continue
        if scope.kind == "PROPOSAL" or _active_at(p, seq):
            refs.append(_ref(p))
    return tuple(refs)


def notices_for(entry: LogEntry, state: LedgerState) -> tuple[Notice, ...]:
    """The notices of one valid ledger entry (none for most entry types).

    `state` is folded at least through `entry`."""
    payload = entry.body.payload
    seq, entry_hash, time_ms = entry.seq, entry.leaf_hash, entry.entry.received_at
    if isinstance(payload, RolloutStep):
        p = state.proposals.get(payload.proposal)
        if p is None:  # the rules refuse a step of an unknown proposal; nothing to say
            return ()
        return (
            Notice(
                seq=seq,
                entry_hash=entry_hash,
                time_ms=time_ms,
                type=STEP_TYPE,
                reason=STEP_REASONS.get(payload.phase, payload.phase.title().replace("_", "")),
                warning=payload.phase in WARNING_PHASES,
                rollouts=(_ref(p),),
                message=payload.reason,
                step=payload.step,
                weight=payload.weight,
                phase=payload.phase,
            ),
        )
    if isinstance(payload, RolloutPaused | RolloutResumed):
        p = state.proposals.get(payload.proposal)
        if p is None:
            return ()
        paused = isinstance(payload, RolloutPaused)
        return (
            Notice(
                seq=seq,
                entry_hash=entry_hash,
                time_ms=time_ms,
                type=PAUSE_TYPE if paused else RESUME_TYPE,
                reason="PauseRequested" if paused else "RolloutResumed",
                warning=False,
                rollouts=(_ref(p),),
                message=payload.reason,
            ),
        )
    if isinstance(payload, KillSwitchEngaged):
        return (
            Notice(
                seq=seq,
                entry_hash=entry_hash,
                time_ms=time_ms,
                type=KILL_TYPE,
                reason="KillSwitchEngaged",
                warning=True,
                rollouts=stopped_by(state, payload.scope, entry.seq),
                message=payload.reason,
                scope=describe_scope(payload.scope),
            ),
        )
    if isinstance(payload, KillSwitchReleased):
        proposals = (
            (state.proposals[payload.scope.proposal],)
            if payload.scope.proposal is not None and payload.scope.proposal in state.proposals
            else ()
        )
        return (
            Notice(
                seq=seq,
                entry_hash=entry_hash,
                time_ms=time_ms,
                type=RELEASE_TYPE,
                reason="KillSwitchReleased",
                warning=False,
                rollouts=tuple(_ref(p) for p in proposals if payload.scope.kind == "PROPOSAL"),
                message=payload.reason,
                scope=describe_scope(payload.scope),
            ),
        )
    return ()


def for_namespaces(notice: Notice, managed: Container[str]) -> Notice | None:
    """The notice as a controller managing `managed` tells it: only its own rollouts.

    Several controllers (clusters) may follow one ledger; each announces the rollouts it drives,
    so a receiver is not told the same step by every cluster. A notice about rollouts none of
    which is managed here is None; one about none at all (a kill switch that stopped nothing)
    is kept: it is about the scope."""
    if not notice.rollouts:
        return notice
    mine = tuple(r for r in notice.rollouts if r.namespace in managed)
    if not mine:
        return None
    return notice if len(mine) == len(notice.rollouts) else replace(notice, rollouts=mine)
