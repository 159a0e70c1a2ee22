"""Event formats: signed bytes, single-object encoding, strict decoding."""

from __future__ import annotations

import json

import fastavro
import pytest
from hypothesis import given
from hypothesis import strategies as st

from ledger import formats
from ledger.errors import FormatError, UnknownSchemaError
from ledger.events import new_body, sign
from ledger.formats import (
    DOMAIN_PREFIX,
    EVENT_BODY_SCHEMA,
    Entry,
    KillScope,
    Signature,
    decode_body,
    decode_entry,
    decode_log_entry,
    decode_signed_event,
    encode_body,
    encode_entry,
    encode_signed_event,
    make_entry,
    signed_bytes,
)
from ledger.merkle import leaf_hash
from ledger.scenario import Cast, Flow

CAST = Cast.create(seed="formats")
FLOW = Flow(CAST, clock=lambda: 1_767_225_600_000)


def all_events() -> list[formats.SignedEvent]:
    p, e = b"\x01" * 32, b"\x02" * 32
    return [
        FLOW.genesis(),
        FLOW.grant("agent", expires_at=1_800_000_000_000),
        FLOW.revoke(b"\x03" * 32),
        FLOW.policy(),
        FLOW.propose(),
        FLOW.eval(p, "safety", 0.99),
        FLOW.approve(p, (e,), "alice"),
        FLOW.health(p, 1, True),
        FLOW.step(p, 0, 10, "STARTED"),
        FLOW.kill(KillScope("PROPOSAL", proposal=p)),
        FLOW.release(KillScope("GLOBAL")),
        FLOW.pause(p),
        FLOW.resume(p, ("alice", "bob")),
    ]


def test_every_event_type_round_trips() -> None:
    events = all_events()
    assert {decode_body(e.body).type for e in events} == set(formats.PAYLOAD_TYPES)
    for event in events:
        body = decode_body(event.body)
        assert encode_body(body) == event.body
        assert decode_signed_event(encode_signed_event(event)) == event


def test_body_is_single_object_encoding_with_the_shipped_fingerprint() -> None:
    event = FLOW.propose()
    assert event.body[:2] == b"\xc3\x01"
    assert event.body[2:10] == EVENT_BODY_SCHEMA.fingerprint
    # The fingerprint agrees with fastavro's own CRC-64-AVRO of the canonical form.
    assert EVENT_BODY_SCHEMA.fingerprint.hex() == fastavro.schema.fingerprint(
        EVENT_BODY_SCHEMA.canonical_form, "CRC-64-AVRO"
    )


def test_signed_bytes_are_prefix_fingerprint_and_exact_avro() -> None:
    event = FLOW.propose()
    message = signed_bytes(event.body)
    assert message == DOMAIN_PREFIX + EVENT_BODY_SCHEMA.fingerprint + event.body[10:]
    assert CAST["agent"].key.public.verify(event.signatures[0].sig, message)


def test_no_maps_in_signed_records() -> None:
    def walk(node: object) -> None:
        if isinstance(node, dict):
            assert node.get("type") != "map", f"map in schema: {node}"
            for v in node.values():
                walk(v)
        elif isinstance(node, list):
            for v in node:
                walk(v)

    for schema in (formats.EVENT_BODY_SCHEMA, formats.SIGNED_EVENT_SCHEMA, formats.ENTRY_SCHEMA):
        walk(json.loads(schema.json_text))


def test_unknown_fingerprint_is_refused_by_name() -> None:
    event = FLOW.propose()
    tampered = event.body[:2] + b"\xff" * 8 + event.body[10:]
    with pytest.raises(UnknownSchemaError, match="unknown schema fingerprint ffffffffffffffff"):
        decode_body(tampered)


@pytest.mark.parametrize("cut", [1, 5, 9, 12, 40])
def test_truncated_bodies_are_refused(cut: int) -> None:
    body = FLOW.propose().body
    with pytest.raises(FormatError):
        decode_body(body[: len(body) - cut])


def test_trailing_bytes_are_refused() -> None:
    with pytest.raises(FormatError, match="trailing"):
        decode_body(FLOW.propose().body + b"\x00")


def test_type_must_name_the_payload() -> None:
    body = bytearray(FLOW.propose().body)
    # Byte after ledger string and event id is the enum index; change it to KeyRevoked (2).
    offset = 10 + 1 + len(FLOW.ledger) + 16
    body[offset] = 2 * 2  # zigzag
    with pytest.raises(FormatError, match="payload is a ProposalSubmitted"):
        decode_body(bytes(body))


def test_oversized_body_is_refused() -> None:
    big = formats.ProposalSubmitted(
        formats.Target("models", "m"),
        formats.ModelRef("x", "y"),
        formats.ModelRef("x", "y"),
        "r" * (formats.MAX_BODY_BYTES + 1),
        formats.ProposalOrigin("a", "b"),
    )
    with pytest.raises(FormatError, match="limit"):
        encode_body(new_body("demo", big))


def test_entry_round_trip_and_leaf_hash() -> None:
    event = FLOW.propose()
    e = make_entry(3, b"\x09" * 32, event, 1234)
    assert e.entry_bytes[:2] == b"\xc3\x01"
    assert e.entry_bytes[2:10] == formats.ENTRY_SCHEMA.fingerprint
    assert decode_entry(e.entry_bytes) == e.entry
    assert decode_log_entry(e.entry_bytes) == e
    assert e.leaf_hash == leaf_hash(e.entry_bytes)
    assert encode_entry(Entry(3, b"\x09" * 32, event.body, event.signatures, 1234)) == e.entry_bytes


def test_too_many_signatures_are_refused() -> None:
    event = FLOW.propose()
    sigs = tuple(Signature(bytes(32), bytes(64)) for _ in range(formats.MAX_SIGNATURES + 1))
    with pytest.raises(FormatError, match="signatures"):
        encode_signed_event(formats.SignedEvent(event.body, sigs))


@given(st.binary(max_size=300))
def test_garbage_never_decodes_to_anything_but_format_error(data: bytes) -> None:
    for decoder in (decode_body, decode_entry, decode_signed_event):
        try:
            decoder(data)
        except FormatError:
            pass


@given(st.integers(min_value=0, max_value=2000), st.integers(min_value=0, max_value=7))
def test_any_bit_flip_in_a_body_breaks_the_signature_or_the_decoding(index: int, bit: int) -> None:
    event = FLOW.propose()
    body = bytearray(event.body)
    index %= len(body)
    body[index] ^= 1 << bit
    key = CAST["agent"].key.public
    try:
        message = signed_bytes(bytes(body))
    except FormatError:
        return
    assert not key.verify(event.signatures[0].sig, message)


def test_sign_covers_the_encoded_body() -> None:
    body = new_body("demo", decode_body(FLOW.propose().body).payload)
    event = sign(body, CAST["agent"].key)
    assert decode_body(event.body) == body


# -- enum and union indices: one reading per value ------------------------------------------
# fastavro looks an index up in a Python list, so a negative one wraps around (the varint 01, -1,
# reads as the last symbol). The auditor refuses such bytes; the ledger must too, or it accepts
# entries the auditor flags (found by test_ledger_and_auditor_agree_on_entries).


def _zigzag(n: int) -> bytes:
    z, out = (n << 1) ^ (n >> 63), bytearray()
    while z >= 0x80:
        out.append((z & 0x7F) | 0x80)
        z >>= 7
    out.append(z)
    return bytes(out)


def test_a_negative_enum_index_is_refused_not_wrapped() -> None:
    from ledger.formats import ApprovalRecorded

    proposal = b"\x11" * 32
    body = encode_body(new_body("t", ApprovalRecorded(proposal, "REJECT", (), "c"), issued_at=0))
    at = body.rindex(proposal) + 32  # the decision's index follows the payload's proposal
    assert body[at : at + 1] == _zigzag(1)  # REJECT is the second of two symbols
    assert _fastavro_value(body[:at] + _zigzag(-1) + body[at + 1 :]) == _fastavro_value(
        body
    )  # wraps
    with pytest.raises(FormatError, match=r"enum steward\.v1\.Decision index -1 of 2"):
        decode_body(body[:at] + _zigzag(-1) + body[at + 1 :])
    # An over-long varint is still a valid reading of index 1: Avro allows it, the ledger keeps it.
    assert decode_body(body[:at] + b"\x82\x00" + body[at + 1 :]).payload.decision == "REJECT"


def test_a_negative_union_index_is_refused_not_wrapped() -> None:
    from ledger.formats import KillScope, KillSwitchEngaged

    body = encode_body(new_body("t", KillSwitchEngaged(KillScope("GLOBAL"), "r"), issued_at=0))
    # magic and fingerprint, ledger "t", event id, type, issued_at 0, no refs: then the union index
    at = 10 + 2 + 16 + 1 + 1 + 1
    branches = len(formats.EVENT_BODY_SCHEMA.parsed["fields"][-1]["type"])
    index = body[at] >> 1
    wrapped = body[:at] + _zigzag(index - branches) + body[at + 1 :]
    assert _fastavro_value(wrapped) == _fastavro_value(body)  # fastavro wraps around
    with pytest.raises(FormatError, match=rf"union index {index - branches} of {branches}"):
        decode_body(wrapped)


@pytest.mark.parametrize("byte", [2, 3, 0x7F, 0xFF])
def test_a_boolean_byte_other_than_0_or_1_is_refused_not_read_as_true(byte: int) -> None:
    from ledger.formats import HealthReported

    proposal = b"\x22" * 32
    body = encode_body(new_body("t", HealthReported(proposal, 1, True, ()), issued_at=0))
    at = body.rindex(proposal) + 32 + 1  # the report's step (one byte), then `healthy`
    assert body[at] == 1
    forged = body[:at] + bytes([byte]) + body[at + 1 :]
    # fastavro reads it as true, the auditor refuses it (found by the fuzz test above), so must we
    assert _fastavro_value(forged) == _fastavro_value(body)
    with pytest.raises(FormatError, match=rf"boolean byte {byte}, not 0 or 1"):
        decode_body(forged)


@pytest.mark.parametrize("value", [2**31, -(2**31) - 1, 2**62])
def test_an_int_outside_32_bits_is_refused(value: int) -> None:
    from ledger.formats import LedgerGenesis, RootKey

    genesis = LedgerGenesis("t", (RootKey("root", b"\x33" * 32),), 1, "k", b"\x44" * 32)
    body = encode_body(new_body("t", genesis, issued_at=0))
    at = body.rindex(b"\x33" * 32) + 32 + 1  # the roots' closing block, then root_threshold
    assert body[at : at + 1] == _zigzag(1)
    forged = body[:at] + _zigzag(value) + body[at + 1 :]
    with pytest.raises(FormatError, match=rf"int {value} outside 32 bits"):
        decode_body(forged)
    # the edges of 32 bits still read
    for edge in (2**31 - 1, -(2**31)):
        edged = body[:at] + _zigzag(edge) + body[at + 1 :]
        assert decode_body(edged).payload.root_threshold == edge


def _overlong(z: int, length: int, last: int = 0) -> bytes:
    """The zig-zagged `z` in `length` varint bytes, the last of them `last` (0 pads)."""
    out = bytearray()
    for _ in range(length - 1):
        out.append((z & 0x7F) | 0x80)
        z >>= 7
    out.append(z | last)
    return bytes(out)


def test_a_varint_past_10_bytes_or_64_bits_is_refused_by_the_ledger_and_the_auditor() -> None:
    from audit import formats as audit_formats
    from audit.errors import DecodeError

    entry = Entry(3, b"\x55" * 32, FLOW.propose().body, (Signature(b"\x66" * 32, b"\x77" * 64),), 0)
    data = encode_entry(entry)
    assert data.endswith(b"\x00")  # received_at 0 is the last byte
    # Ten bytes are a valid, over-long, reading of 0 for both (Avro allows it).
    ten = data[:-1] + _overlong(0, 10)
    assert decode_entry(ten).received_at == 0
    assert audit_formats.decode_entry(ten).received_at == 0
    # Eleven bytes (fastavro reads them), or a tenth byte past the 64th bit: no reader agrees.
    for bad, why in (
        (data[:-1] + _overlong(0, 11), "varint longer than 10 bytes"),
        (data[:-1] + _overlong(0, 10, last=2), "varint overflows 64 bits"),
    ):
        with pytest.raises(FormatError, match=why):
            decode_entry(bad)
        with pytest.raises(DecodeError, match=why):
            audit_formats.decode_entry(bad)


def _fastavro_value(body: bytes) -> object:
    import io

    return fastavro.schemaless_reader(io.BytesIO(body[10:]), formats.EVENT_BODY_SCHEMA.parsed, None)
