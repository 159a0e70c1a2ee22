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


# The EventBody every writer writes now (version 3), and the ones before it, which readers
# still resolve to it (Avro schema resolution: the fields v2 and v3 added take their
# defaults; v3's new enum symbols and union branches are appended, so old indexes keep theirs).
EVENT_BODY_SCHEMA = Schema.load("event_body.v3.avsc")
EVENT_BODY_SCHEMA_V2 = Schema.load("event_body.v2.avsc")
EVENT_BODY_SCHEMA_V1 = Schema.load("event_body.v1.avsc")
SIGNED_EVENT_SCHEMA = Schema.load("signed_event.v1.avsc")
ENTRY_SCHEMA = Schema.load("entry.v1.avsc")

# The writer schemas a reader accepts, by kind. A new schema version is added here, next to
# the old one, so that old entries keep decoding; the first is the one written.
BODY_WRITERS: Mapping[bytes, Schema] = {
    EVENT_BODY_SCHEMA.fingerprint: EVENT_BODY_SCHEMA,
    EVENT_BODY_SCHEMA_V2.fingerprint: EVENT_BODY_SCHEMA_V2,
    EVENT_BODY_SCHEMA_V1.fingerprint: EVENT_BODY_SCHEMA_V1,
}
ENTRY_WRITERS: Mapping[bytes, Schema] = {ENTRY_SCHEMA.fingerprint: ENTRY_SCHEMA}
SIGNED_EVENT_WRITERS: Mapping[bytes, Schema] = {
    SIGNED_EVENT_SCHEMA.fingerprint: SIGNED_EVENT_SCHEMA
}


# --------------------------------------------------------------------------------------------
# What fastavro does not check
#
# fastavro reads an enum or union index and looks it up in a Python list, so a negative index
# wraps around: the varint 01 (-1) reads as the last symbol. It reads any non-zero boolean byte
# as true, an int as wide as a long, and a varint of any length (keeping its low 64 bits). Such
# bytes are a second encoding of the same value (or no Avro value at all), ones that the auditor
# (audit/avro.py) and any other Avro reader refuse.
# The fast codec never reads them (it leaves them to fastavro); this walk finds them for the
# fastavro path, which refuses what it finds. It runs only on encodings off the plain shape.

_FIXED_WIDTH = {"null": 0, "float": 4, "double": 8}  # booleans are checked, not skipped


def off_spec(parsed: Any, data: bytes) -> str | None:
    """The first value in `data` that the Avro specification refuses and fastavro reads: an enum
    or union index outside its list ("enum E index -1 of 3"), a boolean byte other than 0 or 1,
    an int outside 32 bits, a varint longer than 10 bytes or above 64 bits. None when there is
    none. `parsed` is a fastavro-parsed schema; `data` is assumed to be an encoding fastavro
    reads (errors of any other kind are fastavro's to report)."""
    named: dict[str, Any] = {}

    def collect(node: Any) -> None:  # every named type, wherever it is first defined
        if isinstance(node, list):
            for branch in node:
                collect(branch)
        elif isinstance(node, dict):
            if node.get("type") in ("record", "enum", "fixed") and "name" in node:
                named.setdefault(node["name"], node)
            for f in node.get("fields", ()):
                collect(f["type"])
            for key in ("items", "values"):
                if key in node:
                    collect(node[key])

    collect(parsed)

    def long_at(pos: int) -> tuple[int, int]:
        shift = result = 0
        while True:
            b = data[pos]
            pos += 1
            result |= (b & 0x7F) << shift
            if not b & 0x80:
                if result >> 64:  # fastavro keeps the low 64 bits
                    raise _OffSpec("varint overflows 64 bits")
                return (result >> 1) ^ -(result & 1), pos
            shift += 7
            if shift > 63:  # fastavro reads on: an 11th byte and more
                raise _OffSpec("varint longer than 10 bytes")

    def walk(node: Any, pos: int) -> int:
        if isinstance(node, list):  # a union
            index, pos = long_at(pos)
            if not 0 <= index < len(node):
                raise _OffSpec(f"union index {index} of {len(node)}")
            return walk(node[index], pos)
        if isinstance(node, str):
            if node in named:
                return walk(named[node], pos)
            if node == "boolean":
                if data[pos] > 1:
                    raise _OffSpec(f"boolean byte {data[pos]}, not 0 or 1")
                return pos + 1
            if node in _FIXED_WIDTH:
                return pos + _FIXED_WIDTH[node]
            if node == "int":
                value, pos = long_at(pos)
                if not -(2**31) <= value < 2**31:
                    raise _OffSpec(f"int {value} outside 32 bits")
                return pos
            if node == "long":
                return long_at(pos)[1]
            if node in ("bytes", "string"):
                size, pos = long_at(pos)
                return pos + size
            raise ValueError(f"schema type {node!r}")
        kind = node["type"]
        if kind == "record":
            for f in node["fields"]:
                pos = walk(f["type"], pos)
            return pos
        if kind == "enum":
            index, pos = long_at(pos)
            if not 0 <= index < len(node["symbols"]):
                raise _OffSpec(f"enum {node['name']} index {index} of {len(node['symbols'])}")
            return pos
        if kind == "fixed":
            return pos + int(node["size"])
        if kind in ("array", "map"):
            while True:
                count, pos = long_at(pos)
                if count == 0:
                    return pos
                if count < 0:  # a sized block: its byte size follows the count
                    count, pos = -count, long_at(pos)[1]
                for _ in range(count):
                    if kind == "map":
                        size, pos = long_at(pos)
                        pos += size
                    pos = walk(node["items" if kind == "array" else "values"], pos)
        return walk(kind, pos)  # {"type": "long"} and the like

    try:
        walk(parsed, 0)
    except _OffSpec as exc:
        return str(exc)
    return None


class _OffSpec(Exception):
    """Where off_spec found a value the specification refuses (caught inside it)."""
