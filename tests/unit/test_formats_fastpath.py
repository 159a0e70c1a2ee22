"""The direct SignedEvent/Entry codec agrees with fastavro byte for byte and error for error."""

from __future__ import annotations

import random
from typing import Any

import pytest

from ledger import formats
from ledger.errors import FormatError
from ledger.formats import (
    ENTRY_SCHEMA,
    SIGNED_EVENT_SCHEMA,
    Entry,
    Signature,
    SignedEvent,
    decode_entry,
    decode_signed_event,
    encode_entry,
    encode_signed_event,
)


def _fastavro_bytes(schema: formats.Schema, value: Any) -> bytes:
    return formats._single_object(schema, formats._schemaless_write(schema, formats._to_avro(value), "x"))


def _fastavro_decode(schema: formats.Schema, data: bytes) -> Any:
    """What the decoders did before the fast path: fastavro, then the generated converter."""
    convert = formats._ENTRY_FROM_AVRO if schema is ENTRY_SCHEMA else formats._SIGNED_EVENT_FROM_AVRO
    writers = {schema.fingerprint: schema}
    found, payload = formats._split_single_object(data, writers, "x")
    return convert(formats._schemaless_read(found, payload, "x"))


def _outcome(fn: Any, data: bytes) -> tuple[str, Any]:
    try:
        return "ok", fn(data)
    except FormatError as exc:
        return "error", type(exc).__name__


def _signatures(rng: random.Random) -> tuple[Signature, ...]:
    return tuple(Signature(rng.randbytes(32), rng.randbytes(64)) for _ in range(rng.choice([0, 1, 2, 3, 16])))


def _samples(seed: int, n: int) -> list[tuple[SignedEvent, Entry]]:
    rng = random.Random(seed)
    longs = [0, 1, -1, 63, 64, -64, -65, 127, 128, 8191, 8192, 2**31, -(2**31), 2**62, 2**63 - 1, -(2**63),
             1_766_000_000_000]
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
    odd = [Entry(1, b"\x00" * 31, b"b", (sig,), 2), Entry(True, b"\x00" * 32, b"b", (sig,), 2),
           Entry(1, b"\x00" * 32, b"b", [sig], 2), Entry(2**63, b"\x00" * 32, b"b", (), 2)]  # type: ignore[arg-type]
    for entry in odd:
        assert _outcome(lambda e: encode_entry(e), entry) == _outcome(  # type: ignore[arg-type]
            lambda e: _fastavro_bytes(ENTRY_SCHEMA, e), entry)  # type: ignore[arg-type]


@pytest.mark.parametrize("schema", [SIGNED_EVENT_SCHEMA, ENTRY_SCHEMA], ids=["signed_event", "entry"])
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
            assert _outcome(decode, data) == _outcome(lambda d: _fastavro_decode(schema, d), data), data.hex()
            checked += 1
    assert checked > 1000


def test_a_second_array_block_decodes_as_fastavro_decodes_it() -> None:
    sig = Signature(b"\x03" * 32, b"\x04" * 64)
    one_block = _fastavro_bytes(SIGNED_EVENT_SCHEMA, SignedEvent(b"body", (sig, sig)))
    head, items = one_block[:15], one_block[16:16 + 192]  # magic+fp, body; count 2; items; 0
    assert one_block[15] == 4  # zig-zag 2
    two_blocks = head + b"\x02" + items[:96] + b"\x02" + items[96:] + b"\x00"
    sized = head + b"\x01\xc0\x01" + items[:96] + b"\x02" + items[96:] + b"\x00"  # count -1, 96 bytes
    for data in (two_blocks, sized):
        assert _outcome(decode_signed_event, data) == _outcome(
            lambda d: _fastavro_decode(SIGNED_EVENT_SCHEMA, d), data)
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
            assert _outcome(decode, data) == _outcome(lambda d, s=schema: _fastavro_decode(s, d), data), data.hex()
