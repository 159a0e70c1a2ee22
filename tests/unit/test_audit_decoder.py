"""The auditor's Avro reader is strict: every truncation, trailing byte, out-of-range boolean,
enum index or union branch is refused with a DecodeError (never an IndexError, never a value).

The generated reader skips per-field bounds checks and relies on the final length check; these
tests pin that an overrun anywhere is still refused, through both decode paths.
"""

from __future__ import annotations

import dataclasses

import pytest

from audit.errors import DecodeError
from audit.formats import decode_body, decode_entry, decode_entry_and_body
from ledger.formats import HealthReported, encode_body, encode_entry
from tests.audit_tamper import Builder


@pytest.fixture(scope="module")
def clean() -> Builder:
    return Builder().clean()


def test_every_record_of_a_clean_log_decodes_the_same_both_ways(clean: Builder) -> None:
    for e in clean.entries:
        entry, body = decode_entry_and_body(e.entry_bytes)
        assert entry == decode_entry(e.entry_bytes) and body == decode_body(entry.body)
        assert (entry.seq, body.type) == (e.seq, e.body.type)


def test_every_truncation_and_trailing_byte_is_refused(clean: Builder) -> None:
    for e in clean.entries:
        for data, decode in ((e.entry_bytes, decode_entry), (e.entry.body, decode_body)):
            for k in range(len(data)):
                with pytest.raises(DecodeError):
                    decode(data[:k])
            with pytest.raises(DecodeError, match="trailing"):
                decode(data + b"\x00")


def test_a_truncated_body_inside_a_well_formed_entry_is_refused(clean: Builder) -> None:
    e = clean.entries[-1]
    for k in range(10, len(e.entry.body)):
        raw = encode_entry(dataclasses.replace(e.entry, body=e.entry.body[:k]))
        decode_entry(raw)  # the entry itself is well formed ...
        with pytest.raises(DecodeError, match="body"):
            decode_entry_and_body(raw)  # ... its body is not


def _health_body(clean: Builder) -> tuple[bytes, int]:
    """A health report's body bytes and the offset of its `healthy` boolean."""
    e = next(x for x in reversed(clean.entries) if x.body.type == "HealthReported")
    assert isinstance(e.body.payload, HealthReported)
    flipped = encode_body(
        dataclasses.replace(
            e.body, payload=dataclasses.replace(e.body.payload, healthy=not e.body.payload.healthy)
        )
    )
    (offset,) = [i for i, (a, b) in enumerate(zip(e.entry.body, flipped, strict=True)) if a != b]
    return e.entry.body, offset


def test_boolean_bytes_other_than_0_and_1_are_refused(clean: Builder) -> None:
    body, at = _health_body(clean)
    decode_body(body)
    for bad in (2, 3, 0x80, 0xFF):
        with pytest.raises(DecodeError, match="boolean"):
            decode_body(body[:at] + bytes([bad]) + body[at + 1 :])


def test_union_branch_and_enum_index_out_of_range_are_refused(clean: Builder) -> None:
    body = clean.entries[-1].entry.body
    decoded = decode_body(body)
    # EventBody: ledger (string), event_id (fixed 16), type (enum), ...
    ledger_len = len(decoded.ledger.encode())
    type_at = 10 + 1 + ledger_len + 16
    assert body[type_at] == 2 * 7  # HealthReported is symbol 7, zig-zag encoded
    for bad in (2 * 13, 2 * 60, 1):  # past the last symbol (v3 has 13); a negative index
        with pytest.raises(DecodeError, match="enum"):
            decode_body(body[:type_at] + bytes([bad]) + body[type_at + 1 :])
    # The payload union index comes right after issued_at and the refs array.
    pos = type_at + 1
    while body[pos] & 0x80:  # issued_at varint
        pos += 1
    pos += 1
    assert body[pos] == 2 * len(decoded.refs)
    pos += 1 + 32 * len(decoded.refs) + 1  # refs block and its terminating 0
    assert body[pos] == 2 * 7
    for bad in (2 * 13, 1):
        with pytest.raises(DecodeError, match="union"):
            decode_body(body[:pos] + bytes([bad]) + body[pos + 1 :])


def test_negative_lengths_are_refused(clean: Builder) -> None:
    raw = clean.entries[-1].entry_bytes
    # Entry: seq (varint), prev (fixed 32), body (bytes: varint length first)
    pos = 10
    while raw[pos] & 0x80:
        pos += 1
    pos += 1 + 32
    with pytest.raises(DecodeError):
        decode_entry(raw[:pos] + b"\x01" + raw[pos + 2 :])  # zig-zag 1 = -1
