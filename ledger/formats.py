"""Event formats: the public API that turns the event model into bytes and back (docs/DESIGN.md §3).

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

Where things are: the value model is ``ledger.model`` and the schemas, fingerprints and size
bounds are ``ledger.wire``; both are re-exported here, so importers need only this module. Read
top to bottom, this module is the plain path: fastavro does the Avro. ``ledger.fastcodec``
writes and reads the hot, fixed-shape records directly, with the same bytes and the same errors
as fastavro; the functions below try it first and fall back to fastavro whenever it declines.
"""

from __future__ import annotations

import dataclasses
import io
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Union

import fastavro

from ledger import fastcodec
from ledger.codegen import GENERATE
from ledger.errors import FormatError, UnknownSchemaError
from ledger.merkle import leaf_hash
from ledger.model import (
    CHECK_VERDICTS,
    COMPARE_OPS,
    DECISIONS,
    NO_DATA_ACTIONS,
    PAYLOAD_TYPES,
    PRINCIPAL_KINDS,
    ROLES,
    ROLLOUT_PHASES,
    SCOPE_KINDS,
    AnnotationSource,
    ApprovalRecorded,
    CheckEvidence,
    Entry,
    EvalRecorded,
    EventBody,
    HealthCheck,
    HealthReported,
    KeyGranted,
    KeyRevoked,
    KillScope,
    KillSwitchEngaged,
    KillSwitchReleased,
    LedgerGenesis,
    LogEntry,
    Metric,
    ModelRef,
    NoDataRule,
    ObservedState,
    Payload,
    PlanStep,
    PolicySet,
    ProposalOrigin,
    ProposalSubmitted,
    RequiredEval,
    RolloutPaused,
    RolloutResumed,
    RolloutStep,
    RootKey,
    Sample,
    Signature,
    SignedEvent,
    Target,
    TargetSelector,
    TrafficRouting,
    payload_hashes,
)
from ledger.quick_init import quick_init
from ledger.wire import (
    BODY_WRITERS,
    DOMAIN_PREFIX,
    ENTRY_SCHEMA,
    ENTRY_WRITERS,
    EVENT_BODY_SCHEMA,
    EVENT_BODY_SCHEMA_V1,
    EVENT_BODY_SCHEMA_V2,
    EVENT_ID_SIZE,
    HASH_SIZE,
    MAX_BODY_BYTES,
    MAX_ENTRY_BYTES,
    MAX_SIGNATURES,
    SIG_SIZE,
    SIGNED_EVENT_SCHEMA,
    SIGNED_EVENT_WRITERS,
    SINGLE_OBJECT_MAGIC,
    ZERO_HASH,
    Schema,
    crc64_avro,
    off_spec,
)

# The model's and the wire's names, re-exported, and this module's own.
__all__ = [
    "CHECK_VERDICTS",
    "COMPARE_OPS",
    "DECISIONS",
    "DOMAIN_PREFIX",
    "ENTRY_SCHEMA",
    "EVENT_BODY_SCHEMA",
    "EVENT_BODY_SCHEMA_V1",
    "EVENT_BODY_SCHEMA_V2",
    "EVENT_ID_SIZE",
    "HASH_SIZE",
    "MAX_BODY_BYTES",
    "MAX_ENTRY_BYTES",
    "MAX_SIGNATURES",
    "NO_DATA_ACTIONS",
    "PAYLOAD_TYPES",
    "PRINCIPAL_KINDS",
    "ROLES",
    "ROLLOUT_PHASES",
    "SCOPE_KINDS",
    "SIGNED_EVENT_SCHEMA",
    "SIG_SIZE",
    "SINGLE_OBJECT_MAGIC",
    "ZERO_HASH",
    "AnnotationSource",
    "ApprovalRecorded",
    "CheckEvidence",
    "Entry",
    "EvalRecorded",
    "EventBody",
    "HealthCheck",
    "HealthReported",
    "KeyGranted",
    "KeyRevoked",
    "KillScope",
    "KillSwitchEngaged",
    "KillSwitchReleased",
    "LedgerGenesis",
    "LogEntry",
    "Metric",
    "ModelRef",
    "NoDataRule",
    "ObservedState",
    "Payload",
    "PlanStep",
    "PolicySet",
    "ProposalOrigin",
    "ProposalSubmitted",
    "ReceivedEvent",
    "RequiredEval",
    "RolloutPaused",
    "RolloutResumed",
    "RolloutStep",
    "RootKey",
    "Sample",
    "Schema",
    "Signature",
    "SignedEvent",
    "Target",
    "TargetSelector",
    "TrafficRouting",
    "crc64_avro",
    "decode_body",
    "decode_entry",
    "decode_log_entry",
    "decode_received_event",
    "decode_signed_event",
    "encode_body",
    "encode_entry",
    "encode_signed_event",
    "make_entry",
    "payload_hashes",
    "signed_bytes",
]


# --------------------------------------------------------------------------------------------
# Conversion between the dataclasses and fastavro's plain values


def _to_avro(value: Any) -> Any:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: _to_avro(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, tuple):
        return [_to_avro(v) for v in value]
    return value


# Decoding runs once per field of every entry read, so the per-class work (type hints, which
# fields need converting and how) is done once: each dataclass gets a converter function that
# builds the instance from fastavro's plain record. It is generated from the class's fields
# and hints (one of the three code generators, docs/PERFORMANCE.md "Generated code"), or, with
# STEWARD_NO_CODEGEN set, a closure doing the same steps. Strictness is the same either way: a
# missing field is a KeyError, and the values go through the same dataclass constructor.

_Convert = typing.Callable[[Any], Any]


def _float(value: Any) -> Any:
    return float(value) if isinstance(value, int) else value


def _converter(hint: Any, generate: bool) -> _Convert | None:
    """A function turning fastavro's value for `hint` into ours; None when it is the identity."""
    origin = typing.get_origin(hint)
    if origin is tuple:
        (item_hint, _ellipsis) = typing.get_args(hint)
        item = _converter(item_hint, generate)
        if item is None:
            return tuple
        return lambda value: tuple([item(v) for v in value])
    if origin in (Union, types.UnionType):
        (inner,) = [a for a in typing.get_args(hint) if a is not type(None)]
        conv = _converter(inner, generate)
        if conv is None:
            return None
        return lambda value: None if value is None else conv(value)
    if dataclasses.is_dataclass(hint) and isinstance(hint, type):
        return _record_converter(hint, generate)
    if hint is float:
        return _float
    return None


_RECORD_CONVERTERS: dict[tuple[type[Any], bool], _Convert] = {}


def _record_converter(cls: type[Any], generate: bool = GENERATE) -> _Convert:
    """The converter building `cls` from fastavro's record: generated, or a plain closure."""
    found = _RECORD_CONVERTERS.get((cls, generate))
    if found is not None:
        return found
    hints = typing.get_type_hints(cls)
    fields = [(f.name, _converter(hints[f.name], generate)) for f in dataclasses.fields(cls)]
    fn = _generated_converter(cls, fields) if generate else _plain_converter(cls, fields)
    _RECORD_CONVERTERS[(cls, generate)] = fn
    return fn


def _generated_converter(cls: type[Any], fields: list[tuple[str, _Convert | None]]) -> _Convert:
    # def from_avro_Metric(r):
    #     return cls(name=r['name'], value=c1(r['value']))
    env: dict[str, Any] = {"cls": cls}
    args = []
    for i, (name, conv) in enumerate(fields):
        if conv is None:
            args.append(f"{name}=r[{name!r}]")
        else:
            env[f"c{i}"] = conv
            args.append(f"{name}=c{i}(r[{name!r}])")
    source = f"def from_avro_{cls.__name__}(r):\n    return cls({', '.join(args)})\n"
    exec(source, env)  # generated from our own dataclass fields only
    fn: _Convert = env[f"from_avro_{cls.__name__}"]
    return fn


def _plain_converter(cls: type[Any], fields: list[tuple[str, _Convert | None]]) -> _Convert:
    def from_avro(r: Any) -> Any:  # the fields in order, as the generated call evaluates them
        return cls(**{name: r[name] if conv is None else conv(r[name]) for name, conv in fields})

    return from_avro


# Built at import, so no decode pays for it (and a broken hint fails at import, not at read).
_PAYLOAD_FROM_AVRO: Mapping[str, _Convert] = {
    name: _record_converter(cls) for name, cls in PAYLOAD_TYPES.items()
}
_SIGNED_EVENT_FROM_AVRO = _record_converter(SignedEvent)
_ENTRY_FROM_AVRO = _record_converter(Entry)


# --------------------------------------------------------------------------------------------
# fastavro and the single-object framing


def _schemaless_write(schema: Schema, record: Mapping[str, Any], field: str) -> bytes:
    out = io.BytesIO()
    try:
        fastavro.schemaless_writer(out, schema.parsed, record)
    except (ValueError, TypeError, KeyError, AttributeError, OverflowError) as exc:
        raise FormatError(f"cannot encode {schema.name}: {exc}", field=field) from exc
    return out.getvalue()


def _schemaless_read(
    schema: Schema, data: bytes, what: str, reader: Schema | None = None
) -> dict[str, Any]:
    buf = io.BytesIO(data)
    try:
        record = fastavro.schemaless_reader(
            buf,
            schema.parsed,
            None if reader is None or reader is schema else reader.parsed,
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
    bad = off_spec(schema.parsed, data)
    if bad is not None:  # fastavro read what no Avro reader may: a second encoding
        raise FormatError(f"{what}: not a valid {schema.name} Avro encoding ({bad})")
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
# Bodies and signed bytes


def encode_body(body: EventBody, schema: Schema = EVENT_BODY_SCHEMA) -> bytes:
    """The single-object encoding of `body` with the current EventBody schema.

    `schema` may name an older EventBody schema (``BODY_WRITERS``), to write the bodies an
    older writer wrote (test vectors, compatibility tests); a body that the older schema
    cannot hold (a field it lacks set to other than its default) is refused, never cut.
    """
    record = _to_avro(body)
    record.pop("payload")
    record["type"] = body.type
    record["payload"] = (f"steward.v1.{body.type}", _to_avro(body.payload))
    # Field order in the dict does not matter to fastavro; the schema fixes it.
    encoded = _single_object(schema, _schemaless_write(schema, record, "body"))
    if len(encoded) > MAX_BODY_BYTES:
        raise FormatError(
            f"body is {len(encoded)} bytes, the limit is {MAX_BODY_BYTES}", field="body"
        )
    if schema is not EVENT_BODY_SCHEMA and decode_body(encoded) != body:
        raise FormatError(
            f"body: {schema.file} cannot hold this {body.type} (a field it lacks is set)",
            field="payload",
        )
    return encoded


def decode_body(body_bytes: bytes) -> EventBody:
    """Decode body bytes, choosing the writer schema by fingerprint."""
    if len(body_bytes) > MAX_BODY_BYTES:
        raise FormatError(
            f"body is {len(body_bytes)} bytes, the limit is {MAX_BODY_BYTES}", field="body"
        )
    fast = fastcodec.read_body(body_bytes[10:], body_bytes[:10])  # a known schema's prefix
    if fast is not None:
        return fast
    schema, payload = _split_single_object(body_bytes, BODY_WRITERS, "body")
    return _decode_body_with_fastavro(schema, payload)


def _decode_body_with_fastavro(schema: Schema, payload: bytes) -> EventBody:
    # An older writer's body is read into the current schema (Avro schema resolution).
    record = _schemaless_read(schema, payload, "body", reader=EVENT_BODY_SCHEMA)
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


@quick_init
@dataclass(frozen=True)
class ReceivedEvent:
    """A signed event decoded from submitted bytes, with those bytes when they can stand for it.

    `canonical` is the bytes it was decoded from when they are exactly
    ``encode_signed_event(event)``, else None (Avro lets one value have several encodings, e.g.
    an over-long varint). Every submission is hashed at staging (``event_digest``) and written
    into an entry at folding (the entry holds the same Avro for body and signatures): both use
    these bytes instead of encoding the event again.
    """

    event: SignedEvent
    canonical: bytes | None = dataclasses.field(repr=False)

    def encoding(self) -> bytes:
        """``encode_signed_event(self.event)``, without encoding it again when it came so."""
        return self.canonical if self.canonical is not None else encode_signed_event(self.event)


def _check_signatures(signatures: tuple[Signature, ...], what: str) -> None:
    if len(signatures) > MAX_SIGNATURES:
        raise FormatError(
            f"{what}: {len(signatures)} signatures, at most {MAX_SIGNATURES} are accepted",
            field="signatures",
        )


def encode_signed_event(event: SignedEvent) -> bytes:
    _check_signatures(event.signatures, "signed event")
    encoded = fastcodec.write_signed_event(event)
    if encoded is None:
        encoded = _single_object(
            SIGNED_EVENT_SCHEMA,
            _schemaless_write(SIGNED_EVENT_SCHEMA, _to_avro(event), "signed_event"),
        )
    return encoded


def decode_received_event(data: bytes) -> ReceivedEvent:
    """Decode a submitted signed event, keeping `data` when it is the event's own encoding."""
    if len(data) > MAX_ENTRY_BYTES:
        raise FormatError(
            f"signed event is {len(data)} bytes, the limit is {MAX_ENTRY_BYTES}", field="body"
        )
    schema, payload = _split_single_object(data, SIGNED_EVENT_WRITERS, "signed event")
    fast = fastcodec.read_signed_event(payload) if schema is SIGNED_EVENT_SCHEMA else None
    event: SignedEvent = (
        fast
        if fast is not None
        else _SIGNED_EVENT_FROM_AVRO(_schemaless_read(schema, payload, "signed event"))
    )
    _check_signatures(event.signatures, "signed event")
    canonical = (
        data
        if fast is not None and type(data) is bytes and fastcodec.is_canonical(payload, fast)
        else None
    )
    return ReceivedEvent(event, canonical)


def decode_signed_event(data: bytes) -> SignedEvent:
    return decode_received_event(data).event


def encode_entry(entry: Entry) -> bytes:
    _check_signatures(entry.signatures, "entry")
    encoded = fastcodec.write_entry(entry)
    if encoded is None:
        encoded = _single_object(
            ENTRY_SCHEMA, _schemaless_write(ENTRY_SCHEMA, _to_avro(entry), "entry")
        )
    return encoded


def decode_entry(data: bytes) -> Entry:
    if len(data) > MAX_ENTRY_BYTES:
        raise FormatError(f"entry is {len(data)} bytes, the limit is {MAX_ENTRY_BYTES}")
    schema, payload = _split_single_object(data, ENTRY_WRITERS, "entry")
    fast = fastcodec.read_entry(payload) if schema is ENTRY_SCHEMA else None
    entry: Entry = (
        fast if fast is not None else _ENTRY_FROM_AVRO(_schemaless_read(schema, payload, "entry"))
    )
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


def make_entry(
    seq: int,
    prev: bytes,
    event: SignedEvent | ReceivedEvent,
    received_at: int,
    body: EventBody | None = None,
) -> LogEntry:
    """The entry the ledger writes for an accepted event (body bytes kept as received).

    `body`, when given, must be ``decode_body(event.body)`` (a caller that decoded it already).
    A ReceivedEvent that kept its bytes (so of the plain shape, with at most MAX_SIGNATURES)
    lends the entry its body and signatures bytes.
    """
    signed = event.event if isinstance(event, ReceivedEvent) else event
    canonical = event.canonical if isinstance(event, ReceivedEvent) else None
    entry = Entry(seq, prev, signed.body, signed.signatures, received_at)
    entry_bytes = (
        None
        if canonical is None
        else fastcodec.write_entry_of_event(seq, prev, canonical, received_at)
    )
    if entry_bytes is None:
        entry_bytes = encode_entry(entry)
    return LogEntry(
        entry,
        entry_bytes,
        leaf_hash(entry_bytes),
        decode_body(signed.body) if body is None else body,
    )
