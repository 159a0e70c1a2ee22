from steward.v1 import common_pb2 as _common_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Rollout(_message.Message):
    __slots__ = ("proposal", "namespace", "deployment", "phase", "step", "weight", "approvals", "approvals_required", "last_seq", "candidate_image", "stable_image", "message", "kill_switch")
    PROPOSAL_FIELD_NUMBER: _ClassVar[int]
    NAMESPACE_FIELD_NUMBER: _ClassVar[int]
    DEPLOYMENT_FIELD_NUMBER: _ClassVar[int]
    PHASE_FIELD_NUMBER: _ClassVar[int]
    STEP_FIELD_NUMBER: _ClassVar[int]
    WEIGHT_FIELD_NUMBER: _ClassVar[int]
    APPROVALS_FIELD_NUMBER: _ClassVar[int]
    APPROVALS_REQUIRED_FIELD_NUMBER: _ClassVar[int]
    LAST_SEQ_FIELD_NUMBER: _ClassVar[int]
    CANDIDATE_IMAGE_FIELD_NUMBER: _ClassVar[int]
    STABLE_IMAGE_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    KILL_SWITCH_FIELD_NUMBER: _ClassVar[int]
    proposal: bytes
    namespace: str
    deployment: str
    phase: str
    step: int
    weight: int
    approvals: _containers.RepeatedScalarFieldContainer[str]
    approvals_required: int
    last_seq: int
    candidate_image: str
    stable_image: str
    message: str
    kill_switch: bool
    def __init__(self, proposal: _Optional[bytes] = ..., namespace: _Optional[str] = ..., deployment: _Optional[str] = ..., phase: _Optional[str] = ..., step: _Optional[int] = ..., weight: _Optional[int] = ..., approvals: _Optional[_Iterable[str]] = ..., approvals_required: _Optional[int] = ..., last_seq: _Optional[int] = ..., candidate_image: _Optional[str] = ..., stable_image: _Optional[str] = ..., message: _Optional[str] = ..., kill_switch: _Optional[bool] = ...) -> None: ...

class GetRolloutRequest(_message.Message):
    __slots__ = ("proposal",)
    PROPOSAL_FIELD_NUMBER: _ClassVar[int]
    proposal: bytes
    def __init__(self, proposal: _Optional[bytes] = ...) -> None: ...

class ListRolloutsRequest(_message.Message):
    __slots__ = ("namespace", "deployment", "phase", "page")
    NAMESPACE_FIELD_NUMBER: _ClassVar[int]
    DEPLOYMENT_FIELD_NUMBER: _ClassVar[int]
    PHASE_FIELD_NUMBER: _ClassVar[int]
    PAGE_FIELD_NUMBER: _ClassVar[int]
    namespace: str
    deployment: str
    phase: str
    page: _common_pb2.PageRequest
    def __init__(self, namespace: _Optional[str] = ..., deployment: _Optional[str] = ..., phase: _Optional[str] = ..., page: _Optional[_Union[_common_pb2.PageRequest, _Mapping]] = ...) -> None: ...

class ListRolloutsResponse(_message.Message):
    __slots__ = ("rollouts", "page")
    ROLLOUTS_FIELD_NUMBER: _ClassVar[int]
    PAGE_FIELD_NUMBER: _ClassVar[int]
    rollouts: _containers.RepeatedCompositeFieldContainer[Rollout]
    page: _common_pb2.PageResponse
    def __init__(self, rollouts: _Optional[_Iterable[_Union[Rollout, _Mapping]]] = ..., page: _Optional[_Union[_common_pb2.PageResponse, _Mapping]] = ...) -> None: ...

class WatchRolloutsRequest(_message.Message):
    __slots__ = ("namespace", "deployment", "proposal")
    NAMESPACE_FIELD_NUMBER: _ClassVar[int]
    DEPLOYMENT_FIELD_NUMBER: _ClassVar[int]
    PROPOSAL_FIELD_NUMBER: _ClassVar[int]
    namespace: str
    deployment: str
    proposal: bytes
    def __init__(self, namespace: _Optional[str] = ..., deployment: _Optional[str] = ..., proposal: _Optional[bytes] = ...) -> None: ...
