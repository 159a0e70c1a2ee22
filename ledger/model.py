"""The event model: frozen dataclasses that mirror the shipped Avro records field for field.

This is what the rest of Steward reads and writes; ``ledger.formats`` turns it into bytes and
back. Arrays are tuples, fixed and bytes are bytes, enums are their symbol strings, timestamps
are int milliseconds since the epoch. The fast codec (``ledger.fastcodec``) relies on each
record's fields being its schema's, in order (it checks that at import).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from ledger.quick_init import quick_init

# Enum symbols, as the schemas list them.
ROLES = ("root", "proposer", "evaluator", "approver", "operator", "monitor", "controller")
PRINCIPAL_KINDS = ("human", "agent", "service")
COMPARE_OPS = ("GE", "GT", "LE", "LT", "EQ")
DECISIONS = ("APPROVE", "REJECT")
ROLLOUT_PHASES = ("STARTED", "ADVANCED", "PAUSED", "PROMOTED", "ROLLED_BACK", "DRIFT_CORRECTED")
SCOPE_KINDS = ("GLOBAL", "TARGET", "PROPOSAL")
NO_DATA_ACTIONS = ("ROLLBACK", "PAUSE")
CHECK_VERDICTS = ("PASS", "FAIL", "INCONCLUSIVE")


@quick_init
@dataclass(frozen=True)
class RootKey:
    principal: str
    public_key: bytes


@quick_init
@dataclass(frozen=True)
class LedgerGenesis:
    origin: str
    roots: tuple[RootKey, ...]
    root_threshold: int
    checkpoint_key_name: str
    checkpoint_public_key: bytes


@quick_init
@dataclass(frozen=True)
class KeyGranted:
    principal: str
    public_key: bytes
    roles: tuple[str, ...]
    expires_at: int | None = None


@quick_init
@dataclass(frozen=True)
class KeyRevoked:
    key_id: bytes
    reason: str


@quick_init
@dataclass(frozen=True)
class TargetSelector:
    namespace: str
    deployment: str


@quick_init
@dataclass(frozen=True)
class RequiredEval:
    suite: str
    metric: str
    op: str
    threshold: float


@quick_init
@dataclass(frozen=True)
class PlanStep:
    weight: int
    hold_seconds: int
    health_gate: bool


@quick_init
@dataclass(frozen=True)
class NoDataRule:
    """What a check without a verdict `deadline_seconds` after its step's run began does:
    ROLLBACK (the canary goes to 0) or PAUSE (the rollout stops where it is, recorded)."""

    deadline_seconds: int
    action: str


@quick_init
@dataclass(frozen=True)
class HealthCheck:
    """One automated health check of a policy's analysis (schema v2; docs/ANALYSIS.md)."""

    name: str
    query: str  # a PromQL template: {namespace} {deployment} {canary_selector} {stable_selector}
    op: str
    threshold: float
    interval_seconds: int
    count: int  # conclusive measurements that make a passing verdict
    failure_limit: int  # failed measurements that make a failing verdict
    steps: tuple[int, ...] | None  # None: every health-gated step of the plan
    no_data: NoDataRule


@quick_init
@dataclass(frozen=True)
class TrafficRouting:
    """Traffic mode (schema v3): the Gateway API HTTPRoute whose backendRefs weights the
    controller sets to each step's weight, between a stable and a canary Service, all in the
    target's namespace."""

    http_route: str
    stable_service: str
    canary_service: str
    port: int


@quick_init
@dataclass(frozen=True)
class PolicySet:
    policy_id: str
    selector: TargetSelector
    required_evals: tuple[RequiredEval, ...]
    approvals_required: int
    approver_kinds: tuple[str, ...]
    plan: tuple[PlanStep, ...]
    veto_on_reject: bool
    kill_release_approvals: int
    kill_rollback_bound_ms: int
    # Schema v2; the defaults are the schema's, which a body written with v1 resolves to.
    analysis: tuple[HealthCheck, ...] = ()
    container: str | None = None  # the container to update; None: the pod's only one
    readiness_grace_seconds: int | None = None  # None: the controller's default
    # Schema v3, with the schema's defaults as above.
    resume_approvals: int = 1  # distinct approver principals a RolloutResumed needs
    traffic: TrafficRouting | None = None  # None: replica mode (the canary's share of pods)
    notify: tuple[str, ...] = ()  # webhook sink URLs (http or https)


@quick_init
@dataclass(frozen=True)
class Target:
    namespace: str
    deployment: str


@quick_init
@dataclass(frozen=True)
class ModelRef:
    image: str
    model_digest: str


@quick_init
@dataclass(frozen=True)
class ProposalOrigin:
    agent: str
    run: str


@quick_init
@dataclass(frozen=True)
class ProposalSubmitted:
    target: Target
    candidate: ModelRef
    baseline: ModelRef
    rationale: str
    origin: ProposalOrigin


@quick_init
@dataclass(frozen=True)
class Metric:
    name: str
    value: float


@quick_init
@dataclass(frozen=True)
class EvalRecorded:
    proposal: bytes
    suite: str
    metrics: tuple[Metric, ...]
    artifact_digest: str


@quick_init
@dataclass(frozen=True)
class ApprovalRecorded:
    proposal: bytes
    decision: str
    evals: tuple[bytes, ...]
    comment: str


@quick_init
@dataclass(frozen=True)
class Sample:
    """One measurement of a check: a value, or None (inconclusive: no data, or an error that
    `detail` names)."""

    taken_at: int
    value: float | None
    detail: str = ""


@quick_init
@dataclass(frozen=True)
class CheckEvidence:
    """A check's run so far on one step: the query as sent, every sample, and the verdict
    (recomputed by every reader from the samples and the policy: ledger.analysis)."""

    name: str
    query: str
    evaluated_at: int
    samples: tuple[Sample, ...]
    verdict: str


@quick_init
@dataclass(frozen=True)
class HealthReported:
    proposal: bytes
    step: int
    healthy: bool
    metrics: tuple[Metric, ...]
    checks: tuple[CheckEvidence, ...] = ()  # schema v2; empty for a report judged by hand


@quick_init
@dataclass(frozen=True)
class ObservedState:
    stable_replicas: int
    canary_replicas: int
    canary_ready: int
    stable_image: str
    canary_image: str


@quick_init
@dataclass(frozen=True)
class RolloutStep:
    proposal: bytes
    step: int
    weight: int
    phase: str
    reason: str
    observed: ObservedState


@quick_init
@dataclass(frozen=True)
class KillScope:
    kind: str
    namespace: str = ""
    deployment: str = ""
    proposal: bytes | None = None


@quick_init
@dataclass(frozen=True)
class AnnotationSource:
    object: str
    field_manager: str
    time: str


@quick_init
@dataclass(frozen=True)
class KillSwitchEngaged:
    scope: KillScope
    reason: str
    annotation: AnnotationSource | None = None


@quick_init
@dataclass(frozen=True)
class KillSwitchReleased:
    scope: KillScope
    reason: str


@quick_init
@dataclass(frozen=True)
class RolloutPaused:
    """Schema v3: hold a running rollout at its current step and weight until resumed."""

    proposal: bytes
    reason: str


@quick_init
@dataclass(frozen=True)
class RolloutResumed:
    """Schema v3: end the current pause (named in refs); signed by the approvers the policy's
    resume_approvals asks for."""

    proposal: bytes
    reason: str


Payload = (
    LedgerGenesis
    | KeyGranted
    | KeyRevoked
    | PolicySet
    | ProposalSubmitted
    | EvalRecorded
    | ApprovalRecorded
    | HealthReported
    | RolloutStep
    | KillSwitchEngaged
    | KillSwitchReleased
    | RolloutPaused
    | RolloutResumed
)

PAYLOAD_TYPES: Mapping[str, type[Any]] = {
    cls.__name__: cls
    for cls in (
        LedgerGenesis,
        KeyGranted,
        KeyRevoked,
        PolicySet,
        ProposalSubmitted,
        EvalRecorded,
        ApprovalRecorded,
        HealthReported,
        RolloutStep,
        KillSwitchEngaged,
        KillSwitchReleased,
        RolloutPaused,
        RolloutResumed,
    )
}


@quick_init
@dataclass(frozen=True)
class EventBody:
    ledger: str
    event_id: bytes
    issued_at: int
    refs: tuple[bytes, ...]
    payload: Payload

    @property
    def type(self) -> str:
        """The event type; on the wire it is an enum that must name the payload's record."""
        return type(self.payload).__name__


@quick_init
@dataclass(frozen=True)
class Signature:
    key_id: bytes
    sig: bytes


@quick_init
@dataclass(frozen=True)
class SignedEvent:
    body: bytes
    signatures: tuple[Signature, ...]


@quick_init
@dataclass(frozen=True)
class Entry:
    seq: int
    prev: bytes
    body: bytes
    signatures: tuple[Signature, ...]
    received_at: int


@quick_init
@dataclass(frozen=True)
class LogEntry:
    """An entry as read from the log: the exact bytes, their leaf hash and the decoded body."""

    entry: Entry
    entry_bytes: bytes
    leaf_hash: bytes
    body: EventBody

    @property
    def seq(self) -> int:
        return self.entry.seq


def payload_hashes(payload: Payload) -> tuple[bytes, ...]:
    """The entry hashes a payload names; each must also be listed in the body's refs."""
    if isinstance(
        payload, EvalRecorded | HealthReported | RolloutStep | RolloutPaused | RolloutResumed
    ):
        return (payload.proposal,)
    if isinstance(payload, ApprovalRecorded):
        return (payload.proposal, *payload.evals)
    if isinstance(payload, KillSwitchEngaged | KillSwitchReleased) and payload.scope.proposal:
        return (payload.scope.proposal,)
    return ()
