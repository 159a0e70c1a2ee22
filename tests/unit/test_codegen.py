"""Generated code and its plain equivalent (STEWARD_NO_CODEGEN) give the same values and errors.

Three decoders are generated with exec (docs/PERFORMANCE.md, "Generated code"): the fastavro
record converters of ledger.formats, the dataclass decoders of controller.snapshot and the
auditor's Avro reader (audit.avro). Each is built here both ways from the same inputs and fed
the same valid and damaged values; and the unit tests of all three run again in a process with
the variable set.
"""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
import typing
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from audit import avro
from audit import formats as audit_formats
from controller import snapshot
from ledger import codegen, formats
from ledger.formats import ENTRY_SCHEMA, EVENT_BODY_SCHEMA, SIGNED_EVENT_SCHEMA, LogEntry
from tests.unit.test_controller_snapshot import folded, rich_harness

ROOT = Path(__file__).resolve().parents[2]


def _shape(value: Any) -> Any:
    """`value` with the type of every part spelled out (so 1, 1.0 and True differ, as they do in
    repr), and sets sorted: a set's repr follows its insertion history, which two decoders that
    build equal sets need not share (it made this comparison fail for one hash seed in eight)."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return type(value), tuple(_shape(getattr(value, f.name)) for f in dataclasses.fields(value))
    if isinstance(value, set | frozenset):
        return type(value), sorted((_shape(v) for v in value), key=repr)
    if isinstance(value, dict):
        return type(value), sorted(((_shape(k), _shape(v)) for k, v in value.items()), key=repr)
    if isinstance(value, list | tuple):
        return type(value), tuple(_shape(v) for v in value)
    return type(value), value


def _outcome(fn: Callable[[Any], Any], value: Any) -> tuple[Any, ...]:
    try:
        result = fn(value)
    except Exception as exc:  # the class and the message are what is compared
        return "error", type(exc).__name__, str(exc)
    return "ok", type(result), result, _shape(result)


@pytest.fixture(scope="module")
def entries() -> list[LogEntry]:
    h, _ = rich_harness()
    assert h.core.entries
    return h.core.entries


# --------------------------------------------------------------------------------------------
# The switch


@pytest.mark.parametrize(
    ("value", "generate"),
    [
        (None, True),
        ("", True),
        ("0", True),
        ("1", False),
        ("yes", False),
    ],
)
def test_one_variable_switches_the_ledger_and_the_auditor_alike(
    monkeypatch: pytest.MonkeyPatch, value: str | None, generate: bool
) -> None:
    assert codegen.NO_CODEGEN_ENV == "STEWARD_NO_CODEGEN"
    if value is None:
        monkeypatch.delenv(codegen.NO_CODEGEN_ENV, raising=False)
    else:
        monkeypatch.setenv(codegen.NO_CODEGEN_ENV, value)
    assert codegen.codegen_enabled() is generate
    assert avro.codegen_enabled() is generate


_WHERE_BUILT = """
from audit import formats as audit_formats
from controller import snapshot
from ledger import formats
from ledger.formats import KillScope
print(formats._ENTRY_FROM_AVRO.__code__.co_filename)
print(snapshot._DATACLASS_CODECS[KillScope][1].__code__.co_filename)
print(next(iter(audit_formats.ENTRY_SCHEMAS.values())).read.__code__.co_filename)
"""


def _run(args: list[str], no_codegen: bool) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    env.pop(codegen.NO_CODEGEN_ENV, None)
    if no_codegen:
        env[codegen.NO_CODEGEN_ENV] = "1"
    return subprocess.run(
        [sys.executable, *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=600
    )


def test_the_variable_turns_every_generator_off_at_import() -> None:
    generated = _run(["-c", _WHERE_BUILT], no_codegen=False)
    assert generated.returncode == 0, generated.stderr
    assert generated.stdout.split() == ["<string>", "<string>", "<audit-avro-reader>"]
    plain = _run(["-c", _WHERE_BUILT], no_codegen=True)
    assert plain.returncode == 0, plain.stderr
    assert [Path(f).name for f in plain.stdout.split()] == ["formats.py", "snapshot.py", "avro.py"]


def test_the_unit_tests_of_the_three_decoders_pass_on_the_plain_path() -> None:
    tests = [
        "tests/unit/test_formats.py",
        "tests/unit/test_ledger_vectors.py",
        "tests/unit/test_controller_snapshot.py",
        "tests/unit/test_audit_decoder.py",
        "tests/unit/test_audit_vectors.py",
    ]
    run = _run(
        ["-m", "pytest", "-q", "-p", "no:cacheprovider", "-W", "ignore", *tests], no_codegen=True
    )
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]


# --------------------------------------------------------------------------------------------
# ledger.formats: fastavro's records into the dataclasses


def _damaged_records(record: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """`record` with each field missing, then with each field of a wrong kind."""
    for name in record:
        yield {k: v for k, v in record.items() if k != name}
    for name in record:
        for wrong in (None, 7, "x", [1], {"a": 1}):
            yield {**record, name: wrong}


def _assert_converters_agree(cls: type[Any], record: dict[str, Any]) -> None:
    generated = formats._record_converter(cls, generate=True)
    plain = formats._record_converter(cls, generate=False)
    assert generated is not plain
    good = _outcome(generated, record)
    assert good[0] == "ok" and good == _outcome(plain, record)
    for damaged in _damaged_records(record):
        assert _outcome(generated, damaged) == _outcome(plain, damaged), (cls, damaged)


def test_formats_converters_agree_on_every_record_and_its_damage(entries: list[LogEntry]) -> None:
    for e in entries:
        entry_record = formats._schemaless_read(ENTRY_SCHEMA, e.entry_bytes[10:], "entry")
        _assert_converters_agree(formats.Entry, entry_record)
        event = formats.SignedEvent(e.entry.body, e.entry.signatures)
        event_bytes = formats.encode_signed_event(event)
        event_record = formats._schemaless_read(SIGNED_EVENT_SCHEMA, event_bytes[10:], "event")
        _assert_converters_agree(formats.SignedEvent, event_record)
        body_record = formats._schemaless_read(EVENT_BODY_SCHEMA, e.entry.body[10:], "body")
        branch, payload_record = body_record["payload"]
        payload_cls = formats.PAYLOAD_TYPES[branch.rsplit(".", 1)[-1]]
        _assert_converters_agree(payload_cls, payload_record)
        for name, value in payload_record.items():  # the nested records too
            hint = typing.get_type_hints(payload_cls)[name]
            if isinstance(value, dict) and dataclasses.is_dataclass(hint):
                _assert_converters_agree(typing.cast(type[Any], hint), value)


# --------------------------------------------------------------------------------------------
# controller.snapshot: snapshot records into the state's dataclasses


def _instances(value: Any, seen: set[int]) -> Iterator[Any]:
    """Every dataclass instance reachable from `value`."""
    if id(value) in seen:
        return
    seen.add(id(value))
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        yield value
        for f in dataclasses.fields(value):
            yield from _instances(getattr(value, f.name), seen)
    elif isinstance(value, dict):
        for k, v in value.items():
            yield from _instances(k, seen)
            yield from _instances(v, seen)
    elif isinstance(value, list | tuple | set | frozenset):
        for v in value:
            yield from _instances(v, seen)


def _snapshot_decoders(cls: type[Any]) -> tuple[Callable[[Any], Any], Callable[[Any], Any]]:
    hints = typing.get_type_hints(cls)
    fields = [f.name for f in dataclasses.fields(cls)]
    decs = [snapshot._codec(hints[n], f"{cls.__name__}.{n}")[1] for n in fields]
    return (
        snapshot._generated_decoder(cls, fields, hints, decs),
        snapshot._plain_decoder(cls, fields, hints, decs),
    )


def test_snapshot_decoders_agree_on_every_record_and_its_damage() -> None:
    h, _ = rich_harness()
    state = folded(h)
    checked: set[type[Any]] = set()
    for instance in _instances(state, set()):
        cls = type(instance)
        if cls not in snapshot._DATACLASS_CODECS:
            continue  # the state's own containers, encoded field by field
        checked.add(cls)
        enc, _dec = snapshot._DATACLASS_CODECS[cls]
        generated, plain = _snapshot_decoders(cls)
        record = enc(instance)
        good = _outcome(generated, record)
        assert good == ("ok", cls, instance, _shape(instance)) and _outcome(plain, record) == good
        damaged = [None, {}, record[:-1], [*record, 0]]
        damaged += [
            [*record[:i], wrong, *record[i + 1 :]]
            for i in range(len(record))
            for wrong in (None, 1.5, "x", [], True)
        ]
        for value in damaged:
            assert _outcome(generated, value) == _outcome(plain, value), (cls, value)
    assert len(checked) >= 5, checked


# --------------------------------------------------------------------------------------------
# audit.avro: the auditor's reader


def _variants(data: bytes) -> Iterator[bytes]:
    """`data`, every truncation of it, a trailing byte, and every byte changed three ways."""
    yield data
    yield data + b"\x00"
    for k in range(len(data)):
        yield data[:k]
    for i in range(10, len(data)):
        for b in {0x00, 0xFF, data[i] ^ 0x01}:
            yield data[:i] + bytes((b,)) + data[i + 1 :]


def test_audit_readers_agree_on_every_record_and_its_damage(entries: list[LogEntry]) -> None:
    readers = {}
    for schemas in (
        audit_formats.BODY_SCHEMAS,
        audit_formats.ENTRY_SCHEMAS,
        audit_formats.SIGNED_EVENT_SCHEMAS,
    ):
        for schema in schemas.values():
            raw = (ROOT / "audit" / "schemas" / schema.file).read_text(encoding="utf-8")
            parsed = json.loads(raw)
            readers[schema.name] = (
                avro.compile_reader(parsed, audit_formats._RECORD_CLASSES, generate=True),
                avro.compile_reader(parsed, audit_formats._RECORD_CLASSES, generate=False),
            )
    samples = []
    for e in entries:
        event = formats.SignedEvent(e.entry.body, e.entry.signatures)
        samples += [
            ("steward.v1.Entry", e.entry_bytes),
            ("steward.v1.EventBody", e.entry.body),
            ("steward.v1.SignedEvent", formats.encode_signed_event(event)),
        ]
    for name, data in samples:
        generated, plain = (_after_fingerprint(r) for r in readers[name])
        assert _outcome(generated, data)[0] == "ok"
        for variant in _variants(data):
            assert _outcome(generated, variant) == _outcome(plain, variant), (name, variant.hex())


def _after_fingerprint(read: avro.Reader) -> Callable[[bytes], Any]:
    return lambda data: read(data, 10)
