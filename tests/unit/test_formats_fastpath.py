"""The direct SignedEvent/Entry codec agrees with fastavro byte for byte and error for error."""

from __future__ import annotations

import dataclasses
import hashlib
import io
import pickle
import random
import re
import struct
from typing import Any

import fastavro
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ledger import fastcodec, formats, wire
from ledger.core import event_digest
from ledger.errors import FormatError
from ledger.formats import (
    ENTRY_SCHEMA,
    SIGNED_EVENT_SCHEMA,
    Entry,
    Signature,
    SignedEvent,
    decode_body,
    decode_entry,
    decode_received_event,
    decode_signed_event,
    encode_body,
    encode_entry,
    encode_signed_event,
)


def _fastavro_bytes(schema: formats.Schema, value: Any) -> bytes:
    field = "entry" if schema is ENTRY_SCHEMA else "signed_event"
    return formats._single_object(
        schema, formats._schemaless_write(schema, formats._to_avro(value), field)
    )


def _fastavro_decode(schema: formats.Schema, data: bytes) -> Any:
    """What the decoders did before the fast path: fastavro, then the generated converter."""
    convert = (
        formats._ENTRY_FROM_AVRO if schema is ENTRY_SCHEMA else formats._SIGNED_EVENT_FROM_AVRO
    )
    what = "entry" if schema is ENTRY_SCHEMA else "signed event"
    found, payload = formats._split_single_object(data, {schema.fingerprint: schema}, what)
    value = convert(formats._schemaless_read(found, payload, what))
    formats._check_signatures(value.signatures, what)
    return value


def _outcome(fn: Any, data: bytes) -> tuple[Any, ...]:
    try:
        return "ok", fn(data)
    except FormatError as exc:
        # fastavro names the BytesIO it read from by address: the one thing allowed to differ.
        return (
            "error",
            type(exc).__name__,
            re.sub(r" at 0x[0-9a-f]+>", " at 0x...>", str(exc)),
            exc.field,
        )


def _signatures(rng: random.Random) -> tuple[Signature, ...]:
    return tuple(
        Signature(rng.randbytes(32), rng.randbytes(64)) for _ in range(rng.choice([0, 1, 2, 3, 16]))
    )


def _samples(seed: int, n: int) -> list[tuple[SignedEvent, Entry]]:
    rng = random.Random(seed)
    longs = [
        0,
        1,
        -1,
        63,
        64,
        -64,
        -65,
        127,
        128,
        8191,
        8192,
        2**31,
        -(2**31),
        2**62,
        2**63 - 1,
        -(2**63),
        1_766_000_000_000,
    ]
    out = []
    for _ in range(n):
        body = rng.randbytes(rng.choice([0, 1, 63, 64, 127, 128, 300, 8192, 30_000]))
        sigs = _signatures(rng)
        seq = rng.choice([*longs, rng.randrange(-(2**63), 2**63)])
        received = rng.choice([*longs, rng.randrange(0, 2**45)])
        out.append((SignedEvent(body, sigs), Entry(seq, rng.randbytes(32), body, sigs, received)))
    return out


def test_encoders_write_the_bytes_fastavro_writes() -> None:
    for event, entry in _samples(1, 300):
        assert encode_signed_event(event) == _fastavro_bytes(SIGNED_EVENT_SCHEMA, event)
        assert encode_entry(entry) == _fastavro_bytes(ENTRY_SCHEMA, entry)


def test_decoders_read_back_what_fastavro_reads() -> None:
    for event, entry in _samples(2, 300):
        data = _fastavro_bytes(SIGNED_EVENT_SCHEMA, event)
        assert decode_signed_event(data) == _fastavro_decode(SIGNED_EVENT_SCHEMA, data) == event
        data = _fastavro_bytes(ENTRY_SCHEMA, entry)
        assert decode_entry(data) == _fastavro_decode(ENTRY_SCHEMA, data) == entry


def test_values_off_the_plain_shape_still_go_through_fastavro() -> None:
    # A 31-byte prev, a list instead of a tuple, a bool seq: whatever fastavro did, still done.
    sig = Signature(b"\x01" * 32, b"\x02" * 64)
    odd = [
        Entry(1, b"\x00" * 31, b"b", (sig,), 2),
        Entry(True, b"\x00" * 32, b"b", (sig,), 2),
        Entry(1, b"\x00" * 32, b"b", [sig], 2),
        Entry(2**63, b"\x00" * 32, b"b", (), 2),
    ]  # type: ignore[arg-type]
    for entry in odd:
        assert _outcome(lambda e: encode_entry(e), entry) == _outcome(  # type: ignore[arg-type]
            lambda e: _fastavro_bytes(ENTRY_SCHEMA, e), entry
        )  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "schema", [SIGNED_EVENT_SCHEMA, ENTRY_SCHEMA], ids=["signed_event", "entry"]
)
def test_damaged_encodings_get_the_outcome_fastavro_gave(schema: formats.Schema) -> None:
    rng = random.Random(3)
    decode = decode_entry if schema is ENTRY_SCHEMA else decode_signed_event
    checked = 0
    for event, entry in _samples(4, 60):
        good = _fastavro_bytes(schema, entry if schema is ENTRY_SCHEMA else event)
        damaged = [good[:cut] for cut in {10, 11, 12, len(good) // 2, len(good) - 1}]
        damaged += [good + b"\x00", good + b"\x02\x00"]
        for _ in range(20):
            data = bytearray(good)
            at = rng.randrange(10, len(data))
            data[at] = rng.choice([0x00, 0x01, 0x7F, 0x80, 0xFF, rng.randrange(256)])
            damaged.append(bytes(data))
        # A second array block and a sized (negative-count) block: valid Avro, fastavro's call.
        for data in damaged:
            assert _outcome(decode, data) == _outcome(
                lambda d: _fastavro_decode(schema, d), data
            ), data.hex()
            checked += 1
    assert checked > 1000


def test_a_second_array_block_decodes_as_fastavro_decodes_it() -> None:
    sig = Signature(b"\x03" * 32, b"\x04" * 64)
    one_block = _fastavro_bytes(SIGNED_EVENT_SCHEMA, SignedEvent(b"body", (sig, sig)))
    head, items = one_block[:15], one_block[16 : 16 + 192]  # magic+fp, body; count 2; items; 0
    assert one_block[15] == 4  # zig-zag 2
    two_blocks = head + b"\x02" + items[:96] + b"\x02" + items[96:] + b"\x00"
    sized = (
        head + b"\x01\xc0\x01" + items[:96] + b"\x02" + items[96:] + b"\x00"
    )  # count -1, 96 bytes
    for data in (two_blocks, sized):
        assert _outcome(decode_signed_event, data) == _outcome(
            lambda d: _fastavro_decode(SIGNED_EVENT_SCHEMA, d), data
        )
        assert decode_signed_event(data) == SignedEvent(b"body", (sig, sig))


def _varints(rng: random.Random) -> list[bytes]:
    """Varints of every length up to 12 bytes: canonical, zero-padded and with random groups."""
    out = []
    for length in range(1, 13):
        for _ in range(8):
            groups = [rng.choice([0, 1, 0x7F, rng.randrange(128)]) for _ in range(length)]
            out.append(bytes(g | 0x80 for g in groups[:-1]) + bytes(groups[-1:]))
        out.append(b"\x80" * (length - 1) + b"\x00")  # an over-long zero
        out.append(b"\xff" * (length - 1) + b"\x01")
    return out


def test_over_long_varints_read_as_fastavro_reads_them() -> None:
    # fastavro keeps a varint in 64 bits; what it makes of a 10th and 11th byte, the fast path
    # must make of them too (or leave them to it).
    rng = random.Random(5)
    sig = Signature(b"\x05" * 32, b"\x06" * 64)
    entry = _fastavro_bytes(ENTRY_SCHEMA, Entry(7, b"\x00" * 32, b"body", (sig,), 9))
    event = _fastavro_bytes(SIGNED_EVENT_SCHEMA, SignedEvent(b"body", (sig,)))
    assert entry[10] == 14 and entry[-1] == 18 and event[10] == 8
    for varint in _varints(rng):
        cases = [
            (ENTRY_SCHEMA, entry[:10] + varint + entry[11:]),  # seq
            (ENTRY_SCHEMA, entry[:-1] + varint),  # received_at
            (SIGNED_EVENT_SCHEMA, event[:10] + varint + event[11:]),  # body length
            (SIGNED_EVENT_SCHEMA, event[:15] + varint + event[16:]),  # signature count
        ]
        for schema, data in cases:
            decode = decode_entry if schema is ENTRY_SCHEMA else decode_signed_event
            assert _outcome(decode, data) == _outcome(
                lambda d, s=schema: _fastavro_decode(s, d), data
            ), data.hex()


# --------------------------------------------------------------------------------------------
# EventBody: the direct reader against fastavro, on bodies of every payload type.
#
# The bodies are generated from the schema itself (fastavro's plain values, written by
# fastavro), so that neither the values nor the bytes go through the code under test. A
# second writer, here, writes the same values the way Avro allows but nobody should:
# over-long varints, arrays split in blocks or in sized blocks, booleans as bytes other
# than 1. Whatever the bytes, decode_body must give what the fastavro path gives: the same
# values (floats bit for bit) or the same error, class and message.

_BODY = formats.EVENT_BODY_SCHEMA
_BODY_PREFIX = formats.SINGLE_OBJECT_MAGIC + _BODY.fingerprint
_LONGS = st.integers(-(2**63), 2**63 - 1) | st.sampled_from(
    [0, -1, 1, 63, -64, 64, -65, 8191, 8192, 2**31, -(2**31) - 1, 2**63 - 1, -(2**63)]
)
_DOUBLES = st.floats() | st.binary(min_size=8, max_size=8).map(
    lambda b: struct.unpack("<d", b)[0]
)  # NaNs with any payload, subnormals, -0.0
_PRIMITIVES: dict[str, st.SearchStrategy[Any]] = {
    "null": st.none(),
    "boolean": st.booleans(),
    "int": st.integers(-(2**31), 2**31 - 1),
    "long": _LONGS,
    "double": _DOUBLES,
    "string": st.text(max_size=12),
}


def _values(node: Any, named: dict[str, st.SearchStrategy[Any]]) -> st.SearchStrategy[Any]:
    """fastavro's plain values for a node of the parsed schema (unions in tuple notation)."""
    if isinstance(node, str):
        return named[node] if node in named else _PRIMITIVES[node]
    if isinstance(node, list):
        if node[0] == "null":
            return st.none() | _values(node[1], named)
        return st.one_of([st.tuples(st.just(b["name"]), _values(b, named)) for b in node])
    kind = node["type"]
    if kind == "array":
        return st.lists(_values(node["items"], named), max_size=3)
    if kind == "fixed":
        found: st.SearchStrategy[Any] = st.binary(min_size=node["size"], max_size=node["size"])
    elif kind == "enum":
        found = st.sampled_from(node["symbols"])
    elif kind == "record":
        found = st.fixed_dictionaries(
            {f["name"]: _values(f["type"], named) for f in node["fields"]}
        )
    else:
        return _PRIMITIVES[kind]
    named[node["name"]] = found
    return found


def _body_fields() -> dict[str, Any]:
    named: dict[str, st.SearchStrategy[Any]] = {}
    fields = {f["name"]: f["type"] for f in _BODY.parsed["fields"]}
    out = {name: _values(node, named) for name, node in fields.items() if name != "payload"}
    out["payload"] = {b["name"]: _values(b, named) for b in fields["payload"]}
    return out


_BODY_FIELDS = _body_fields()
_PAYLOAD_NAMES = sorted(_BODY_FIELDS["payload"])
_TYPES = _BODY.parsed["fields"][2]["type"]["symbols"]


@st.composite
def _body_records(
    draw: Any, payload_name: str | None = None, type_matches: bool = True
) -> dict[str, Any]:
    name = payload_name or draw(st.sampled_from(_PAYLOAD_NAMES))
    record = {f: draw(s) for f, s in _BODY_FIELDS.items() if f != "payload"}
    record["payload"] = (name, draw(_BODY_FIELDS["payload"][name]))
    record["type"] = name.rsplit(".", 1)[1] if type_matches else draw(st.sampled_from(_TYPES))
    return record


def _fastavro_body(record: dict[str, Any]) -> bytes:
    out = io.BytesIO()
    fastavro.schemaless_writer(out, _BODY.parsed, record)
    return _BODY_PREFIX + out.getvalue()


def _key(value: Any) -> Any:
    """A comparable image of a decoded value: exact types, floats by their bits."""
    if dataclasses.is_dataclass(value):
        return (
            type(value).__name__,
            *(_key(getattr(value, f.name)) for f in dataclasses.fields(value)),
        )
    if isinstance(value, tuple | list):
        return (type(value).__name__, *(_key(v) for v in value))
    if isinstance(value, float):
        return ("float", struct.pack("<d", value))
    return (type(value).__name__, value)


def _body_outcome(fn: Any, data: bytes) -> tuple[Any, ...]:
    try:
        return "ok", _key(fn(data))
    except Exception as exc:  # the class and message are what is compared
        message = re.sub(r" at 0x[0-9a-f]+>", " at 0x...>", str(exc))  # as in _outcome
        return "error", type(exc).__name__, message, getattr(exc, "field", None)


def _decode_body_with_fastavro(data: bytes) -> formats.EventBody:
    schema, payload = formats._split_single_object(data, wire.BODY_WRITERS, "body")
    return formats._decode_body_with_fastavro(schema, payload)


def _assert_body_as_fastavro(data: bytes) -> tuple[Any, ...]:
    outcome = _body_outcome(formats.decode_body, data)
    assert outcome == _body_outcome(_decode_body_with_fastavro, data), data.hex()
    return outcome


@pytest.mark.parametrize("payload_name", _PAYLOAD_NAMES)
@settings(max_examples=60, deadline=None)
@given(data=st.data())
def test_bodies_of_every_payload_type_decode_as_fastavro_decodes_them(
    payload_name: str, data: Any
) -> None:
    record = data.draw(_body_records(payload_name))
    body = _fastavro_body(record)
    assert _assert_body_as_fastavro(body)[0] == "ok"
    assert fastcodec.read_body(body[10:]) is not None  # the plain shape: read directly
    decoded = decode_body(body)
    assert decoded.type == payload_name.rsplit(".", 1)[1]
    assert encode_body(decoded) == body


@settings(max_examples=200, deadline=None)
@given(_body_records(type_matches=False))
def test_a_type_that_is_not_the_payload_is_fastavros_error(record: dict[str, Any]) -> None:
    outcome = _assert_body_as_fastavro(_fastavro_body(record))
    assert (outcome[0] == "ok") == (record["type"] == record["payload"][0].rsplit(".", 1)[1])


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=200))
def test_garbage_bodies_get_fastavros_outcome(payload: bytes) -> None:
    _assert_body_as_fastavro(_BODY_PREFIX + payload)


@settings(max_examples=300, deadline=None)
@given(_body_records(), st.data())
def test_truncated_extended_and_damaged_bodies_get_fastavros_outcome(
    record: dict[str, Any], data: Any
) -> None:
    body = _fastavro_body(record)
    cut = data.draw(st.integers(10, len(body)))
    _assert_body_as_fastavro(body[:cut])
    _assert_body_as_fastavro(body + data.draw(st.binary(min_size=1, max_size=3)))
    damaged = bytearray(body)
    for _ in range(data.draw(st.integers(1, 3))):
        at = data.draw(st.integers(10, len(damaged) - 1))
        damaged[at] = data.draw(
            st.sampled_from([0x00, 0x01, 0x02, 0x7F, 0x80, 0xFF]) | st.integers(0, 255)
        )
    _assert_body_as_fastavro(bytes(damaged))


class _OddWriter:
    """Writes a value as Avro allows but fastavro never does, each choice drawn by hypothesis."""

    def __init__(self, draw: Any) -> None:
        self.draw = draw
        self.named: dict[str, Any] = _BODY.parsed["__named_schemas"]  # fastavro's, by full name

    def varint(self, n: int, out: bytearray) -> None:
        z = ((n << 1) ^ (n >> 63)) & (2**64 - 1)
        groups = []
        while True:
            groups.append(z & 0x7F)
            z >>= 7
            if not z:
                break
        # Pad with zero groups: up to 10 bytes fastavro reads the same value, beyond it does not.
        groups += [0] * self.draw(st.sampled_from([0, 0, 1, 2]) | st.integers(0, 12 - len(groups)))
        out += bytes(g | 0x80 for g in groups[:-1]) + bytes(groups[-1:])

    def write(self, node: Any, value: Any, out: bytearray) -> None:
        if isinstance(node, str):
            node = self.named.get(node, node)
        if isinstance(node, list):
            if node[0] == "null":
                index = 0 if value is None else 1
            else:
                index = [b["name"] for b in node].index(value[0])
                value = value[1]
            self.varint(index, out)
            self.write(node[index], value, out)
            return
        kind = node if isinstance(node, str) else node["type"]
        if kind in ("int", "long"):
            self.varint(value, out)
        elif kind == "boolean":
            out.append(self.draw(st.integers(1, 255)) if value else 0)
        elif kind == "double":
            out += struct.pack("<d", value)
        elif kind in ("string", "bytes"):
            raw = value.encode() if kind == "string" else value
            self.varint(len(raw), out)
            out += raw
        elif kind == "fixed":
            out += value
        elif kind == "enum":
            self.varint(node["symbols"].index(value), out)
        elif kind == "record":
            for f in node["fields"]:
                self.write(f["type"], value[f["name"]], out)
        elif kind == "array":
            items = list(value)
            while items:
                n = self.draw(st.integers(1, len(items)))
                block = bytearray()
                for item in items[:n]:
                    self.write(node["items"], item, block)
                if self.draw(st.booleans()):
                    self.varint(-n, out)  # a sized block: negative count, then its byte size
                    self.varint(len(block), out)
                else:
                    self.varint(n, out)
                out += block
                items = items[n:]
            self.varint(0, out)
        elif kind != "null":
            raise AssertionError(f"no odd writer for {node}")


@settings(max_examples=300, deadline=None)
@given(_body_records(), st.data())
def test_odd_but_valid_encodings_decode_as_fastavro_decodes_them(
    record: dict[str, Any], data: Any
) -> None:
    out = bytearray()
    _OddWriter(data.draw).write(_BODY.parsed, record, out)
    _assert_body_as_fastavro(_BODY_PREFIX + bytes(out))


def test_over_long_varints_in_a_body_are_read_as_fastavro_reads_them() -> None:
    # issued_at is the body's only multi-byte long; pad it to every length up to 12 bytes.
    sig_free = formats.EventBody("l", b"\x00" * 16, 5, (), formats.KeyRevoked(b"\x01" * 32, "r"))
    body = encode_body(sig_free)
    at = 10 + 2 + 16 + 1  # ledger "l", event_id, type
    assert body[at] == 10  # zig-zag 5
    rng = random.Random(6)
    for varint in _varints(rng):
        _assert_body_as_fastavro(body[:at] + varint + body[at + 1 :])


# --------------------------------------------------------------------------------------------
# A received SignedEvent keeps the bytes it came from only when they are encode's bytes.


# make_entry takes the decoded body from its caller; these bodies are random bytes.
_ANY_BODY = formats.EventBody("l", b"\x00" * 16, 0, (), formats.KeyRevoked(b"\x00" * 32, ""))


def _padded(data: bytes, at: int, extra: int) -> bytes:
    """`data` with the one-byte varint at `at` written `extra` bytes longer (same value)."""
    return data[:at] + bytes((data[at] | 0x80,)) + b"\x80" * (extra - 1) + b"\x00" + data[at + 1 :]


def test_a_decoded_event_encodes_and_enters_entries_as_a_fresh_one() -> None:
    for event, entry in _samples(7, 80):
        fresh = SignedEvent(event.body, event.signatures)
        data = encode_signed_event(fresh)
        variants = [data]
        if len(event.body) < 64:  # a one-byte length varint: written over-long, same value
            variants += [_padded(data, 10, 1), _padded(data, 10, 4)]
        count_at = len(data) - (96 * len(event.signatures) + 2 if event.signatures else 1)
        variants += [_padded(data, count_at, 2)]  # the signature count, over-long
        for variant in variants:
            received = decode_received_event(variant)
            decoded = received.event
            assert decode_signed_event(variant) == decoded
            assert (
                decoded == fresh and hash(decoded) == hash(fresh) and repr(decoded) == repr(fresh)
            )
            assert pickle.loads(pickle.dumps(decoded)) == fresh
            assert encode_signed_event(decoded) == data  # never the over-long bytes
            assert received.encoding() == data  # never the over-long bytes
            assert event_digest(received) == event_digest(decoded) == hashlib.sha256(data).digest()
            kept = received.canonical
            assert kept == (data if variant == data else None)
            for made in (
                formats.make_entry(entry.seq, entry.prev, received, entry.received_at, _ANY_BODY),
                formats.make_entry(entry.seq, entry.prev, decoded, entry.received_at, _ANY_BODY),
            ):
                assert (
                    made.entry_bytes == encode_entry(entry) == _fastavro_bytes(ENTRY_SCHEMA, entry)
                )
                assert made.entry == entry and made.leaf_hash == formats.leaf_hash(made.entry_bytes)


@settings(max_examples=200, deadline=None)
@given(
    st.binary(max_size=300),
    st.lists(
        st.tuples(st.binary(min_size=32, max_size=32), st.binary(min_size=64, max_size=64)),
        max_size=3,
    ),
    st.data(),
)
def test_whatever_bytes_a_signed_event_came_from_its_encoding_is_its_values(
    body: bytes, sigs: list[tuple[bytes, bytes]], data: Any
) -> None:
    event = SignedEvent(body, tuple(Signature(k, s) for k, s in sigs))
    canonical = _fastavro_bytes(SIGNED_EVENT_SCHEMA, event)
    out = bytearray()
    _OddWriter(data.draw).write(SIGNED_EVENT_SCHEMA.parsed, formats._to_avro(event), out)
    odd = formats._single_object(SIGNED_EVENT_SCHEMA, bytes(out))
    for raw in (canonical, odd):
        outcome = _outcome(decode_signed_event, raw)
        assert outcome == _outcome(lambda d: _fastavro_decode(SIGNED_EVENT_SCHEMA, d), raw)
        if outcome[0] == "ok":
            received = decode_received_event(raw)
            decoded = received.event
            assert decoded == outcome[1]
            assert encode_signed_event(decoded) == canonical == received.encoding()
            assert received.canonical in (None, canonical)
            assert formats.make_entry(
                3, b"\x00" * 32, received, 5, _ANY_BODY
            ).entry_bytes == encode_entry(Entry(3, b"\x00" * 32, body, event.signatures, 5))
