"""The auditor's own Avro: Parsing Canonical Form, CRC-64-AVRO and a binary reader.

Written again from the Avro specification, so that the auditor shares no decoding code with
the ledger: ``canonical_form`` and ``crc64_avro`` give a schema's fingerprint, and
``compile_reader`` turns a schema (parsed JSON) into ``read(buf, pos) -> (value, pos)``, the
records built as the value classes it is given. ``audit.formats`` uses them on the shipped
schemas.

The reader is generated Python source (docs/PERFORMANCE.md, "Generated code"). With
``STEWARD_NO_CODEGEN=1`` in the environment it is built as plain closures instead: the same
reads, checks and errors, nothing exec'd (tests/unit/test_codegen.py compares the two).
"""

from __future__ import annotations

import json
import os
import re
import struct
from collections.abc import Callable, Mapping
from dataclasses import MISSING, fields
from typing import Any

from audit.errors import DecodeError


def codegen_enabled() -> bool:
    """Whether generated code is used: unless STEWARD_NO_CODEGEN is set to a non-zero value.

    The ledger's switch (ledger.codegen), checked again here: the auditor imports nothing from
    the ledger.
    """
    return os.environ.get("STEWARD_NO_CODEGEN", "") in ("", "0")


# Read once, at import: the shipped schemas' readers are built then.
GENERATE = codegen_enabled()


# --------------------------------------------------------------------------------------------
# Fingerprints: Parsing Canonical Form (Avro spec "Transforming into Parsing Canonical Form")
# and CRC-64-AVRO.

_EMPTY64 = 0xC15D213AA4D7A795


def _make_table() -> tuple[int, ...]:
    out = []
    for i in range(256):
        fp = i
        for _ in range(8):
            fp = (fp >> 1) ^ (_EMPTY64 if fp & 1 else 0)
        out.append(fp)
    return tuple(out)


_TABLE = _make_table()


def crc64_avro(data: bytes) -> bytes:
    """CRC-64-AVRO (Rabin) of `data` as the 8 little-endian bytes single-object encoding uses."""
    fp = _EMPTY64
    for b in data:
        fp = (fp >> 8) ^ _TABLE[(fp ^ b) & 0xFF]
    return fp.to_bytes(8, "little")


_PRIMITIVES = frozenset({"null", "boolean", "int", "long", "float", "double", "bytes", "string"})


def fullname(name: str, namespace: str) -> str:
    return name if "." in name or not namespace else f"{namespace}.{name}"


def canonical_form(schema: Any) -> str:
    """The Parsing Canonical Form of a schema given as parsed JSON."""
    seen: set[str] = set()

    def pcf(node: Any, ns: str) -> str:
        if isinstance(node, str):
            return json.dumps(node if node in _PRIMITIVES else fullname(node, ns))
        if isinstance(node, list):
            return "[" + ",".join(pcf(n, ns) for n in node) + "]"
        kind = node["type"]
        if kind in _PRIMITIVES:
            return json.dumps(kind)
        if kind in ("record", "enum", "fixed"):
            inner_ns = (
                node.get("namespace", ns)
                if "." not in node["name"]
                else node["name"].rsplit(".", 1)[0]
            )
            name = fullname(node["name"], node.get("namespace", ns))
            if name in seen:
                return json.dumps(name)
            seen.add(name)
            parts = [f'"name":{json.dumps(name)}', f'"type":"{kind}"']
            if kind == "record":
                fs = ",".join(
                    f'{{"name":{json.dumps(f["name"])},"type":{pcf(f["type"], inner_ns)}}}'
                    for f in node["fields"]
                )
                parts.append(f'"fields":[{fs}]')
            elif kind == "enum":
                parts.append('"symbols":' + json.dumps(node["symbols"], separators=(",", ":")))
            else:
                parts.append(f'"size":{int(node["size"])}')
            return "{" + ",".join(parts) + "}"
        if kind == "array":
            return f'{{"type":"array","items":{pcf(node["items"], ns)}}}'
        if kind == "map":
            return f'{{"type":"map","values":{pcf(node["values"], ns)}}}'
        return pcf(kind, ns)  # {"type": "SomeNamedType"} or a nested schema

    return pcf(schema, "")


# --------------------------------------------------------------------------------------------
# A small Avro binary decoder. Each schema node compiles to `read(buf, pos) -> (value, pos)`.

Reader = Callable[[bytes, int], tuple[Any, int]]
_DOUBLE = struct.Struct("<d")
_FLOAT = struct.Struct("<f")


def _read_long(buf: bytes, pos: int) -> tuple[int, int]:
    b = buf[pos]
    pos += 1
    n = b & 0x7F
    shift = 7
    while b & 0x80:
        if shift > 63:
            raise DecodeError("varint longer than 10 bytes")
        b = buf[pos]
        pos += 1
        n |= (b & 0x7F) << shift
        shift += 7
    if n >> 64:  # a 10th byte above 1: no 64-bit value (readers that mask would each differ)
        raise DecodeError("varint overflows 64 bits")
    return (n >> 1) ^ -(n & 1), pos


_PRIMITIVE_READERS = _PRIMITIVES  # every primitive is read inline by the generated code


def _check_fields(cls: type[Any], names: list[str]) -> None:
    """The schema's fields are the class's, in order; a class may have more fields after
    them, with defaults: an older writer's record, whose later fields take those defaults
    (Avro resolution of appended fields; audit.formats checks the defaults are the reader
    schema's)."""
    declared = fields(cls)
    if [f.name for f in declared[: len(names)]] != names or any(
        f.default is MISSING for f in declared[len(names) :]
    ):
        raise ValueError(f"{cls.__name__} fields {names} do not match the schema")


def compile_reader(
    schema: Any, classes: Mapping[str, type[Any]], generate: bool = GENERATE
) -> Reader:
    """A reader for `schema`: Python source generated from the schema (or, when `generate` is
    false, plain closures doing the same reads and checks: _plain_reader).

    Records become the classes in `classes`, by full name (fields in the schema's order).

    Generated code keeps the hot path inline — varints, strings, fixed, doubles, enums, and
    whole nested records — so that a payload costs one call and decoding stays cheap next to
    the Ed25519 verification it precedes; a large union (the payload) dispatches through a
    table of per-branch functions. The records' field names are checked against the schema
    when the reader is built.

    Bounds: a read never moves `pos` backwards (lengths and counts are checked non-negative),
    so a read past the end either raises IndexError/struct.error at once or leaves `pos`
    beyond the end, which the caller's final `end == len(data)` check refuses
    (`audit.formats._single_object`). A reader's result must therefore only be used after
    that check.
    """
    if not generate:
        return _plain_reader(schema, classes)
    gen = _Generator(classes)
    entry = gen.node(schema, "")
    namespace: dict[str, Any] = {
        "DecodeError": DecodeError,
        "_read_long": _read_long,
        "_unpack_double": _DOUBLE.unpack_from,
        "_unpack_float": _FLOAT.unpack_from,
        **gen.env,
    }
    # Why generated: docs/PERFORMANCE.md "Generated code" (1.65x fewer instructions per entry).
    exec(compile("\n".join(gen.lines), "<audit-avro-reader>", "exec"), namespace)
    reader: Reader = namespace[entry]
    return reader


INLINE_UNION_BRANCHES = 3  # larger unions dispatch through a table of functions


class _Generator:
    """Emits reader source. Every function has the signature (buf, pos) -> (value, pos)."""

    def __init__(self, classes: Mapping[str, type[Any]]) -> None:
        self.classes = classes
        self.lines: list[str] = []
        self.env: dict[str, Any] = {}
        self.named: dict[str, str] = {}  # full name -> function name
        self.defs: dict[str, tuple[str, Any, str]] = {}  # full name -> (kind, node, namespace)
        self.inlining: list[str] = []  # records being inlined (a recursive one is called instead)
        self.count = 0

    def fresh(self, hint: str) -> str:
        self.count += 1
        return f"_r{self.count}_{re.sub(r'[^A-Za-z0-9]', '_', hint)}"

    def _resolve(self, node: Any, ns: str) -> tuple[str, Any, str]:
        """(kind, node, namespace) with named references and {"type": ...} wrappers resolved."""
        while True:
            if isinstance(node, list):
                return "union", node, ns
            if isinstance(node, str):
                if node in _PRIMITIVE_READERS:
                    return node, node, ns
                full = fullname(node, ns)
                if full not in self.defs:
                    raise ValueError(f"unknown named type {full}")
                return self.defs[full]
            kind = node["type"]
            if isinstance(kind, dict | list):
                node = kind
                continue
            if kind in _PRIMITIVE_READERS:
                return kind, node, ns
            if kind in ("record", "enum", "fixed"):
                full = fullname(node["name"], node.get("namespace", ns))
                if full not in self.defs:
                    inner = full.rsplit(".", 1)[0] if "." in full else ""
                    self.defs[full] = (kind, node, inner)
                    if kind == "enum":
                        self.env[self._enum_table(full)] = tuple(node["symbols"])
                return self.defs[full]
            if kind == "array":
                return "array", node, ns
            node = kind  # {"type": "SomeNamedType"}

    @staticmethod
    def _enum_table(full: str) -> str:
        return "_enum_" + re.sub(r"[^A-Za-z0-9]", "_", full)

    @staticmethod
    def _varint(var: str, ind: str) -> list[str]:
        # Zig-zag varint, inline: timestamps take 6 bytes, so the loop matters.
        return [
            f"{ind}b = buf[pos]; pos += 1",
            f"{ind}if b < 128:",
            f"{ind}    {var} = (b >> 1) ^ -(b & 1)",
            f"{ind}else:",
            f"{ind}    n = b & 127; sh = 7",
            f"{ind}    while b & 128:",
            f"{ind}        if sh > 63: raise DecodeError('varint longer than 10 bytes')",
            f"{ind}        b = buf[pos]; pos += 1; n |= (b & 127) << sh; sh += 7",
            f"{ind}    if n >> 64: raise DecodeError('varint overflows 64 bits')",
            f"{ind}    {var} = (n >> 1) ^ -(n & 1)",
        ]

    def statements(self, node: Any, ns: str, var: str, ind: str) -> list[str]:
        """Statements reading one value of `node` into `var`, inline where it pays."""
        kind, node, ns = self._resolve(node, ns)
        if kind in ("long", "int"):
            out = self._varint(var, ind)
            if kind == "int":
                out.append(
                    f"{ind}if not -2147483648 <= {var} < 2147483648: raise DecodeError('int out of range')"
                )
            return out
        if kind in ("bytes", "string"):
            out = [
                *self._varint("n", ind),
                f"{ind}if n < 0: raise DecodeError('{kind} of negative length')",
                f"{ind}e = pos + n",
            ]
            if kind == "bytes":
                out.append(f"{ind}{var} = buf[pos:e]; pos = e")
            else:
                out.append(f"{ind}{var} = buf[pos:e].decode('utf-8'); pos = e")
            return out
        if kind == "boolean":
            return [
                f"{ind}b = buf[pos]; pos += 1",
                f"{ind}if b > 1: raise DecodeError('boolean byte is not 0 or 1')",
                f"{ind}{var} = b == 1",
            ]
        if kind == "null":
            return [f"{ind}{var} = None"]
        if kind == "double":
            return [f"{ind}{var} = _unpack_double(buf, pos)[0]; pos += 8"]
        if kind == "float":
            return [f"{ind}{var} = _unpack_float(buf, pos)[0]; pos += 4"]
        if kind == "fixed":
            size = int(node["size"])
            return [f"{ind}e = pos + {size}", f"{ind}{var} = buf[pos:e]; pos = e"]
        if kind == "enum":
            full = fullname(node["name"], node.get("namespace", ns))
            syms = len(node["symbols"])
            return [
                *self._varint("i", ind),
                f"{ind}if not 0 <= i < {syms}: raise DecodeError('enum index out of range')",
                f"{ind}{var} = {self._enum_table(full)}[i]",
            ]
        if kind == "record":
            full = fullname(node["name"], node.get("namespace", ns))
            if full in self.inlining:  # recursive: a function call
                return [f"{ind}{var}, pos = {self.record_function(full)}(buf, pos)"]
            return self._record_lines(full, var, ind)
        if kind == "array":
            return [f"{ind}{var}, pos = {self._array(node['items'], ns)}(buf, pos)"]
        if kind == "union":
            return self._union_lines(node, ns, var, ind)
        raise ValueError(f"unsupported schema node {node!r}")

    def _record_lines(self, full: str, var: str, ind: str) -> list[str]:
        _, node, inner_ns = self.defs[full]
        cls = self.classes.get(full)
        if cls is None:
            raise ValueError(f"no value class for record {full}")
        _check_fields(cls, [f["name"] for f in node["fields"]])
        cls_name = "_cls_" + re.sub(r"[^A-Za-z0-9]", "_", full)
        self.env[cls_name] = cls
        self.inlining.append(full)
        out: list[str] = []
        fvars = []
        for i, f in enumerate(node["fields"]):
            fv = f"{var}_{i}"
            fvars.append(fv)
            out += self.statements(f["type"], inner_ns, fv, ind)
        self.inlining.pop()
        out.append(f"{ind}{var} = {cls_name}({', '.join(fvars)})")
        return out

    def record_function(self, full: str) -> str:
        """A function reading the record `full` (defined once)."""
        if full in self.named:
            return self.named[full]
        fn = self.named[full] = self.fresh(full)
        saved, self.inlining = self.inlining, [full]
        body = self._record_lines(full, "v", "    ")
        self.inlining = saved
        self.lines += [f"def {fn}(buf, pos):", *body, "    return v, pos"]
        return fn

    def node(self, node: Any, ns: str) -> str:
        """The name of a generated function reading `node`."""
        kind, resolved, rns = self._resolve(node, ns)
        if kind == "record":
            return self.record_function(fullname(resolved["name"], resolved.get("namespace", rns)))
        fn = self.fresh(kind)
        body = self.statements(resolved, rns, "v", "    ")
        self.lines += [f"def {fn}(buf, pos):", *body, "    return v, pos"]
        return fn

    def _array(self, items: Any, ns: str) -> str:
        # One block of one item is the common case (one signature, one ref, one metric): it is
        # read straight into a 1-tuple; anything else goes through the general block loop.
        fn = self.fresh("array")
        self.lines += [
            f"def {fn}(buf, pos):",
            "    b = buf[pos]",
            "    if b == 2:",
            "        pos += 1",
            *self.statements(items, ns, "v", "        "),
            "        if buf[pos] == 0:",
            "            return (v,), pos + 1",
            "        out = [v]",
            "    elif b == 0:",
            "        return (), pos + 1",
            "    else:",
            "        out = []",
            "    while True:",
            *self._varint("count", "        "),
            "        if count == 0:",
            "            return tuple(out), pos",
            "        if count < 0:",
            "            count = -count",
            "            _size, pos = _read_long(buf, pos)",
            "        if count > len(buf) - pos + 1:",
            "            raise DecodeError('array block cannot fit in the data')",
            "        for _ in range(count):",
            *self.statements(items, ns, "v", "            "),
            "            out.append(v)",
        ]
        return fn

    def _union_lines(self, branches: list[Any], ns: str, var: str, ind: str) -> list[str]:
        out = self._varint("i", ind)
        if len(branches) <= INLINE_UNION_BRANCHES:
            for i, br in enumerate(branches):
                out.append(f"{ind}{'if' if i == 0 else 'elif'} i == {i}:")
                out += self.statements(br, ns, var, ind + "    ")
            out += [f"{ind}else:", f"{ind}    raise DecodeError('union branch out of range')"]
            return out
        table = self.fresh("union_branches")
        fns = [self.node(br, ns) for br in branches]
        self.lines.append(f"{table} = ({', '.join(fns)},)")
        out += [
            f"{ind}if not 0 <= i < {len(branches)}: raise DecodeError('union branch out of range')",
            f"{ind}{var}, pos = {table}[i](buf, pos)",
        ]
        return out


# --------------------------------------------------------------------------------------------
# The same reader as plain closures (STEWARD_NO_CODEGEN): one per schema node, doing what the
# generated source does inline, check for check and message for message. The one-item array
# shortcut is left out: the general block loop reads the same bytes to the same value.


def _plain_reader(schema: Any, classes: Mapping[str, type[Any]]) -> Reader:
    resolver = _Generator(classes)  # only its resolution of named types is used
    records: dict[str, Reader] = {}

    def long_(buf: bytes, pos: int) -> tuple[int, int]:
        return _read_long(buf, pos)

    def int_(buf: bytes, pos: int) -> tuple[int, int]:
        v, pos = _read_long(buf, pos)
        if not -2147483648 <= v < 2147483648:
            raise DecodeError("int out of range")
        return v, pos

    def bytes_(buf: bytes, pos: int) -> tuple[bytes, int]:
        n, pos = _read_long(buf, pos)
        if n < 0:
            raise DecodeError("bytes of negative length")
        e = pos + n
        return buf[pos:e], e

    def string(buf: bytes, pos: int) -> tuple[str, int]:
        n, pos = _read_long(buf, pos)
        if n < 0:
            raise DecodeError("string of negative length")
        e = pos + n
        return buf[pos:e].decode("utf-8"), e

    def boolean(buf: bytes, pos: int) -> tuple[bool, int]:
        b = buf[pos]
        if b > 1:
            raise DecodeError("boolean byte is not 0 or 1")
        return b == 1, pos + 1

    def null(buf: bytes, pos: int) -> tuple[None, int]:
        return None, pos

    def double(buf: bytes, pos: int) -> tuple[float, int]:
        return _DOUBLE.unpack_from(buf, pos)[0], pos + 8

    def float_(buf: bytes, pos: int) -> tuple[float, int]:
        return _FLOAT.unpack_from(buf, pos)[0], pos + 4

    primitives: dict[str, Reader] = {
        "long": long_,
        "int": int_,
        "bytes": bytes_,
        "string": string,
        "boolean": boolean,
        "null": null,
        "double": double,
        "float": float_,
    }

    def fixed(size: int) -> Reader:
        def read_fixed(buf: bytes, pos: int) -> tuple[bytes, int]:
            e = pos + size
            return buf[pos:e], e

        return read_fixed

    def enum(symbols: tuple[str, ...]) -> Reader:
        def read_enum(buf: bytes, pos: int) -> tuple[str, int]:
            i, pos = _read_long(buf, pos)
            if not 0 <= i < len(symbols):
                raise DecodeError("enum index out of range")
            return symbols[i], pos

        return read_enum

    def array(item: Reader) -> Reader:
        def read_array(buf: bytes, pos: int) -> tuple[tuple[Any, ...], int]:
            out: list[Any] = []
            while True:
                count, pos = _read_long(buf, pos)
                if count == 0:
                    return tuple(out), pos
                if count < 0:
                    count = -count
                    _size, pos = _read_long(buf, pos)
                if count > len(buf) - pos + 1:
                    raise DecodeError("array block cannot fit in the data")
                for _ in range(count):
                    v, pos = item(buf, pos)
                    out.append(v)

        return read_array

    def union(branches: tuple[Reader, ...]) -> Reader:
        def read_union(buf: bytes, pos: int) -> tuple[Any, int]:
            i, pos = _read_long(buf, pos)
            if not 0 <= i < len(branches):
                raise DecodeError("union branch out of range")
            return branches[i](buf, pos)

        return read_union

    def record(full: str) -> Reader:
        if full in records:  # built, or being built (a recursive record)
            return records[full]
        built: list[Reader] = []
        records[full] = lambda buf, pos: built[0](buf, pos)
        _, node, inner_ns = resolver.defs[full]
        cls = classes.get(full)
        if cls is None:
            raise ValueError(f"no value class for record {full}")
        _check_fields(cls, [f["name"] for f in node["fields"]])
        readers = [build(f["type"], inner_ns) for f in node["fields"]]

        def read_record(buf: bytes, pos: int) -> tuple[Any, int]:
            values = []
            for read in readers:
                v, pos = read(buf, pos)
                values.append(v)
            return cls(*values), pos

        built.append(read_record)
        records[full] = read_record
        return read_record

    def build(node: Any, ns: str) -> Reader:
        kind, node, ns = resolver._resolve(node, ns)
        if kind in primitives:
            return primitives[kind]
        if kind == "fixed":
            return fixed(int(node["size"]))
        if kind == "enum":
            return enum(tuple(node["symbols"]))
        if kind == "record":
            return record(fullname(node["name"], node.get("namespace", ns)))
        if kind == "array":
            return array(build(node["items"], ns))
        if kind == "union":
            return union(tuple(build(branch, ns) for branch in node))
        raise ValueError(f"unsupported schema node {node!r}")

    return build(schema, "")
