"""The fast codec: SignedEvent and Entry written and read directly, EventBody read directly.

Its only contract: **the same bytes and the same errors as fastavro.** Every function here
either returns exactly what ``ledger.formats``' fastavro path returns for the same input (the
same bytes written, the same values read) or None, meaning "not the plain shape: ask
fastavro", so that whatever is refused, and every error message, is fastavro's.
``ledger.formats`` is the only caller; nothing else needs to know this module exists.
``tests/unit/test_formats_fastpath.py`` holds it to the contract, byte for byte and error for
error, on random, truncated, damaged and odd-but-valid encodings.

Why it exists: every submission is decoded, hashed (``event_digest``) and turned into an entry,
and every entry read is decoded; fastavro's Python-side set-up per call and the conversion
from its dicts to the dataclasses cost more than the Avro itself for these small records.
"""

from __future__ import annotations

import dataclasses
import struct
import typing
from collections.abc import Mapping
from typing import Any

from ledger.model import (
    PAYLOAD_TYPES,
    AnnotationSource,
    CheckEvidence,
    Entry,
    EventBody,
    HealthCheck,
    KillScope,
    Metric,
    ModelRef,
    NoDataRule,
    ObservedState,
    PlanStep,
    ProposalOrigin,
    RequiredEval,
    RootKey,
    Sample,
    Signature,
    SignedEvent,
    Target,
    TargetSelector,
    TrafficRouting,
)
from ledger.wire import (
    BODY_WRITERS,
    ENTRY_SCHEMA,
    EVENT_BODY_SCHEMA,
    HASH_SIZE,
    SIG_SIZE,
    SIGNED_EVENT_SCHEMA,
    SINGLE_OBJECT_MAGIC,
    Schema,
)

# --------------------------------------------------------------------------------------------
# Fast paths for SignedEvent and Entry
#
# Every submission is decoded, hashed (event_digest) and turned into an entry, so
# these two fixed-shape records are written and read here directly (Avro binary: zig-zag
# varint longs, length-prefixed bytes, raw fixed, one array block ending in a zero count).
# The fast path only takes the plain shape: values of exactly the declared Python types and
# sizes, and encodings that are a single array block with nothing odd. Anything else goes to
# fastavro as before, so what is accepted, what is refused and every error message stay
# exactly fastavro's; for the plain shape both produce the same bytes and values (the unit
# tests compare them).

_LONG_MIN = -(1 << 63)
_LONG_MAX = (1 << 63) - 1
SIGNED_EVENT_PREFIX = SINGLE_OBJECT_MAGIC + SIGNED_EVENT_SCHEMA.fingerprint
ENTRY_PREFIX = SINGLE_OBJECT_MAGIC + ENTRY_SCHEMA.fingerprint


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
        if (
            type(sig) is not Signature
            or type(sig.key_id) is not bytes
            or len(sig.key_id) != 32
            or type(sig.sig) is not bytes
            or len(sig.sig) != SIG_SIZE
        ):
            return None
        parts.append(sig.key_id)
        parts.append(sig.sig)
    parts.append(b"\x00")
    return b"".join(parts)


def write_signed_event(event: SignedEvent) -> bytes | None:
    """The single-object encoding of a plain SignedEvent (magic and fingerprint included)."""
    if type(event) is not SignedEvent or type(event.body) is not bytes:
        return None
    signatures = _signatures_bytes(event.signatures)
    if signatures is None:
        return None
    return b"".join((SIGNED_EVENT_PREFIX, _varint(len(event.body)), event.body, signatures))


def _plain_entry_head(seq: Any, prev: Any, received_at: Any) -> bool:
    """Whether an entry's own fields (beyond the event's) are of the plain shape."""
    return (
        type(seq) is int
        and _LONG_MIN <= seq <= _LONG_MAX
        and type(prev) is bytes
        and len(prev) == HASH_SIZE
        and type(received_at) is int
        and _LONG_MIN <= received_at <= _LONG_MAX
    )


def write_entry(entry: Entry) -> bytes | None:
    """The single-object encoding of a plain Entry (magic and fingerprint included)."""
    if type(entry) is not Entry:
        return None
    seq, prev, body, received_at = entry.seq, entry.prev, entry.body, entry.received_at
    if not _plain_entry_head(seq, prev, received_at) or type(body) is not bytes:
        return None
    signatures = _signatures_bytes(entry.signatures)
    if signatures is None:
        return None
    return b"".join(
        (
            ENTRY_PREFIX,
            _varint(seq),
            prev,
            _varint(len(body)),
            body,
            signatures,
            _varint(received_at),
        )
    )


def write_entry_of_event(
    seq: int, prev: bytes, event_encoding: bytes, received_at: int
) -> bytes | None:
    """write_entry, the body and signatures copied from the event's single-object encoding.

    `event_encoding` must be ``encode_signed_event`` of the event (``ReceivedEvent.canonical``):
    the entry holds the same Avro for body and signatures, so it is copied, not written again.
    """
    if not _plain_entry_head(seq, prev, received_at):
        return None
    return b"".join(
        (
            ENTRY_PREFIX,
            _varint(seq),
            prev,
            event_encoding[len(SIGNED_EVENT_PREFIX) :],
            _varint(received_at),
        )
    )


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
        sigs.append(Signature(data[pos : pos + 32], data[pos + 32 : pos + 96]))
        pos += 96
    if data[pos] != 0:
        return None  # a second block
    return tuple(sigs), pos + 1


def _read_bytes(data: bytes, pos: int) -> tuple[bytes, int] | None:
    size, pos = _read_long(data, pos)
    if size < 0 or pos + size > len(data):
        return None
    return data[pos : pos + size], pos + size


def read_signed_event(payload: bytes) -> SignedEvent | None:
    """The SignedEvent in `payload` (the Avro binary after the fingerprint), None if not plain."""
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


def is_canonical(payload: bytes, event: SignedEvent) -> bool:
    """Whether `payload`, which read_signed_event read `event` from, is exactly what
    write_signed_event writes for `event` (after the prefix).

    Avro lets one value have several encodings (an over-long varint reads as the same number).
    For a payload of at most MAX_ENTRY_BYTES and an event of at most MAX_SIGNATURES signatures
    (the caller checks both first), the values fix every byte but the varints' lengths, so the
    bytes are encode's when their length is: minimal varints for the body's length (below
    2**20: 1 to 3 bytes) and for the count (at most MAX_SIGNATURES: 1).
    """
    size, n = len(event.body), len(event.signatures)
    return len(payload) == (1 if size < 64 else 2 if size < 8192 else 3) + size + (
        96 * n + 2 if n else 1
    )


def read_entry(payload: bytes) -> Entry | None:
    """The Entry in `payload` (the Avro binary after the fingerprint), None if not plain."""
    if type(payload) is not bytes:
        return None
    try:
        seq, pos = _read_long(payload, 0)
        prev = payload[pos : pos + HASH_SIZE]
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
# array block, a union or enum index out of range, a boolean byte other than 0 or 1, an int
# outside 32 bits, a length running past the end, invalid UTF-8, a varint fastavro would read
# differently, trailing bytes, a type that does not name the payload) gives up, and the body
# goes to fastavro, whose value or error stands, message included.


class _OffPlainShapeError(Exception):
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
        HealthCheck,
        NoDataRule,
        CheckEvidence,
        Sample,
        TrafficRouting,
    )
}


def _read_null(data: bytes, pos: int) -> tuple[None, int]:
    return None, pos


def _read_boolean(data: bytes, pos: int) -> tuple[bool, int]:
    b = data[pos]
    if b > 1:
        raise _OffPlainShapeError  # fastavro reads any non-zero byte as true
    return b == 1, pos + 1


def _read_int(data: bytes, pos: int) -> tuple[int, int]:
    value, pos = _read_long(data, pos)
    if not -0x80000000 <= value < 0x80000000:
        raise _OffPlainShapeError  # fastavro reads an int as wide as a long; the spec does not
    return value, pos


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
        raise _OffPlainShapeError  # fastavro reads what is there (all of it for a negative size)
    return data[pos:end].decode(), end


def _fixed_reader(size: int) -> _Reader:
    def read_fixed(data: bytes, pos: int) -> tuple[bytes, int]:
        end = pos + size
        if end > len(data):
            raise _OffPlainShapeError  # fastavro returns the short read
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
            raise _OffPlainShapeError  # fastavro indexes its list (a negative index wraps)
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
            raise _OffPlainShapeError  # a sized block, or more items than bytes left
        items = []
        for _ in range(count):
            value, pos = item(data, pos)
            items.append(value)
        if data[pos] != 0:
            raise _OffPlainShapeError  # a second block
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
            raise _OffPlainShapeError  # fastavro indexes its list (a negative index wraps)
        return branches[index](data, pos)

    return read_union


def _fields_reader(
    fields: tuple[_Reader, ...],
) -> typing.Callable[[bytes, int], tuple[list[Any], int]]:
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
    "int": _read_int,
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
            isinstance(b, dict) and b["type"] == "record" for b in node
        ):
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
        # An older writer's record is a prefix of the dataclass: the fields added since take
        # their defaults, which are the current schema's (Avro resolution of appended fields;
        # tests/unit/test_schema_v2.py compares this with fastavro's resolution).
        declared = dataclasses.fields(cls)
        names = _field_names(node)
        if [f.name for f in declared[: len(names)]] != names or any(
            f.default is dataclasses.MISSING for f in declared[len(names) :]
        ):
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


BODY_PREFIX = SINGLE_OBJECT_MAGIC + EVENT_BODY_SCHEMA.fingerprint
# One reader per EventBody writer schema, by the 10 bytes its bodies start with.
_BODY_FIELD_READERS = {
    SINGLE_OBJECT_MAGIC + fp: _body_reader(schema) for fp, schema in BODY_WRITERS.items()
}


def read_body(payload: bytes, prefix: bytes = BODY_PREFIX) -> EventBody | None:
    """The EventBody in `payload` (the Avro binary after the fingerprint in `prefix`), None if
    not plain or not a body schema this codec reads."""
    read_fields = _BODY_FIELD_READERS.get(prefix)
    if type(payload) is not bytes or read_fields is None:
        return None
    try:
        (ledger, event_id, type_name, issued_at, refs, body_payload), pos = read_fields(payload, 0)
    except (_OffPlainShapeError, IndexError, ValueError, struct.error):
        return None  # ValueError includes UnicodeDecodeError
    if pos != len(payload) or type_name != type(body_payload).__name__:
        return None  # trailing bytes, or a type that is not the payload's: fastavro's errors
    return EventBody(ledger, event_id, issued_at, refs, body_payload)
