from steward.v1 import common_pb2 as _common_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class ProjectionStatus(_message.Message):
    __slots__ = ("size", "last_hash", "invalid_records")
    SIZE_FIELD_NUMBER: _ClassVar[int]
    LAST_HASH_FIELD_NUMBER: _ClassVar[int]
    INVALID_RECORDS_FIELD_NUMBER: _ClassVar[int]
    size: int
    last_hash: bytes
    invalid_records: int
    def __init__(self, size: _Optional[int] = ..., last_hash: _Optional[bytes] = ..., invalid_records: _Optional[int] = ...) -> None: ...

class GetProjectionStatusRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class Proposal(_message.Message):
    __slots__ = ("hash", "seq", "submitted_at_ms", "proposer", "namespace", "deployment", "candidate_image", "candidate_digest", "baseline_image", "baseline_digest", "rationale", "origin_agent", "origin_run", "policy_id", "phase", "step", "weight", "updated_seq")
    HASH_FIELD_NUMBER: _ClassVar[int]
    SEQ_FIELD_NUMBER: _ClassVar[int]
    SUBMITTED_AT_MS_FIELD_NUMBER: _ClassVar[int]
    PROPOSER_FIELD_NUMBER: _ClassVar[int]
    NAMESPACE_FIELD_NUMBER: _ClassVar[int]
    DEPLOYMENT_FIELD_NUMBER: _ClassVar[int]
    CANDIDATE_IMAGE_FIELD_NUMBER: _ClassVar[int]
    CANDIDATE_DIGEST_FIELD_NUMBER: _ClassVar[int]
    BASELINE_IMAGE_FIELD_NUMBER: _ClassVar[int]
    BASELINE_DIGEST_FIELD_NUMBER: _ClassVar[int]
    RATIONALE_FIELD_NUMBER: _ClassVar[int]
    ORIGIN_AGENT_FIELD_NUMBER: _ClassVar[int]
    ORIGIN_RUN_FIELD_NUMBER: _ClassVar[int]
    POLICY_ID_FIELD_NUMBER: _ClassVar[int]
    PHASE_FIELD_NUMBER: _ClassVar[int]
    STEP_FIELD_NUMBER: _ClassVar[int]
    WEIGHT_FIELD_NUMBER: _ClassVar[int]
    UPDATED_SEQ_FIELD_NUMBER: _ClassVar[int]
    hash: bytes
    seq: int
    submitted_at_ms: int
    proposer: str
    namespace: str
    deployment: str
    candidate_image: str
    candidate_digest: str
    baseline_image: str
    baseline_digest: str
    rationale: str
    origin_agent: str
    origin_run: str
    policy_id: str
    phase: str
    step: int
    weight: int
    updated_seq: int
    def __init__(self, hash: _Optional[bytes] = ..., seq: _Optional[int] = ..., submitted_at_ms: _Optional[int] = ..., proposer: _Optional[str] = ..., namespace: _Optional[str] = ..., deployment: _Optional[str] = ..., candidate_image: _Optional[str] = ..., candidate_digest: _Optional[str] = ..., baseline_image: _Optional[str] = ..., baseline_digest: _Optional[str] = ..., rationale: _Optional[str] = ..., origin_agent: _Optional[str] = ..., origin_run: _Optional[str] = ..., policy_id: _Optional[str] = ..., phase: _Optional[str] = ..., step: _Optional[int] = ..., weight: _Optional[int] = ..., updated_seq: _Optional[int] = ...) -> None: ...

class EvalMetric(_message.Message):
    __slots__ = ("name", "value")
    NAME_FIELD_NUMBER: _ClassVar[int]
    VALUE_FIELD_NUMBER: _ClassVar[int]
    name: str
    value: float
    def __init__(self, name: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...

class Eval(_message.Message):
    __slots__ = ("hash", "proposal", "seq", "suite", "evaluator", "metrics", "artifact_digest", "passed", "failures", "is_latest")
    HASH_FIELD_NUMBER: _ClassVar[int]
    PROPOSAL_FIELD_NUMBER: _ClassVar[int]
    SEQ_FIELD_NUMBER: _ClassVar[int]
    SUITE_FIELD_NUMBER: _ClassVar[int]
    EVALUATOR_FIELD_NUMBER: _ClassVar[int]
    METRICS_FIELD_NUMBER: _ClassVar[int]
    ARTIFACT_DIGEST_FIELD_NUMBER: _ClassVar[int]
    PASSED_FIELD_NUMBER: _ClassVar[int]
    FAILURES_FIELD_NUMBER: _ClassVar[int]
    IS_LATEST_FIELD_NUMBER: _ClassVar[int]
    hash: bytes
    proposal: bytes
    seq: int
    suite: str
    evaluator: str
    metrics: _containers.RepeatedCompositeFieldContainer[EvalMetric]
    artifact_digest: str
    passed: bool
    failures: _containers.RepeatedScalarFieldContainer[str]
    is_latest: bool
    def __init__(self, hash: _Optional[bytes] = ..., proposal: _Optional[bytes] = ..., seq: _Optional[int] = ..., suite: _Optional[str] = ..., evaluator: _Optional[str] = ..., metrics: _Optional[_Iterable[_Union[EvalMetric, _Mapping]]] = ..., artifact_digest: _Optional[str] = ..., passed: _Optional[bool] = ..., failures: _Optional[_Iterable[str]] = ..., is_latest: _Optional[bool] = ...) -> None: ...

class Approval(_message.Message):
    __slots__ = ("hash", "proposal", "seq", "approver", "decision", "evals", "comment", "valid_now")
    HASH_FIELD_NUMBER: _ClassVar[int]
    PROPOSAL_FIELD_NUMBER: _ClassVar[int]
    SEQ_FIELD_NUMBER: _ClassVar[int]
    APPROVER_FIELD_NUMBER: _ClassVar[int]
    DECISION_FIELD_NUMBER: _ClassVar[int]
    EVALS_FIELD_NUMBER: _ClassVar[int]
    COMMENT_FIELD_NUMBER: _ClassVar[int]
    VALID_NOW_FIELD_NUMBER: _ClassVar[int]
    hash: bytes
    proposal: bytes
    seq: int
    approver: str
    decision: str
    evals: _containers.RepeatedScalarFieldContainer[bytes]
    comment: str
    valid_now: bool
    def __init__(self, hash: _Optional[bytes] = ..., proposal: _Optional[bytes] = ..., seq: _Optional[int] = ..., approver: _Optional[str] = ..., decision: _Optional[str] = ..., evals: _Optional[_Iterable[bytes]] = ..., comment: _Optional[str] = ..., valid_now: _Optional[bool] = ...) -> None: ...

class RolloutStepRecord(_message.Message):
    __slots__ = ("seq", "hash", "proposal", "step", "weight", "phase", "reason", "at_ms", "stable_replicas", "canary_replicas", "canary_ready", "stable_image", "canary_image")
    SEQ_FIELD_NUMBER: _ClassVar[int]
    HASH_FIELD_NUMBER: _ClassVar[int]
    PROPOSAL_FIELD_NUMBER: _ClassVar[int]
    STEP_FIELD_NUMBER: _ClassVar[int]
    WEIGHT_FIELD_NUMBER: _ClassVar[int]
    PHASE_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    AT_MS_FIELD_NUMBER: _ClassVar[int]
    STABLE_REPLICAS_FIELD_NUMBER: _ClassVar[int]
    CANARY_REPLICAS_FIELD_NUMBER: _ClassVar[int]
    CANARY_READY_FIELD_NUMBER: _ClassVar[int]
    STABLE_IMAGE_FIELD_NUMBER: _ClassVar[int]
    CANARY_IMAGE_FIELD_NUMBER: _ClassVar[int]
    seq: int
    hash: bytes
    proposal: bytes
    step: int
    weight: int
    phase: str
    reason: str
    at_ms: int
    stable_replicas: int
    canary_replicas: int
    canary_ready: int
    stable_image: str
    canary_image: str
    def __init__(self, seq: _Optional[int] = ..., hash: _Optional[bytes] = ..., proposal: _Optional[bytes] = ..., step: _Optional[int] = ..., weight: _Optional[int] = ..., phase: _Optional[str] = ..., reason: _Optional[str] = ..., at_ms: _Optional[int] = ..., stable_replicas: _Optional[int] = ..., canary_replicas: _Optional[int] = ..., canary_ready: _Optional[int] = ..., stable_image: _Optional[str] = ..., canary_image: _Optional[str] = ...) -> None: ...

class RolloutHistory(_message.Message):
    __slots__ = ("proposal", "steps")
    PROPOSAL_FIELD_NUMBER: _ClassVar[int]
    STEPS_FIELD_NUMBER: _ClassVar[int]
    proposal: Proposal
    steps: _containers.RepeatedCompositeFieldContainer[RolloutStepRecord]
    def __init__(self, proposal: _Optional[_Union[Proposal, _Mapping]] = ..., steps: _Optional[_Iterable[_Union[RolloutStepRecord, _Mapping]]] = ...) -> None: ...

class KillSwitch(_message.Message):
    __slots__ = ("engaged_seq", "scope_kind", "namespace", "deployment", "proposal", "engaged_by", "reason", "active", "released_seq", "released_by", "release_reason")
    ENGAGED_SEQ_FIELD_NUMBER: _ClassVar[int]
    SCOPE_KIND_FIELD_NUMBER: _ClassVar[int]
    NAMESPACE_FIELD_NUMBER: _ClassVar[int]
    DEPLOYMENT_FIELD_NUMBER: _ClassVar[int]
    PROPOSAL_FIELD_NUMBER: _ClassVar[int]
    ENGAGED_BY_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    ACTIVE_FIELD_NUMBER: _ClassVar[int]
    RELEASED_SEQ_FIELD_NUMBER: _ClassVar[int]
    RELEASED_BY_FIELD_NUMBER: _ClassVar[int]
    RELEASE_REASON_FIELD_NUMBER: _ClassVar[int]
    engaged_seq: int
    scope_kind: str
    namespace: str
    deployment: str
    proposal: bytes
    engaged_by: str
    reason: str
    active: bool
    released_seq: int
    released_by: _containers.RepeatedScalarFieldContainer[str]
    release_reason: str
    def __init__(self, engaged_seq: _Optional[int] = ..., scope_kind: _Optional[str] = ..., namespace: _Optional[str] = ..., deployment: _Optional[str] = ..., proposal: _Optional[bytes] = ..., engaged_by: _Optional[str] = ..., reason: _Optional[str] = ..., active: _Optional[bool] = ..., released_seq: _Optional[int] = ..., released_by: _Optional[_Iterable[str]] = ..., release_reason: _Optional[str] = ...) -> None: ...

class GrantedKey(_message.Message):
    __slots__ = ("key_id", "principal", "kind", "roles", "granted_seq", "expires_at_ms", "revoked_seq", "revoke_reason")
    KEY_ID_FIELD_NUMBER: _ClassVar[int]
    PRINCIPAL_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    ROLES_FIELD_NUMBER: _ClassVar[int]
    GRANTED_SEQ_FIELD_NUMBER: _ClassVar[int]
    EXPIRES_AT_MS_FIELD_NUMBER: _ClassVar[int]
    REVOKED_SEQ_FIELD_NUMBER: _ClassVar[int]
    REVOKE_REASON_FIELD_NUMBER: _ClassVar[int]
    key_id: bytes
    principal: str
    kind: str
    roles: _containers.RepeatedScalarFieldContainer[str]
    granted_seq: int
    expires_at_ms: int
    revoked_seq: int
    revoke_reason: str
    def __init__(self, key_id: _Optional[bytes] = ..., principal: _Optional[str] = ..., kind: _Optional[str] = ..., roles: _Optional[_Iterable[str]] = ..., granted_seq: _Optional[int] = ..., expires_at_ms: _Optional[int] = ..., revoked_seq: _Optional[int] = ..., revoke_reason: _Optional[str] = ...) -> None: ...

class ListProposalsRequest(_message.Message):
    __slots__ = ("namespace", "deployment", "phase", "proposer", "page")
    NAMESPACE_FIELD_NUMBER: _ClassVar[int]
    DEPLOYMENT_FIELD_NUMBER: _ClassVar[int]
    PHASE_FIELD_NUMBER: _ClassVar[int]
    PROPOSER_FIELD_NUMBER: _ClassVar[int]
    PAGE_FIELD_NUMBER: _ClassVar[int]
    namespace: str
    deployment: str
    phase: str
    proposer: str
    page: _common_pb2.PageRequest
    def __init__(self, namespace: _Optional[str] = ..., deployment: _Optional[str] = ..., phase: _Optional[str] = ..., proposer: _Optional[str] = ..., page: _Optional[_Union[_common_pb2.PageRequest, _Mapping]] = ...) -> None: ...

class ListProposalsResponse(_message.Message):
    __slots__ = ("proposals", "page", "projection")
    PROPOSALS_FIELD_NUMBER: _ClassVar[int]
    PAGE_FIELD_NUMBER: _ClassVar[int]
    PROJECTION_FIELD_NUMBER: _ClassVar[int]
    proposals: _containers.RepeatedCompositeFieldContainer[Proposal]
    page: _common_pb2.PageResponse
    projection: ProjectionStatus
    def __init__(self, proposals: _Optional[_Iterable[_Union[Proposal, _Mapping]]] = ..., page: _Optional[_Union[_common_pb2.PageResponse, _Mapping]] = ..., projection: _Optional[_Union[ProjectionStatus, _Mapping]] = ...) -> None: ...

class GetProposalRequest(_message.Message):
    __slots__ = ("hash", "hash_hex")
    HASH_FIELD_NUMBER: _ClassVar[int]
    HASH_HEX_FIELD_NUMBER: _ClassVar[int]
    hash: bytes
    hash_hex: str
    def __init__(self, hash: _Optional[bytes] = ..., hash_hex: _Optional[str] = ...) -> None: ...

class GetProposalResponse(_message.Message):
    __slots__ = ("proposal", "latest_evals", "approvals", "steps", "approvals_required", "valid_approvers", "projection")
    PROPOSAL_FIELD_NUMBER: _ClassVar[int]
    LATEST_EVALS_FIELD_NUMBER: _ClassVar[int]
    APPROVALS_FIELD_NUMBER: _ClassVar[int]
    STEPS_FIELD_NUMBER: _ClassVar[int]
    APPROVALS_REQUIRED_FIELD_NUMBER: _ClassVar[int]
    VALID_APPROVERS_FIELD_NUMBER: _ClassVar[int]
    PROJECTION_FIELD_NUMBER: _ClassVar[int]
    proposal: Proposal
    latest_evals: _containers.RepeatedCompositeFieldContainer[Eval]
    approvals: _containers.RepeatedCompositeFieldContainer[Approval]
    steps: _containers.RepeatedCompositeFieldContainer[RolloutStepRecord]
    approvals_required: int
    valid_approvers: _containers.RepeatedScalarFieldContainer[str]
    projection: ProjectionStatus
    def __init__(self, proposal: _Optional[_Union[Proposal, _Mapping]] = ..., latest_evals: _Optional[_Iterable[_Union[Eval, _Mapping]]] = ..., approvals: _Optional[_Iterable[_Union[Approval, _Mapping]]] = ..., steps: _Optional[_Iterable[_Union[RolloutStepRecord, _Mapping]]] = ..., approvals_required: _Optional[int] = ..., valid_approvers: _Optional[_Iterable[str]] = ..., projection: _Optional[_Union[ProjectionStatus, _Mapping]] = ...) -> None: ...

class ListEvalsRequest(_message.Message):
    __slots__ = ("proposal_hash", "proposal_hex", "suite", "latest_only", "page")
    PROPOSAL_HASH_FIELD_NUMBER: _ClassVar[int]
    PROPOSAL_HEX_FIELD_NUMBER: _ClassVar[int]
    SUITE_FIELD_NUMBER: _ClassVar[int]
    LATEST_ONLY_FIELD_NUMBER: _ClassVar[int]
    PAGE_FIELD_NUMBER: _ClassVar[int]
    proposal_hash: bytes
    proposal_hex: str
    suite: str
    latest_only: bool
    page: _common_pb2.PageRequest
    def __init__(self, proposal_hash: _Optional[bytes] = ..., proposal_hex: _Optional[str] = ..., suite: _Optional[str] = ..., latest_only: _Optional[bool] = ..., page: _Optional[_Union[_common_pb2.PageRequest, _Mapping]] = ...) -> None: ...

class ListEvalsResponse(_message.Message):
    __slots__ = ("evals", "page", "projection")
    EVALS_FIELD_NUMBER: _ClassVar[int]
    PAGE_FIELD_NUMBER: _ClassVar[int]
    PROJECTION_FIELD_NUMBER: _ClassVar[int]
    evals: _containers.RepeatedCompositeFieldContainer[Eval]
    page: _common_pb2.PageResponse
    projection: ProjectionStatus
    def __init__(self, evals: _Optional[_Iterable[_Union[Eval, _Mapping]]] = ..., page: _Optional[_Union[_common_pb2.PageResponse, _Mapping]] = ..., projection: _Optional[_Union[ProjectionStatus, _Mapping]] = ...) -> None: ...

class ListApprovalsRequest(_message.Message):
    __slots__ = ("proposal_hash", "proposal_hex", "approver", "valid_only", "page")
    PROPOSAL_HASH_FIELD_NUMBER: _ClassVar[int]
    PROPOSAL_HEX_FIELD_NUMBER: _ClassVar[int]
    APPROVER_FIELD_NUMBER: _ClassVar[int]
    VALID_ONLY_FIELD_NUMBER: _ClassVar[int]
    PAGE_FIELD_NUMBER: _ClassVar[int]
    proposal_hash: bytes
    proposal_hex: str
    approver: str
    valid_only: bool
    page: _common_pb2.PageRequest
    def __init__(self, proposal_hash: _Optional[bytes] = ..., proposal_hex: _Optional[str] = ..., approver: _Optional[str] = ..., valid_only: _Optional[bool] = ..., page: _Optional[_Union[_common_pb2.PageRequest, _Mapping]] = ...) -> None: ...

class ListApprovalsResponse(_message.Message):
    __slots__ = ("approvals", "page", "projection")
    APPROVALS_FIELD_NUMBER: _ClassVar[int]
    PAGE_FIELD_NUMBER: _ClassVar[int]
    PROJECTION_FIELD_NUMBER: _ClassVar[int]
    approvals: _containers.RepeatedCompositeFieldContainer[Approval]
    page: _common_pb2.PageResponse
    projection: ProjectionStatus
    def __init__(self, approvals: _Optional[_Iterable[_Union[Approval, _Mapping]]] = ..., page: _Optional[_Union[_common_pb2.PageResponse, _Mapping]] = ..., projection: _Optional[_Union[ProjectionStatus, _Mapping]] = ...) -> None: ...

class QueryRolloutsRequest(_message.Message):
    __slots__ = ("phase", "namespace", "deployment", "page")
    PHASE_FIELD_NUMBER: _ClassVar[int]
    NAMESPACE_FIELD_NUMBER: _ClassVar[int]
    DEPLOYMENT_FIELD_NUMBER: _ClassVar[int]
    PAGE_FIELD_NUMBER: _ClassVar[int]
    phase: str
    namespace: str
    deployment: str
    page: _common_pb2.PageRequest
    def __init__(self, phase: _Optional[str] = ..., namespace: _Optional[str] = ..., deployment: _Optional[str] = ..., page: _Optional[_Union[_common_pb2.PageRequest, _Mapping]] = ...) -> None: ...

class QueryRolloutsResponse(_message.Message):
    __slots__ = ("rollouts", "page", "projection")
    ROLLOUTS_FIELD_NUMBER: _ClassVar[int]
    PAGE_FIELD_NUMBER: _ClassVar[int]
    PROJECTION_FIELD_NUMBER: _ClassVar[int]
    rollouts: _containers.RepeatedCompositeFieldContainer[RolloutHistory]
    page: _common_pb2.PageResponse
    projection: ProjectionStatus
    def __init__(self, rollouts: _Optional[_Iterable[_Union[RolloutHistory, _Mapping]]] = ..., page: _Optional[_Union[_common_pb2.PageResponse, _Mapping]] = ..., projection: _Optional[_Union[ProjectionStatus, _Mapping]] = ...) -> None: ...

class ListKillSwitchesRequest(_message.Message):
    __slots__ = ("active_only", "page")
    ACTIVE_ONLY_FIELD_NUMBER: _ClassVar[int]
    PAGE_FIELD_NUMBER: _ClassVar[int]
    active_only: bool
    page: _common_pb2.PageRequest
    def __init__(self, active_only: _Optional[bool] = ..., page: _Optional[_Union[_common_pb2.PageRequest, _Mapping]] = ...) -> None: ...

class ListKillSwitchesResponse(_message.Message):
    __slots__ = ("kill_switches", "page", "projection")
    KILL_SWITCHES_FIELD_NUMBER: _ClassVar[int]
    PAGE_FIELD_NUMBER: _ClassVar[int]
    PROJECTION_FIELD_NUMBER: _ClassVar[int]
    kill_switches: _containers.RepeatedCompositeFieldContainer[KillSwitch]
    page: _common_pb2.PageResponse
    projection: ProjectionStatus
    def __init__(self, kill_switches: _Optional[_Iterable[_Union[KillSwitch, _Mapping]]] = ..., page: _Optional[_Union[_common_pb2.PageResponse, _Mapping]] = ..., projection: _Optional[_Union[ProjectionStatus, _Mapping]] = ...) -> None: ...

class ListKeysRequest(_message.Message):
    __slots__ = ("principal", "role", "include_revoked", "page")
    PRINCIPAL_FIELD_NUMBER: _ClassVar[int]
    ROLE_FIELD_NUMBER: _ClassVar[int]
    INCLUDE_REVOKED_FIELD_NUMBER: _ClassVar[int]
    PAGE_FIELD_NUMBER: _ClassVar[int]
    principal: str
    role: str
    include_revoked: bool
    page: _common_pb2.PageRequest
    def __init__(self, principal: _Optional[str] = ..., role: _Optional[str] = ..., include_revoked: _Optional[bool] = ..., page: _Optional[_Union[_common_pb2.PageRequest, _Mapping]] = ...) -> None: ...

class ListKeysResponse(_message.Message):
    __slots__ = ("keys", "page", "projection")
    KEYS_FIELD_NUMBER: _ClassVar[int]
    PAGE_FIELD_NUMBER: _ClassVar[int]
    PROJECTION_FIELD_NUMBER: _ClassVar[int]
    keys: _containers.RepeatedCompositeFieldContainer[GrantedKey]
    page: _common_pb2.PageResponse
    projection: ProjectionStatus
    def __init__(self, keys: _Optional[_Iterable[_Union[GrantedKey, _Mapping]]] = ..., page: _Optional[_Union[_common_pb2.PageResponse, _Mapping]] = ..., projection: _Optional[_Union[ProjectionStatus, _Mapping]] = ...) -> None: ...
