"""What goes on the wire: framing constants, size bounds and the shipped Avro schemas.

Each schema is loaded from ``ledger/schemas/`` with its Parsing Canonical Form and its
CRC-64-AVRO fingerprint, the 8 bytes that follow ``C3 01`` in a single-object encoding and
tell a reader which writer schema to use. ``ledger.formats`` describes the three kinds of bytes
built from them.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping
from dataclasses import dataclass
from importlib import resources
from typing import Any

import fastavro

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
# Fingerprints and schemas


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
BODY_WRITERS: Mapping[bytes, Schema] = {EVENT_BODY_SCHEMA.fingerprint: EVENT_BODY_SCHEMA}
ENTRY_WRITERS: Mapping[bytes, Schema] = {ENTRY_SCHEMA.fingerprint: ENTRY_SCHEMA}
SIGNED_EVENT_WRITERS: Mapping[bytes, Schema] = {
    SIGNED_EVENT_SCHEMA.fingerprint: SIGNED_EVENT_SCHEMA
}

