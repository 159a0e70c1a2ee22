"""Event formats: the Avro schemas, the signed bytes and the entry encoding (DESIGN §3).

Three kinds of bytes, kept apart on purpose:

* **body bytes** — the single-object encoding of an ``EventBody``:
  ``C3 01 ‖ fingerprint(8, little-endian CRC-64-AVRO) ‖ Avro binary``. This is what a
  ``SignedEvent`` and an ``Entry`` carry, byte for byte as the author produced them.
* **signed bytes** — ``b"steward/v1/event\\n" ‖ fingerprint ‖ Avro binary``, i.e. the domain
  prefix followed by the body bytes without their two magic bytes. Signatures cover these.
  Verifiers derive them from the body bytes they received; nobody re-encodes to verify.
* **entry bytes** — the single-object encoding of an ``Entry``. The hash chain and the Merkle
  tree both cover exactly these bytes (``leaf_hash = SHA-256(0x00 ‖ entry bytes)``).

Readers pick the writer schema by the fingerprint in front of the payload, from the schemas the
project ships, and refuse any other fingerprint by name.
"""

from __future__ import annotations

import dataclasses
import io
import json
import struct
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass
from importlib import resources
from typing import Any, Union

import fastavro

from ledger.errors import FormatError, UnknownSchemaError
from ledger.merkle import leaf_hash

DOMAIN_PREFIX = b"steward/v1/event\n"
SINGLE_OBJECT_MAGIC = b"\xc3\x01"
HASH_SIZE = 32
EVENT_ID_SIZE = 16
SIG_SIZE = 64
ZERO_HASH = bytes(HASH_SIZE)

# Bounds that keep a hostile client from making the ledger allocate without limit.
MAX_BODY_BYTES = 64 * 1024
MAX_SIGNATURES = 16
MAX_ENTRY_BYTES = MAX_BODY_BYTES + MAX_SIGNATURES * 100 + 1024


# --------------------------------------------------------------------------------------------
# Schemas and fingerprints


_CRC64_EMPTY = 0xC15D213AA4D7A795


def _crc64_table() -> tuple[int, ...]:
    table = []
    for i in range(256):
        fp = i
        for _ in range(8):
            fp = (fp >> 1) ^ (_CRC64_EMPTY & -(fp & 1))
        table.append(fp)
    return tuple(table)


_CRC64_TABLE = _crc64_table()


def crc64_avro(data: bytes) -> bytes:
    """The Avro spec's CRC-64-AVRO (Rabin) fingerprint, as the 8 little-endian bytes it ships."""
    fp = _CRC64_EMPTY
    for byte in data:
        fp = (fp >> 8) ^ _CRC64_TABLE[(fp ^ byte) & 0xFF]
    return fp.to_bytes(8, "little")


def _strip_logical_types(node: Any) -> Any:
    # Timestamps stay plain int milliseconds in Python; logicalType is not part of the
    # Parsing Canonical Form, so removing it changes no fingerprint.
    if isinstance(node, dict):
        return {k: _strip_logical_types(v) for k, v in node.items() if k != "logicalType"}
    if isinstance(node, list):
        return [_strip_logical_types(v) for v in node]
    return node


@dataclass(frozen=True)
class Schema:
    """One shipped schema: its JSON, the parsed codec and its fingerprint."""

    name: str
    file: str
    json_text: str
    canonical_form: str
    fingerprint: bytes
    parsed: Any = dataclasses.field(repr=False, compare=False)

    @classmethod
    def load(cls, file: str) -> Schema:
        text = resources.files("ledger.schemas").joinpath(file).read_text(encoding="utf-8")
        raw = json.loads(text)
        parsed = fastavro.parse_schema(_strip_logical_types(raw))
        canonical = fastavro.schema.to_parsing_canonical_form(parsed)
        return cls(
            name=f"{raw['namespace']}.{raw['name']}",
            file=file,
            json_text=text,
            canonical_form=canonical,
            fingerprint=crc64_avro(canonical.encode("utf-8")),
            parsed=parsed,
        )


EVENT_BODY_SCHEMA = Schema.load("event_body.v1.avsc")
SIGNED_EVENT_SCHEMA = Schema.load("signed_event.v1.avsc")
ENTRY_SCHEMA = Schema.load("entry.v1.avsc")

# The writer schemas a reader accepts, by kind. A new schema version is added here, next to
# the old one, so that old entries keep decoding.
_BODY_WRITERS: Mapping[bytes, Schema] = {EVENT_BODY_SCHEMA.fingerprint: EVENT_BODY_SCHEMA}
_ENTRY_WRITERS: Mapping[bytes, Schema] = {ENTRY_SCHEMA.fingerprint: ENTRY_SCHEMA}
_SIGNED_EVENT_WRITERS: Mapping[bytes, Schema] = {
    SIGNED_EVENT_SCHEMA.fingerprint: SIGNED_EVENT_SCHEMA
}


# --------------------------------------------------------------------------------------------
# The value model: frozen dataclasses that mirror the Avro records field for field.
# Arrays are tuples, fixed and bytes are bytes, enums are their symbol strings, timestamps are
# int milliseconds since the epoch.

ROLES = ("root", "proposer", "evaluator", "approver", "operator", "monitor", "controller")
PRINCIPAL_KINDS = ("human", "agent", "service")
COMPARE_OPS = ("GE", "GT", "LE", "LT", "EQ")
DECISIONS = ("APPROVE", "REJECT")
ROLLOUT_PHASES = ("STARTED", "ADVANCED", "PAUSED", "PROMOTED", "ROLLED_BACK", "DRIFT_CORRECTED")
SCOPE_KINDS = ("GLOBAL", "TARGET", "PROPOSAL")


@dataclass(frozen=True)
class RootKey:
    principal: str
    public_key: bytes


@dataclass(frozen=True)
class LedgerGenesis:
    origin: str
    roots: tuple[RootKey, ...]
    root_threshold: int
    checkpoint_key_name: str
    checkpoint_public_key: bytes


@dataclass(frozen=True)
class KeyGranted:
    principal: str
    public_key: bytes
    roles: tuple[str, ...]
    expires_at: int | None = None


@dataclass(frozen=True)
class KeyRevoked:
    key_id: bytes
    reason: str


@dataclass(frozen=True)
class TargetSelector:
    namespace: str
    deployment: str


@dataclass(frozen=True)
class RequiredEval:
    suite: str
    metric: str
    op: str
    threshold: float


@dataclass(frozen=True)
class PlanStep:
    weight: int
    hold_seconds: int
    health_gate: bool


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


@dataclass(frozen=True)
class Target:
    namespace: str
    deployment: str


@dataclass(frozen=True)
class ModelRef:
    image: str
    model_digest: str


@dataclass(frozen=True)
class ProposalOrigin:
    agent: str
    run: str


@dataclass(frozen=True)
class ProposalSubmitted:
    target: Target
    candidate: ModelRef
    baseline: ModelRef
    rationale: str
    origin: ProposalOrigin


@dataclass(frozen=True)
class Metric:
    name: str
    value: float


@dataclass(frozen=True)
class EvalRecorded:
    proposal: bytes
    suite: str
    metrics: tuple[Metric, ...]
    artifact_digest: str


@dataclass(frozen=True)
class ApprovalRecorded:
    proposal: bytes
    decision: str
    evals: tuple[bytes, ...]
    comment: str


@dataclass(frozen=True)
class HealthReported:
    proposal: bytes
    step: int
    healthy: bool
    metrics: tuple[Metric, ...]


@dataclass(frozen=True)
class ObservedState:
    stable_replicas: int
    canary_replicas: int
    canary_ready: int
    stable_image: str
    canary_image: str


@dataclass(frozen=True)
class RolloutStep:
    proposal: bytes
    step: int
    weight: int
    phase: str
    reason: str
    observed: ObservedState


@dataclass(frozen=True)
class KillScope:
    kind: str
    namespace: str = ""
    deployment: str = ""
    proposal: bytes | None = None


@dataclass(frozen=True)
class AnnotationSource:
    object: str
    field_manager: str
    time: str


@dataclass(frozen=True)
class KillSwitchEngaged:
    scope: KillScope
    reason: str
    annotation: AnnotationSource | None = None


@dataclass(frozen=True)
class KillSwitchReleased:
    scope: KillScope
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
    )
}


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


@dataclass(frozen=True)
class Signature:
    key_id: bytes
    sig: bytes


@dataclass(frozen=True)
class SignedEvent:
    body: bytes
    signatures: tuple[Signature, ...]


@dataclass(frozen=True)
class Entry:
    seq: int
    prev: bytes
    body: bytes
    signatures: tuple[Signature, ...]
    received_at: int


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


# --------------------------------------------------------------------------------------------
# Conversion between the dataclasses and fastavro's plain values


def _to_avro(value: Any) -> Any:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: _to_avro(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, tuple):
        return [_to_avro(v) for v in value]
    return value


# Decoding runs once per field of every entry read, so the per-class work (type hints, which
# fields need converting and how) is done once: each dataclass gets a converter function,
# generated from its fields and hints, that builds the instance from fastavro's plain record.
# Strictness is unchanged: a missing field is a KeyError, as before, and the values go through
# the same dataclass constructor.

_Convert = typing.Callable[[Any], Any]


def _float(value: Any) -> Any:
    return float(value) if isinstance(value, int) else value


def _converter(hint: Any) -> _Convert | None:
    """A function turning fastavro's value for `hint` into ours; None when it is the identity."""
    origin = typing.get_origin(hint)
    if origin is tuple:
        (item_hint, _ellipsis) = typing.get_args(hint)
        item = _converter(item_hint)
        if item is None:
            return tuple
        return lambda value: tuple([item(v) for v in value])
    if origin in (Union, types.UnionType):
        (inner,) = [a for a in typing.get_args(hint) if a is not type(None)]
        conv = _converter(inner)
        if conv is None:
            return None
        return lambda value: None if value is None else conv(value)
    if dataclasses.is_dataclass(hint) and isinstance(hint, type):
        return _record_converter(hint)
    if hint is float:
        return _float
    return None


_RECORD_CONVERTERS: dict[type[Any], _Convert] = {}


def _record_converter(cls: type[Any]) -> _Convert:
    found = _RECORD_CONVERTERS.get(cls)
    if found is not None:
        return found
    hints = typing.get_type_hints(cls)
    env: dict[str, Any] = {"cls": cls}
    args = []
    for i, f in enumerate(dataclasses.fields(cls)):
        conv = _converter(hints[f.name])
        if conv is None:
            args.append(f"{f.name}=r[{f.name!r}]")
        else:
            env[f"c{i}"] = conv
            args.append(f"{f.name}=c{i}(r[{f.name!r}])")
    source = f"def from_avro_{cls.__name__}(r):\n    return cls({', '.join(args)})\n"
    exec(source, env)  # generated from our own dataclass fields only
    fn: _Convert = env[f"from_avro_{cls.__name__}"]
    _RECORD_CONVERTERS[cls] = fn
    return fn


def _record_from_avro(cls: Any, record: Mapping[str, Any]) -> Any:
    return _record_converter(cls)(record)


# Built at import, so no decode pays for it (and a broken hint fails at import, not at read).
_PAYLOAD_FROM_AVRO: Mapping[str, _Convert] = {
    name: _record_converter(cls) for name, cls in PAYLOAD_TYPES.items()
}
_SIGNED_EVENT_FROM_AVRO = _record_converter(SignedEvent)
_ENTRY_FROM_AVRO = _record_converter(Entry)


def _schemaless_write(schema: Schema, record: Mapping[str, Any], field: str) -> bytes:
    out = io.BytesIO()
    try:
        fastavro.schemaless_writer(out, schema.parsed, record)
    except (ValueError, TypeError, KeyError, AttributeError, OverflowError) as exc:
        raise FormatError(f"cannot encode {schema.name}: {exc}", field=field) from exc
    return out.getvalue()


def _schemaless_read(schema: Schema, data: bytes, what: str) -> dict[str, Any]:
    buf = io.BytesIO(data)
    try:
        record = fastavro.schemaless_reader(
            buf,
            schema.parsed,
            None,
            return_record_name=True,
            return_record_name_override=True,
        )
    except Exception as exc:  # fastavro raises many kinds on garbage; all mean "malformed"
        raise FormatError(
            f"{what}: not a valid {schema.name} Avro encoding ({type(exc).__name__}: {exc})"
        ) from exc
    if buf.tell() != len(data):
        raise FormatError(
            f"{what}: {len(data) - buf.tell()} trailing bytes after the {schema.name} record "
            f"(observed {len(data)} bytes, the record ends at {buf.tell()})"
        )
    if not isinstance(record, dict):
        raise FormatError(f"{what}: expected a {schema.name} record")
    return record


def _single_object(schema: Schema, payload: bytes) -> bytes:
    return SINGLE_OBJECT_MAGIC + schema.fingerprint + payload


def _split_single_object(
    data: bytes, writers: Mapping[bytes, Schema], what: str
) -> tuple[Schema, bytes]:
    if len(data) < 10:
        raise FormatError(
            f"{what}: {len(data)} bytes is too short for Avro single-object encoding "
            "(expected at least 10: C3 01 and an 8-byte fingerprint)"
        )
    if data[:2] != SINGLE_OBJECT_MAGIC:
        raise FormatError(
            f"{what}: starts with {data[:2].hex()}, expected c301 (Avro single-object encoding)"
        )
    fingerprint = data[2:10]
    schema = writers.get(fingerprint)
    if schema is None:
        known = ", ".join(fp.hex() for fp in writers)
        raise UnknownSchemaError(
            f"{what}: unknown schema fingerprint {fingerprint.hex()} (known: {known})",
            field="fingerprint",
        )
    return schema, data[10:]


# --------------------------------------------------------------------------------------------
# Fast paths for SignedEvent and Entry
#
# Every submission is decoded, hashed (event_digest re-encodes it) and turned into an entry, so
# these two fixed-shape records are written and read here directly (Avro binary: zig-zag
# varint longs, length-prefixed bytes, raw fixed, one array block ending in a zero count).
# The fast path only takes the plain shape: values of exactly the declared Python types and
# sizes, and encodings that are a single array block with nothing odd. Anything else goes to
# fastavro as before, so what is accepted, what is refused and every error message stay
# exactly fastavro's; for the plain shape both produce the same bytes and values (the unit
# tests compare them).

_LONG_MIN = -(1 << 63)
_LONG_MAX = (1 << 63) - 1
_SIGNED_EVENT_PREFIX = SINGLE_OBJECT_MAGIC + SIGNED_EVENT_SCHEMA.fingerprint
_ENTRY_PREFIX = SINGLE_OBJECT_MAGIC + ENTRY_SCHEMA.fingerprint


# One-byte varints, and the 7-bit groups of a longer one (continuation bit set).
_VARINT_LAST = tuple(bytes((z,)) for z in range(0x80))
_VARINT_MORE = tuple(bytes((z | 0x80,)) for z in range(0x80))


def _varint(n: int) -> bytes:
    """A long as Avro writes it: zig-zag, then 7 bits a byte, the lowest group first."""
    z = (n << 1) ^ (n >> 63)
    if z < 0x80:
        return _VARINT_LAST[z]
    if z < 0x4000:
        return bytes((z & 0x7F | 0x80, z >> 7))
    groups = []
    while z >= 0x80:
        groups.append(_VARINT_MORE[z & 0x7F])
        z >>= 7
    groups.append(_VARINT_LAST[z])
    return b"".join(groups)


def _signatures_bytes(signatures: Any) -> bytes | None:
    """The signatures array as one block, or None when the value is off the plain shape."""
    if type(signatures) is not tuple:
        return None
    if not signatures:
        return b"\x00"
    parts = [_varint(len(signatures))]
    for sig in signatures:
        if (type(sig) is not Signature or type(sig.key_id) is not bytes or len(sig.key_id) != 32
                or type(sig.sig) is not bytes or len(sig.sig) != SIG_SIZE):
            return None
        parts.append(sig.key_id)
        parts.append(sig.sig)
    parts.append(b"\x00")
    return b"".join(parts)


def _fast_signed_event(event: SignedEvent) -> bytes | None:
    """The single-object encoding of a plain SignedEvent (magic and fingerprint included)."""
    if type(event) is not SignedEvent or type(event.body) is not bytes:
        return None
    signatures = _signatures_bytes(event.signatures)
    if signatures is None:
        return None
    return b"".join((_SIGNED_EVENT_PREFIX, _varint(len(event.body)), event.body, signatures))


def _plain_entry_head(seq: Any, prev: Any, received_at: Any) -> bool:
    """Whether an entry's own fields (beyond the event's) are of the plain shape."""
    return (type(seq) is int and _LONG_MIN <= seq <= _LONG_MAX
            and type(prev) is bytes and len(prev) == HASH_SIZE
            and type(received_at) is int and _LONG_MIN <= received_at <= _LONG_MAX)


def _fast_entry(entry: Entry) -> bytes | None:
    """The single-object encoding of a plain Entry (magic and fingerprint included)."""
    if type(entry) is not Entry:
        return None
    seq, prev, body, received_at = entry.seq, entry.prev, entry.body, entry.received_at
    if not _plain_entry_head(seq, prev, received_at) or type(body) is not bytes:
        return None
    signatures = _signatures_bytes(entry.signatures)
    if signatures is None:
        return None
    return b"".join((_ENTRY_PREFIX, _varint(seq), prev, _varint(len(body)), body, signatures,
                      _varint(received_at)))


# A SignedEvent decoded from exactly the bytes encode_signed_event writes for it keeps them, as
# an attribute outside its fields (equality, hashing and repr ignore it; its fields, of the
# plain shape, are immutable all through). Every submission is hashed at staging (event_digest
# encodes it) and written into an entry at folding (the entry holds the same Avro for body and
# signatures): both use the kept bytes instead of encoding the event again.
_ENCODING = "_encoding"


def _kept_encoding(event: SignedEvent) -> bytes | None:
    encoded: bytes | None = getattr(event, _ENCODING, None)
    return encoded


def _fast_entry_of_event(seq: int, prev: bytes, event_encoding: bytes,
                         received_at: int) -> bytes | None:
    """_fast_entry, the body and signatures copied from the event's single-object encoding."""
    if not _plain_entry_head(seq, prev, received_at):
        return None
    return b"".join((_ENTRY_PREFIX, _varint(seq), prev, event_encoding[len(_SIGNED_EVENT_PREFIX):],
                     _varint(received_at)))


def _read_long(data: bytes, pos: int) -> tuple[int, int]:
    """(value, next position); raises IndexError when truncated, ValueError when overlong.

    fastavro keeps a varint in 64 bits: the 10th byte contributes only its lowest bit and an
    11th shifts out of range. Such encodings are left to it (ValueError), so that every value
    read here is the one fastavro reads (an over-long encoding of a small value included).
    """
    b = data[pos]
    if b < 0x80:
        return (b >> 1) ^ -(b & 1), pos + 1
    z = b & 0x7F
    shift = 7
    while True:
        pos += 1
        b = data[pos]
        z |= (b & 0x7F) << shift
        if b < 0x80:
            break
        shift += 7
        if shift > 63:
            raise ValueError("varint longer than 10 bytes")
    if shift == 63 and b > 1:
        raise ValueError("varint overflows 64 bits")
    return (z >> 1) ^ -(z & 1), pos + 1


def _read_signatures(data: bytes, pos: int) -> tuple[tuple[Signature, ...], int] | None:
    count, pos = _read_long(data, pos)
    if count == 0:
        return (), pos
    if count < 0 or pos + count * 96 > len(data):
        return None  # a sized block, or a count the data cannot hold: fastavro decides
    sigs = []
    for _ in range(count):
        sigs.append(Signature(data[pos:pos + 32], data[pos + 32:pos + 96]))
        pos += 96
    if data[pos] != 0:
        return None  # a second block
    return tuple(sigs), pos + 1


def _read_bytes(data: bytes, pos: int) -> tuple[bytes, int] | None:
    size, pos = _read_long(data, pos)
    if size < 0 or pos + size > len(data):
        return None
    return data[pos:pos + size], pos + size


def _fast_decode_signed_event(payload: bytes) -> SignedEvent | None:
    if type(payload) is not bytes:
        return None
    try:
        body = _read_bytes(payload, 0)
        if body is None:
            return None
        sigs = _read_signatures(payload, body[1])
    except (IndexError, ValueError):
        return None
    if sigs is None or sigs[1] != len(payload):
        return None
    return SignedEvent(body[0], sigs[0])


def _fast_decode_entry(payload: bytes) -> Entry | None:
    if type(payload) is not bytes:
        return None
    try:
        seq, pos = _read_long(payload, 0)
        prev = payload[pos:pos + HASH_SIZE]
        if len(prev) != HASH_SIZE:
            return None
        body = _read_bytes(payload, pos + HASH_SIZE)
        if body is None:
            return None
        sigs = _read_signatures(payload, body[1])
        if sigs is None:
            return None
        received_at, pos = _read_long(payload, sigs[1])
    except (IndexError, ValueError):
        return None
    if pos != len(payload):
        return None
    return Entry(seq=seq, prev=prev, body=body[0], signatures=sigs[0], received_at=received_at)


# --------------------------------------------------------------------------------------------
# Fast path for EventBody
#
# Every submission's body is decoded once at staging, so EventBody's Avro binary is read here
# straight into the dataclasses, by readers built once, at import, from the shipped schema: one
# per schema node, each `read(data, pos) -> (value, next position)`. The rule is the one above:
# only the plain shape is read here. A reader that meets anything else (a sized or a second
# array block, a union or enum index out of range, a boolean byte other than 0 or 1, a length
# running past the end, invalid UTF-8, a varint fastavro would read differently, trailing
# bytes, a type that does not name the payload) gives up, and the body goes to fastavro, whose
# value or error stands, message included.


class _OffPlainShape(Exception):
    """The fast body reader met an encoding it leaves to fastavro."""


_Reader = typing.Callable[[bytes, int], tuple[Any, int]]
_unpack_double = struct.Struct("<d").unpack_from

# Records by name; each dataclass mirrors its schema's fields in order (checked at import).
_RECORD_TYPES: Mapping[str, type[Any]] = {
    cls.__name__: cls
    for cls in (
        *PAYLOAD_TYPES.values(),
        RootKey,
        TargetSelector,
        RequiredEval,
        PlanStep,
        Target,
        ModelRef,
        ProposalOrigin,
        Metric,
        ObservedState,
        KillScope,
        AnnotationSource,
    )
}


def _read_null(data: bytes, pos: int) -> tuple[None, int]:
    return None, pos


def _read_boolean(data: bytes, pos: int) -> tuple[bool, int]:
    b = data[pos]
    if b > 1:
        raise _OffPlainShape  # fastavro reads any non-zero byte as true
    return b == 1, pos + 1


def _read_double(data: bytes, pos: int) -> tuple[float, int]:
    return _unpack_double(data, pos)[0], pos + 8


# The readers below take a one-byte varint (nearly every length, count and index) inline:
# b < 0x80 is the whole varint, zig-zag decoded as _read_long does.


def _read_string(data: bytes, pos: int) -> tuple[str, int]:
    b = data[pos]
    if b < 0x80:
        size, pos = (b >> 1) ^ -(b & 1), pos + 1
    else:
        size, pos = _read_long(data, pos)
    end = pos + size
    if size < 0 or end > len(data):
        raise _OffPlainShape  # fastavro reads what is there (all of it for a negative size)
    return data[pos:end].decode(), end


def _fixed_reader(size: int) -> _Reader:
    def read_fixed(data: bytes, pos: int) -> tuple[bytes, int]:
        end = pos + size
        if end > len(data):
            raise _OffPlainShape  # fastavro returns the short read
        return data[pos:end], end

    return read_fixed


def _enum_reader(symbols: tuple[str, ...]) -> _Reader:
    def read_enum(data: bytes, pos: int) -> tuple[str, int]:
        b = data[pos]
        if b < 0x80:
            index, pos = (b >> 1) ^ -(b & 1), pos + 1
        else:
            index, pos = _read_long(data, pos)
        if not 0 <= index < len(symbols):
            raise _OffPlainShape  # fastavro indexes its list (a negative index wraps)
        return symbols[index], pos

    return read_enum


def _array_reader(item: _Reader) -> _Reader:
    def read_array(data: bytes, pos: int) -> tuple[tuple[Any, ...], int]:
        b = data[pos]
        if b < 0x80:
            count, pos = (b >> 1) ^ -(b & 1), pos + 1
        else:
            count, pos = _read_long(data, pos)
        if count == 0:
            return (), pos
        if count < 0 or count > len(data) - pos:
            raise _OffPlainShape  # a sized block, or more items than bytes left
        items = []
        for _ in range(count):
            value, pos = item(data, pos)
            items.append(value)
        if data[pos] != 0:
            raise _OffPlainShape  # a second block
        return tuple(items), pos + 1

    return read_array


def _union_reader(branches: tuple[_Reader, ...]) -> _Reader:
    def read_union(data: bytes, pos: int) -> tuple[Any, int]:
        b = data[pos]
        if b < 0x80:
            index, pos = (b >> 1) ^ -(b & 1), pos + 1
        else:
            index, pos = _read_long(data, pos)
        if not 0 <= index < len(branches):
            raise _OffPlainShape  # fastavro indexes its list (a negative index wraps)
        return branches[index](data, pos)

    return read_union


def _fields_reader(fields: tuple[_Reader, ...]) -> typing.Callable[[bytes, int], tuple[list[Any], int]]:
    def read_fields(data: bytes, pos: int) -> tuple[list[Any], int]:
        values = []
        for read in fields:
            value, pos = read(data, pos)
            values.append(value)
        return values, pos

    return read_fields


def _record_reader(cls: type[Any], fields: tuple[_Reader, ...]) -> _Reader:
    def read_record(data: bytes, pos: int) -> tuple[Any, int]:
        values = []  # as read_fields does, without a call more per record
        for read in fields:
            value, pos = read(data, pos)
            values.append(value)
        return cls(*values), pos

    return read_record


_PRIMITIVE_READERS: Mapping[str, _Reader] = {
    "null": _read_null,
    "boolean": _read_boolean,
    "int": _read_long,  # fastavro reads an int as a long, range unchecked; so do we
    "long": _read_long,
    "double": _read_double,
    "string": _read_string,
}


def _field_names(node: Mapping[str, Any]) -> list[str]:
    return [f["name"] for f in node["fields"]]


def _reader(node: Any, named: dict[str, _Reader]) -> _Reader:
    """The reader of one node of a parsed schema; `named` collects the named types met."""
    if isinstance(node, str):
        return named[node] if node in named else _PRIMITIVE_READERS[node]
    if isinstance(node, list):
        if not (len(node) == 2 and node[0] == "null") and not all(
                isinstance(b, dict) and b["type"] == "record" for b in node):
            # decode_body relies on fastavro returning a ["null", X] union as the bare value
            # and any other union as (record name, record): only those two shapes are read here.
            raise TypeError(f"the fast body reader reads no union like {node}")
        return _union_reader(tuple(_reader(b, named) for b in node))
    kind = node["type"]
    reader: _Reader
    if kind == "fixed":
        reader = _fixed_reader(node["size"])
    elif kind == "enum":
        reader = _enum_reader(tuple(node["symbols"]))
    elif kind == "array":
        return _array_reader(_reader(node["items"], named))
    elif kind == "record":
        cls = _RECORD_TYPES[node["name"].rsplit(".", 1)[-1]]
        fields = tuple(_reader(f["type"], named) for f in node["fields"])
        if [f.name for f in dataclasses.fields(cls)] != _field_names(node):
            raise TypeError(f"{cls.__name__}'s fields are not {node['name']}'s, in order")
        reader = _record_reader(cls, fields)
    else:
        return _PRIMITIVE_READERS[kind]  # a primitive written as {"type": ...}
    named[node["name"]] = reader
    return reader


def _body_reader(schema: Schema) -> typing.Callable[[bytes, int], tuple[list[Any], int]]:
    """EventBody's fields as a list: the record has a `type` the dataclass derives instead."""
    node = schema.parsed
    if _field_names(node) != ["ledger", "event_id", "type", "issued_at", "refs", "payload"]:
        raise TypeError(f"the fast body reader does not know {schema.name}'s fields")
    named: dict[str, _Reader] = {}
    return _fields_reader(tuple(_reader(f["type"], named) for f in node["fields"]))


_READ_BODY_FIELDS = _body_reader(EVENT_BODY_SCHEMA)
_BODY_PREFIX = SINGLE_OBJECT_MAGIC + EVENT_BODY_SCHEMA.fingerprint


def _fast_decode_body(payload: bytes) -> EventBody | None:
    """The EventBody in `payload` (the Avro binary after the fingerprint), None if not plain."""
    if type(payload) is not bytes:
        return None
    try:
        (ledger, event_id, type_name, issued_at, refs, body_payload), pos = _READ_BODY_FIELDS(
            payload, 0)
    except (_OffPlainShape, IndexError, ValueError, struct.error):
        return None  # ValueError includes UnicodeDecodeError
    if pos != len(payload) or type_name != type(body_payload).__name__:
        return None  # trailing bytes, or a type that is not the payload's: fastavro's errors
    return EventBody(ledger, event_id, issued_at, refs, body_payload)


# --------------------------------------------------------------------------------------------
# Bodies and signed bytes


def encode_body(body: EventBody) -> bytes:
    """The single-object encoding of `body` with the current EventBody schema."""
    record = _to_avro(body)
    record.pop("payload")
    record["type"] = body.type
    record["payload"] = (f"steward.v1.{body.type}", _to_avro(body.payload))
    # Field order in the dict does not matter to fastavro; the schema fixes it.
    encoded = _single_object(EVENT_BODY_SCHEMA, _schemaless_write(EVENT_BODY_SCHEMA, record, "body"))
    if len(encoded) > MAX_BODY_BYTES:
        raise FormatError(
            f"body is {len(encoded)} bytes, the limit is {MAX_BODY_BYTES}", field="body"
        )
    return encoded


def decode_body(body_bytes: bytes) -> EventBody:
    """Decode body bytes, choosing the writer schema by fingerprint."""
    if len(body_bytes) > MAX_BODY_BYTES:
        raise FormatError(
            f"body is {len(body_bytes)} bytes, the limit is {MAX_BODY_BYTES}", field="body"
        )
    if body_bytes[:10] == _BODY_PREFIX:  # the current schema, as _split_single_object finds
        fast = _fast_decode_body(body_bytes[10:])
        if fast is not None:
            return fast
    schema, payload = _split_single_object(body_bytes, _BODY_WRITERS, "body")
    return _decode_body_with_fastavro(schema, payload)


def _decode_body_with_fastavro(schema: Schema, payload: bytes) -> EventBody:
    record = _schemaless_read(schema, payload, "body")
    branch_name, payload_record = record["payload"]
    payload_type = branch_name.rsplit(".", 1)[-1]
    if record["type"] != payload_type:
        raise FormatError(
            f"body: type is {record['type']} but the payload is a {payload_type}",
            field="type",
        )
    return EventBody(
        ledger=record["ledger"],
        event_id=record["event_id"],
        issued_at=record["issued_at"],
        refs=tuple(record["refs"]),
        payload=_PAYLOAD_FROM_AVRO[payload_type](payload_record),
    )


def signed_bytes(body_bytes: bytes) -> bytes:
    """The bytes every signature covers: domain prefix ‖ fingerprint ‖ exact Avro binary."""
    if body_bytes[:2] != SINGLE_OBJECT_MAGIC:
        raise FormatError("body does not start with the single-object marker c301", field="body")
    return DOMAIN_PREFIX + body_bytes[2:]


# --------------------------------------------------------------------------------------------
# Signed events and entries


def _check_signatures(signatures: tuple[Signature, ...], what: str) -> None:
    if len(signatures) > MAX_SIGNATURES:
        raise FormatError(
            f"{what}: {len(signatures)} signatures, at most {MAX_SIGNATURES} are accepted",
            field="signatures",
        )


def encode_signed_event(event: SignedEvent) -> bytes:
    _check_signatures(event.signatures, "signed event")
    encoded = _kept_encoding(event)
    if encoded is not None:
        return encoded
    encoded = _fast_signed_event(event)
    if encoded is None:
        encoded = _single_object(SIGNED_EVENT_SCHEMA, _schemaless_write(
            SIGNED_EVENT_SCHEMA, _to_avro(event), "signed_event"))
    return encoded


def decode_signed_event(data: bytes) -> SignedEvent:
    if len(data) > MAX_ENTRY_BYTES:
        raise FormatError(
            f"signed event is {len(data)} bytes, the limit is {MAX_ENTRY_BYTES}", field="body"
        )
    schema, payload = _split_single_object(data, _SIGNED_EVENT_WRITERS, "signed event")
    fast = _fast_decode_signed_event(payload) if schema is SIGNED_EVENT_SCHEMA else None
    event: SignedEvent = fast if fast is not None else _SIGNED_EVENT_FROM_AVRO(
        _schemaless_read(schema, payload, "signed event"))
    _check_signatures(event.signatures, "signed event")
    if fast is not None and type(data) is bytes:
        # The values fix every byte but the varints' lengths, so the bytes are encode's when
        # their length is: minimal varints for the body's length (below 2**20, as the data is
        # at most MAX_ENTRY_BYTES: 1 to 3 bytes) and for the count (at most MAX_SIGNATURES: 1).
        size, n = len(fast.body), len(fast.signatures)
        if len(payload) == (1 if size < 64 else 2 if size < 8192 else 3) + size + (
                96 * n + 2 if n else 1):
            object.__setattr__(event, _ENCODING, data)
    return event


def encode_entry(entry: Entry) -> bytes:
    _check_signatures(entry.signatures, "entry")
    encoded = _fast_entry(entry)
    if encoded is None:
        encoded = _single_object(ENTRY_SCHEMA, _schemaless_write(
            ENTRY_SCHEMA, _to_avro(entry), "entry"))
    return encoded


def decode_entry(data: bytes) -> Entry:
    if len(data) > MAX_ENTRY_BYTES:
        raise FormatError(f"entry is {len(data)} bytes, the limit is {MAX_ENTRY_BYTES}")
    schema, payload = _split_single_object(data, _ENTRY_WRITERS, "entry")
    fast = _fast_decode_entry(payload) if schema is ENTRY_SCHEMA else None
    entry: Entry = fast if fast is not None else _ENTRY_FROM_AVRO(
        _schemaless_read(schema, payload, "entry"))
    _check_signatures(entry.signatures, "entry")
    return entry


def decode_log_entry(entry_bytes: bytes) -> LogEntry:
    """Decode an entry and its body; raises FormatError on anything malformed."""
    entry = decode_entry(entry_bytes)
    return LogEntry(
        entry=entry,
        entry_bytes=entry_bytes,
        leaf_hash=leaf_hash(entry_bytes),
        body=decode_body(entry.body),
    )


def make_entry(seq: int, prev: bytes, event: SignedEvent, received_at: int,
               body: EventBody | None = None) -> LogEntry:
    """The entry the ledger writes for an accepted event (body bytes kept as received).

    `body`, when given, must be ``decode_body(event.body)`` (a caller that decoded it already).
    """
    entry = Entry(seq, prev, event.body, event.signatures, received_at)
    # An event that kept its encoding (decoded, so of the plain shape and with at most
    # MAX_SIGNATURES) lends the entry its body and signatures bytes.
    event_encoding = _kept_encoding(event)
    entry_bytes = None if event_encoding is None else _fast_entry_of_event(
        seq, prev, event_encoding, received_at)
    if entry_bytes is None:
        entry_bytes = encode_entry(entry)
    return LogEntry(entry, entry_bytes, leaf_hash(entry_bytes),
                    decode_body(event.body) if body is None else body)


def payload_hashes(payload: Payload) -> tuple[bytes, ...]:
    """The entry hashes a payload names; each must also be listed in the body's refs."""
    if isinstance(payload, EvalRecorded | HealthReported | RolloutStep):
        return (payload.proposal,)
    if isinstance(payload, ApprovalRecorded):
        return (payload.proposal, *payload.evals)
    if isinstance(payload, KillSwitchEngaged | KillSwitchReleased) and payload.scope.proposal:
        return (payload.scope.proposal,)
    return ()
