from steward.v1 import common_pb2 as _common_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class AppendRequest(_message.Message):
    __slots__ = ("signed_event",)
    SIGNED_EVENT_FIELD_NUMBER: _ClassVar[int]
    signed_event: bytes
    def __init__(self, signed_event: _Optional[bytes] = ...) -> None: ...

class Receipt(_message.Message):
    __slots__ = ("seq", "leaf_hash", "received_at", "duplicate")
    SEQ_FIELD_NUMBER: _ClassVar[int]
    LEAF_HASH_FIELD_NUMBER: _ClassVar[int]
    RECEIVED_AT_FIELD_NUMBER: _ClassVar[int]
    DUPLICATE_FIELD_NUMBER: _ClassVar[int]
    seq: int
    leaf_hash: bytes
    received_at: int
    duplicate: bool
    def __init__(self, seq: _Optional[int] = ..., leaf_hash: _Optional[bytes] = ..., received_at: _Optional[int] = ..., duplicate: _Optional[bool] = ...) -> None: ...

class AppendBatch(_message.Message):
    __slots__ = ("signed_events", "batch_id")
    SIGNED_EVENTS_FIELD_NUMBER: _ClassVar[int]
    BATCH_ID_FIELD_NUMBER: _ClassVar[int]
    signed_events: _containers.RepeatedScalarFieldContainer[bytes]
    batch_id: int
    def __init__(self, signed_events: _Optional[_Iterable[bytes]] = ..., batch_id: _Optional[int] = ...) -> None: ...

class AppendResult(_message.Message):
    __slots__ = ("index", "receipt", "error")
    INDEX_FIELD_NUMBER: _ClassVar[int]
    RECEIPT_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    index: int
    receipt: Receipt
    error: _common_pb2.ErrorDetail
    def __init__(self, index: _Optional[int] = ..., receipt: _Optional[_Union[Receipt, _Mapping]] = ..., error: _Optional[_Union[_common_pb2.ErrorDetail, _Mapping]] = ...) -> None: ...

class AppendBatchResult(_message.Message):
    __slots__ = ("batch_id", "results")
    BATCH_ID_FIELD_NUMBER: _ClassVar[int]
    RESULTS_FIELD_NUMBER: _ClassVar[int]
    batch_id: int
    results: _containers.RepeatedCompositeFieldContainer[AppendResult]
    def __init__(self, batch_id: _Optional[int] = ..., results: _Optional[_Iterable[_Union[AppendResult, _Mapping]]] = ...) -> None: ...

class GetRequest(_message.Message):
    __slots__ = ("seq",)
    SEQ_FIELD_NUMBER: _ClassVar[int]
    seq: int
    def __init__(self, seq: _Optional[int] = ...) -> None: ...

class EntryMessage(_message.Message):
    __slots__ = ("seq", "entry_bytes", "leaf_hash")
    SEQ_FIELD_NUMBER: _ClassVar[int]
    ENTRY_BYTES_FIELD_NUMBER: _ClassVar[int]
    LEAF_HASH_FIELD_NUMBER: _ClassVar[int]
    seq: int
    entry_bytes: bytes
    leaf_hash: bytes
    def __init__(self, seq: _Optional[int] = ..., entry_bytes: _Optional[bytes] = ..., leaf_hash: _Optional[bytes] = ...) -> None: ...

class ReadRequest(_message.Message):
    __slots__ = ("start_seq", "limit", "follow")
    START_SEQ_FIELD_NUMBER: _ClassVar[int]
    LIMIT_FIELD_NUMBER: _ClassVar[int]
    FOLLOW_FIELD_NUMBER: _ClassVar[int]
    start_seq: int
    limit: int
    follow: bool
    def __init__(self, start_seq: _Optional[int] = ..., limit: _Optional[int] = ..., follow: _Optional[bool] = ...) -> None: ...

class GetHeadRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class Head(_message.Message):
    __slots__ = ("size", "root", "last_leaf_hash", "ledger", "origin", "checkpoint_size")
    SIZE_FIELD_NUMBER: _ClassVar[int]
    ROOT_FIELD_NUMBER: _ClassVar[int]
    LAST_LEAF_HASH_FIELD_NUMBER: _ClassVar[int]
    LEDGER_FIELD_NUMBER: _ClassVar[int]
    ORIGIN_FIELD_NUMBER: _ClassVar[int]
    CHECKPOINT_SIZE_FIELD_NUMBER: _ClassVar[int]
    size: int
    root: bytes
    last_leaf_hash: bytes
    ledger: str
    origin: str
    checkpoint_size: int
    def __init__(self, size: _Optional[int] = ..., root: _Optional[bytes] = ..., last_leaf_hash: _Optional[bytes] = ..., ledger: _Optional[str] = ..., origin: _Optional[str] = ..., checkpoint_size: _Optional[int] = ...) -> None: ...

class GetCheckpointRequest(_message.Message):
    __slots__ = ("size", "publish_now")
    SIZE_FIELD_NUMBER: _ClassVar[int]
    PUBLISH_NOW_FIELD_NUMBER: _ClassVar[int]
    size: int
    publish_now: bool
    def __init__(self, size: _Optional[int] = ..., publish_now: _Optional[bool] = ...) -> None: ...

class Checkpoint(_message.Message):
    __slots__ = ("size", "note", "root", "origin")
    SIZE_FIELD_NUMBER: _ClassVar[int]
    NOTE_FIELD_NUMBER: _ClassVar[int]
    ROOT_FIELD_NUMBER: _ClassVar[int]
    ORIGIN_FIELD_NUMBER: _ClassVar[int]
    size: int
    note: str
    root: bytes
    origin: str
    def __init__(self, size: _Optional[int] = ..., note: _Optional[str] = ..., root: _Optional[bytes] = ..., origin: _Optional[str] = ...) -> None: ...

class ListCheckpointsRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class GetInclusionProofRequest(_message.Message):
    __slots__ = ("seq", "tree_size")
    SEQ_FIELD_NUMBER: _ClassVar[int]
    TREE_SIZE_FIELD_NUMBER: _ClassVar[int]
    seq: int
    tree_size: int
    def __init__(self, seq: _Optional[int] = ..., tree_size: _Optional[int] = ...) -> None: ...

class InclusionProof(_message.Message):
    __slots__ = ("index", "tree_size", "proof", "checkpoint", "leaf_hash", "root")
    INDEX_FIELD_NUMBER: _ClassVar[int]
    TREE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PROOF_FIELD_NUMBER: _ClassVar[int]
    CHECKPOINT_FIELD_NUMBER: _ClassVar[int]
    LEAF_HASH_FIELD_NUMBER: _ClassVar[int]
    ROOT_FIELD_NUMBER: _ClassVar[int]
    index: int
    tree_size: int
    proof: _containers.RepeatedScalarFieldContainer[bytes]
    checkpoint: str
    leaf_hash: bytes
    root: bytes
    def __init__(self, index: _Optional[int] = ..., tree_size: _Optional[int] = ..., proof: _Optional[_Iterable[bytes]] = ..., checkpoint: _Optional[str] = ..., leaf_hash: _Optional[bytes] = ..., root: _Optional[bytes] = ...) -> None: ...

class GetConsistencyProofRequest(_message.Message):
    __slots__ = ("size1", "size2")
    SIZE1_FIELD_NUMBER: _ClassVar[int]
    SIZE2_FIELD_NUMBER: _ClassVar[int]
    size1: int
    size2: int
    def __init__(self, size1: _Optional[int] = ..., size2: _Optional[int] = ...) -> None: ...

class ConsistencyProof(_message.Message):
    __slots__ = ("size1", "size2", "proof", "root1", "root2", "checkpoint1", "checkpoint2")
    SIZE1_FIELD_NUMBER: _ClassVar[int]
    SIZE2_FIELD_NUMBER: _ClassVar[int]
    PROOF_FIELD_NUMBER: _ClassVar[int]
    ROOT1_FIELD_NUMBER: _ClassVar[int]
    ROOT2_FIELD_NUMBER: _ClassVar[int]
    CHECKPOINT1_FIELD_NUMBER: _ClassVar[int]
    CHECKPOINT2_FIELD_NUMBER: _ClassVar[int]
    size1: int
    size2: int
    proof: _containers.RepeatedScalarFieldContainer[bytes]
    root1: bytes
    root2: bytes
    checkpoint1: str
    checkpoint2: str
    def __init__(self, size1: _Optional[int] = ..., size2: _Optional[int] = ..., proof: _Optional[_Iterable[bytes]] = ..., root1: _Optional[bytes] = ..., root2: _Optional[bytes] = ..., checkpoint1: _Optional[str] = ..., checkpoint2: _Optional[str] = ...) -> None: ...

class GetGenesisRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class GetVkeyRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class Vkey(_message.Message):
    __slots__ = ("vkey", "key_name", "public_key", "origin")
    VKEY_FIELD_NUMBER: _ClassVar[int]
    KEY_NAME_FIELD_NUMBER: _ClassVar[int]
    PUBLIC_KEY_FIELD_NUMBER: _ClassVar[int]
    ORIGIN_FIELD_NUMBER: _ClassVar[int]
    vkey: str
    key_name: str
    public_key: bytes
    origin: str
    def __init__(self, vkey: _Optional[str] = ..., key_name: _Optional[str] = ..., public_key: _Optional[bytes] = ..., origin: _Optional[str] = ...) -> None: ...
