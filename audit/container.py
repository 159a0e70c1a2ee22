"""The auditor's own reader of Avro object container files, with every length bounded.

An export (docs/AUDIT.md "Export format") is an Avro object container file; this reads one
written again from the Avro specification ("Object Container Files"), sharing no code with the
ledger or fastavro, because the file comes from whoever hands it to the auditor:

    file   = "Obj" 0x01 ‖ metadata (map of bytes) ‖ sync (16 bytes) ‖ block*
    block  = object count (long) ‖ byte size (long) ‖ data (size bytes, compressed by the
             codec) ‖ sync (16 bytes, the header's)

Everything the file says about sizes is checked before anything is allocated or read: a length
or count against what remains of the file (or of the block) and against the bounds below; a
block is inflated at most to MAX_BLOCK_BYTES (a deflate bomb stops there); JSON in the metadata
is parsed only under MAX_JSON_DEPTH and MAX_METADATA_BYTES. Any violation is a
:class:`ContainerError` (an AuditError: exit status 2) whose message says what, where (byte
offset, block number) and why, on one line.

Bounds, and why they are enough for an honest export: `steward export` (fastavro) starts a new
block after about 16 KB of records, and one entry is at most ~70 KB (the ledger's
MAX_ENTRY_BYTES), so an honest block is well under 1 MiB; MAX_BLOCK_BYTES leaves room for any
other writer's sync interval (Java's default is 64 KB). The metadata holds every checkpoint note
(~300 bytes each), so MAX_METADATA_BYTES admits about 200,000 checkpoints.
"""

from __future__ import annotations

import json
import re
import zlib
from array import array
from collections.abc import Iterator
from itertools import accumulate
from typing import Any, BinaryIO

from audit.errors import AuditError

MAGIC = b"Obj\x01"
SYNC_SIZE = 16
MAX_BLOCK_BYTES = 16 * 1024 * 1024  # a block as stored and once inflated
MAX_METADATA_BYTES = 64 * 1024 * 1024  # the header's metadata, all values together
MAX_METADATA_ENTRIES = 1024
MAX_JSON_DEPTH = 16  # the export's JSON is 2 (checkpoints) to ~6 (schema) levels deep
CODECS = ("null", "deflate")
_VARINT_MAX_BYTES = 10  # a 64-bit zig-zag long
# fastavro (which `steward export` uses) writes zlib.compress(...)[2:-1]: the raw deflate stream
# and 3 of the 4 bytes of zlib's Adler-32 trailer. Up to a whole trailer is let through after
# the stream's end; anything longer is refused.
_ZLIB_TRAILER = 4


class ContainerError(AuditError):
    """The file is not a well-formed container: the audit cannot be carried out (exit 2)."""


def shown(value: bytes | str, limit: int = 40) -> str:
    """Untrusted text for a one-line message: escaped (no newline survives) and cut short."""
    text = value.decode("utf-8", "replace") if isinstance(value, bytes) else value
    text = text if len(text) <= limit else text[:limit] + "..."
    return repr(text)


_JSON_STRING = re.compile(r'"[^"\\]*(?:\\.[^"\\]*)*"')
_NOT_BRACKET = re.compile(r"[^\[\]{}]+")
_BRACKET_STEP = bytes.maketrans(b"[{]}", b"\x01\x01\xff\xff")  # +1 / -1 as signed bytes


def json_depth(text: str) -> int:
    """How deeply arrays and objects nest in `text` (brackets inside strings do not count).

    Checked before json.loads, whose recursion would otherwise end in RecursionError on a
    hostile file. Strings and everything but brackets are dropped by regular expressions, and
    the running sum of +1/-1 steps is taken in C (about 1 s for 20 million brackets).
    """
    steps = (
        _NOT_BRACKET.sub("", _JSON_STRING.sub("", text)).encode("ascii").translate(_BRACKET_STEP)
    )
    return max(accumulate(array("b", steps)), default=0)


class ContainerReader:
    """The header of a container on `stream` (read at once), and its blocks' records on demand.

    `name` names the file in every error message. The stream must be seekable: its size bounds
    every length the file claims.
    """

    def __init__(self, stream: BinaryIO, name: str) -> None:
        self.stream, self.name = stream, name
        try:
            stream.seek(0, 2)
            self.size = stream.tell()
            stream.seek(0)
        except OSError as exc:
            raise ContainerError(f"cannot read {name}: {exc}") from exc
        self.pos = 0
        self.metadata: dict[str, bytes] = {}
        self.offsets: dict[str, int] = {}  # metadata key -> byte offset of its value
        self._header()
        self.data_start = self.pos

    # -- reading, bounded by the file ---------------------------------------------------------

    def _fail(self, where: str, why: str) -> ContainerError:
        return ContainerError(f"{self.name}: {where}: {why}")

    def _read(self, n: int, what: str) -> bytes:
        if n > self.size - self.pos:
            raise self._fail(
                f"byte {self.pos}",
                f"truncated: the file ends inside {what} "
                f"({n} bytes needed, {self.size - self.pos} remain)",
            )
        data = self.stream.read(n)
        if len(data) != n:  # the file shrank while being read
            raise self._fail(f"byte {self.pos}", f"truncated: the file ends inside {what}")
        self.pos += n
        return data

    def _long(self, what: str) -> int:
        start, n, shift = self.pos, 0, 0
        for _ in range(_VARINT_MAX_BYTES):
            b = self._read(1, what)[0]
            n |= (b & 0x7F) << shift
            shift += 7
            if not b & 0x80:
                return (n >> 1) ^ -(n & 1)
        raise self._fail(
            f"byte {start}", f"{what} is a varint longer than {_VARINT_MAX_BYTES} bytes"
        )

    def _length(self, what: str, limit: int) -> int:
        """A byte length: not negative, not past the end of the file, not past `limit`."""
        at = self.pos
        n = self._long(what)
        if n < 0:
            raise self._fail(f"byte {at}", f"{what} is negative ({n})")
        if n > limit:
            raise self._fail(f"byte {at}", f"{what} is {n} bytes, more than the {limit} allowed")
        if n > self.size - self.pos:
            raise self._fail(
                f"byte {at}",
                f"truncated or corrupt: {what} is {n} bytes, "
                f"only {self.size - self.pos} remain in the file",
            )
        return n

    # -- the header -----------------------------------------------------------------------------

    def _header(self) -> None:
        if self.size < len(MAGIC):
            head = self._read(self.size, "the magic")
            if MAGIC.startswith(head):
                raise self._fail(
                    "byte 0", f"truncated: the file ends inside the magic ({self.size} bytes)"
                )
        magic = self._read(len(MAGIC), "the magic")
        if magic != MAGIC:
            raise self._fail(
                "byte 0",
                f"not an Avro object container file: the magic is {magic.hex()}, "
                f"expected {MAGIC.hex()} ('Obj' 1)",
            )
        total = 0
        while True:
            at = self.pos
            count = self._long("the metadata map's block count")
            if count == 0:
                break
            if count < 0:  # a block with its byte size: the size is not needed
                count = -count
                self._long("the metadata map's block size")
            # Each entry takes at least 2 bytes (two lengths), so a count is checked against
            # what remains before the loop runs.
            if (
                count > MAX_METADATA_ENTRIES - len(self.metadata)
                or 2 * count > self.size - self.pos
            ):
                raise self._fail(
                    f"byte {at}",
                    f"header metadata: a map block of {count} entries "
                    f"(at most {MAX_METADATA_ENTRIES}, and 2 bytes each in the {self.size - self.pos} left)",
                )
            for _ in range(count):
                key_at = self.pos
                key = self._read(self._length("a metadata key's length", 1024), "a metadata key")
                try:
                    name = key.decode("utf-8")
                except UnicodeDecodeError:
                    raise self._fail(
                        f"byte {key_at}", f"header metadata: key {shown(key)} is not UTF-8"
                    ) from None
                value_len = self._length(
                    f"the length of metadata {shown(name)}", MAX_METADATA_BYTES - total
                )
                self.offsets[name] = self.pos
                self.metadata[name] = self._read(value_len, f"metadata {shown(name)}")
                total += value_len
        self.sync = self._read(SYNC_SIZE, "the header's sync marker")
        codec = self.metadata.get("avro.codec", b"null")
        if codec.decode("utf-8", "replace") not in CODECS:
            raise self._fail(
                f"metadata avro.codec at byte {self.offsets['avro.codec']}",
                f"codec {shown(codec)} is not supported (this auditor reads {', '.join(CODECS)})",
            )
        self.codec = codec.decode()

    def text(self, key: str, default: str = "") -> str:
        """A metadata value as UTF-8 text."""
        value = self.metadata.get(key)
        if value is None:
            return default
        try:
            return value.decode("utf-8")
        except UnicodeDecodeError:
            raise self._fail(
                f"metadata {key} at byte {self.offsets[key]}", "not UTF-8 text"
            ) from None

    def json(self, key: str, default: str) -> Any:
        """A metadata value parsed as JSON, at most MAX_JSON_DEPTH deep."""
        text = self.text(key, default)
        where = f"metadata {key}" + (f" at byte {self.offsets[key]}" if key in self.offsets else "")
        depth = json_depth(text)
        if depth > MAX_JSON_DEPTH:
            raise self._fail(
                where, f"JSON nested {depth} levels deep, more than the {MAX_JSON_DEPTH} allowed"
            )
        try:
            return json.loads(text)
        except (ValueError, RecursionError) as exc:
            raise self._fail(where, f"not JSON: {shown(str(exc), 80)}") from None

    # -- the blocks -------------------------------------------------------------------------------

    def blocks(self) -> Iterator[tuple[int, int, int, bytes]]:
        """(block number, byte offset, object count, the block's data inflated), in file order."""
        self.stream.seek(self.data_start)
        self.pos = self.data_start
        number = 0
        while self.pos < self.size:
            at = self.pos
            where = f"block {number} at byte {at}"
            count = self._long(f"block {number}'s object count")
            if count < 0:
                raise self._fail(where, f"negative object count ({count})")
            stored = self._length(f"block {number}'s byte size", MAX_BLOCK_BYTES)
            data = self._read(stored, f"block {number}'s data")
            sync = self._read(SYNC_SIZE, f"block {number}'s sync marker")
            if sync != self.sync:
                raise self._fail(
                    where, "its sync marker differs from the header's (a damaged or spliced file)"
                )
            raw = data if self.codec == "null" else self._inflate(data, where)
            # Every object takes at least one byte: a count beyond the data cannot be honest.
            if count > len(raw):
                raise self._fail(where, f"{count} objects cannot fit in {len(raw)} bytes of data")
            yield number, at, count, raw
            number += 1

    def _inflate(self, data: bytes, where: str) -> bytes:
        """Raw deflate (RFC 1951, as the Avro spec says), stopped past MAX_BLOCK_BYTES."""
        inflater = zlib.decompressobj(-15)
        try:
            raw = inflater.decompress(data, MAX_BLOCK_BYTES + 1)
        except zlib.error as exc:
            raise self._fail(where, f"corrupt deflate data: {exc}") from None
        if len(raw) > MAX_BLOCK_BYTES:
            raise self._fail(
                where,
                f"{len(data)} bytes of deflate data inflate past the {MAX_BLOCK_BYTES} "
                "bytes a block may hold (a deflate bomb?)",
            )
        if not inflater.eof:
            raise self._fail(where, "corrupt deflate data: the stream ends before its final block")
        if len(inflater.unused_data) > _ZLIB_TRAILER:
            raise self._fail(
                where,
                f"corrupt deflate data: {len(inflater.unused_data)} bytes after the stream's end",
            )
        return raw


def read_long(raw: bytes, pos: int) -> tuple[int, int] | None:
    """A zig-zag varint from `raw` at `pos`: (value, next pos), or None if it runs off the end
    or past 10 bytes."""
    n = shift = 0
    for i in range(pos, min(len(raw), pos + _VARINT_MAX_BYTES)):
        b = raw[i]
        n |= (b & 0x7F) << shift
        shift += 7
        if not b & 0x80:
            return (n >> 1) ^ -(n & 1), i + 1
    return None
